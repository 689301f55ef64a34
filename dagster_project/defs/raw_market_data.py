"""Raw market-data assets: funding rates, open interest and klines, partitioned by symbol and UTC month.

Binance's assets are named after their tables (`funding_rates`, `open_interest`, `klines`); each other venue
configured in QML_VENUES adds `<venue>_funding_rates` and `<venue>_open_interest`, made by the same factory
(same partitions, checks, pool and refresh) and writing the same tables with their `venue` (docs/venues.md).
"""

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta

import dagster as dg
import polars as pl

from dagster_project.failures import input_errors_as_failures
from dagster_project.metadata import markdown_table, table_metadata
from dagster_project.partitions import RAW_PARTITIONS
from dagster_project.resources import SETTINGS, MarketDataResource, WarehouseResource
from qml_pipeline.sources.grid import Coverage, describe_stamps
from qml_pipeline.sources.ingest import DEFAULT_OVERLAP, WindowResult, ingest_symbol, month_windows, variants
from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import Table
from qml_pipeline.timeutil import EPOCH, day_start, utc_now

RAW_GROUP = "raw_market_data"
CONTRACT_CHECK = "contract"
COMPLETE_CHECK = "complete"
WRITER_POOL = "warehouse_writer"
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


def _months_by_symbol(partition_keys: list[str]) -> dict[str, list[datetime]]:
    """`SYMBOL|YYYY-MM-01` keys -> per symbol, its months (sorted)."""
    months: dict[str, set[datetime]] = defaultdict(set)
    for key in partition_keys:
        symbol, month = str(key).split("|")
        months[symbol].add(day_start(month))
    return {s: sorted(m) for s, m in sorted(months.items())}


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


def _partition_metadata(results: list[WindowResult]) -> dict[str, object]:
    """What one partition (symbol, month) holds after this run: true for that partition only."""
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
                              description=f"the rows this run fetched meet the {table.name} contract (pandera: types, "
                                          "ranges, finite numbers, one row per key"
                                          + (", plausible bars (QML_BAR_OUTLIER_*)" if table is schemas.KLINES else "")
                                          + "); failures are named by symbol and time, and nothing of the run is "
                                            "written"),
            dg.AssetCheckSpec(COMPLETE_CHECK, asset=name, blocking=True, partitions_def=RAW_PARTITIONS,
                              description=f"after the merge, the partition holds every {venue} stamp its source "
                                          "should fill (candle grid, OI period grid, funding settlements with their "
                                          "interval) where the source serves data (its coverage: listing, history "
                                          "depth, live edge), apart from known permanent gaps; missing stamps are "
                                          "listed")],
    )
    def raw_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                  market: MarketDataResource) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        wh = warehouse.for_run(context)
        source = market.open(context.log.info, cache_dir=wh.cache_dir, venue=venue)
        incomplete: list[str] = []
        fetched = 0
        overlap = run_overlap(context.run.tags)
        edge = live_edge(source)
        for symbol, months in _months_by_symbol(context.partition_keys).items():
            series = variants(table, SETTINGS.kline_intervals, market.oi_period)
            windows = month_windows(table, symbol, months, series, until=edge)
            try:
                with input_errors_as_failures(f"{table.name} {symbol}: "):
                    results = ingest_symbol(wh, source, windows, refetch=market.refetch, overlap=overlap,
                                            funding_rate_cap=market.funding_rate_cap,
                                            plausibility=market.plausibility(), progress=context.log.info)
            except dg.Failure as failure:
                cause = failure.__context__
                if isinstance(cause, schemas.ValidationError):
                    shown = markdown_table(cause.failures.drop("index"))
                    yield dg.AssetCheckResult(check_name=CONTRACT_CHECK, passed=False,
                                              metadata={"symbol": symbol, "failures": shown})
                raise
            fetched += sum(r.fetched for r in results)
            serves = "; ".join(f"{v or table.name} {_span(source.coverage(table.name, symbol, v))}" for v in series)
            per_month: dict[datetime, list[WindowResult]] = defaultdict(list)
            for r in results:
                per_month[r.window.start].append(r)
            for month, month_results in per_month.items():
                key = f"{symbol}|{month:%Y-%m-%d}"
                context.add_asset_metadata({**_partition_metadata(month_results), "source_serves": serves},
                                           partition_key=key)
                missing = [r for r in month_results if not r.complete]
                if missing:
                    incomplete.append(key)
                context.log_event(dg.AssetCheckEvaluation(
                    asset_key=context.asset_key, check_name=COMPLETE_CHECK, passed=not missing, partition=key,
                    blocking=True, description="; ".join(r.completeness_message() for r in month_results),
                    metadata={"missing_stamps": sum(r.stored_missing.len() for r in month_results),
                              "missing": "; ".join(describe_stamps(r.stored_missing) for r in missing) or "none",
                              "known_gap_stamps": sum(r.known_missing.len() for r in month_results)}))
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
                                    metadata={"rows_checked": fetched}),
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


def _stored_contract_check(table: Table, venue: str) -> dg.AssetChecksDefinition:
    by_venue = "venue" in table.names

    @dg.asset_check(asset=raw_asset_name(table, venue), name="stored_rows_valid",
                    description=f"every stored {table.name} row" + (f" of {venue}" if by_venue else "")
                                + " (all revisions) meets the contract; stored keys unique per revision")
    def check(warehouse: WarehouseResource, market: MarketDataResource) -> dg.AssetCheckResult:
        stored = warehouse.get().read(table, revisions=True, **({"venue": venue} if by_venue else {}))
        failures = schemas.validation_failures(table, stored, market.funding_rate_cap, market.plausibility())
        return dg.AssetCheckResult(passed=failures.height == 0,
                                   metadata={"dagster/row_count": stored.height,
                                             "failures": markdown_table(failures.drop("index"))})

    return check


def raw_checks(venues: tuple[str, ...]) -> list[dg.AssetChecksDefinition]:
    return [_stored_contract_check(table, v) for v in venues for table in venue_tables(v)]


def raw_asset_keys(table: Table, venues: tuple[str, ...] = SETTINGS.venues) -> list[str]:
    """The assets that write `table`, one per configured venue reading it."""
    return [raw_asset_name(table, v) for v in venues if table in venue_tables(v)]


RAW_ASSETS = raw_assets(SETTINGS.venues)
RAW_CHECKS = raw_checks(SETTINGS.venues)
