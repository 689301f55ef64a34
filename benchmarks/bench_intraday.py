"""Cost of the intraday refresh per run (wall time, HTTP requests, rows, lake snapshots) for 2 and 50 symbols,
against the local fake Binance (tests/fake_binance.py) with a movable clock.

What runs is what the `intraday_refresh` schedule launches: the raw assets on the live edge of every symbol's
current month (one run), then the context and pattern cards and their JSON export, the liquidation map on the
tick after each 4-hour snapshot boundary. Each symbol has 5-minute open interest, 8-hourly funding and 1h / 4h
klines from the 1st of the month to 12:00 on the 15th; the first run fills that (reported apart), then the clock
moves on by the refresh interval and the fake publishes what Binance would have in the meantime.

Side by side on a copy of the same lake: the same ticks re-reading a day before the first missing stamp (the
daily refresh's overlap) instead of QML_INTRADAY_OVERLAP_MINUTES.

    .venv/bin/python benchmarks/bench_intraday.py                  # 2 and 50 symbols, 5 ticks each
    .venv/bin/python benchmarks/bench_intraday.py --symbols 2 --ticks 3
"""

from __future__ import annotations

import argparse
import logging
import warnings
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DAGSTER_HOME", tempfile.mkdtemp(prefix="bench-intraday-dagster-"))

import dagster as dg  # noqa: E402
from pytest_httpserver import HTTPServer  # noqa: E402

from qml_pipeline.store.warehouse import Warehouse  # noqa: E402
from tests.fake_binance import FakeBinance  # noqa: E402
from tests.intraday_runs import Clock, feed, listed, live_edge, run_intraday  # noqa: E402

UTC = timezone.utc
MONTH = datetime(2024, 3, 1, tzinfo=UTC)
NOW = datetime(2024, 3, 15, 12, 0, tzinfo=UTC)
RAW = ("funding_rates", "open_interest", "klines")


@dataclass
class Cost:
    wall_s: float
    requests: int
    by_path: dict[str, int]
    rows_fetched: int
    rows_inserted: int
    snapshots: int
    catalog_kb: float
    steps: dict[str, float]
    ok: bool


def _step_seconds(instance: dg.DagsterInstance, results: list[dg.ExecuteInProcessResult]) -> dict[str, float]:
    out: dict[str, float] = {}
    for result in results:
        starts: dict[str, float] = {}
        for entry in instance.all_logs(result.run_id):
            ev = entry.dagster_event
            if ev is None or ev.step_key is None:
                continue
            if ev.event_type_value == "STEP_START":
                starts[ev.step_key] = entry.timestamp
            elif ev.event_type_value == "STEP_SUCCESS" and ev.step_key in starts:
                out[ev.step_key] = out.get(ev.step_key, 0.0) + entry.timestamp - starts[ev.step_key]
    return out


def _rows(results: list[dg.ExecuteInProcessResult], key: str) -> int:
    """Sum of a raw partition's own metadata value over the partitions the runs materialised."""
    total = 0
    for result in results:
        for event in result.get_asset_materialization_events():
            if event.asset_key.to_user_string() in RAW:
                value = event.materialization.metadata.get(key)
                total += int(value.value) if value is not None else 0
    return total


def measure(root: Path, fake: FakeBinance, instance: dg.DagsterInstance, clock: Clock, symbols: list[str],
            overlap_minutes: int) -> Cost:
    # Binance reports the weight used in the current minute; runs are minutes apart, so each starts from zero
    # (the fake's counter only grows, and the client would wait for a minute boundary that never resets it)
    fake.used_weight = 0
    before_req, before_snap = len(fake.requests), Warehouse(root).current_snapshot() if root.exists() else 0
    catalog = root / "catalog.sqlite"
    before_kb = catalog.stat().st_size / 1024 if catalog.exists() else 0.0
    t = time.perf_counter()
    results = run_intraday(root, fake.url, instance, clock.now, symbols, overlap_minutes=overlap_minutes)
    wall = time.perf_counter() - t
    paths: dict[str, int] = {}
    for path, _ in fake.requests[before_req:]:
        paths[path] = paths.get(path, 0) + 1
    return Cost(wall, len(fake.requests) - before_req, paths, _rows(results, "rows_fetched"),
                _rows(results, "rows_inserted"),
                Warehouse(root).current_snapshot() - before_snap, catalog.stat().st_size / 1024 - before_kb,
                _step_seconds(instance, results), all(r.success for r in results))


