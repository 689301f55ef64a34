"""Rows of the raw tables with a `venue` column, built the same way for every venue.

The raw tables gain `venue` in the warehouse rewrite (schemas.py, by the lead). Until then
`with_venue` conforms a frame to its table and appends `venue` as the last column, and
`validate_with_venue` validates such a frame against the table's contract.

The builders hold each table's rules once:

- open interest: rows stamped in [start, end), one per stamp (the first served wins); a bucket
  still open at `now` (stamp + period > now) is dropped, as a forming kline is: its value would
  change. `available_at` = stamp + period + the publication lag, the project's safe reading
  wherever a venue does not document its stamp (docs/venues.md).
- funding: settlement times snapped to the hourly grid (`funding.snap_funding_times`), the
  interval in force derived from the gaps (`funding.with_funding_intervals`), rows in
  [start, end), `available_at` = the settlement time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from qml_pipeline.sources.funding import snap_funding_times, with_funding_intervals
from qml_pipeline.sources.venues import VENUES, check_venue
from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import FUNDING_RATES, OPEN_INTEREST, TS, Table
from qml_pipeline.timeutil import to_ms


def with_venue(table: Table, df: pl.DataFrame, venue: str) -> pl.DataFrame:
    """`df` conformed to `table`, every row of `venue`."""
    check_venue(venue)
    return schemas.conform(table, df.with_columns(pl.lit(venue).alias("venue")))


def empty_with_venue(table: Table, venue: str) -> pl.DataFrame:
    return with_venue(table, schemas.empty(table), venue)


def validate_with_venue(table: Table, df: pl.DataFrame, **kw: float) -> None:
    """Validate a frame made by `with_venue`: the table's contract, and a known venue on every row."""
    if "venue" not in df.columns:
        raise ValueError(f"{table.name}: no 'venue' column; got {df.columns}")
    unknown = sorted(set(df["venue"].drop_nulls().to_list()) - set(VENUES))
    if df["venue"].null_count() or unknown:
        raise ValueError(f"{table.name}: venue must be one of {VENUES} on every row; "
                         f"{df['venue'].null_count()} null, unknown {unknown}")
    schemas.validate(table, df, **kw)


def open_interest_frame(venue: str, source: str, symbol: str, period_ms: int, stamps_ms: Sequence[int],
                        coins: Sequence[float | None], usd: Sequence[float | None],
                        start: datetime, end: datetime, now: datetime, lag_s: int) -> pl.DataFrame:
    """OPEN_INTEREST rows (plus `venue`) from served stamps, coins (base asset) and USD values."""
    if not stamps_ms:
        return empty_with_venue(OPEN_INTEREST, venue)
    start_ms, end_ms, now_ms = to_ms(start), to_ms(end), to_ms(now)
    out = (
        pl.DataFrame({"ts": list(stamps_ms), "open_interest": list(coins), "open_interest_value": list(usd)},
                     schema={"ts": pl.Int64, "open_interest": pl.Float64, "open_interest_value": pl.Float64})
        .filter(pl.col("ts").is_between(start_ms, end_ms, closed="left") & (pl.col("ts") + period_ms <= now_ms))
        .unique("ts", keep="first")
        .sort("ts")
        .select(
            pl.lit(symbol).alias("symbol"),
            pl.col("ts").cast(TS).alias("event_time"),
            pl.lit(period_ms // 60_000).alias("period_minutes"),
            "open_interest",
            "open_interest_value",
            (pl.col("ts") + period_ms + lag_s * 1000).cast(TS).alias("available_at"),
            pl.lit(source).alias("source"),
            pl.lit(now).cast(TS).alias("ingested_at"),
        )
    )
    return with_venue(OPEN_INTEREST, out, venue)


def funding_frame(venue: str, source: str, symbol: str, exchange_ms: Sequence[int], rates: Sequence[float],
                  start: datetime, end: datetime, now: datetime,
                  first_interval_hours: int | None) -> pl.DataFrame:
    """FUNDING_RATES rows (plus `venue`) in [start, end) from served settlement times and rates.

    `first_interval_hours` is the interval of the earliest served settlement when it has no
    predecessor in the answer (None: the gap to the next one)."""
    if not exchange_ms:
        return empty_with_venue(FUNDING_RATES, venue)
    served = (
        pl.DataFrame({"exchange_ms": list(exchange_ms), "funding_rate": list(rates)},
                     schema={"exchange_ms": pl.Int64, "funding_rate": pl.Float64})
        .unique("exchange_ms", keep="first")
        .with_columns(pl.col("exchange_ms").cast(TS).alias("exchange_time"))
    )
    out = (
        with_funding_intervals(snap_funding_times(served), first_interval_hours)
        .filter((pl.col("event_time") >= start) & (pl.col("event_time") < end))
        .select(
            pl.lit(symbol).alias("symbol"),
            "event_time",
            "funding_rate",
            "funding_interval_hours",
            pl.lit(None, dtype=pl.Float64).alias("mark_price"),
            "exchange_time",
            pl.col("event_time").alias("available_at"),
            pl.lit(source).alias("source"),
            pl.lit(now).cast(TS).alias("ingested_at"),
        )
    )
    return with_venue(FUNDING_RATES, out, venue)
