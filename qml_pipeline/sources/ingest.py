"""Fetch raw market data for windows (a table, symbol and month each) from a source, validate it, merge it,
measure it.

The order matters: what is stored is read for every window first; then the windows' answers are fetched and
validated before any of them is written (a bad answer refuses the batch), merged in one snapshot (one merge
statement per table), and each window is measured against the grid it should fill, as stored. A short answer
never deletes stored rows (the merge only adds); it leaves stamps missing, which `WindowResult.stored_missing`
lists. A run over many symbols is one batch unless its answers pass `FLUSH_ROWS` rows (then one batch per
group of whole symbols, bounding memory).

Incremental: a window whose stored rows already fill its grid is not fetched again; otherwise the fetch
starts `overlap` before the first missing stamp (late corrections at the live edge become revisions).

Cost: the reads are per table, not per window. A calendar month the source's coverage does not cut is judged
by counting its stored on-grid stamps in one aggregate query (`read_stored`); its stamps are read only when
the count falls short, or for months cut by a listing, a delisting or the live edge, and for funding (whose
grid follows the interval in force). A universe refresh therefore reads a few rows per symbol, not a year.
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
from qml_pipeline.store.warehouse import MergeStats, Warehouse, sql_ident, sql_literal
from qml_pipeline.timeutil import interval_ms, month_floor, next_month, to_ms

RAW_TABLES = (schemas.FUNDING_RATES, schemas.OPEN_INTEREST, schemas.KLINES)
DEFAULT_OVERLAP = timedelta(days=1)
# a run's answers are merged in batches of about this many rows (bounds memory in a long backfill)
FLUSH_ROWS = 2_000_000


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


def grid_range(source: MarketSource, window: Window,
               start: datetime | None = None) -> tuple[Grid, datetime, datetime] | None:
    """The grid `window` sits on and the range [lo, hi) whose grid stamps it should hold from `start` (default
    its start), within the source's coverage; None for funding (settlements follow the interval in force) and
    for a table the source sets no grid for."""
    if window.table is schemas.FUNDING_RATES:
        return None
    grid = source.grid(window.table.name, window.variant)
    if grid is None:
        return None
    lo, hi = source.coverage(window.table.name, window.symbol, window.variant).clip(start or window.start, window.end)
    if window.table is schemas.KLINES:
        # a bar is expected only when all of it lies inside the coverage (e.g. 4h bars from 1h files)
        hi = max(lo, hi - grid.step + timedelta(milliseconds=1))
    return grid, lo, hi


def missing_stamps(source: MarketSource, window: Window, rows: pl.DataFrame,
                   start: datetime | None = None) -> pl.Series:
    """Stamps of the window's grid (from `start`, default the window's start) that `rows` lack."""
    start = start or window.start
    if window.table is schemas.FUNDING_RATES:
        coverage = source.coverage(window.table.name, window.symbol, window.variant)
        return missing_settlements(rows, start, window.end, coverage)
    expected = grid_range(source, window, start)
    if expected is None:
        return pl.Series("event_time", [], dtype=TS)
    grid, lo, hi = expected
    return missing_on_grid(rows["event_time"], grid, lo, hi)


def stored_rows(wh: Warehouse, source: MarketSource, window: Window) -> pl.DataFrame:
    """The first publication of each stored stamp in the window (plus, for funding, the settlement before
    it, which anchors the interval grid)."""
    return stored_rows_of(wh, source, [window])[0]


def _stored_lower_bound(window: Window) -> datetime:
    return window.start - timedelta(hours=8) if window.table is schemas.FUNDING_RATES else window.start


def _series_column(table: Table) -> list[str]:
    return ["interval"] if table is schemas.KLINES else []


def _stored_filter(source: MarketSource, table: Table, windows: list[Window], start: datetime,
                   end: datetime) -> str:
    """WHERE clause (with literals: the lake prunes files only on constants) selecting the first publications
    of `windows`' symbols and series in [start, end)."""
    where = [f"venue = {sql_literal(source.venue)}" if "venue" in table.names else "true"]
    symbols = sorted({w.symbol for w in windows})
    where.append(f"symbol IN ({', '.join(map(sql_literal, symbols))})")
    if table is schemas.KLINES:
        where.append(f'"interval" IN ({", ".join(sql_literal(v) for v in sorted({w.variant for w in windows}))})')
    where += ["revision = 0", f"event_time >= {sql_literal(start)}", f"event_time < {sql_literal(end)}"]
    return " AND ".join(where)


