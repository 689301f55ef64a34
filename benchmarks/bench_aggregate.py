"""Benchmark of the aggregate across venues and its features on synthetic data (not a test).

    .venv/bin/python benchmarks/bench_aggregate.py                      # 3 venues, 10 symbols, 1 year, 20k trades
    .venv/bin/python benchmarks/bench_aggregate.py --symbols 2 --years 0.25 --trades 2000

Prints, measured in one run on the same data: the wall time of building open_interest_aggregate (what
the asset runs, every column) and of the features across venues for the trades, each as a ratio to one
bare DuckDB ASOF JOIN of every venue's OI at the aggregate's instants (the least any point-in-time
aggregate must do), and the rows produced.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qml_pipeline.features.aggregate import STEP_MS, aggregate_features, build_open_interest_aggregate

START = "2023-01-01"
VENUES = ("binance", "bybit", "okx")
RUNS = 3


def generate(con: duckdb.DuckDBPyConnection, n_symbols: int, years: float, n_trades: int) -> None:
    n5 = int(years * 365 * 288)
    venues = ", ".join(f"('{v}', {i})" for i, v in enumerate(VENUES))
    con.execute(f"""
        CREATE TABLE open_interest AS
        SELECT v.venue, 'S' || lpad(s::VARCHAR, 3, '0') AS symbol,
               TIMESTAMPTZ '{START}' + to_minutes(5 * i) AS event_time, 5 AS period_minutes,
               1e4 * (1 + s) * (1 + k) * (1.5 + sin(i / 5000.0 + s + k) * 0.4) AS open_interest,
               1e4 * (1 + s) * (1 + k) * (1.5 + sin(i / 5000.0 + s + k) * 0.4) * 30000 AS open_interest_value,
               TIMESTAMPTZ '{START}' + to_minutes(5 * i + 5) AS available_at, 0 AS revision
        FROM (VALUES {venues}) v(venue, k), range({n_symbols}) a(s), range({n5}) b(i)
        WHERE hash(s, i, k) % 300 <> 0                                      -- scattered gaps
    """)
    con.execute(f"""
        CREATE TABLE funding_rates AS
        SELECT v.venue, 'S' || lpad(s::VARCHAR, 3, '0') AS symbol,
               TIMESTAMPTZ '{START}' + to_hours(8 * i) AS event_time, 0.0001 * (1 + k) AS funding_rate,
               8 AS funding_interval_hours, TIMESTAMPTZ '{START}' + to_hours(8 * i) AS available_at, 0 AS revision
        FROM (VALUES {venues}) v(venue, k), range({n_symbols}) a(s), range({int(years * 365 * 3)}) b(i)
    """)
    con.execute(f"""
        CREATE TABLE trades AS
        SELECT 't' || i AS trade_id, 'S' || lpad((i % {n_symbols})::VARCHAR, 3, '0') AS symbol,
               TIMESTAMPTZ '{START}' + to_minutes(60 * (hash(i) % {int(years * 365 * 24)})::BIGINT) AS decision_time
        FROM range({n_trades}) t(i)
    """)


BARE_ASOF = f"""
WITH instants AS (
    SELECT symbol, venue, unnest(range(min(epoch_ms(available_at)) // {STEP_MS} * {STEP_MS},
                                       max(epoch_ms(available_at)) + 1, {STEP_MS})) AS t
    FROM open_interest GROUP BY symbol, venue
)
SELECT count(o.open_interest_value) FROM instants i
ASOF LEFT JOIN open_interest o ON o.symbol = i.symbol AND o.venue = i.venue AND epoch_ms(o.available_at) <= i.t
"""


def best(fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(RUNS):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--years", type=float, default=1.0)
    parser.add_argument("--trades", type=int, default=20_000)
    args = parser.parse_args()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET asof_loop_join_threshold = 0")
    generate(con, args.symbols, args.years, args.trades)
    raw = con.execute("SELECT count(*) FROM open_interest").fetchone()[0]
    bare_s, _ = best(lambda: con.execute(BARE_ASOF).fetchone())
    until = datetime(2100, 1, 1, tzinfo=timezone.utc)
    agg_s, agg = best(lambda: build_open_interest_aggregate(con, VENUES, until=until))
    con.register("open_interest_aggregate", agg.to_arrow())
    feat_s, feats = best(lambda: aggregate_features(con, VENUES))
    print(f"{raw:,} OI rows ({len(VENUES)} venues x {args.symbols} symbols x {args.years} years), "
          f"{args.trades:,} trades; best of {RUNS}")
    print(f"bare ASOF lookup of every venue at every 5-minute instant: {bare_s:.2f} s")
    print(f"open_interest_aggregate: {agg.height:,} rows in {agg_s:.2f} s ({agg_s / bare_s:.2f}x the bare lookup)")
    print(f"features across venues: {feats.height:,} trades in {feat_s:.2f} s ({feat_s / bare_s:.2f}x the bare lookup)")


if __name__ == "__main__":
    main()
