"""UTC time helpers: every timestamp in the project is timezone-aware UTC at millisecond precision."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone

import numpy as np
import polars as pl

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

INTERVAL_MS = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": 86_400_000, "3d": 259_200_000, "1w": 604_800_000,
}


def interval_values_sql() -> str:
    """The intervals as a SQL VALUES list of (interval, interval_ms) rows."""
    return ", ".join(f"('{k}', {v})" for k, v in INTERVAL_MS.items())


def interval_ms(interval: str, served: Mapping[str, int] = INTERVAL_MS, who: str = "") -> int:
    """Milliseconds of an interval (Binance notation) among those `served` (`who` names the server)."""
    try:
        return served[interval]
    except KeyError:
        raise ValueError(f"unknown {who + ' ' if who else ''}interval {interval!r}; expected one of "
                         f"{sorted(served, key=served.get)}") from None


def utc_now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: pass a timezone-aware UTC time")
    return (dt - EPOCH) // timedelta(milliseconds=1)


def epoch_ms(values: pl.Series | np.ndarray | list) -> np.ndarray:
    """Epoch milliseconds as float64 (NaN for null) from datetimes (any unit) or epoch ms."""
    s = values if isinstance(values, pl.Series) else pl.Series(values)
    if s.dtype == pl.Object:
        raise ValueError("times must be datetimes or epoch milliseconds")
    if isinstance(s.dtype, pl.Datetime):
        s = s.dt.cast_time_unit("ms").dt.epoch("ms")
    return s.cast(pl.Float64).fill_null(float("nan")).to_numpy().astype(np.float64)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=int(ms))


def day_start(d: date | str) -> datetime:
    if isinstance(d, str):
        d = date.fromisoformat(d)
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def month_floor(dt: datetime) -> datetime:
    """The first instant (UTC) of the calendar month holding `dt`."""
    return datetime(dt.year, dt.month, 1, tzinfo=UTC)


def next_month(dt: datetime) -> datetime:
    return datetime(dt.year + (dt.month == 12), dt.month % 12 + 1, 1, tzinfo=UTC)


def month_starts(start: datetime, end: datetime) -> list[datetime]:
    """First instants of the calendar months that [start, end) touches."""
    months, m = [], datetime(start.year, start.month, 1, tzinfo=UTC)
    while m < end:
        months.append(m)
        m = next_month(m)
    return months


def day_ranges(days: list[str]) -> list[tuple[datetime, datetime]]:
    """Contiguous [start, end) UTC ranges covering ISO day strings (unsorted, duplicates allowed)."""
    ordered = sorted({date.fromisoformat(d) for d in days})
    ranges: list[tuple[datetime, datetime]] = []
    for d in ordered:
        s = day_start(d)
        if ranges and ranges[-1][1] == s:
            ranges[-1] = (ranges[-1][0], s + timedelta(days=1))
        else:
            ranges.append((s, s + timedelta(days=1)))
    return ranges
