"""Fetch raw market data for a symbol and window from a source, validate it, measure it, merge it.

The order matters: every window of a run is fetched and validated before anything is written (a bad
answer refuses the whole run), then all of one symbol's windows are merged in one snapshot, then each
window is measured against the grid it should fill, as stored. A short answer never deletes stored rows
(the merge only adds); it leaves stamps missing, which `WindowResult.stored_missing` lists.

Incremental: a window whose stored rows already fill its grid is not fetched again; otherwise the fetch
starts `overlap` before the first missing stamp (late corrections at the live edge become revisions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import polars as pl

from qml_pipeline.errors import InputError
from qml_pipeline.sources.grid import (Coverage, Gap, Grid, describe_stamps, missing_on_grid,
                                       missing_settlements, without_known_gaps)
from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import TS, Table
from qml_pipeline.store.warehouse import MergeStats, Warehouse
from qml_pipeline.timeutil import interval_ms

RAW_TABLES = (schemas.FUNDING_RATES, schemas.OPEN_INTEREST, schemas.KLINES)
DEFAULT_OVERLAP = timedelta(days=1)


class MarketSource(Protocol):
    """What every market-data source serves, in the raw tables' shapes, for [start, end)."""

    name: str
    venue: str

    def funding_rates(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame: ...

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame: ...

    def klines(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame: ...

    def coverage(self, table: str, symbol: str, variant: str) -> Coverage: ...

    def grid(self, table: str, variant: str) -> Grid | None: ...

    def known_gaps(self, table: str, symbol: str, variant: str) -> list[Gap]: ...


@dataclass(frozen=True)
class Window:
    """One table's rows of one symbol (and kline interval / OI period: `variant`) over [start, end)."""

    table: Table
    symbol: str
    start: datetime
    end: datetime
    variant: str = ""

    @property
    def series(self) -> str:
        """The stored series the window fills: the kline interval; '' for funding and OI."""
        return self.variant if self.table is schemas.KLINES else ""

    def label(self) -> str:
        extra = f" {self.variant}" if self.variant else ""
        return f"{self.table.name} {self.symbol}{extra} [{_when(self.start)}, {_when(self.end)})"


@dataclass
class WindowResult:
    window: Window
    fetched_from: datetime | None = None          # None: not fetched (see `not_fetched_because`)
    not_fetched_because: str = ""
    fetched: int = 0
    answer_missing: pl.Series = field(default_factory=lambda: pl.Series("event_time", [], dtype=TS))
    merge: MergeStats | None = None
    stored_rows: int = 0
    first_time: datetime | None = None
    last_time: datetime | None = None
    stored_missing: pl.Series = field(default_factory=lambda: pl.Series("event_time", [], dtype=TS))
    known_missing: pl.Series = field(default_factory=lambda: pl.Series("event_time", [], dtype=TS))
    known_reasons: list[str] = field(default_factory=list)
    snapshot_id: int | None = None

    @property
    def complete(self) -> bool:
        """Every stamp the source should fill is stored (or is a known, acknowledged gap)."""
        return self.stored_missing.is_empty()

    def as_row(self) -> dict[str, object]:
        w, m = self.window, self.merge
        return {"table": w.table.name, "symbol": w.symbol, "series": w.variant,
                "start": w.start.isoformat(), "end": w.end.isoformat(),
                "fetched_from": self.fetched_from.isoformat() if self.fetched_from else
                f"not fetched ({self.not_fetched_because})",
                "rows_fetched": self.fetched, "inserted": m.inserted if m else 0, "revised": m.revised if m else 0,
                "unchanged": m.unchanged if m else 0, "answer_missing": self.answer_missing.len(),
                "stored_rows": self.stored_rows, "stored_missing": self.stored_missing.len(),
                "known_gap_stamps": self.known_missing.len(),
                "first_time": self.first_time.isoformat() if self.first_time else None,
                "last_time": self.last_time.isoformat() if self.last_time else None}

    def completeness_message(self) -> str:
        w = self.window
        if self.complete:
            known = (f"; {self.known_missing.len()} stamp(s) in known gaps ({'; '.join(self.known_reasons)})"
                     if self.known_missing.len() else "")
            return f"{w.label()}: complete, {self.stored_rows} row(s) stored{known}"
        return (f"{w.label()}: {self.stored_missing.len()} stamp(s) missing after the merge "
                f"({describe_stamps(self.stored_missing)}); the source's answer lacked "
                f"{self.answer_missing.len()}. Stored rows were kept; re-run the partition once the source "
                f"serves them, or acknowledge a permanent hole in the known-gaps file (docs/warehouse.md)")


def _when(t: datetime) -> str:
    return f"{t:%Y-%m-%d}" if (t.hour, t.minute, t.second, t.microsecond) == (0, 0, 0, 0) else f"{t:%Y-%m-%d %H:%M}"


def fetch(source: MarketSource, window: Window) -> pl.DataFrame:
    table, symbol = window.table, window.symbol
    if table is schemas.FUNDING_RATES:
        return source.funding_rates(symbol, window.start, window.end)
    if table is schemas.OPEN_INTEREST:
        return source.open_interest(symbol, window.variant, window.start, window.end)
    if table is schemas.KLINES:
        return source.klines(symbol, window.variant, window.start, window.end)
    raise ValueError(f"no source method for table {table.name}")


def missing_stamps(source: MarketSource, window: Window, rows: pl.DataFrame,
                   start: datetime | None = None) -> pl.Series:
    """Stamps of the window's grid (from `start`, default the window's start) that `rows` lack."""
    start = start or window.start
    coverage = source.coverage(window.table.name, window.symbol, window.variant)
    if window.table is schemas.FUNDING_RATES:
        return missing_settlements(rows, start, window.end, coverage)
    grid = source.grid(window.table.name, window.variant)
    if grid is None:
        return pl.Series("event_time", [], dtype=TS)
    if window.table is schemas.KLINES:
        # a bar is expected only when all of it lies inside the coverage (e.g. 4h bars from 1h files)
        lo, hi = coverage.clip(start, window.end)
        coverage = Coverage(lo, hi - grid.step + timedelta(milliseconds=1))
    return missing_on_grid(rows["event_time"], grid, start, window.end, coverage)


def stored_rows(wh: Warehouse, source: MarketSource, window: Window) -> pl.DataFrame:
    """The first publication of each stored stamp in the window (plus, for funding, the settlement before
    it, which anchors the interval grid)."""
    table = window.table
    where = ["venue = ?" if "venue" in table.names else "true", "symbol = ?"]
    params: list[object] = [source.venue] if "venue" in table.names else []
    params.append(window.symbol)
    if table is schemas.KLINES:
        where.append('"interval" = ?')
        params.append(window.variant)
    lo = window.start - timedelta(hours=8) if table is schemas.FUNDING_RATES else window.start
    where += ["event_time >= ?", "event_time < ?", "revision = 0"]
    params += [lo, window.end]
    extra = ", funding_interval_hours" if table is schemas.FUNDING_RATES else ""
    return wh.query(f"SELECT event_time{extra} FROM {table.name} WHERE {' AND '.join(where)} ORDER BY event_time",
                    params)


def plan_fetch(wh: Warehouse, source: MarketSource, window: Window, *, refetch: bool = False,
               overlap: timedelta = DEFAULT_OVERLAP) -> datetime | None:
    """Where the fetch of `window` should start (None: the window is complete in the warehouse)."""
    first, end = source.coverage(window.table.name, window.symbol, window.variant).clip(window.start, window.end)
    if first >= end:
        return None  # the source has no data for this window (before the listing, after the sample's end)
    if refetch:
        return first
    missing = missing_stamps(source, window, stored_rows(wh, source, window))
    known = source.known_gaps(window.table.name, window.symbol, window.variant)
    missing, _ = without_known_gaps(missing, known)
    if missing.is_empty():
        return None
    return max(first, missing.min() - overlap)


def fetch_and_validate(source: MarketSource, window: Window, fetch_from: datetime,
                       funding_rate_cap: float = schemas.DEFAULT_FUNDING_RATE_CAP,
                       plausibility: schemas.BarPlausibility | None = None) -> tuple[pl.DataFrame, pl.Series]:
    """The source's answer for [fetch_from, window end), validated (schemas.ValidationError names the rows;
    nothing is written then), and the grid stamps it lacks."""
    part = Window(window.table, window.symbol, fetch_from, window.end, window.variant)
    frame = _answer(source, part)
    known = source.known_gaps(window.table.name, window.symbol, window.variant)
    answer_missing = without_known_gaps(missing_stamps(source, window, frame, start=fetch_from), known)[0]
    if not answer_missing.is_empty():
        # asked once more for the span it lacked (Binance serves short pages during maintenance)
        retry = Window(window.table, window.symbol, answer_missing.min(),
                       min(window.end, answer_missing.max() + timedelta(milliseconds=1)), window.variant)
        again = _answer(source, retry)
        if again.height:
            key = list(window.table.key)
            frame = pl.concat([frame, again]).unique(key, keep="first", maintain_order=True).sort(key)
            answer_missing = without_known_gaps(missing_stamps(source, window, frame, start=fetch_from), known)[0]
    schemas.validate(window.table, frame, funding_rate_cap, plausibility)
    return frame, answer_missing


def _answer(source: MarketSource, window: Window) -> pl.DataFrame:
    frame = schemas.conform(window.table, fetch(source, window))
    outside = frame.filter((pl.col("event_time") < window.start) | (pl.col("event_time") >= window.end))
    if outside.height:
        raise ValueError(f"{source.name} answered {window.label()} with {outside.height} row(s) outside it, first "
                         f"{outside['event_time'][0]}: a source bug (rows must lie in the asked window)")
    return frame


def measure_stored(wh: Warehouse, source: MarketSource, result: WindowResult) -> None:
    """Fill `result`'s stored figures: rows, range and the stamps still missing (known gaps apart)."""
    window = result.window
    rows = stored_rows(wh, source, window)
    in_window = rows.filter(pl.col("event_time") >= window.start)
    result.stored_rows = in_window.height
    result.first_time = in_window["event_time"].min() if in_window.height else None
    result.last_time = in_window["event_time"].max() if in_window.height else None
    gaps = source.known_gaps(window.table.name, window.symbol, window.variant)
    result.stored_missing, result.known_missing = without_known_gaps(missing_stamps(source, window, rows), gaps)
    result.known_reasons = sorted({g.reason for g in gaps
                                   if result.known_missing.is_between(g.start, g.end, closed="left").any()})


def ingest_symbol(wh: Warehouse, source: MarketSource, windows: Iterable[Window], *, refetch: bool = False,
                  overlap: timedelta = DEFAULT_OVERLAP, funding_rate_cap: float = schemas.DEFAULT_FUNDING_RATE_CAP,
                  plausibility: schemas.BarPlausibility | None = None,
                  progress: Callable[[str], None] | None = None) -> list[WindowResult]:
    """Fetch, validate, merge (one snapshot for all `windows`) and measure. Raises before writing anything
    when a window's answer breaks its table's contract."""
    results, frames = [], []
    for window in windows:
        result = WindowResult(window)
        try:
            result.fetched_from = plan_fetch(wh, source, window, refetch=refetch, overlap=overlap)
            if result.fetched_from is None:
                lo, hi = source.coverage(window.table.name, window.symbol, window.variant).clip(window.start,
                                                                                              window.end)
                result.not_fetched_because = ("the source serves no data for it" if lo >= hi
                                              else "already complete in the warehouse")
            else:
                if progress:
                    progress(f"fetching {window.label()} from {result.fetched_from:%Y-%m-%d %H:%M}")
                frame, result.answer_missing = fetch_and_validate(source, window, result.fetched_from,
                                                                  funding_rate_cap, plausibility)
                result.fetched = frame.height
                frames.append((result, frame))
        except InputError as exc:
            exc.where = exc.where or window.label()
            raise
        results.append(result)
    if frames:
        symbols = sorted({r.window.symbol for r, _ in frames})
        with wh.write(f"merge {', '.join(sorted({r.window.table.name for r, _ in frames}))} "
                      f"{', '.join(symbols)} ({sum(f.height for _, f in frames)} rows)") as batch:
            for result, frame in frames:
                batch.merge(result.window.table, frame)
        for (result, _), stats in zip(frames, batch.results):
            result.merge = stats
            result.snapshot_id = batch.snapshot_id
    for result in results:
        measure_stored(wh, source, result)
    return results


def month_windows(table: Table, symbol: str, months: Iterable[datetime], variants: Iterable[str],
                  until: datetime | None = None) -> list[Window]:
    """One window per calendar month (and variant), the last one cut at `until` when given."""
    from qml_pipeline.timeutil import next_month

    out = []
    for m in months:
        end = next_month(m) if until is None else min(next_month(m), until)
        if end <= m:
            continue
        out += [Window(table, symbol, m, end, v) for v in variants]
    return out


def variants(table: Table, kline_intervals: Iterable[str], oi_period: str) -> list[str]:
    if table is schemas.KLINES:
        return [i for i in kline_intervals if interval_ms(i)]
    if table is schemas.OPEN_INTEREST:
        return [oi_period]
    return [""]