def bench(server: HTTPServer, n: int, ticks: int, refresh_minutes: int, overlap_minutes: int) -> dict:
    server.clear()
    fake = FakeBinance(server)
    symbols = [f"S{i:03d}USDT" for i in range(n)]
    listed(fake, symbols, MONTH, NOW + timedelta(days=1))
    feed(fake, symbols, MONTH, NOW)
    clock = Clock(NOW)
    work = Path(tempfile.mkdtemp(prefix=f"bench-intraday-{n}-"))
    lake, control = work / "intraday", work / "daily_overlap"
    instance = dg.DagsterInstance.ephemeral()
    out: dict = {"n": n, "ticks": [], "control": []}
    try:
        with live_edge(clock):
            out["fill"] = measure(lake, fake, instance, clock, symbols, overlap_minutes)
            shutil.copytree(lake, control)
            for _ in range(ticks):
                clock.now += timedelta(minutes=refresh_minutes)
                feed(fake, symbols, clock.now - timedelta(minutes=refresh_minutes), clock.now)
                out["ticks"].append((clock.now, measure(lake, fake, instance, clock, symbols, overlap_minutes)))
                out["control"].append(measure(control, fake, instance, clock, symbols, 24 * 60))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _paths(cost: Cost) -> str:
    return ", ".join(f"{k.rsplit('/', 1)[-1]} {v}" for k, v in sorted(cost.by_path.items()))


def _steps(cost: Cost) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in sorted(cost.steps.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, nargs="+", default=[2, 50])
    ap.add_argument("--ticks", type=int, default=5)
    ap.add_argument("--refresh-minutes", type=int, default=15)
    ap.add_argument("--overlap-minutes", type=int, default=60)
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        runs = [bench(server, n, args.ticks, args.refresh_minutes, args.overlap_minutes) for n in args.symbols]
    finally:
        server.stop()
    print(f"\nintraday refresh every {args.refresh_minutes} min, re-read overlap {args.overlap_minutes} min "
          f"(control: 1440 min, the daily refresh's), fake Binance on localhost, clock from {NOW:%Y-%m-%d %H:%M}")
    print("\n| symbols | run | wall s | requests | by endpoint | raw rows fetched / inserted | lake snapshots "
          "| catalog +KB | steps (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        f = r["fill"]
        print(f"| {r['n']} | fill to {NOW:%H:%M} | {f.wall_s:.1f} | {f.requests} | {_paths(f)} | "
              f"{f.rows_fetched} / {f.rows_inserted} | {f.snapshots} | {f.catalog_kb:.0f} | {_steps(f)} |")
        for at, c in r["ticks"]:
            print(f"| {r['n']} | tick {at:%H:%M}{' (+liquidation_map)' if 'liquidation_map' in c.steps else ''} | "
                  f"{c.wall_s:.1f} | {c.requests} | {_paths(c)} | {c.rows_fetched} / {c.rows_inserted} | "
                  f"{c.snapshots} | {c.catalog_kb:.0f} | {_steps(c)} |")
        assert f.ok and all(c.ok for _, c in r["ticks"]) and all(c.ok for c in r["control"]), "a run failed"
    print("\n| symbols | mean wall s per tick | mean requests per tick | requests per symbol per tick | "
          "mean wall s, control (1-day overlap) | control / intraday wall | rows fetched per tick vs control |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for r in runs:
        walls = [c.wall_s for _, c in r["ticks"]]
        reqs = [c.requests for _, c in r["ticks"]]
        ctrl = [c.wall_s for c in r["control"]]
        rows = [c.rows_fetched for _, c in r["ticks"]]
        summary[r["n"]] = statistics.mean(walls)
        print(f"| {r['n']} | {statistics.mean(walls):.1f} | {statistics.mean(reqs):.1f} | "
              f"{statistics.mean(reqs) / r['n']:.2f} | {statistics.mean(ctrl):.1f} | "
              f"{statistics.mean(ctrl) / statistics.mean(walls):.2f} | {statistics.mean(rows):.0f} vs "
              f"{statistics.mean(c.rows_fetched for c in r['control']):.0f} |")
    if len(summary) == 2:
        (a, wa), (b, wb) = sorted(summary.items())
        print(f"\n{b} symbols cost {wb / wa:.1f}x the wall time of {a} per tick ({b / a:.0f}x the symbols); "
              f"a day of ticks every {args.refresh_minutes} min: {wb * 1440 / args.refresh_minutes / 60:.0f} min of "
              f"wall time for {b} symbols, {wa * 1440 / args.refresh_minutes / 60:.0f} min for {a}.")


if __name__ == "__main__":
    main()
