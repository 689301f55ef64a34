"""The stamps a source should fill, and which of them a frame (an answer, or what is stored) lacks.

A source's answer is measured against this grid before and after it is merged: a short, empty or gappy
answer is reported stamp by stamp, never turned into a deletion (qml_pipeline/store/warehouse.py).

- Candles and open interest sit on a regular grid: every `step` from `offset` (e.g. hourly OI rows of the
  bundled sample are stamped at :55, 5-minute archive rows at :00, :05, ...).
- Funding settlements sit on a grid whose step is the settlement interval in force, which can change
  (8h -> 4h -> 1h): a settlement is expected `funding_interval_hours` after the previous one.
- `Coverage` bounds the grid to where the source has data at all (a symbol's listing, a file's range,
  the last closed bar): outside it an empty answer is complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from qml_pipeline.store.schemas import TS
from qml_pipeline.timeutil import HOUR_MS, from_ms, to_ms



@dataclass(frozen=True)
class Grid:
    """Stamps at offset + k * step (milliseconds since the epoch)."""

    step: timedelta
    offset: timedelta = timedelta(0)

    def stamps(self, start: datetime, end: datetime) -> pl.Series:
        """The grid's stamps in [start, end)."""
        step, offset = to_ms_delta(self.step), to_ms_delta(self.offset)
        start_ms = to_ms(start)
        first = start_ms + (offset - start_ms) % step
        last = to_ms(end)
        if first >= last:
            return pl.Series("event_time", [], dtype=TS)
        return pl.int_range(first, last, step, eager=True).cast(TS).alias("event_time")


@dataclass(frozen=True)
class Coverage:
    """[first, end): where the source has rows for a symbol (None: unbounded on that side)."""

    first: datetime | None = None
    end: datetime | None = None

    def clip(self, start: datetime, end: datetime) -> tuple[datetime, datetime]:
        lo = max(start, self.first) if self.first else start
        hi = min(end, self.end) if self.end else end
        return lo, max(lo, hi)


@dataclass(frozen=True)
class Gap:
    """Stamps a source is known to lack for good (e.g. a hole in Binance's archive), with the reason."""

    start: datetime
    end: datetime
    reason: str


@dataclass(frozen=True)
class KnownGap:
    """A row of a known-gaps file: which series the gap belongs to."""

    venue: str
    table: str
    symbol: str
    series: str
    gap: Gap


def read_known_gaps(path: str | os.PathLike[str]) -> list[KnownGap]:
    """Known permanent holes (CSV: venue, table, symbol, series, start, end, reason; ISO-8601 UTC times).
    A missing file means no known gaps."""
    path = Path(path)
    if not path.exists():
        return []
    df = pl.read_csv(path, infer_schema=False)
    need = ["venue", "table", "symbol", "series", "start", "end", "reason"]
    absent = [c for c in need if c not in df.columns]
    if absent:
        raise ValueError(f"{path}: known-gaps file lacks column(s) {absent}; expected header {','.join(need)}")
    out = []
    for i, row in enumerate(df.iter_rows(named=True), start=2):
        try:
            start, end = (datetime.fromisoformat(row[c].replace("Z", "+00:00")) for c in ("start", "end"))
        except (AttributeError, ValueError) as exc:
            raise ValueError(f"{path}:{i}: start/end must be ISO-8601 UTC times such as 2024-02-16T14:55:00Z "
                             f"(seen {row['start']!r}, {row['end']!r})") from exc
        if start.tzinfo is None or end.tzinfo is None or end <= start:
            raise ValueError(f"{path}:{i}: need timezone-aware start < end (seen {row['start']!r}, {row['end']!r})")
        out.append(KnownGap(row["venue"], row["table"], row["symbol"], row["series"] or "",
                            Gap(start, end, row["reason"] or "known gap")))
    return out


def gaps_for(known: list[KnownGap], venue: str, table: str, symbol: str, series: str) -> list[Gap]:
    return [k.gap for k in known
            if (k.venue, k.table, k.symbol) == (venue, table, symbol) and k.series in ("", series)]


