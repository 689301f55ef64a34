"""Scale-out on one machine is configuration: runs on the multiprocess executor, launched together on an
instance with the project's dagster.yaml, run their other steps side by side while their steps in the
`warehouse_writer` pool (every raw asset, the maintenance asset) take turns: the single-writer rule of the
SQLite catalog holds without any lock in the code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
from dagster._core.instance.ref import InstanceRef

ROOT = Path(__file__).resolve().parents[2]

JOB = """
import os, sys, time
from pathlib import Path
import dagster as dg
from dagster._core.instance.ref import InstanceRef
from dagster_project.defs.raw_market_data import WRITER_POOL


MARKS = Path(os.environ["POOL_DEMO_DIR"])


@dg.asset(pool=WRITER_POOL)
def writer() -> dg.MaterializeResult:
    start = time.time()
    while len(list(MARKS.glob("reader-*"))) < 2 and time.time() < start + 120:  # both runs are up
        time.sleep(0.2)
    time.sleep(2)
    return dg.MaterializeResult(metadata={"start": start, "end": time.time()})


@dg.asset
def reader(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    start = time.time()
    (MARKS / f"reader-{context.run_id}").touch()
    time.sleep(3)
    return dg.MaterializeResult(metadata={"start": start, "end": time.time()})


defs = dg.Definitions(assets=[writer, reader], jobs=[dg.define_asset_job(
    "pool_demo", selection=[writer, reader], executor_def=dg.multiprocess_executor)])


def pool_demo():
    return defs.get_job_def("pool_demo")


if __name__ == "__main__":
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(sys.argv[1]))
    result = dg.execute_job(dg.reconstructable(pool_demo), instance=instance)
    sys.exit(0 if result.success else 1)
"""


def test_two_runs_launched_together_take_turns_in_the_writer_pool(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))  # its storage created once, first
    script = tmp_path / "pool_demo.py"
    script.write_text(textwrap.dedent(JOB))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POOL_DEMO_DIR": str(tmp_path)}
    runs = [subprocess.Popen([sys.executable, "-W", "ignore", str(script), str(home)], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in runs:
        assert proc.wait(300) == 0, proc.stderr.read()[-3000:]
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1

    def spans(asset: str) -> list[tuple[float, float]]:
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
        return sorted((r.asset_materialization.metadata["start"].value, r.asset_materialization.metadata["end"].value)
                      for r in records)

    writers, readers = spans("writer"), spans("reader")
    assert len(writers) == len(readers) == 2
    (_, first_end), (second_start, _) = writers
    assert second_start >= first_end  # one writer at a time across the two runs
    # the other steps did not wait: each run's reader overlapped a writer (multiprocess executor)
    assert all(any(r0 < w1 and w0 < r1 for w0, w1 in writers) for r0, r1 in readers)
    blocked = [e for run in instance.get_runs() for e in instance.all_logs(run.run_id)
               if e.dagster_event and "warehouse_writer" in (e.dagster_event.message or "")]
    assert blocked, "the second writer step says it waited for the pool"