def stored_rows_of(wh: Warehouse, source: MarketSource, windows: list[Window]) -> list[pl.DataFrame]:
    """`stored_rows` of each of `windows` (one table; any symbols): one query per distinct time range."""
    if not windows:
        return []
    table = windows[0].table
    if any(w.table is not table for w in windows):
        raise ValueError("stored_rows_of takes windows of one table")
    ranges: dict[tuple[datetime, datetime], list[int]] = {}
    if table is schemas.FUNDING_RATES:  # few rows: one query over the span
        ranges[(min(map(_stored_lower_bound, windows)), max(w.end for w in windows))] = list(range(len(windows)))
    else:
        for i, w in enumerate(windows):
            ranges.setdefault((_stored_lower_bound(w), w.end), []).append(i)
    out: list[pl.DataFrame] = [pl.DataFrame()] * len(windows)
    extra = ", funding_interval_hours" if table is schemas.FUNDING_RATES else ""
    keys = ["symbol", *_series_column(table)]
    for (lo, hi), members in ranges.items():
        where = _stored_filter(source, table, [windows[i] for i in members], lo, hi)
        rows = wh.query(f"SELECT event_time{extra}, {', '.join(sql_ident(k) for k in keys)} FROM {table.name} "
                        f"WHERE {where} ORDER BY event_time")
        parts = rows.partition_by(keys, as_dict=True, maintain_order=True) if rows.height else {}
        for i in members:
            w = windows[i]
            part = parts.get((w.symbol, w.variant) if table is schemas.KLINES else (w.symbol,))
            part = part.drop(keys) if part is not None else rows.drop(keys).clear()
            if (lo, hi) != (_stored_lower_bound(w), w.end):
                part = part.filter((pl.col("event_time") >= _stored_lower_bound(w)) & (pl.col("event_time") < w.end))
            out[i] = part
    return out


@dataclass
class StoredWindow:
    """What the warehouse holds for a window: its row count and time range, and either proof from the count
    of on-grid stamps that every expected stamp is stored (`complete`), or the rows themselves (`rows`, as
    `stored_rows` returns them) to measure the missing stamps on."""

    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    complete: bool = False
    rows: pl.DataFrame | None = None


def countable_stamps(source: MarketSource, window: Window) -> int | None:
    """How many grid stamps `window` should hold, when counting its stored on-grid stamps settles whether it
    is complete: a calendar month of a gridded table that the source's coverage does not cut (for candles,
    also ending on the grid). None otherwise: its stamps must be read."""
    expected = grid_range(source, window)
    if expected is None or window.start != month_floor(window.start) or window.end != next_month(window.start):
        return None
    covered = source.coverage(window.table.name, window.symbol, window.variant).clip(window.start, window.end)
    if covered != (window.start, window.end):
        return None
    grid, lo, hi = expected
    step, offset = grid.step // timedelta(milliseconds=1), grid.offset // timedelta(milliseconds=1)
    if window.table is schemas.KLINES and (to_ms(window.end) - offset) % step:
        return None
    return grid.stamps(lo, hi).len()


