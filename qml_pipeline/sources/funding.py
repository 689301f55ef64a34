"""Funding settlements: snapping served times to the settlement grid, and the interval in force."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from qml_pipeline.store.schemas import FUNDING_INTERVALS_HOURS

# Binance serves fundingTime with millisecond jitter (08:00:00.005, 07:59:59.998); anything
# further from the hourly grid than this is not jitter and is refused.
FUNDING_SNAP_TOLERANCE = timedelta(minutes=5)
# How far before a range a reader fetches so that the range's first settlement has a predecessor
# (its interval is the gap to it): the longest interval plus the snap tolerance.
FUNDING_LOOKBACK_MS = max(FUNDING_INTERVALS_HOURS) * 3_600_000 + int(FUNDING_SNAP_TOLERANCE.total_seconds() * 1000)


class FundingTimeError(ValueError):
    """A settlement time too far from the grid to be jitter."""


def snap_funding_times(df: pl.DataFrame) -> pl.DataFrame:
    """Add `event_time`: `exchange_time` rounded to the whole hour (Binance's settlement grid).

    Raises if a time lies further than a few minutes from the grid: that is not jitter.
    """
    snapped = df.with_columns(pl.col("exchange_time").dt.round("1h").alias("event_time"))
    off = snapped.filter((pl.col("exchange_time") - pl.col("event_time")).abs() > FUNDING_SNAP_TOLERANCE)
    if off.height:
        minutes = FUNDING_SNAP_TOLERANCE.total_seconds() / 60
        raise FundingTimeError(
            f"{off.height} funding time(s) lie more than {minutes:g} minutes from the hourly settlement "
            f"grid, first {off['exchange_time'][0]}: not millisecond jitter; refusing to snap them")
    return snapped.unique("event_time", keep="last").sort("event_time")


def with_funding_intervals(df: pl.DataFrame, first_interval_hours: int | None = None) -> pl.DataFrame:
    """Add `funding_interval_hours`: the gap to the previous settlement, or to the next one for the
    first row (`first_interval_hours` when given). Gaps that are not a valid interval
    (`FUNDING_INTERVALS_HOURS`; longer gaps are missing settlements) take the previous valid one."""
    gap_prev = (pl.col("event_time") - pl.col("event_time").shift(1)).dt.total_hours()
    gap_next = (pl.col("event_time").shift(-1) - pl.col("event_time")).dt.total_hours()
    valid = list(FUNDING_INTERVALS_HOURS)
    first = pl.lit(first_interval_hours) if first_interval_hours else gap_next
    return df.with_columns(
        pl.when(gap_prev.is_in(valid)).then(gap_prev)
        .when(pl.int_range(pl.len()) == 0).then(pl.when(first.is_in(valid)).then(first).otherwise(8))
        .otherwise(None)
        .forward_fill()
        .fill_null(8)
        .cast(pl.Int16)
        .alias("funding_interval_hours"))
