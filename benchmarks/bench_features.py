"""Benchmark of the `trade_context_features` asset's own function on synthetic data (not a test).

    .venv/bin/python benchmarks/bench_features.py                    # 100k trades, 50 symbols, 4 years
    .venv/bin/python benchmarks/bench_features.py --trades 100000 1000000 --runs 3 1   # + 1M: a few minutes
    .venv/bin/python benchmarks/bench_features.py --trades 2000 --symbols 4 --years 0.5   # quick look
    .venv/bin/python benchmarks/bench_features.py --messy            # 1% of OI rows published out of order

Stages, each run alone in a fresh child process so one stage's memory never hides another's:
- `bare`: one DuckDB ASOF JOIN (the OI row published last before each trade's decision, no dedup,
  staleness or zero handling), the yardstick;
- `asset`: `context_features(con)`, what the asset runs: every column of TRADE_CONTEXT_FEATURES (the
  SQL features, the estimated liquidation map's nearest cluster at each decision, realised Coinglass
  liquidations).
The stages are interleaved round by round (best time of the rounds kept: the machine is shared).
Peak RSS is the child's kernel high-water mark (VmHWM): Python, DuckDB and the stage, nothing
else. Printed: time and peak per stage, the ratio asset / bare per trade count, and
how the asset's peak grows with the number of trades.

The synthetic data is written once, by DuckDB SQL, into a DuckDB file in a temporary directory
(--keep DIR keeps it); a stage sees it through a function of `STORAGES` (--storage): `duckdb`,
`connect_synthetic`, an in-memory DuckDB whose views name the tables as Warehouse.connect() does.
`STAGES` take any such connection, so timing the same stages on other storage (DuckLake, plain
Parquet) is one more entry in `STORAGES` that copies the file there and opens it.

The pandas merge_asof comparison of earlier versions is gone: it timed build_trade_context_features
(not the asset) at 159 s per run; tests/features/test_features.py checks the SQL against a reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qml_pipeline.features.context import DUCKDB_MEMORY_LIMIT, context_features  # noqa: E402
from qml_pipeline.features.point_in_time import OI_LAG_CONSTANT_SQL  # noqa: E402
from qml_pipeline.store import schemas  # noqa: E402

D = 86_400_000
START = "2021-01-01"
MARKET_TABLES = ("open_interest", "funding_rates", "klines", "liquidations")


# ------------------------------------------------------------------ synthetic data

def create_empty(con: duckdb.DuckDBPyConnection, table: schemas.Table, name: str | None = None) -> None:
    cols = ", ".join(f'"{c.name}" {c.duckdb_type}' for c in table.columns)
    con.execute(f'CREATE TABLE "{name or table.name}" ({cols})')


def generate_market(con: duckdb.DuckDBPyConnection, n_symbols: int, years: float, messy: bool = False) -> None:
    """5-minute OI with scattered gaps and zero rows, funding at 8h/4h/1h, 1h klines, 4h Coinglass buckets."""
    n5 = int(years * 365 * 288)
    n1h = n5 // 12
    for t in (schemas.OPEN_INTEREST, schemas.FUNDING_RATES, schemas.KLINES, schemas.LIQUIDATIONS):
        create_empty(con, t)
    con.execute(f"""
        INSERT INTO open_interest BY NAME
        SELECT 'S' || lpad(s::VARCHAR, 3, '0') AS symbol,
               TIMESTAMPTZ '{START}' + to_minutes(5 * i) AS event_time, 5 AS period_minutes,
               CASE WHEN hash(s, i) % 2000 = 0 THEN 0.0
                    ELSE 1e5 * (1 + s) * (1.5 + sin(i / 5000.0 + s) * 0.4 + (hash(i, s) % 1000)::INTEGER / 1e5) END
                   AS open_interest,
               TIMESTAMPTZ '{START}' + to_minutes(5 * i + 5)
                   + CASE WHEN {messy} AND hash(s, i, 3) % 100 = 0 THEN INTERVAL 7 MINUTE ELSE INTERVAL 0 MINUTE END
                   AS available_at,
               'synthetic' AS source, 'binance' AS venue, 0 AS revision
        FROM range({n_symbols}) a(s), range({n5}) b(i)
        WHERE hash(s, i, 7) % 500 <> 0                                     -- scattered gaps
        ORDER BY symbol, event_time
    """)
    con.execute(f"""
        INSERT INTO funding_rates BY NAME
        WITH sym AS (SELECT s, CASE WHEN s % 10 = 1 THEN 4 WHEN s % 25 = 2 THEN 1 ELSE 8 END AS h
                     FROM range({n_symbols}) a(s))
        SELECT 'S' || lpad(s::VARCHAR, 3, '0') AS symbol, TIMESTAMPTZ '{START}' + to_hours(h * i) AS event_time,
               round(1e-4 + sin(i / 30.0 + s) * 2e-4 + ((hash(s, i) % 100)::INTEGER - 50) / 1e6, 6) AS funding_rate,
               h::SMALLINT AS funding_interval_hours,
               TIMESTAMPTZ '{START}' + to_hours(h * i) AS available_at, 'synthetic' AS source,
               'binance' AS venue, 0 AS revision
        FROM sym, range(({n1h} // h)::BIGINT) b(i)
        ORDER BY symbol, event_time
    """)
    con.execute(f"""
        INSERT INTO klines BY NAME
        WITH b AS (SELECT s, i, 100 * (1 + s) * (1.5 + sin(i / 400.0 + s) * 0.4) AS c
                   FROM range({n_symbols}) a(s), range({n1h}) b(i))
        SELECT 'S' || lpad(s::VARCHAR, 3, '0') AS symbol, '1h' AS interval,
               TIMESTAMPTZ '{START}' + to_hours(i) AS event_time, TIMESTAMPTZ '{START}' + to_hours(i + 1) AS close_time,
               c * 0.999 AS open, c * 1.004 AS high, c * 0.995 AS low, c AS close, 10.0 + i % 17 AS volume,
               TIMESTAMPTZ '{START}' + to_hours(i + 1) AS available_at, 'synthetic' AS source, 0 AS revision
        FROM b ORDER BY symbol, event_time
    """)
    con.execute(f"""
        INSERT INTO liquidations BY NAME
        SELECT 'S' || lpad(s::VARCHAR, 3, '0') AS symbol, 'Binance' AS exchange, '4h' AS interval,
               TIMESTAMPTZ '{START}' + to_hours(4 * i) AS event_time,
               1e4 * (1 + (hash(s, i, 11) % 1000)::INTEGER) AS long_liquidation_usd,
               1e4 * (1 + (hash(s, i, 12) % 1000)::INTEGER) AS short_liquidation_usd,
               TIMESTAMPTZ '{START}' + to_hours(4 * i + 4) AS available_at, 'synthetic' AS source, 0 AS revision
        FROM range({n_symbols}) a(s), range({n1h // 4}) b(i)
        ORDER BY symbol, event_time
    """)


def generate_trades(con: duckdb.DuckDBPyConnection, n_trades: int, n_symbols: int, years: float) -> str:
    """`n_trades` trades on random symbols at random times after a month of warm-up; returns the table name."""
    name = f"trades_{n_trades}"
    create_empty(con, schemas.TRADES, name)
    span_ms = int(years * 365 * D) - 31 * D
    con.execute(f"""
        INSERT INTO {name} BY NAME
        SELECT 'T' || lpad(i::VARCHAR, 8, '0') AS trade_id,
               'S' || lpad((hash(i, 1) % {n_symbols})::VARCHAR, 3, '0') AS symbol,
               '1h' AS timeframe, CASE WHEN i % 2 = 0 THEN 'BULLISH' ELSE 'BEARISH' END AS direction,
               TIMESTAMPTZ '{START}' + INTERVAL 31 DAY + to_milliseconds((hash(i, 2) % {span_ms})::BIGINT)
                   AS decision_time,
               100.0 AS entry_price, 99.0 AS stop_price, 'NOT_FILLED' AS outcome, 'synthetic' AS source
        FROM range({n_trades}) t(i)
    """)
    return name


def configure(con: duckdb.DuckDBPyConnection, threads: int, memory_limit: str) -> None:
    con.execute(f"SET threads = {threads}; SET memory_limit = '{memory_limit}'; SET TimeZone = 'UTC'")


def connect_synthetic(db: Path, n_trades: int, threads: int, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the generated file attached read-only and a view per table (as
    Warehouse.connect() gives), `trades` being the `n_trades` set."""
    con = duckdb.connect()
    configure(con, threads, memory_limit)
    con.execute(f"ATTACH '{db}' AS synthetic (READ_ONLY)")
    for name in MARKET_TABLES:
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM synthetic.{name}")
    con.execute(f"CREATE VIEW trades AS SELECT * FROM synthetic.trades_{n_trades}")
    return con


def connect_parquet(db: Path, n_trades: int, threads: int, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """Plain Parquet: each table one file sorted by symbol and time (written once beside the generated file),
    read through views over read_parquet."""
    folder = db.parent / "parquet"
    names = (*MARKET_TABLES, f"trades_{n_trades}")
    if not all((folder / f"{n}.parquet").exists() for n in names):
        folder.mkdir(exist_ok=True)
        with duckdb.connect() as con:
            con.execute(f"ATTACH '{db}' AS synthetic (READ_ONLY)")
            for n in names:
                order = " ORDER BY symbol, event_time" if n in MARKET_TABLES else ""
                con.execute(f"COPY (SELECT * FROM synthetic.{n}{order}) TO '{folder / n}.parquet' "
                            "(FORMAT parquet, COMPRESSION zstd)")
    con = duckdb.connect()
    configure(con, threads, memory_limit)
    for n in MARKET_TABLES:
        con.execute(f"CREATE VIEW {n} AS SELECT * FROM read_parquet('{folder / n}.parquet')")
    con.execute(f"CREATE VIEW trades AS SELECT * FROM read_parquet('{folder}/trades_{n_trades}.parquet')")
    return con


def connect_ducklake(db: Path, n_trades: int, threads: int, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """The warehouse as the asset reads it: a DuckLake lake (SQLite catalog, Parquet files partitioned by symbol
    and year) through Warehouse.connect(venue='binance'), the same connection build_context opens. Filled once
    beside the generated file."""
    from qml_pipeline.store.warehouse import Warehouse

    wh = Warehouse(db.parent / "lake")
    trades = f"trades_{n_trades}"
    marker = db.parent / "lake" / f".filled-{trades}"
    if not marker.exists():
        con = wh.connect(read_only=False)
        con.execute(f"ATTACH IF NOT EXISTS '{db}' AS synthetic (READ_ONLY)")
        have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                          "current_database()").fetchall()}
        if not (db.parent / "lake" / ".filled-market").exists():
            for n in MARKET_TABLES:
                con.execute(f"INSERT INTO {n} BY NAME SELECT * FROM synthetic.{n} ORDER BY symbol, event_time")
            (db.parent / "lake" / ".filled-market").touch()
        if trades not in have:
            con.execute(f"CREATE TABLE {trades} AS SELECT * FROM synthetic.{trades}")
        con.close()
        marker.touch()
    con = wh.connect(venue="binance")
    configure(con, threads, memory_limit)
    con.execute(f"CREATE OR REPLACE TEMP VIEW trades AS SELECT * FROM {trades}")
    return con


# How a stage opens the data: (generated DuckDB file, trade count, threads, memory_limit) -> a
# connection with the views trades, open_interest, funding_rates, klines and liquidations.
STORAGES: dict[str, Callable[[Path, int, int, str], duckdb.DuckDBPyConnection]] = {
    "duckdb": connect_synthetic, "parquet": connect_parquet, "ducklake": connect_ducklake}


# ------------------------------------------------------------------ stages

def bare_asof(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The yardstick: one column (OI known at decision time, by available_at) for every trade."""
    return con.sql("""
        SELECT t.trade_id, o.open_interest AS oi FROM trades t
        ASOF LEFT JOIN open_interest o ON o.symbol = t.symbol AND o.available_at <= t.decision_time
    """).pl()


STAGES: dict[str, Callable[[duckdb.DuckDBPyConnection], pl.DataFrame]] = {
    "bare": bare_asof,
    "asset": context_features,
}


def run_stage(args: argparse.Namespace) -> None:
    """Child process: one stage, once; prints a JSON line."""
    con = STORAGES[args.storage](Path(args.db), args.stage_trades, args.threads, args.memory_limit)
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    out = STAGES[args.stage](con)
    seconds = time.perf_counter() - t0
    peak = peak_rss()
    nulls = {c: out[c].null_count() for c in ("oi", "oi_percentile_30d", "atr", "distance_to_liq_cluster",
                                             "realised_long_liq_usd_24h") if c in out.columns}
    print(json.dumps({"seconds": seconds, "peak": peak, "before": before, "rows": out.height,
                      "columns": out.width, "nulls": nulls}))


def peak_rss() -> int:
    """This process's peak resident memory, bytes: the kernel's high-water mark of its address space
    (VmHWM). Not getrusage's ru_maxrss, which a child started by fork+exec inherits from its parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(stage: str, db: Path, n_trades: int, args: argparse.Namespace, storage: str) -> dict:
    cmd = [sys.executable, __file__, "--stage", stage, "--db", str(db), "--stage-trades", str(n_trades),
           "--threads", str(args.threads), "--memory-limit", args.memory_limit, "--storage", storage]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} at {n_trades} trades failed (exit {proc.returncode}; -9 = killed, "
                           f"e.g. out of memory):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trades", type=int, nargs="+", default=[100_000],
                    help="trade counts, each timed against the same market data (e.g. 100000 1000000)")
    ap.add_argument("--runs", type=int, nargs="+", default=[3],
                    help="rounds per trade count (the last repeats), best time kept")
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--years", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default=DUCKDB_MEMORY_LIMIT,
                    help="DuckDB memory_limit (it spills beyond it); default: the asset's")
    ap.add_argument("--messy", action="store_true", help="publish 1%% of OI rows 7 min late (out of order)")
    ap.add_argument("--storage", choices=sorted(STORAGES), nargs="+", default=["duckdb"],
                    help="how the stages read the data; several are timed side by side, round by round "
                         "(e.g. --storage parquet ducklake: the warehouse's DuckLake against plain Parquet)")
    ap.add_argument("--keep", metavar="DIR", help="write the synthetic DuckDB file into DIR and keep it")
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--stage-trades", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        args.storage = args.storage[0]
        run_stage(args)
        return

    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        db = Path(args.keep or tmp) / "synthetic.duckdb"
        db.parent.mkdir(parents=True, exist_ok=True)
        db.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with duckdb.connect(str(db)) as con:
            configure(con, args.threads, args.memory_limit)
            generate_market(con, args.symbols, args.years, args.messy)
            for n in args.trades:
                generate_trades(con, n, args.symbols, args.years)
            sizes = {n: con.sql(f"SELECT count(*) FROM {n}").fetchall()[0][0] for n in MARKET_TABLES}
            lag_constant = con.sql(OI_LAG_CONSTANT_SQL).fetchall()[0][0]
        print(f"data: {args.symbols} symbols x {args.years} years, {sizes} generated in "
              f"{time.perf_counter() - t0:.1f} s ({os.path.getsize(db) / 2**20:.0f} MiB on disk); "
              f"OI publication lag constant per symbol: {'yes' if lag_constant else 'no (out-of-order rows)'}")
        storages = args.storage if args.stage is None else [args.storage]
        print(f"storage {', '.join(storages)}; DuckDB threads={args.threads}, memory_limit={args.memory_limit}; "
              f"load average {os.getloadavg()}")
        results, by_storage = {}, {}
        for i, n in enumerate(args.trades):
            runs = args.runs[min(i, len(args.runs) - 1)]
            got: dict[tuple[str, str], list[dict]] = {(st, s): [] for st in storages for s in STAGES}
            for _ in range(runs):
                for st in storages:
                    for stage in STAGES:
                        got[(st, stage)].append(child(stage, db, n, args, st))
            for st in storages:
                for stage in STAGES:
                    rs = got[(st, stage)]
                    r = rs[-1]
                    times = ", ".join(f"{x['seconds']:.2f}" for x in rs)
                    print(f"{n:>9,} trades  {st:8s} {stage:5s}: best {min(x['seconds'] for x in rs):7.2f} s "
                          f"(runs {times}), peak RSS {gib(max(x['peak'] for x in rs))} (RSS after imports and "
                          f"connect {gib(r['before'])}); {r['rows']} rows x {r['columns']} columns; NULLs {r['nulls']}")
                bare, asset = (min(r["seconds"] for r in got[(st, s)]) for s in ("bare", "asset"))
                peak = max(r["peak"] for r in got[(st, "asset")])
                by_storage[(n, st)] = asset
                print(f"{n:>9,} trades  {st:8s} ratio asset / bare = {asset / bare:.2f}x (goal <= 5x at 100k); "
                      f"asset peak RSS {gib(peak)} (goal < 4 GiB at 100k, < 8 GiB at 1M)")
            if "ducklake" in storages and "parquet" in storages:
                print(f"{n:>9,} trades  the asset on DuckLake / on plain Parquet = "
                      f"{by_storage[(n, 'ducklake')] / by_storage[(n, 'parquet')]:.2f}x (goal <= 1.2x)")
            results[n] = {s: got[(storages[0], s)] for s in STAGES}
        counts = sorted(results)
        for a, b in zip(counts, counts[1:]):
            pa, pb = (max(r["peak"] for r in results[n]["asset"]) for n in (a, b))
            ba, bb = (min(r["before"] for r in results[n]["asset"]) for n in (a, b))
            print(f"asset peak RSS {a:,} -> {b:,} trades (x{b / a:g}): {gib(pa)} -> {gib(pb)} (x{pb / pa:.2f}); "
                  f"above the RSS after imports: {gib(pa - ba)} -> {gib(pb - bb)} (x{(pb - bb) / (pa - ba):.2f}; "
                  f"linear would be x{b / a:g})")


if __name__ == "__main__":
    main()
