"""data_quality_report on hand-made tables with known defects, and on the bundled real sample."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pytest

from qml_pipeline.store import schemas
from qml_pipeline.store.quality import DATA_QUALITY, data_quality_markdown, data_quality_report
from qml_pipeline.sources.sample import read_hourly_oi_csv

UTC = timezone.utc
T0 = datetime(2024, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
M5 = timedelta(minutes=5)
NOW = datetime(2024, 1, 10, tzinfo=UTC)
SAMPLE_OI = Path(__file__).resolve().parents[2] / "sample_data" / "open_interest" / \
    "BTCUSDT-binance-oi-1h-2021-12_2024-12.csv"


def connect(**tables: pl.DataFrame) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table in (schemas.FUNDING_RATES, schemas.OPEN_INTEREST, schemas.KLINES):
        con.register(table.name, schemas.conform(table, tables[table.name]) if table.name in tables
                     else schemas.empty(table))
    return con


def funding(times: list[datetime], hours: list[int], symbol: str = "BTCUSDT") -> pl.DataFrame:
    return pl.DataFrame({
        "symbol": symbol, "event_time": times, "funding_rate": [0.0001] * len(times),
        "funding_interval_hours": hours, "exchange_time": times, "available_at": times, "source": "test",
    }, schema_overrides={"event_time": schemas.TS, "exchange_time": schemas.TS, "available_at": schemas.TS})


def oi(times: list[datetime], values: list[float] | None = None, source: str = "test", period: int = 5,
       symbol: str = "BTCUSDT") -> pl.DataFrame:
    values = values or [100.0] * len(times)
    return pl.DataFrame({
        "symbol": symbol, "event_time": times, "period_minutes": period, "open_interest": values,
        "open_interest_value": [v * 50.0 for v in values], "available_at": [t + M5 for t in times],
        "source": source,
    }, schema_overrides={"event_time": schemas.TS, "available_at": schemas.TS})


def klines(opens: list[datetime], interval: str = "1h", step: timedelta = H) -> pl.DataFrame:
    n = len(opens)
    return pl.DataFrame({
        "symbol": "BTCUSDT", "interval": interval, "event_time": opens, "close_time": [t + step for t in opens],
        "open": [10.0] * n, "high": [11.0] * n, "low": [9.0] * n, "close": [10.5] * n,
        "volume": [0.0] + [5.0] * (n - 1), "available_at": [t + step for t in opens], "source": "test",
    }, schema_overrides={"event_time": schemas.TS, "close_time": schemas.TS, "available_at": schemas.TS})


def row(df: pl.DataFrame, table: str, symbol: str = "BTCUSDT", series: str = "") -> dict:
    hit = df.filter((pl.col("table_name") == table) & (pl.col("symbol") == symbol) & (pl.col("series") == series))
    assert hit.height == 1, hit
    return hit.row(0, named=True)


def test_funding_missing_settlements_follow_each_rows_interval():
    # 8h settlements with one missing (16:00 of day 0), then a switch to 4h with one missing.
    eight = [T0, T0 + 8 * H, T0 + 24 * H, T0 + 32 * H]
    four = [T0 + 36 * H, T0 + 40 * H, T0 + 48 * H, T0 + 52 * H]
    df = data_quality_report(connect(funding_rates=funding(eight + four, [8] * 4 + [4] * 4)), now=NOW)
    r = row(df, "funding_rates")
    assert r["rows"] == 8 and r["missing_rows"] == 2 and r["expected_rows"] == 10
    assert r["gaps"] == 2 and r["longest_gap_minutes"] == 8 * 60
    assert r["longest_gap_start"] == T0 + 16 * H
    assert r["zero_rows"] is None and r["duplicate_rows"] == 0
    assert r["completeness"] == pytest.approx(0.8)
    assert r["freshness_minutes"] == pytest.approx((NOW - (T0 + 52 * H)).total_seconds() / 60)
    assert df.schema == DATA_QUALITY.polars_schema


def test_open_interest_duplicates_zeros_gaps_and_threshold():
    times = [T0 + i * M5 for i in range(48)]
    holes = {10, 11, 12, 30}  # a 15-minute hole and a 5-minute hole
    kept = [t for i, t in enumerate(times) if i not in holes]
    values = [0.0 if i in (3, 4) else 100.0 for i in range(len(kept))]
    frame = pl.concat([oi(kept, values), oi(kept[:2])])  # two duplicated rows
    con = connect(open_interest=frame)
    r = row(data_quality_report(con, now=NOW, gap_threshold=timedelta(minutes=10)), "open_interest")
    assert r["rows"] == 46 and r["duplicate_rows"] == 2
    assert r["missing_rows"] == 4 and r["expected_rows"] == 48
    assert r["zero_rows"] == 2 and r["zero_value_rows"] == 2
    assert r["expected_step_minutes"] == 5
    assert r["gaps"] == 1  # only the 15-minute hole reaches the 10-minute threshold
    assert r["longest_gap_minutes"] == 15 and r["longest_gap_start"] == times[10]
    r = row(data_quality_report(con, now=NOW, gap_threshold=timedelta(minutes=5)), "open_interest")
    assert r["gaps"] == 2


def test_open_interest_cadence_is_modal_per_source():
    # An hourly source (as the bundled sample) followed by a 5-minute source: neither is "missing"
    # rows against the other's cadence; one hourly row is missing.
    hourly = [T0 + i * H - M5 for i in range(1, 25) if i != 7]
    five = [T0 + 24 * H + i * M5 for i in range(36)]
    con = connect(open_interest=pl.concat([oi(hourly, source="sample_archive_1h"), oi(five, source="binance_rest")]))
    r = row(data_quality_report(con, now=NOW), "open_interest")
    assert r["sources"] == "binance_rest,sample_archive_1h"
    assert r["missing_rows"] == 1 and r["rows"] == 23 + 36


def test_klines_per_interval_and_zero_volume():
    opens = [T0 + i * H for i in range(30) if i not in (5, 6, 7)]
    four = [T0 + i * 4 * H for i in range(10)]
    con = connect(klines=pl.concat([klines(opens), klines(four, "4h", 4 * H)]))
    df = data_quality_report(con, now=NOW)
    one = row(df, "klines", series="1h")
    assert one["missing_rows"] == 3 and one["gaps"] == 1 and one["longest_gap_minutes"] == 180
    assert one["zero_value_rows"] == 1 and one["zero_rows"] == 0
    four_h = row(df, "klines", series="4h")
    assert four_h["missing_rows"] == 0 and four_h["expected_step_minutes"] == 240
    assert four_h["longest_gap_minutes"] is None and four_h["longest_gap_start"] is None


def test_empty_warehouse_gives_empty_report_and_markdown():
    df = data_quality_report(connect(), now=NOW)
    assert df.height == 0 and df.schema == DATA_QUALITY.polars_schema
    assert "no rows" in data_quality_markdown(df)


def test_real_sample_open_interest_hole_and_zero_rows():
    df = read_hourly_oi_csv(SAMPLE_OI, "BTCUSDT")
    now = datetime(2024, 12, 6, tzinfo=UTC)
    report = data_quality_report(connect(open_interest=df), now=now)
    r = row(report, "open_interest")
    assert r["rows"] == 26_413 and r["sources"] == "sample_archive_1h"
    assert r["expected_step_minutes"] == 60
    # hour_end 2024-02-16 15:00 .. 2024-02-17 00:00 is absent: 10 rows, stamped hour_end - 5 min
    assert r["missing_rows"] == 10 and r["gaps"] == 1
    assert r["longest_gap_minutes"] == 600
    assert r["longest_gap_start"] == datetime(2024, 2, 16, 14, 55, tzinfo=UTC)
    assert r["zero_rows"] == 39 and r["zero_value_rows"] == 40  # plus 2023-04-10 09:00 (value only)
    assert r["last_available_at"] == datetime(2024, 12, 5, 23, tzinfo=UTC)
    assert r["freshness_minutes"] == 60
    md = data_quality_markdown(report)
    assert "| open_interest | binance | BTCUSDT |" in md and "2024-02-16 14:55" in md and "10.0 h" in md


def test_series_rules_name_each_problem_and_judge_freshness_only_for_live_sources():
    from datetime import timedelta

    from qml_pipeline.store.quality import SeriesRules, series_problems

    rows = pl.DataFrame({"table_name": ["klines", "klines"], "series": ["1h", "4h"], "completeness": [0.999, 0.95],
                         "duplicate_rows": [0, 2], "freshness_minutes": [30.0, 27 * 60.0]})
    assert series_problems(rows, live=False) == ["4h only 95.00% complete", "2 duplicate rows"]
    assert series_problems(rows, live=True)[-1] == "stale: newest row is 1 day, 3:00:00 old"
    lenient = SeriesRules(min_completeness=0.9, max_age=timedelta(days=2))
    assert series_problems(rows, live=True, rules=lenient) == ["2 duplicate rows"]
