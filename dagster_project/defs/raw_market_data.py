"""Raw market-data assets: funding rates, open interest and klines, partitioned by symbol and UTC year (the work
inside a partition is done month by month: dagster_project/partitions.py).

Binance's assets are named after their tables (`funding_rates`, `open_interest`, `klines`); each other venue
configured in QML_VENUES adds `<venue>_funding_rates` and `<venue>_open_interest`, made by the same factory
(same partitions, checks, pool and refresh) and writing the same tables with their `venue` (docs/venues.md).
"""

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import dagster as dg
import polars as pl

from dagster_project.failures import input_errors_as_failures
from dagster_project.metadata import markdown_table, table_metadata
from dagster_project.partitions import RAW_PARTITIONS, months_by_symbol, partition_key
from dagster_project.resources import DEFINITIONS_SETTINGS, MarketDataResource, WarehouseResource
from qml_pipeline.sources.grid import Coverage, describe_stamps
from qml_pipeline.sources.ingest import (DEFAULT_OVERLAP, FLUSH_ROWS, WindowResult, ingest_windows, month_windows,
                                         variants)
from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import Table
from qml_pipeline.store.warehouse import Warehouse
from qml_pipeline.timeutil import EPOCH, month_starts, next_month, utc_now

RAW_GROUP = "raw_market_data"
CONTRACT_CHECK = "contract"
COMPLETE_CHECK = "complete"
WRITER_POOL = "warehouse_writer"
PROGRESS_EVERY_S = 15.0
# the stored-rows check reads and validates at most this many symbol-months at once (about 1M rows of 5m OI)
STORED_CHECK_SYMBOL_MONTHS = 120
# A run tag: re-read an incomplete window from this many minutes before its first missing stamp (default: a day,
# DEFAULT_OVERLAP); the intraday schedule sets QML_INTRADAY_OVERLAP_MINUTES.
OVERLAP_TAG = "qml/overlap_minutes"


def run_overlap(tags: dict[str, str]) -> timedelta:
    """The re-read overlap a run asks for (OVERLAP_TAG), else DEFAULT_OVERLAP."""
    raw = tags.get(OVERLAP_TAG)
    if raw is None:
        return DEFAULT_OVERLAP
    if not raw.strip().isdigit():
        raise dg.Failure(f"run tag {OVERLAP_TAG}={raw!r}: expected whole minutes, 0 or more (e.g. 60)")
    return timedelta(minutes=int(raw))


def live_edge(source: object) -> datetime:
    """Where a run's windows end: nothing can be stamped after the source's now (a live source's own clock,
    else the wall clock), so the current month is asked for up to now, not up to its end."""
    clock = getattr(source, "now", None)
    return clock() if callable(clock) else utc_now()


def raw_asset_name(table: Table, venue: str) -> str:
    """Binance's asset is named after its table; another venue's is `<venue>_<table>`."""
    return table.name if venue == "binance" else f"{venue}_{table.name}"


def venue_tables(venue: str) -> tuple[Table, ...]:
    """The raw tables read from `venue`: Binance serves candles too; the others open interest and funding."""
    if venue == "binance":
        return (schemas.FUNDING_RATES, schemas.OPEN_INTEREST, schemas.KLINES)
    return (schemas.FUNDING_RATES, schemas.OPEN_INTEREST)


def _span(coverage: Coverage) -> str:
    """Where the source serves data, e.g. '[2024-05-27 00:00, 2024-06-01 11:53)' (UTC)."""
    if coverage.end is not None and (coverage.end <= EPOCH or (coverage.first and coverage.first >= coverage.end)):
        return "nothing"  # e.g. the sample without open interest for a symbol
    first = f"{coverage.first:%Y-%m-%d %H:%M}" if coverage.first else "the start"
    end = f"{coverage.end:%Y-%m-%d %H:%M}" if coverage.end else "now"
    return f"[{first}, {end})"



