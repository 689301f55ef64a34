"""The whole market on one machine: the real Dagster backfill of N synthetic USD-M symbols x Y years from a
local mirror of the public archive, then the daily refresh, and where the time goes.

    .venv/bin/python benchmarks/bench_universe.py --symbols 10,50          # 4 years each
    .venv/bin/python benchmarks/bench_universe.py --symbols 300 --years 4  # the target (long: run it once)
    .venv/bin/python benchmarks/bench_universe.py --symbols 10 --instance postgres   # instance on PostgreSQL

What runs is what users run: the raw assets and their checks (`dagster_project.defs.raw_market_data`),
materialised in process against a DagsterInstance in a fresh DAGSTER_HOME holding the project's
dagster.yaml (SQLite storage; `--instance postgres` puts runs, events and schedules on PostgreSQL from
scripts/postgres.sh), with QML_SOURCE=binance pointed at a local server (benchmarks/universe_market.py)
that serves the mirror and the REST endpoints. The symbols come from the server's exchangeInfo through the
`symbol_universe` sensor; the backfill is one run per chunk of `--symbols-per-run` symbols (a rectangle of
symbol-months); the refresh is exactly the runs the `daily_refresh` schedule requests.

The clock: the backfill runs one day behind real time (source and server alike), so the refresh that
follows finds a day of new data, as the scheduled refresh does.

Printed per size: wall time, rows stored per second, the project's own time (fetch, parse, validate, merge,
measure: `ingest_windows`, and the stored-rows check's read and validation), Dagster's share of the wall time
(everything else: run and step bookkeeping, event-log writes, metadata), and the event-log writes counted
and timed. The mirror is cached (default /tmp/qml-universe-mirror) and extended on later days.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from universe_market import Market, build_mirror, serve, symbol_names  # noqa: E402

UTC = timezone.utc
DAY_S = 86_400.0


@dataclass
class Timers:
    """Seconds spent in the project's own code and in event-log writes, and how many events were written."""

    project_s: float = 0.0
    project_cpu_s: float = 0.0
    by_function: Counter = field(default_factory=Counter)
    calls: int = 0
    events_s: float = 0.0
    events: Counter = field(default_factory=Counter)
    rows_fetched: int = 0

    def reset(self) -> None:
        self.project_s, self.project_cpu_s, self.calls, self.events_s, self.rows_fetched = 0.0, 0.0, 0, 0.0, 0
        self.events, self.by_function = Counter(), Counter()


TIMERS = Timers()


def _timed(fn: Callable, count_rows: bool = False) -> Callable:
    def wrapper(*args, **kwargs):
        t, c = time.perf_counter(), time.process_time()
        try:
            out = fn(*args, **kwargs)
        finally:
            TIMERS.project_s += time.perf_counter() - t
            TIMERS.project_cpu_s += time.process_time() - c
            TIMERS.by_function[fn.__name__] += time.perf_counter() - t
            TIMERS.calls += 1
        if count_rows:
            TIMERS.rows_fetched += sum(r.fetched for r in out)
        return out
    return wrapper


def instrument_project() -> None:
    """Time the project's code inside the raw assets and checks (module attributes the assets call)."""
    import dagster_project.defs.raw_market_data as raw

    raw.ingest_windows = _timed(raw.ingest_windows, count_rows=True)
    raw.stored_contract_failures = _timed(raw.stored_contract_failures)


def instrument_event_log(instance) -> None:
    storage = instance.event_log_storage
    single, batch = storage.store_event, storage.store_event_batch

    def store_event(event):
        t = time.perf_counter()
        try:
            return single(event)
        finally:
            TIMERS.events_s += time.perf_counter() - t
            TIMERS.events[event.dagster_event_type.value if event.dagster_event_type else "log"] += 1

    def store_event_batch(events):
        t = time.perf_counter()
        try:
            return batch(events)
        finally:
            TIMERS.events_s += time.perf_counter() - t
            for e in events:
                TIMERS.events[e.dagster_event_type.value if e.dagster_event_type else "log"] += 1

    storage.store_event, storage.store_event_batch = store_event, store_event_batch


# ---------------------------------------------------------------------------------------------- Dagster

