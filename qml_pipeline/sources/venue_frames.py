"""Rows of the raw tables from a venue's answer, built the same way for every venue beside Binance.

Each builder returns a frame conformed to its table (`schemas.conform`), `venue` set on every row;
`schemas.validate` checks it like any other source's rows (a venue outside `schemas.VENUES` fails).

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
from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import FUNDING_RATES, OPEN_INTEREST, TS
from qml_pipeline.timeutil import to_ms


def open_interest_frame(venue: str, source: str, symbol: str, period_ms: int, stamps_ms: Sequence[int],
                        coins: Sequence[float | None], usd: Sequence[float | None],
                        start: datetime, end: datetime, now: datetime, lag_s: int) -> pl.DataFrame:
    """OPEN_INTEREST rows of `venue` from served stamps, coins (base asset) and USD values."""
    if not stamps_ms:
        return schemas.empty(OPEN_INTEREST)
    start_ms, end_ms, now_ms = to_ms(start), to_ms(end), to_ms(now)
    out = (
        pl.DataFrame({"ts": list(stamps_ms), "open_interest": list(coins), "open_interest_value": list(usd)},
                     schema={"ts": pl.Int64, "open_interest": pl.Float64, "open_interest_value": pl.Float64})
        .filter(pl.col("ts").is_between(start_ms, end_ms, closed="left") & (pl.col("ts") + period_ms <= now_ms))
        .unique("ts", keep="first")
        .sort("ts")
        .select(
            pl.lit(venue).alias("venue"),
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
    return schemas.conform(OPEN_INTEREST, out)


def funding_frame(venue: str, source: str, symbol: str, exchange_ms: Sequence[int], rates: Sequence[float],
                  start: datetime, end: datetime, now: datetime,
                  first_interval_hours: int | None) -> pl.DataFrame:
    """FUNDING_RATES rows of `venue` in [start, end) from served settlement times and rates.

    `first_interval_hours` is the interval of the earliest served settlement when it has no
    predecessor in the answer (None: the gap to the next one)."""
    if not exchange_ms:
        return schemas.empty(FUNDING_RATES)
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
            pl.lit(venue).alias("venue"),
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
    return schemas.conform(FUNDING_RATES, out)