def throttled(log: Callable[[str], None], every_s: float = PROGRESS_EVERY_S) -> Callable[[str], None]:
    """`log`, passing at most one message per `every_s` seconds: progress stays visible in a long run, while
    each message is an event-log write (a run over hundreds of symbols would otherwise log thousands)."""
    last = [float("-inf")]

    def progress(message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            log(message)
    return progress


def _partition_metadata(results: list[WindowResult]) -> dict[str, object]:
    """What one partition (symbol, year) holds after this run, summed over its months: true for that
    partition only."""
    stored = sum(r.stored_rows for r in results)
    firsts = [r.first_time for r in results if r.first_time]
    lasts = [r.last_time for r in results if r.last_time]
    return {
        "dagster/row_count": stored,
        "rows_fetched": sum(r.fetched for r in results),
        "rows_inserted": sum(r.merge.inserted for r in results if r.merge),
        "rows_revised": sum(r.merge.revised for r in results if r.merge),
        "first_time": str(min(firsts)) if firsts else "",
        "last_time": str(max(lasts)) if lasts else "",
        "answer_missing_stamps": sum(r.answer_missing.len() for r in results),
        "missing_stamps": sum(r.stored_missing.len() for r in results),
        "known_gap_stamps": sum(r.known_missing.len() for r in results),
        "windows": markdown_table(pl.DataFrame([r.as_row() for r in results])),
        "snapshot_id": next((r.snapshot_id for r in results if r.snapshot_id is not None), -1),
    }


def _completeness(results: list[WindowResult]) -> str:
    """A partition's completeness in a few lines: the incomplete months in full, the complete ones counted."""
    missing = [r.completeness_message() for r in results if not r.complete]
    complete = [r for r in results if r.complete]
    known = sum(r.known_missing.len() for r in complete)
    reasons = sorted({reason for r in complete for reason in r.known_reasons})
    summary = (f"{len(complete)} of {len(results)} month window(s) complete, {sum(r.stored_rows for r in complete)} "
               f"row(s) stored" + (f"; {known} stamp(s) in known gaps ({'; '.join(reasons)})" if known else ""))
    return "; ".join(missing + [summary])


def _run_partitions(context: dg.AssetExecutionContext) -> str:
    """The partitions a run covers, as its range (a run-level check result says which ones it judged)."""
    r = context.partition_key_range
    return r.start if r.start == r.end else f"{r.start} ... {r.end} ({len(context.partition_keys)} partitions)"


def _raw_asset(table: Table, description: str, venue: str = "binance") -> dg.AssetsDefinition:
    name = raw_asset_name(table, venue)

    @dg.asset(
        name=name,
        description=description,
        partitions_def=RAW_PARTITIONS,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=RAW_GROUP,
        kinds={"ducklake", "duckdb"},
        pool=WRITER_POOL,
        metadata={**table_metadata(table), "venue": venue},
        check_specs=[
            dg.AssetCheckSpec(CONTRACT_CHECK, asset=name, blocking=True,
                              description=f"one result per run (its partitions are in the metadata): the rows this "
                                          f"run fetched meet the {table.name} contract (pandera: types, "
                                          "ranges, finite numbers, one row per key"
                                          + (", plausible bars (QML_BAR_OUTLIER_*)" if table is schemas.KLINES else "")
                                          + "); failures are named by symbol and time, and nothing of their batch is "
                                            f"written (a run writes its symbols in batches of up to {FLUSH_ROWS:,} "
                                            "rows; earlier batches stay)"),
            dg.AssetCheckSpec(COMPLETE_CHECK, asset=name, blocking=True, partitions_def=RAW_PARTITIONS,
                              description=f"after the merge, the partition holds every {venue} stamp its source "
                                          "should fill (candle grid, OI period grid, funding settlements with their "
                                          "interval) where the source serves data (its coverage: listing, history "
                                          "depth, live edge), apart from known permanent gaps; missing stamps are "
                                          "listed by month")],
    )
    def raw_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                  market: MarketDataResource) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        wh = warehouse.for_run(context)
        progress = throttled(context.log.info)
        source = market.open(progress, cache_dir=wh.cache_dir, venue=venue)
        incomplete: list[str] = []
        overlap = run_overlap(context.run.tags)
        edge = live_edge(source)
        series = variants(table, tuple(market.kline_intervals), market.oi_period)
        by_symbol = months_by_symbol(context.partition_keys, market.start_date)
        windows = [w for symbol, months in by_symbol.items()
                   for w in month_windows(table, symbol, months, series, until=edge)]
        try:
            with input_errors_as_failures(f"{name}: "):
                results = ingest_windows(wh, source, windows, refetch=market.refetch, overlap=overlap,
                                         funding_rate_cap=market.funding_rate_cap,
                                         plausibility=market.plausibility(), progress=progress)
        except dg.Failure as failure:
            cause = failure.__context__
            if isinstance(cause, schemas.ValidationError):
                shown = markdown_table(cause.failures.drop("index"))
                yield dg.AssetCheckResult(check_name=CONTRACT_CHECK, passed=False,
                                          metadata={"window": cause.where, "failures": shown,
                                                    "partitions": _run_partitions(context)})
            raise
        fetched = sum(r.fetched for r in results)
        per_partition: dict[str, list[WindowResult]] = defaultdict(list)
        for r in results:
            per_partition[partition_key(r.window.symbol, r.window.start)].append(r)
        serves = {s: "; ".join(f"{v or table.name} {_span(source.coverage(table.name, s, v))}" for v in series)
                  for s in by_symbol}
        for key, part_results in per_partition.items():
            context.add_asset_metadata({**_partition_metadata(part_results),
                                        "source_serves": serves[part_results[0].window.symbol]}, partition_key=key)
            missing = [r for r in part_results if not r.complete]
            if missing:
                incomplete.append(key)
            context.log_event(dg.AssetCheckEvaluation(
                asset_key=context.asset_key, check_name=COMPLETE_CHECK, passed=not missing, partition=key,
                blocking=True, description=_completeness(part_results),
                metadata={"missing_stamps": sum(r.stored_missing.len() for r in part_results),
                          "missing": "; ".join(f"{r.window.label()}: {describe_stamps(r.stored_missing)}"
                                               for r in missing) or "none",
                          "known_gap_stamps": sum(r.known_missing.len() for r in part_results)}))
        archive = [r.as_dict() for r in getattr(source, "archive_reports", [])]
        collapsed = getattr(source, "identical_duplicates", {})
        notes = getattr(source, "notes", [])
        yield dg.MaterializeResult(
            metadata={"source": market.source if venue == "binance" else source.name, "venue": venue,
                      "rows_fetched_in_run": fetched,
                      "source_notes": "\n".join(notes) if notes else "none",
                      "overlap_minutes": int(overlap.total_seconds() // 60),
                      **{k: v for k, v in getattr(source, "request_stats", dict)().items()
                         if k in ("requests", "weight_used", "bytes_received")},
                      "archive_files": markdown_table(pl.DataFrame([
                          {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()}
                          for r in archive])) if archive else "no archive files used",
                      "identical_duplicate_rows_collapsed": ", ".join(f"{k}: {v}" for k, v in collapsed.items())
                      or "none"},
            check_results=[
                dg.AssetCheckResult(check_name=CONTRACT_CHECK, passed=True,
                                    description=f"per run: {fetched} fetched row(s) of {len(context.partition_keys)} "
                                                "partition(s) meet the contract",
                                    metadata={"rows_checked": fetched, "partitions": _run_partitions(context)}),
                dg.AssetCheckResult(check_name=COMPLETE_CHECK, passed=not incomplete,
                                    description=(f"incomplete partitions: {', '.join(incomplete)}" if incomplete
                                                 else f"all {len(context.partition_keys)} partition(s) complete"),
                                    metadata={"incomplete_partitions": ", ".join(incomplete) or "none"})],
        )

    return raw_asset


DESCRIPTIONS = {
    "funding_rates": "Funding settlements (fraction per interval), snapped to the settlement grid.",
    "open_interest": "Open interest snapshots (base units and USDT), knowable at stamp + period + lag.",
    "klines": "Closed candles per configured interval, knowable at their close.",
}
VENUE_NAMES = {"binance": "Binance", "bybit": "Bybit (v5 linear perpetuals)", "okx": "OKX (v5 USDT swaps)"}


def raw_assets(venues: tuple[str, ...]) -> list[dg.AssetsDefinition]:
    """The raw assets of the configured venues (QML_VENUES): Binance's three, two per other venue."""
    return [_raw_asset(table, f"{VENUE_NAMES[v]}: {DESCRIPTIONS[table.name]}" if v != "binance"
                       else DESCRIPTIONS[table.name], v)
            for v in venues for table in venue_tables(v)]


def stored_contract_failures(wh: Warehouse, table: Table, market: MarketDataResource,
                             scope: dict[str, list[datetime]] | None, venue: str = "binance"
                             ) -> tuple[int, pl.DataFrame]:
    """(rows checked, contract failures) of the stored rows, all revisions, of each symbol's months in `scope`
    (None: the whole table, one symbol at a time), `venue`'s rows where the table has venues. Symbols sharing a range are read and validated together,
    at most STORED_CHECK_SYMBOL_MONTHS symbol-months at a time."""
    by_venue = {"venue": venue} if "venue" in table.names else {}
    if scope is None:
        symbols = wh.query(f"SELECT DISTINCT symbol FROM {table.name} ORDER BY 1")["symbol"].to_list() \
            if "symbol" in table.names else [None]
        batches = [([s] if s else [], None, None) for s in symbols]
    else:
        ranges: dict[tuple[datetime, datetime], list[str]] = defaultdict(list)
        for symbol, months in scope.items():
            ranges[(months[0], next_month(months[-1]))].append(symbol)
        batches = []
        for (start, end), symbols in ranges.items():
            per = max(1, STORED_CHECK_SYMBOL_MONTHS // max(1, len(month_starts(start, end))))
            batches += [(symbols[i:i + per], start, end) for i in range(0, len(symbols), per)]
    frames, checked = [], 0
    for symbols, start, end in batches:
        stored = wh.read(table, symbol=symbols or None, start=start, end=end, revisions=True, **by_venue)
        checked += stored.height
        frames.append(schemas.validation_failures(table, stored, market.funding_rate_cap, market.plausibility()))
    if not frames:
        return 0, schemas.validation_failures(table, schemas.empty(table))
    return checked, pl.concat(frames, how="diagonal_relaxed")


def _stored_contract_check(table: Table, venue: str) -> dg.AssetChecksDefinition:
    of_venue = f" of {venue}" if "venue" in table.names else ""

    @dg.asset_check(asset=raw_asset_name(table, venue), name="stored_rows_valid",
                    description=f"every stored {table.name} row{of_venue} (all revisions) of the symbol-months this "
                                "run wrote "
                                "(the whole table outside a partitioned run) meets the contract; stored keys "
                                "unique per revision")
    def check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource,
              market: MarketDataResource) -> dg.AssetCheckResult:
        wh = warehouse.get()
        scope = None
        if context.has_partition_key_range:
            covered = months_by_symbol(context.op_execution_context.partition_keys, market.start_date)
            written = wh.months_written(table, wh.snapshots_of_run(context.run.run_id))
            scope = {s: [m for m in months if m in set(covered[s])]
                     for s, months in written.items() if s in covered}
            scope = {s: m for s, m in scope.items() if m}
        checked, failures = stored_contract_failures(wh, table, market, scope, venue)
        what = ("the whole table" if scope is None else
                f"{sum(len(m) for m in scope.values())} symbol-month(s) this run wrote, {len(scope)} symbol(s)"
                if scope else "nothing: this run wrote no row")
        return dg.AssetCheckResult(passed=failures.height == 0,
                                   metadata={"dagster/row_count": checked, "covered": what,
                                             "failures": markdown_table(failures.drop("index", strict=False))})

    return check


def raw_checks(venues: tuple[str, ...]) -> list[dg.AssetChecksDefinition]:
    return [_stored_contract_check(table, v) for v in venues for table in venue_tables(v)]


def raw_asset_keys(table: Table, venues: tuple[str, ...] = DEFINITIONS_SETTINGS.venues) -> list[str]:
    """The assets that write `table`, one per configured venue reading it."""
    return [raw_asset_name(table, v) for v in venues if table in venue_tables(v)]


RAW_ASSETS = raw_assets(DEFINITIONS_SETTINGS.venues)
RAW_CHECKS = raw_checks(DEFINITIONS_SETTINGS.venues)
