"""A run whose worker is killed (OOM, kill -9) is marked FAILED by the daemon's run monitoring, with the
project's dagster.yaml (LocalRunLauncher); with Dagster's DefaultRunLauncher it would stay STARTED."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.instance.ref import InstanceRef
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration

from dagster_project.launcher import LocalRunLauncher, process_alive, run_worker_pid

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import sys, time
import dagster as dg
from dagster._core.instance.ref import InstanceRef

@dg.op
def sleepy():
    print("running", flush=True)
    time.sleep(120)

@dg.job
def slow():
    sleepy()

if __name__ == "__main__":
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(sys.argv[1]))
    dg.execute_job(dg.reconstructable(slow), instance=instance)
"""


def home_with(tmp_path: Path, launcher: bool) -> Path:
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    if not launcher:
        config.pop("run_launcher", None)
    home = tmp_path / ("home_local" if launcher else "home_default")
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def start_and_kill_a_run(tmp_path: Path, home: Path) -> tuple[dg.DagsterInstance, str, int]:
    """A job run in its own process until its op is running; the process then killed with SIGKILL."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    proc = subprocess.Popen([sys.executable, "-W", "ignore", str(script), str(home)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        assert proc.stdout.readline().strip() == "running"
        run = instance.get_runs()[0]
        assert run.status == dg.DagsterRunStatus.STARTED
        pid = run_worker_pid(instance, run.run_id)
        assert pid == proc.pid and process_alive(pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not process_alive(proc.pid)
    return instance, run.run_id, proc.pid


def monitor_once(instance: dg.DagsterInstance) -> None:
    with create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance) as context:
        list(execute_run_monitoring_iteration(context, logging.getLogger("run_monitoring")))


def test_a_killed_run_worker_is_marked_failed_by_run_monitoring(tmp_path: Path) -> None:
    instance, run_id, pid = start_and_kill_a_run(tmp_path, home_with(tmp_path, launcher=True))
    assert isinstance(instance.run_launcher, LocalRunLauncher)
    assert instance.run_monitoring_enabled
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED  # nothing noticed yet
    monitor_once(instance)
    run = instance.get_run_by_id(run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    failure = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1]
    assert f"run worker process {pid} is gone" in failure.message


def test_without_the_health_check_a_killed_run_stays_started(tmp_path: Path) -> None:
    instance, run_id, _ = start_and_kill_a_run(tmp_path, home_with(tmp_path, launcher=False))
    assert not instance.run_launcher.supports_check_run_worker_health  # Dagster's DefaultRunLauncher
    monitor_once(instance)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
