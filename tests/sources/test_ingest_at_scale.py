"""What makes a universe run cheap must not change what it finds: one aggregate read per table settles a
calendar month only when every expected stamp is stored; one merge statement per table gives each window its
own figures; literal filters and many-symbol reads return what per-symbol reads do; the lake says which
symbol-months a set of snapshots wrote."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from qml_pipeline.sources.grid import Coverage, Gap, Grid
from qml_pipeline.sources.ingest import (StoredWindow, Window, WindowResult, ingest_windows, measure_stored,
                                         missing_stamps, read_stored, stored_rows)
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse, sql_literal

UTC = timezone.utc
JAN, FEB, MAR = (datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3))
STEP = timedelta(minutes=5)


def oi_rows(symbol: str, start: datetime, end: datetime, skip: set[datetime] = frozenset(),
            extra: tuple[datetime, ...] = (), value: float = 1.0) -> pl.DataFrame:
    times = [t for t in pl.datetime_range(start, end, STEP, closed="left", eager=True, time_zone="UTC").to_list()
             if t not in skip] + list(extra)
    return schemas.conform(schemas.OPEN_INTEREST, pl.DataFrame({
        "venue": "binance", "symbol": symbol, "event_time": times, "period_minutes": 5, "open_interest": value,
        "open_interest_value": 2.0, "available_at": [t + STEP for t in times], "source": "test"}))


class GridSource:
    """A MarketSource with a 5-minute OI grid, covered from `first` to `end`; fetches answer from `rows`."""

    name = venue = "binance"

    def __init__(self, rows: pl.DataFrame, first: datetime = JAN, end: datetime = MAR):
        self.rows, self.first, self.end = rows, first, end

    def coverage(self, table: str, symbol: str, variant: str) -> Coverage:
        return Coverage(self.first, self.end)

    def grid(self, table: str, variant: str) -> Grid | None:
        return Grid(STEP)

    def known_gaps(self, table: str, symbol: str, variant: str) -> list[Gap]:
        return []

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame:
        return self.rows.filter((pl.col("symbol") == symbol) & (pl.col("event_time") >= start)
                                & (pl.col("event_time") < end))


def windows(*symbols: str) -> list[Window]:
    return [Window(schemas.OPEN_INTEREST, s, m, e, "5m") for s in symbols for m, e in ((JAN, FEB), (FEB, MAR))]


def test_a_month_is_settled_by_counting_only_when_every_grid_stamp_is_stored(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    hole = JAN + timedelta(days=3)
    off_grid = JAN + timedelta(days=4, minutes=2)  # an extra row off the grid must not stand in for the hole
    wh.merge(schemas.OPEN_INTEREST, pl.concat([
        oi_rows("AAAUSDT", JAN, MAR),
        oi_rows("BBBUSDT", JAN, MAR, skip={hole}, extra=(off_grid,))]))
    source = GridSource(schemas.empty(schemas.OPEN_INTEREST))
    ws = windows("AAAUSDT", "BBBUSDT")
    stored = read_stored(wh, source, ws)
    assert [s.complete for s in stored] == [True, True, False, True]
    assert stored[0].rows is None and stored[0].count == 31 * 288  # settled without reading the stamps
    assert stored[2].rows is not None and stored[2].count == 31 * 288  # read: one missing, one extra
    for window, found in zip(ws, stored):  # the same figures as measuring every stamp
        fast, slow = WindowResult(window), WindowResult(window)
        measure_stored(wh, source, fast, found)
        rows = stored_rows(wh, source, window)
        measure_stored(wh, source, slow, StoredWindow(rows=rows))  # every stamp read and compared
        assert (fast.stored_rows, fast.first_time, fast.last_time) == (slow.stored_rows, slow.first_time,
                                                                        slow.last_time), window.label()
        assert fast.stored_missing.to_list() == slow.stored_missing.to_list() == \
            missing_stamps(source, window, rows).to_list(), window.label()
    measured = WindowResult(ws[2])
    measure_stored(wh, source, measured, stored[2])
    assert measured.stored_missing.to_list() == [hole]


def test_a_month_cut_by_the_coverage_is_measured_on_its_stamps(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.merge(schemas.OPEN_INTEREST, oi_rows("AAAUSDT", JAN + timedelta(days=10), MAR))
    source = GridSource(schemas.empty(schemas.OPEN_INTEREST), first=JAN + timedelta(days=10))  # listed on Jan 11
    stored = read_stored(wh, source, windows("AAAUSDT"))
    assert stored[0].rows is not None and stored[0].rows.height == 21 * 288  # not countable: read
    assert stored[1].complete and stored[1].rows is None


def test_one_run_over_many_symbols_fetches_only_missing_months_and_merges_once_per_table(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.merge(schemas.OPEN_INTEREST, oi_rows("AAAUSDT", JAN, FEB))  # January of AAA is stored already
    before = wh.current_snapshot()
    served = pl.concat([oi_rows("AAAUSDT", JAN, MAR), oi_rows("BBBUSDT", JAN, MAR, value=3.0)])
    results = ingest_windows(wh, GridSource(served), windows("AAAUSDT", "BBBUSDT"))
    assert [r.fetched_from is not None for r in results] == [False, True, True, True]
    assert [(r.merge.inserted if r.merge else None) for r in results] == [None, 29 * 288, 31 * 288, 29 * 288]
    assert all(r.complete for r in results)
    assert wh.current_snapshot() == before + 1  # one snapshot for the whole run
    assert {r.snapshot_id for r in results if r.merge} == {before + 1}
    assert wh.months_written(schemas.OPEN_INTEREST, [before + 1]) == {
        "AAAUSDT": [FEB], "BBBUSDT": [JAN, FEB]}
    again = ingest_windows(wh, GridSource(served), windows("AAAUSDT", "BBBUSDT"))
    assert all(r.fetched_from is None and r.complete for r in again)
    assert [r.stored_rows for r in again] == [31 * 288, 29 * 288, 31 * 288, 29 * 288]
    assert wh.current_snapshot() == before + 1  # nothing fetched, nothing written


def test_merge_parts_counts_each_part_and_keeps_revisions(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.merge(schemas.OPEN_INTEREST, oi_rows("AAAUSDT", JAN, JAN + timedelta(hours=1)))
    with wh.write("parts") as batch:
        batch.merge_parts(schemas.OPEN_INTEREST, [
            oi_rows("AAAUSDT", JAN, JAN + timedelta(hours=2)),                 # 12 stored, 12 new
            oi_rows("BBBUSDT", JAN, JAN + timedelta(hours=1), value=5.0),      # 12 new
            schemas.empty(schemas.OPEN_INTEREST)])
    stats = batch.results[0]
    assert [(s.offered, s.inserted, s.revised, s.unchanged) for s in stats] == [(24, 12, 0, 12), (12, 12, 0, 0),
                                                                                (0, 0, 0, 0)]
    with wh.write("revise") as batch:
        batch.merge_parts(schemas.OPEN_INTEREST, [oi_rows("AAAUSDT", JAN, JAN + timedelta(minutes=10), value=9.0)])
    assert [(s.inserted, s.revised) for s in batch.results[0]] == [(0, 2)]
    assert wh.read(schemas.OPEN_INTEREST, revisions=True).filter(pl.col("revision") == 1).height == 2


def test_reads_of_several_symbols_and_literal_filters_return_what_single_reads_do(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.merge(schemas.OPEN_INTEREST, pl.concat([oi_rows(s, JAN, JAN + timedelta(days=2)) for s in ("AUSDT", "BUSDT",
                                                                                                   "CUSDT")]))
    both = wh.read(schemas.OPEN_INTEREST, symbol=["AUSDT", "CUSDT"], start=JAN + timedelta(hours=6),
                   end=JAN + timedelta(days=1))
    single = pl.concat([wh.read(schemas.OPEN_INTEREST, symbol=s, start=JAN + timedelta(hours=6),
                                end=JAN + timedelta(days=1)) for s in ("AUSDT", "CUSDT")])
    assert both.height == 2 * 18 * 12 and both.equals(single)
    assert wh.read(schemas.OPEN_INTEREST, symbol=[]).height == 0
    assert sql_literal("it's") == "'it''s'"
    assert sql_literal(JAN) == "TIMESTAMPTZ '2024-01-01 00:00:00+00:00'"
    assert sql_literal(True) == "TRUE" and sql_literal(None) == "NULL" and sql_literal(3) == "3"


class MovingEdgeSource(GridSource):
    """Covered up to a live edge that moves 10 minutes forward each time the coverage is asked (a long run)."""

    def __init__(self, rows: pl.DataFrame, edge: datetime):
        super().__init__(rows)
        self.edge = edge

    def coverage(self, table: str, symbol: str, variant: str) -> Coverage:
        self.edge += timedelta(minutes=10)
        return Coverage(JAN, self.edge)


def test_a_window_is_measured_against_the_live_edge_it_was_fetched_at(tmp_path: Path) -> None:
    edge = JAN + timedelta(days=20)
    served = oi_rows("AAAUSDT", JAN, edge + timedelta(minutes=10))  # what the source had when the run began
    results = ingest_windows(Warehouse(tmp_path), MovingEdgeSource(served, edge), windows("AAAUSDT")[:1])
    assert results[0].fetched == 20 * 288 + 2 and results[0].complete, results[0].completeness_message()
