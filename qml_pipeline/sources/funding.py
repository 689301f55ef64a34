"""Funding settlements: snapping served times to the settlement grid, and the interval in force."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from qml_pipeline.errors import InputError
from qml_pipeline.store.schemas import FUNDING_INTERVALS_HOURS, collapse_duplicates
from qml_pipeline.timeutil import HOUR_MS

# Binance serves fundingTime with millisecond jitter (08:00:00.005, 07:59:59.998); anything
# further from the hourly grid than this is not jitter and is refused.
FUNDING_SNAP_TOLERANCE = timedelta(minutes=5)
# How far before a range a reader fetches so that the range's first settlement has a predecessor
# (its interval is the gap to it): the longest interval plus the snap tolerance.
FUNDING_LOOKBACK_MS = max(FUNDING_INTERVALS_HOURS) * HOUR_MS + int(FUNDING_SNAP_TOLERANCE.total_seconds() * 1000)
# The served settlement stamp in each source's spelling: two rows for one settlement may differ in it
# (jitter) and still be the same settlement.
SERVED_TIME_COLUMNS = ("exchange_time", "exchange_ms", "calc_time")


class FundingTimeError(InputError):
    """A settlement time too far from the grid to be jitter."""


def snap_funding_times(df: pl.DataFrame, symbol: str | None = None, what: str = "funding") -> pl.DataFrame:
    """Add `event_time`: `exchange_time` rounded to the whole hour (Binance's settlement grid).

    Raises FundingTimeError naming the symbol and the times that lie further than a few minutes from
    the grid (that is not jitter). Two rows that land on one settlement are collapsed when they agree
    on everything but the served stamp's jitter (SERVED_TIME_COLUMNS; the first
    row is kept); when they disagree (two rates for one settlement) ConflictingRowsError names both
    (their positions in `df`). `what` names the batch (a file, an endpoint) in messages.
    """
    label = f"{what} {symbol}" if symbol else what
    snapped = df.with_columns(pl.col("exchange_time").dt.round("1h").alias("event_time"))
    off = snapped.filter((pl.col("exchange_time") - pl.col("event_time")).abs() > FUNDING_SNAP_TOLERANCE)
    if off.height:
        minutes = FUNDING_SNAP_TOLERANCE.total_seconds() / 60
        times = off["exchange_time"].sort().to_list()
        shown = ", ".join(t.isoformat() for t in times[:5]) + (f" and {len(times) - 5} more" if len(times) > 5 else "")
        raise FundingTimeError(
            f"{label}: {off.height} settlement time(s) lie more than {minutes:g} minutes from the hourly "
            f"settlement grid: {shown}. That is not millisecond jitter, so they are not snapped; expected "
            f"settlements on the hour (e.g. 08:00:00, served as 07:59:59.998 or 08:00:00.005)")
    collapsed, _ = collapse_duplicates(snapped, ["event_time"], what=f"{label} (two rows for one settlement)",
                                       ignore=SERVED_TIME_COLUMNS)
    return collapsed.sort("event_time")


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