def _month_summaries(wh: Warehouse, source: MarketSource, windows: list[Window]) -> dict[tuple, tuple] | None:
    """(symbol, series, month start in ms) -> (rows, first, last, rows on the grid) of the first publications
    of `windows` (one gridded table), in one aggregate query; None when the series cannot be told apart."""
    table = windows[0].table
    series = sorted({w.variant for w in windows})
    grids = {v: source.grid(table.name, v) for v in series}
    if any(g is None for g in grids.values()) or (table is not schemas.KLINES and len(series) > 1):
        return None
    ms = {v: (g.step // timedelta(milliseconds=1), g.offset // timedelta(milliseconds=1)) for v, g in grids.items()}
    if table is schemas.KLINES:
        step = "CASE \"interval\" " + " ".join(f"WHEN '{v}' THEN {s}" for v, (s, _) in ms.items()) + " END"
        offset = "CASE \"interval\" " + " ".join(f"WHEN '{v}' THEN {o}" for v, (_, o) in ms.items()) + " END"
    else:
        step, offset = (str(x) for x in ms[series[0]])
    where = _stored_filter(source, table, windows, min(w.start for w in windows), max(w.end for w in windows))
    keys = ["symbol", *_series_column(table)]
    # the month from the epoch (naive arithmetic: the time-zone aware date_trunc is several times slower)
    month = "epoch_ms(date_trunc('month', make_timestamp(epoch_us(event_time))))"
    rows = wh.query(
        f"SELECT {', '.join(sql_ident(k) for k in keys)}, {month} AS month_ms, count(*) AS n, min(event_time) AS first, "
        f"max(event_time) AS last, count(*) FILTER (WHERE (epoch_ms(event_time) - ({offset})) % ({step}) = 0) AS on_grid "
        f"FROM {table.name} WHERE {where} GROUP BY ALL")
    out = {}
    for r in rows.iter_rows(named=True):
        out[(r["symbol"], r.get("interval", ""), r["month_ms"])] = (r["n"], r["first"], r["last"], r["on_grid"])
    return out


def read_stored(wh: Warehouse, source: MarketSource, windows: list[Window]) -> list[StoredWindow]:
    """What is stored for each of `windows` (any tables and symbols), with as few reads as possible: calendar
    months that counting settles (`countable_stamps`) from one aggregate query per table; the rows of the
    others (and of any window the count finds incomplete), one query per table and time range."""
    out = [StoredWindow() for _ in windows]
    need_rows: dict[str, list[int]] = {}
    by_table: dict[str, list[int]] = {}
    for i, w in enumerate(windows):
        by_table.setdefault(w.table.name, []).append(i)
    for members in by_table.values():
        expected = {}
        for i in members:
            try:  # the source may read its inputs to know its coverage: a bad one is named by the window
                expected[i] = countable_stamps(source, windows[i])
            except InputError as exc:
                exc.where = exc.where or windows[i].label()
                raise
        countable = [i for i in members if expected[i] is not None]
        summaries = _month_summaries(wh, source, [windows[i] for i in countable]) if countable else None
        for i in members:
            w = windows[i]
            summary = None if summaries is None or expected[i] is None else \
                summaries.get((w.symbol, w.variant if w.table is schemas.KLINES else "", to_ms(w.start)), (0, None, None, 0))
            if summary is not None:
                n, first, last, on_grid = summary
                out[i] = StoredWindow(n, first, last, complete=on_grid == expected[i])
                if out[i].complete:
                    continue
                if n == 0:  # nothing stored in the window: its rows are known without reading them
                    out[i].rows = _no_rows(w)
                    continue
            need_rows.setdefault(w.table.name, []).append(i)
    for members in need_rows.values():
        for i, rows in zip(members, stored_rows_of(wh, source, [windows[i] for i in members])):
            out[i].rows = rows
    return out


def _no_rows(window: Window) -> pl.DataFrame:
    schema = {"event_time": TS}
    if window.table is schemas.FUNDING_RATES:
        schema["funding_interval_hours"] = pl.Int16
    return pl.DataFrame(schema=schema)


def plan_fetch(source: MarketSource, window: Window, *, refetch: bool = False,
               overlap: timedelta = DEFAULT_OVERLAP, stored: StoredWindow) -> datetime | None:
    """Where the fetch of `window` should start (None: the window is complete in the warehouse or the source
    serves nothing for it). `stored`: what `read_stored` found for the window."""
    first, end = source.coverage(window.table.name, window.symbol, window.variant).clip(window.start, window.end)
    if first >= end:
        return None  # the source has no data for this window (before the listing, after the sample's end)
    if refetch:
        return first
    if stored.complete:
        return None
    missing = missing_stamps(source, window, stored.rows)
    known = source.known_gaps(window.table.name, window.symbol, window.variant)
    missing, _ = without_known_gaps(missing, known)
    if missing.is_empty():
        return None
    return max(first, missing.min() - overlap)


def fetch_answer(source: MarketSource, window: Window, fetch_from: datetime) -> tuple[pl.DataFrame, pl.Series]:
    """The source's answer for [fetch_from, window end), asked once more for a span it lacked, and the grid
    stamps it still lacks (the caller validates answers together: `validate_batch`)."""
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
    return frame, answer_missing


def validate_batch(frames: list[tuple[Window, pl.DataFrame]], funding_rate_cap: float,
                   plausibility: schemas.BarPlausibility | None) -> None:
    """Validate the answers of many windows together, one contract check per table (the checks' cost is mostly
    per call, not per row). A ValidationError names the rows and, as `where`, the first window holding one."""
    by_table: dict[str, list[tuple[Window, pl.DataFrame]]] = {}
    for window, frame in frames:
        by_table.setdefault(window.table.name, []).append((window, frame))
    for parts in by_table.values():
        try:
            schemas.validate(parts[0][0].table, pl.concat([f for _, f in parts]), funding_rate_cap, plausibility)
        except schemas.ValidationError as exc:
            first = exc.failures["index"].drop_nulls().min()
            offset = 0
            for window, frame in parts:
                if first is not None and offset <= first < offset + frame.height:
                    exc.where = window.label()
                    break
                offset += frame.height
            raise


def _answer(source: MarketSource, window: Window) -> pl.DataFrame:
    frame = schemas.conform(window.table, fetch(source, window))
    outside = frame.filter((pl.col("event_time") < window.start) | (pl.col("event_time") >= window.end))
    if outside.height:
        raise ValueError(f"{source.name} answered {window.label()} with {outside.height} row(s) outside it, first "
                         f"{outside['event_time'][0]}: a source bug (rows must lie in the asked window)")
    return frame


def measure_stored(wh: Warehouse, source: MarketSource, result: WindowResult,
                   stored: StoredWindow | None = None) -> None:
    """Fill `result`'s stored figures: rows, range and the stamps still missing (known gaps apart). `stored`:
    what `read_stored` found for the window, when the caller read it already."""
    window = result.window
    stored = stored or read_stored(wh, source, [window])[0]
    if stored.complete:  # every expected stamp is stored: nothing is missing, known gaps included
        result.stored_rows, result.first_time, result.last_time = stored.count, stored.first, stored.last
        result.stored_missing = result.known_missing = pl.Series("event_time", [], dtype=TS)
        result.known_reasons = []
        return
    rows = stored.rows
    in_window = rows.filter(pl.col("event_time") >= window.start)
    result.stored_rows = in_window.height
    result.first_time = in_window["event_time"].min() if in_window.height else None
    result.last_time = in_window["event_time"].max() if in_window.height else None
    gaps = source.known_gaps(window.table.name, window.symbol, window.variant)
    result.stored_missing, result.known_missing = without_known_gaps(missing_stamps(source, window, rows), gaps)
    result.known_reasons = sorted({g.reason for g in gaps
                                   if result.known_missing.is_between(g.start, g.end, closed="left").any()})


def ingest_windows(wh: Warehouse, source: MarketSource, windows: Iterable[Window], *, refetch: bool = False,
                   overlap: timedelta = DEFAULT_OVERLAP, funding_rate_cap: float = schemas.DEFAULT_FUNDING_RATE_CAP,
                   plausibility: schemas.BarPlausibility | None = None,
                   progress: Callable[[str], None] | None = None,
                   flush_rows: int = FLUSH_ROWS) -> list[WindowResult]:
    """Plan, fetch, validate, merge and measure `windows` (any tables and symbols, in order).

    What is stored is read once for all windows before anything is fetched (`read_stored`). The answers are
    validated and merged in one snapshot per batch: all of them, unless the fetched rows pass `flush_rows`, in
    which case a batch is written after the symbol that passed it (a symbol's windows are never split). An
    answer that breaks its table's contract raises before its batch is written: the batches before it stay,
    as one snapshot each. Windows fetched are measured again as stored after their merge; the
    others keep what was read before (nothing of this run wrote to them)."""
    windows = list(windows)
    source = CoverageAsPlanned(source)
    stored = [StoredWindow() for _ in windows] if refetch else read_stored(wh, source, windows)
    results = [WindowResult(w) for w in windows]
    pending: list[tuple[int, pl.DataFrame]] = []
    for i, (window, result) in enumerate(zip(windows, results)):
        try:
            result.fetched_from = plan_fetch(source, window, refetch=refetch, overlap=overlap, stored=stored[i])
            if result.fetched_from is None:
                lo, hi = source.coverage(window.table.name, window.symbol, window.variant).clip(window.start,
                                                                                              window.end)
                result.not_fetched_because = ("the source serves no data for it" if lo >= hi
                                              else "already complete in the warehouse")
            else:
                if progress:
                    progress(f"fetching {window.label()} from {result.fetched_from:%Y-%m-%d %H:%M}")
                frame, result.answer_missing = fetch_answer(source, window, result.fetched_from)
                result.fetched = frame.height
                pending.append((i, frame))
        except InputError as exc:
            exc.where = exc.where or window.label()
            raise
        last_of_symbol = i + 1 == len(windows) or windows[i + 1].symbol != window.symbol
        if pending and (i + 1 == len(windows) or (last_of_symbol and sum(f.height for _, f in pending) >= flush_rows)):
            validate_batch([(windows[k], f) for k, f in pending], funding_rate_cap, plausibility)
            _merge_batch(wh, [(results[k], f) for k, f in pending])
            pending = []
    reread = [i for i, r in enumerate(results) if refetch or r.fetched_from is not None]
    for i, again in zip(reread, read_stored(wh, source, [windows[i] for i in reread])):
        stored[i] = again
    for result, window_stored in zip(results, stored):
        measure_stored(wh, source, result, window_stored)
    return results


class CoverageAsPlanned:
    """`source`, with each series' coverage frozen at its first use in a run: a window is planned, fetched and
    measured against the same live edge. A run over many symbols takes minutes; measured against a later edge,
    stamps that became due after the window was fetched would show as missing (a false failure of the
    `complete` check, seen at the live edge of a 300-symbol backfill)."""

    def __init__(self, source: MarketSource):
        self._source = source
        self._coverage: dict[tuple[str, str, str], Coverage] = {}

    def coverage(self, table: str, symbol: str, variant: str) -> Coverage:
        key = (table, symbol, variant)
        if key not in self._coverage:
            self._coverage[key] = self._source.coverage(table, symbol, variant)
        return self._coverage[key]

    def __getattr__(self, name: str):
        return getattr(self._source, name)


def _merge_batch(wh: Warehouse, frames: list[tuple[WindowResult, pl.DataFrame]]) -> None:
    """Merge the answers in one snapshot: one merge statement per table (the windows' keys are disjoint)."""
    symbols = sorted({r.window.symbol for r, _ in frames})
    by_table: dict[str, list[tuple[WindowResult, pl.DataFrame]]] = {}
    for result, frame in frames:
        by_table.setdefault(result.window.table.name, []).append((result, frame))
    shown = ", ".join(symbols[:5]) + (f" and {len(symbols) - 5} more" if len(symbols) > 5 else "")
    with wh.write(f"merge {', '.join(sorted(by_table))} {shown} ({sum(f.height for _, f in frames)} rows)") as batch:
        for parts in by_table.values():
            batch.merge_parts(parts[0][0].window.table, [frame for _, frame in parts])
    for parts, stats in zip(by_table.values(), batch.results):
        for (result, _), window_stats in zip(parts, stats):
            result.merge = window_stats
            result.snapshot_id = batch.snapshot_id


def month_windows(table: Table, symbol: str, months: Iterable[datetime], variants: Iterable[str],
                  until: datetime | None = None) -> list[Window]:
    """One window per calendar month (and variant), the last one cut at `until` when given."""
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