def dagster_home(path: Path, instance_kind: str, pg_conninfo: str) -> Path:
    """A fresh DAGSTER_HOME with the project's dagster.yaml (plus PostgreSQL storage when asked)."""
    path.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "dagster.yaml").read_text()
    if instance_kind == "postgres":
        params = dict(p.split("=", 1) for p in pg_conninfo.split())
        text += ("\nstorage:\n  postgres:\n    postgres_db:\n"
                 f"      username: {params.get('user', 'qml')}\n      password: \"\"\n"
                 f"      hostname: {params.get('host', '127.0.0.1')}\n      db_name: {params['dbname']}\n"
                 f"      port: {params.get('port', 5432)}\n"
                 "      scheme: postgresql+psycopg2\n")
    (path / "dagster.yaml").write_text(text)
    return path


def fresh_postgres_db(conninfo: str, name: str) -> str:
    """A new empty database `name` on the server of `conninfo`; the conninfo for it."""
    import psycopg2

    con = psycopg2.connect(conninfo)
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    con.close()
    params = dict(p.split("=", 1) for p in conninfo.split())
    params["dbname"] = name
    return " ".join(f"{k}={v}" for k, v in params.items())


@dataclass
class Phase:
    name: str
    runs: int
    wall_s: float
    rows_stored: int
    rows_fetched: int
    project_s: float
    events_s: float
    events: Counter
    failed: list[str]
    by_function: Counter = field(default_factory=Counter)
    cpu_s: float = 0.0          # this process's CPU seconds (all threads) during the phase
    project_cpu_s: float = 0.0

    @property
    def dagster_share(self) -> float:
        return max(0.0, self.wall_s - self.project_s) / self.wall_s if self.wall_s else 0.0

    @property
    def dagster_cpu_share(self) -> float:
        return max(0.0, self.cpu_s - self.project_cpu_s) / self.cpu_s if self.cpu_s else 0.0

    def row(self, symbols: int) -> str:
        ev = sum(self.events.values())
        return (f"| {symbols} | {self.name} | {self.runs} | {self.wall_s:,.1f} | {self.cpu_s:,.1f} | {self.rows_stored:,} | "
                f"{self.rows_fetched:,} | {self.rows_stored / self.wall_s:,.0f} | {self.project_s:,.1f} | "
                f"{self.dagster_share:.1%} | {self.dagster_cpu_share:.1%} | {ev:,} | {self.events_s:,.1f} |")


HEADER = ("| symbols | phase | runs | wall s | CPU s | rows stored | rows fetched | rows stored / s | project code s "
          "| Dagster share (wall) | Dagster share (CPU) | events written | event-log write s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def run_requests(instance, requests, assets, resources, label: str) -> tuple[float, list[str]]:
    import dagster as dg

    failed = []
    t0 = time.perf_counter()
    for k, request in enumerate(requests, 1):
        t = time.perf_counter()
        result = dg.materialize(assets, instance=instance, resources=resources, tags=request.tags,
                                raise_on_error=False,
                                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
        if not result.success:
            failed.append(request.tags["dagster/asset_partition_range_start"])
            for event in result.all_events:
                if event.is_failure:
                    print(f"  FAILED {event.message[:400]}", file=sys.stderr)
        print(f"  {label} run {k}/{len(requests)} "
              f"({request.tags['dagster/asset_partition_range_start']} .. "
              f"{request.tags['dagster/asset_partition_range_end']}): {time.perf_counter() - t:.1f} s", flush=True)
    return time.perf_counter() - t0, failed


def stored_rows(wh) -> int:
    return int(wh.query("SELECT (SELECT count(*) FROM funding_rates) + (SELECT count(*) FROM open_interest) "
                        "+ (SELECT count(*) FROM klines) AS n")["n"][0])


def check_partition_metadata(instance, wh, symbols: list[str], years: list[str]) -> list[str]:
    """Compare each sampled partition's latest materialisation metadata with what the lake holds for it."""
    import dagster as dg

    from dagster_project.partitions import partition_months
    from qml_pipeline.config import Settings

    problems = []
    for symbol in symbols:
        for year in years:
            key = f"{symbol}|{year}"
            months = partition_months(year, Settings().start_date)
            for table in ("open_interest", "klines", "funding_rates"):
                records = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey(table), asset_partitions=[key]), limit=1).records
                if not records:
                    problems.append(f"{table} {key}: no materialisation")
                    continue
                meta = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
                start, end = months[0], datetime(int(year) + 1, 1, 1, tzinfo=UTC)
                n = int(wh.query(f"SELECT count(*) AS n FROM {table} WHERE symbol = ? AND event_time >= ? "
                                 "AND event_time < ? AND revision = 0", [symbol, start, end])["n"][0])
                if meta.get("dagster/row_count") != n:
                    problems.append(f"{table} {key}: metadata row_count {meta.get('dagster/row_count')} != stored {n}")
    return problems