def to_ms_delta(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def missing_on_grid(stamps: pl.Series, grid: Grid, start: datetime, end: datetime,
                    coverage: Coverage = Coverage()) -> pl.Series:
    """Grid stamps in [start, end) (clipped to the coverage) absent from `stamps`."""
    lo, hi = coverage.clip(start, end)
    expected = grid.stamps(lo, hi)
    if expected.is_empty():
        return expected
    have = stamps.cast(TS).unique()
    return expected.filter(~expected.is_in(have.implode()))


def missing_settlements(settlements: pl.DataFrame, start: datetime, end: datetime,
                        coverage: Coverage = Coverage()) -> pl.Series:
    """Funding settlements expected in [start, end) but absent from `settlements` (event_time,
    funding_interval_hours; rows just before `start` may be included to anchor the first expectation).

    After a settlement at t with interval h the next is expected at t + h; a gap of k intervals lacks k - 1
    settlements. Before the first settlement in the window (without an earlier anchor) and after the last
    one, the grid is extended by that settlement's interval up to the window's (covered) edges."""
    lo, hi = coverage.clip(start, end)
    if lo >= hi:
        return pl.Series("event_time", [], dtype=TS)
    df = (settlements.select(pl.col("event_time").cast(TS), pl.col("funding_interval_hours").cast(pl.Int64))
          .unique("event_time").sort("event_time"))
    if df.is_empty():
        # nothing to anchor an interval on: the most common interval (8h) from the window's first whole hour
        return Grid(timedelta(hours=8)).stamps(lo, hi)
    times = [to_ms(t) for t in df["event_time"]]
    hours = df["funding_interval_hours"].to_list()
    lo_ms, hi_ms = to_ms(lo), to_ms(hi)
    missing: list[int] = []
    # before the first settlement: step back by its interval while still inside the window
    t = times[0] - hours[0] * HOUR_MS
    while t >= lo_ms:
        missing.append(t)
        t -= hours[0] * HOUR_MS
    for prev, nxt, h in zip(times, times[1:], hours[1:]):
        step = h * HOUR_MS
        t = prev + step
        while t < nxt:
            if lo_ms <= t < hi_ms:
                missing.append(t)
            t += step
    t = times[-1] + hours[-1] * HOUR_MS
    while t < hi_ms:
        if t >= lo_ms:
            missing.append(t)
        t += hours[-1] * HOUR_MS
    return pl.Series("event_time", sorted(missing), dtype=pl.Int64).cast(TS)


def without_known_gaps(missing: pl.Series, gaps: list[Gap]) -> tuple[pl.Series, pl.Series]:
    """(missing stamps not explained by a known gap, those that are)."""
    if missing.is_empty() or not gaps:
        return missing, missing.clear()
    known = pl.lit(False)
    for g in gaps:
        known = known | ((pl.col("event_time") >= g.start) & (pl.col("event_time") < g.end))
    df = missing.to_frame("event_time").with_columns(known.alias("_known"))
    return (df.filter(~pl.col("_known"))["event_time"], df.filter(pl.col("_known"))["event_time"])


def describe_stamps(stamps: pl.Series, limit: int = 12) -> str:
    """'3 stamps: 2024-01-01T00:00Z, ...' with runs of a constant step collapsed to 'a .. b (n)'."""
    if stamps.is_empty():
        return "none"
    ms = sorted(to_ms(t) for t in stamps)
    runs: list[tuple[int, int, int]] = []  # (first, last, count)
    step = None
    for t in ms:
        if runs and step is not None and t - runs[-1][1] == step:
            runs[-1] = (runs[-1][0], t, runs[-1][2] + 1)
        elif runs and runs[-1][2] == 1 and (step is None or t - runs[-1][1] == step):
            step = t - runs[-1][1]
            runs[-1] = (runs[-1][0], t, 2)
        else:
            runs.append((t, t, 1))
            step = None
    parts = [_iso(a) if n == 1 else f"{_iso(a)} .. {_iso(b)} ({n})" for a, b, n in runs[:limit]]
    more = f", and {len(runs) - limit} more runs" if len(runs) > limit else ""
    return f"{len(ms)} stamp(s): " + ", ".join(parts) + more


def _iso(ms: int) -> str:
    return from_ms(ms).strftime("%Y-%m-%dT%H:%MZ")
