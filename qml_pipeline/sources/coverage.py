"""What a venue's answer covered: the rows, and the grid stamps it should have held but did not.

A short or empty answer is never padded: `Coverage.missing` lists the absent stamps, and
`Coverage.served_from` says when the venue's history starts if it starts after the range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from qml_pipeline.store.schemas import TS
from qml_pipeline.timeutil import from_ms, to_ms

HOUR_MS = 3_600_000


@dataclass
class Coverage:
    """A venue's answer for [start, end), measured against the grid it should fill.

    expected: grid stamps the answer should hold (published by the time of the fetch, not older
    than the venue serves); missing: those it lacks; served_from: the oldest time the venue serves
    for this request (`start` unless its history is shorter); notes: anything else a reader must
    know (rows without a USD value, fields the venue left empty).
    """

    venue: str
    table: str
    symbol: str
    start: datetime
    end: datetime
    frame: pl.DataFrame
    expected: int
    missing: list[datetime]
    served_from: datetime
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and self.served_from <= self.start

    def describe(self) -> str:
        what = f"{self.venue} {self.table} {self.symbol} [{self.start.isoformat()}, {self.end.isoformat()})"
        parts = [f"{what}: {self.frame.height} rows, {self.expected - len(self.missing)} of "
                 f"{self.expected} expected stamps present"]
        if self.missing:
            shown = ", ".join(t.isoformat() for t in self.missing[:5])
            more = f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
            parts.append(f"{len(self.missing)} missing: {shown}{more}")
        if self.served_from > self.start:
            parts.append(f"nothing before {self.served_from.isoformat()}: older than {self.venue} serves")
        parts.extend(self.notes)
        return "; ".join(parts)


def grid_start(t: datetime, step_ms: int) -> int:
    """The first multiple of `step_ms` (epoch milliseconds) at or after `t`."""
    return -(-to_ms(t) // step_ms) * step_ms


def missing_on_grid(times: pl.Series, start: datetime, end: datetime, step_ms: int) -> tuple[int, list[datetime]]:
    """(grid stamps in [start, end), those absent from `times`); the grid: multiples of `step_ms`."""
    first, last = grid_start(start, step_ms), to_ms(end)
    if first >= last:
        return 0, []
    grid = pl.DataFrame({"ms": pl.int_range(first, last, step_ms, eager=True, dtype=pl.Int64)})
    have = pl.DataFrame({"ms": times.cast(pl.Int64)})  # TS counts milliseconds since the epoch
    absent = grid.join(have, on="ms", how="anti").sort("ms")["ms"].to_list()
    return grid.height, [from_ms(ms) for ms in absent]


def oi_coverage(venue: str, symbol: str, frame: pl.DataFrame, start: datetime, end: datetime,
                served_from: datetime, period_ms: int, lag_s: int, now: datetime,
                notes: list[str] | None = None) -> Coverage:
    """Coverage of open-interest rows: the grid is every stamp in [served_from, end) published by
    `now` (stamp + period + lag <= now)."""
    published_until = now - timedelta(milliseconds=period_ms, seconds=lag_s) + timedelta(milliseconds=1)
    expected, missing = missing_on_grid(frame["event_time"], max(start, served_from),
                                        min(end, published_until), period_ms)
    return Coverage(venue, "open_interest", symbol, start, end, frame, expected, missing, served_from,
                    list(notes or []))


def funding_coverage(venue: str, symbol: str, frame: pl.DataFrame, start: datetime, end: datetime,
                     served_from: datetime, now: datetime, fallback_interval_hours: int | None,
                     notes: list[str] | None = None) -> Coverage:
    """Coverage of funding settlements in [served_from, min(end, now)] (a settlement is known at
    its time), on the grid `missing_settlements` describes."""
    lo, hi = max(start, served_from), min(end, now + timedelta(milliseconds=1))
    missing = missing_settlements(frame, lo, hi, fallback_interval_hours)
    in_range = frame.filter((pl.col("event_time") >= lo) & (pl.col("event_time") < hi)).height
    return Coverage(venue, "funding_rates", symbol, start, end, frame, in_range + len(missing), missing,
                    served_from, list(notes or []))


def missing_settlements(frame: pl.DataFrame, start: datetime, end: datetime,
                        fallback_interval_hours: int | None) -> list[datetime]:
    """Settlements the funding grid implies in [start, end) that `frame` lacks.

    Between two served settlements, and before the first and after the last, the grid steps by
    the interval in force (`funding_interval_hours`: the gap to the previous settlement, or the
    previous valid interval across a gap). With no rows at all, the grid is the multiples of
    `fallback_interval_hours` from midnight UTC (nothing is reported when that is unknown).
    A change of interval cannot be told from missing settlements where the longer gap is itself a
    valid interval (8 h in force, then an 8 h gap after a 4 h one): it is read as a change.
    """
    if frame.height == 0:
        if not fallback_interval_hours:
            return []
        return missing_on_grid(pl.Series([], dtype=TS), start, end, fallback_interval_hours * HOUR_MS)[1]
    start_ms, end_ms = to_ms(start), to_ms(end)
    rows = frame.sort("event_time").select(
        ms=pl.col("event_time").cast(pl.Int64),
        step=pl.col("funding_interval_hours").cast(pl.Int64) * HOUR_MS)
    # From each settlement to the next (to `end` after the last) the next one's interval is in force.
    step_after = pl.col("step").shift(-1).fill_null(pl.col("step"))
    after = rows.select(slots=pl.int_ranges(pl.col("ms") + step_after, pl.col("ms").shift(-1).fill_null(end_ms),
                                            step_after))["slots"].explode().drop_nulls()
    first_ms, first_step = rows["ms"][0], rows["step"][0]
    before = pl.int_range(first_ms - first_step, start_ms - 1, -first_step, eager=True, dtype=pl.Int64)
    slots = pl.concat([after.cast(pl.Int64), before]).unique().sort()
    return [from_ms(ms) for ms in slots.filter((slots >= start_ms) & (slots < end_ms)).to_list()]
