"""Writers and readers hammering one lake from separate processes (the concurrency test and its benchmark).

Each writer merges new funding rows and replaces its own group of research_gates rows in a loop, with 0-0.2 s of
other work between two writes (back-to-back writers would let the earlier starter win every DuckLake conflict); each
reader
counts rows read-only. Every process prints one JSON line: commits, failures (a WarehouseBusyError is a loud
failure), reader errors and whether a reader ever saw a count go down (a torn or lost write)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WRITER = """
import json, logging, random, sys, time
from datetime import datetime, timedelta, timezone
import polars as pl
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse, WarehouseBusyError
root, catalog, writer, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
retries = []
logging.basicConfig(level=logging.WARNING)
logging.getLogger("qml_pipeline.store.warehouse").addFilter(lambda r: retries.append(1) or True)
wh = Warehouse(root, catalog=catalog, tags={"writer": str(writer)})
start = datetime(2020, 1, 1, tzinfo=timezone.utc) + timedelta(days=400 * writer)
commits = failures = 0
errors = []
deadline = time.monotonic() + seconds
i = 0
while time.monotonic() < deadline:
    times = [start + timedelta(hours=8 * (i * 10 + k)) for k in range(10)]
    frame = pl.DataFrame({"symbol": "BTCUSDT", "event_time": times, "funding_rate": 0.0001,
                          "funding_interval_hours": 8, "exchange_time": times, "available_at": times,
                          "source": f"writer{writer}"})
    gate = pl.DataFrame({"gate": f"w{writer}", "part": ["a", "b"], "passed": True, "gate_passed": True,
                         "value": float(i), "evaluated_at": times[0]})
    try:
        with wh.write(f"stress writer {writer} step {i}") as batch:
            batch.merge(schemas.FUNDING_RATES, frame)
            batch.replace_group(schemas.RESEARCH_GATES, gate, "gate", f"w{writer}")
        commits += 1
    except WarehouseBusyError as exc:
        failures += 1
        errors.append(str(exc)[:200])
    i += 1
    time.sleep(random.uniform(0, 0.2))  # the work between two writes (a fetch, a computation)
print(json.dumps({"role": "writer", "writer": writer, "commits": commits, "failures": failures,
                  "retries": len(retries), "errors": errors[:3]}))
"""

READER = """
import json, sys, time
from qml_pipeline.store.warehouse import Warehouse
root, catalog, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
wh = Warehouse(root, catalog=catalog)
reads = errors = 0
went_down = False
last = -1
messages = []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        con = wh.connect()
        n = con.execute("SELECT count(*) FROM funding_rates").fetchone()[0]
        g = con.execute("SELECT count(*) FROM research_gates").fetchone()[0]
        con.close()
        reads += 1
        went_down = went_down or n < last
        last = n
    except Exception as exc:
        errors += 1
        messages.append(str(exc)[:200])
print(json.dumps({"role": "reader", "reads": reads, "errors": errors, "went_down": went_down,
                  "messages": messages[:3]}))
"""


def run(root: Path, catalog: str = "", writers: int = 2, readers: int = 3, seconds: float = 20.0) -> list[dict]:
    """Start the processes together, wait for them, return each one's JSON report."""
    from qml_pipeline.store.warehouse import Warehouse

    Warehouse(root, catalog=catalog).ensure_schema()  # created once, before the race
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), catalog, str(w), str(seconds)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(writers)]
    procs += [subprocess.Popen([sys.executable, "-c", READER, str(root), catalog, str(seconds)], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(readers)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 300)
        if p.returncode != 0:
            raise RuntimeError(f"a stress process failed ({p.returncode}): {err[-2000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports
