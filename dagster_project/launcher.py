"""The run launcher of the shipped dagster.yaml: Dagster's DefaultRunLauncher plus a run-worker health check.

Dagster's run monitoring (the daemon) marks a STARTED run FAILED when its run launcher reports the run
worker dead; the DefaultRunLauncher reports nothing (`supports_check_run_worker_health` is False), so a run
whose process the OS killed (OOM) or someone killed with kill -9 would stay STARTED forever and keep its
concurrency slots. Every run records its worker's pid in an engine event ("Started process for run (pid: N)",
"Executing steps in process (pid: N)"); this launcher checks that process on this machine. On Kubernetes,
Docker or ECS their own launchers already implement the check (docs/scale.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterEventType, DagsterRun
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus


def run_worker_pid(instance, run_id: str) -> int | None:
    """The pid the run's first engine event with a pid recorded (its run worker), None before it starts."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data if record.dagster_event else None
        pid = data.metadata.get("pid") if data and data.metadata else None
        if pid is not None:
            return int(pid.value)
    return None


def process_alive(pid: int) -> bool:
    """True when `pid` is a running process on this machine (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose runs' workers are checked by pid, so run monitoring can fail dead ones."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        pid = run_worker_pid(self._instance, run.run_id)
        if pid is None:  # between RUN_START and the first engine event: nothing to judge yet (not a failure)
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker has not recorded its pid yet",
                                        transient=True)
        if process_alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {pid} is alive")
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {pid} is gone without ending the run (killed by the OS, e.g. out of memory, or "
            "by kill -9); its steps did not finish and nothing after its last event was written")