def measure_size(n: int, args: argparse.Namespace, market: Market, work: Path) -> list[Phase]:
    """Backfill n symbols, then the daily refresh; one DAGSTER_HOME and warehouse for this size."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    from dagster_project.defs.raw_market_data import RAW_ASSETS, RAW_CHECKS
    from dagster_project.defs.schedules import refresh_requests
    from dagster_project.defs.universe import symbol_universe
    from dagster_project.partitions import SYMBOLS, range_tags
    from dagster_project.resources import MarketDataResource, WarehouseResource
    from qml_pipeline.store.warehouse import Warehouse
    from qml_pipeline.timeutil import utc_now

    class LaggedMarket(MarketDataResource):
        """The configured Binance source with its clock `clock_lag_seconds` behind real time."""

        clock_lag_seconds: float = 0.0

        def open(self, log, cache_dir, venue="binance"):
            source = super().open(log, cache_dir, venue)
            lag = timedelta(seconds=self.clock_lag_seconds)
            source.now = source.rest.now = source.archive.now = lambda: utc_now() - lag
            return source

    size_market = Market(market.symbols[:n], market.history_start)
    server = serve(Path(args.mirror), size_market, lag_seconds=DAY_S)
    try:
        home = work / f"dagster_home_{n}"
        conninfo = fresh_postgres_db(args.pg_conninfo, f"qml_bench_{n}") if args.instance == "postgres" else ""
        dagster_home(home, args.instance, conninfo)
        instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
        instrument_event_log(instance)
        root = work / f"warehouse_{n}"
        archive_url = server.url if args.archive == "http" else Path(args.mirror).resolve().as_uri()
        market_resource = LaggedMarket(source="binance", universe="binance_usdm", binance_fapi_url=server.url,
                                       binance_archive_url=archive_url, oi_period="5m", clock_lag_seconds=DAY_S)
        resources = {"warehouse": WarehouseResource(root=str(root)), "market": market_resource}

        # the universe, from the server's exchangeInfo, through the sensor
        result = symbol_universe(dg.build_sensor_context(instance=instance, resources=resources))
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        symbols = instance.get_dynamic_partitions(SYMBOLS.name)
        assert len(symbols) == n, (len(symbols), n)

        assets = [*RAW_ASSETS, *RAW_CHECKS]
        phases = []
        wh = Warehouse(root)

        # the backfill: history start .. yesterday, a chunk of symbols per run
        first_day = market.history_start.date().isoformat()
        yesterday = (datetime.now(UTC) - timedelta(seconds=DAY_S)).date().isoformat()
        requests = refresh_requests(yesterday, symbols, args.symbols_per_run)
        for r in requests:  # the same chunks, over the whole history
            start = r.tags["dagster/asset_partition_range_start"].split("|")[0]
            r.tags["dagster/asset_partition_range_start"] = range_tags(start, first_day, first_day)[
                "dagster/asset_partition_range_start"]
        TIMERS.reset()
        cpu = time.process_time()
        wall, failed = run_requests(instance, requests, assets, resources, f"backfill {n}")
        phases.append(Phase("backfill", len(requests), wall, stored_rows(wh), TIMERS.rows_fetched, TIMERS.project_s,
                            TIMERS.events_s, TIMERS.events, failed, TIMERS.by_function, time.process_time() - cpu,
                            TIMERS.project_cpu_s))

        # the daily refresh at real time: the schedule's own requests
        server.lag.value = 0.0
        refresh_resources = {**resources, "market": LaggedMarket(
            source="binance", universe="binance_usdm", binance_fapi_url=server.url, binance_archive_url=archive_url,
            oi_period="5m", clock_lag_seconds=0.0)}
        today = datetime.now(UTC).date().isoformat()
        before = stored_rows(wh)
        requests = refresh_requests(today, symbols, args.refresh_symbols_per_run)
        TIMERS.reset()
        cpu = time.process_time()
        wall, failed = run_requests(instance, requests, assets, refresh_resources, f"refresh {n}")
        cpu = time.process_time() - cpu
        after = stored_rows(wh)
        phases.append(Phase("daily refresh", len(requests), wall, after - before, TIMERS.rows_fetched,
                            TIMERS.project_s, TIMERS.events_s, TIMERS.events, failed, TIMERS.by_function, cpu,
                            TIMERS.project_cpu_s))
        for p in phases:
            print(f"  {p.name}: project code by function (s): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in p.by_function.most_common()))

        years = sorted({first_day[:4], yesterday[:4], today[:4]})
        problems = check_partition_metadata(instance, wh, symbols[:2] + symbols[-1:], years)
        print(f"  per-partition metadata vs the lake ({len(years)} years x 3 symbols x 3 tables): "
              + ("all equal" if not problems else "; ".join(problems[:10])))
        print(f"  events by type (refresh): {dict(TIMERS.events.most_common(8))}")
        return phases
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", default="10,50", help="comma-separated universe sizes, e.g. 10,50,300")
    ap.add_argument("--years", type=float, default=4.0)
    ap.add_argument("--mirror", default="/tmp/qml-universe-mirror", help="the archive mirror (cached)")
    ap.add_argument("--work", default="", help="where DAGSTER_HOME and the warehouses go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--symbols-per-run", type=int, default=50, help="backfill: symbols per run")
    ap.add_argument("--refresh-symbols-per-run", type=int, default=0,
                    help="daily refresh: symbols per run (default: QML_REFRESH_SYMBOLS_PER_RUN)")
    ap.add_argument("--archive", choices=("file", "http"), default="file",
                    help="read the mirror in place (file:// URL) or through the local HTTP server")
    ap.add_argument("--instance", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--pg-conninfo", default="", help="default: bash scripts/postgres.sh start")
    args = ap.parse_args()

    sizes = [int(s) for s in args.symbols.split(",")]
    today = datetime.now(UTC).date()
    months_back = round(args.years * 12)
    y, m = today.year, today.month - months_back
    while m < 1:
        y, m = y - 1, m + 12
    history_start = datetime(y, m, 1, tzinfo=UTC)
    market = Market(tuple(symbol_names(max(sizes))), history_start)
    if args.instance == "postgres" and not args.pg_conninfo:
        import subprocess

        args.pg_conninfo = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start"], check=True,
                                          capture_output=True, text=True).stdout.strip()

    t = time.perf_counter()
    written = build_mirror(Path(args.mirror), market, today - timedelta(days=1))
    print(f"mirror {args.mirror}: {max(sizes)} symbols from {history_start:%Y-%m-%d} to {today - timedelta(days=1)}; "
          f"{written:,} files written now in {time.perf_counter() - t:.1f} s (the rest cached)", flush=True)

    work = Path(args.work or tempfile.mkdtemp(prefix="qml-universe-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update({"QML_START_DATE": history_start.date().isoformat(), "QML_SOURCE": "binance",
                       "QML_WAREHOUSE_DIR": str(work / "warehouse"), "DAGSTER_HOME": str(work / "dagster_home")})
    if args.refresh_symbols_per_run:
        os.environ["QML_REFRESH_SYMBOLS_PER_RUN"] = str(args.refresh_symbols_per_run)
    from dagster_project.resources import default_resources

    args.refresh_symbols_per_run = default_resources()["refresh"].refresh_symbols_per_run
    instrument_project()
    import logging

    logging.getLogger("qml_pipeline").setLevel(logging.WARNING)

    print(f"instance: {args.instance}; archive mirror read via {args.archive}; backfill {args.symbols_per_run} symbols per run; refresh "
          f"{args.refresh_symbols_per_run} per run; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}\n")
    results = []
    try:
        for n in sizes:
            results.append((n, measure_size(n, args, market, work)))
            print(HEADER)
            for size, phases in results:
                for p in phases:
                    print(p.row(size))
            print(flush=True)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    for size, phases in results:
        for p in phases:
            if p.failed:
                print(f"{size} symbols {p.name}: FAILED runs {p.failed}")


if __name__ == "__main__":
    main()
