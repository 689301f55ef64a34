"""Data quality across venues: a venue whose open-interest change is out of line with the others' is
flagged by time and venue (venue_divergence), from the raw table in SQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb
import polars as pl
import pytest

from qml_pipeline.store import schemas
from qml_pipeline.store.quality import DivergenceConfig, compare_venues, divergent

UTC = timezone.utc
T0 = datetime(2024, 3, 1, tzinfo=UTC)
M5, H = timedelta(minutes=5), timedelta(hours=1)
JUMP = T0 + 30 * H  # OKX's open interest jumps by 10% from this stamp on (e.g. a unit error)


def venue_rows(venue: str, coins: float, jump: float = 1.0, hours: int = 60, skip: tuple = ()) -> pl.DataFrame:
    """5-minute rows growing 0.1% an hour; from JUMP on multiplied by `jump`."""
    stamps = [T0 + i * M5 for i in range(hours * 12) if T0 + i * M5 not in skip]
    df = pl.DataFrame({"event_time": stamps}, schema={"event_time": schemas.TS}).with_columns(
        open_interest=coins * (1.001 ** (pl.int_range(pl.len()) / 12))
        * pl.when(pl.col("event_time") >= JUMP).then(jump).otherwise(1.0))
    return schemas.conform(schemas.OPEN_INTEREST, df.with_columns(
        pl.lit(venue).alias("venue"), pl.lit("BTCUSDT").alias("symbol"), pl.lit(5).alias("period_minutes"),
        (pl.col("open_interest") * 60_000).alias("open_interest_value"),
        (pl.col("event_time") + M5).alias("available_at"), pl.lit(f"{venue}_test").alias("source")))


def compare(*frames: pl.DataFrame, config: DivergenceConfig = DivergenceConfig()) -> pl.DataFrame:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("open_interest", pl.concat(frames).to_arrow())
    return compare_venues(con, schemas.VENUES, config)


def test_the_odd_venue_is_flagged_by_time_venue_and_window():
    compared = compare(venue_rows("binance", 80_000), venue_rows("bybit", 50_000), venue_rows("okx", 20_000, 1.1))
    assert compared.columns == schemas.VENUE_DIVERGENCE.names
    flagged = divergent(compared)
    # OKX alone, over 1h at the jump's hour, over 24h for the 24 hours that include it
    assert flagged["venue"].unique().to_list() == ["okx"]
    one_hour = flagged.filter(pl.col("window_hours") == 1)
    assert one_hour["event_time"].to_list() == [JUMP]
    row = one_hour.row(0, named=True)
    assert row["change_pct"] == pytest.approx((1.1 * 1.001 - 1) * 100, rel=1e-6)
    assert row["median_pct"] == pytest.approx(0.1, rel=1e-3)
    assert row["deviation_points"] == pytest.approx(row["change_pct"] - row["median_pct"])
    assert row["threshold_points"] == 3.0 and row["other_venues"] == "binance,bybit"
    day = flagged.filter(pl.col("window_hours") == 24)["event_time"]
    assert day.min() == JUMP and day.max() == JUMP + 23 * H and day.len() == 24
    # what was compared: every hour with a change for two or more venues, per venue and window
    assert compared.filter((pl.col("venue") == "binance") & (pl.col("window_hours") == 1)).height == 59
    assert compared.filter(pl.col("venue") == "binance")["deviation_points"].abs().max() < 0.01


def test_two_venues_are_both_flagged_and_thresholds_are_configurable():
    flagged = divergent(compare(venue_rows("binance", 80_000), venue_rows("okx", 20_000, 1.1)))
    at_jump = flagged.filter((pl.col("event_time") == JUMP) & (pl.col("window_hours") == 1)).sort("venue")
    assert at_jump["venue"].to_list() == ["binance", "okx"]  # two venues cannot tell which one is wrong
    assert at_jump["deviation_points"].sum() == pytest.approx(0.0, abs=1e-9)
    loose = DivergenceConfig(((1, 20.0), (24, 20.0)))
    assert divergent(compare(venue_rows("binance", 80_000), venue_rows("okx", 20_000, 1.1), config=loose)).is_empty()


def test_nothing_is_compared_with_one_venue_or_across_a_stale_gap():
    assert compare(venue_rows("binance", 80_000)).is_empty()
    gap = tuple(T0 + 10 * H + i * M5 for i in range(40))  # bybit silent 10:00 .. 13:15: stale after 2 h
    compared = compare(venue_rows("binance", 80_000), venue_rows("bybit", 50_000, skip=gap))
    bybit_hours = compared.filter((pl.col("venue") == "bybit") & (pl.col("window_hours") == 1))["event_time"]
    assert T0 + 11 * H in bybit_hours.to_list()  # 09:55 is fresh at 10:00 and 11:00 (a flat hour)
    # over 2 h old at 12:00 and 13:00; 14:00 has no value an hour before: not compared, not flagged
    assert not {T0 + 12 * H, T0 + 13 * H, T0 + 14 * H} & set(bybit_hours.to_list())
    assert T0 + 15 * H in bybit_hours.to_list()
    assert divergent(compared).filter(pl.col("window_hours") == 1).height == 0
