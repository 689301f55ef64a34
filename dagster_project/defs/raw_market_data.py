"""Raw market-data assets: funding rates, open interest and klines, partitioned by symbol and day."""


from collections.abc import Iterator

import dagster as dg
import polars as pl

from dagster_project.failures import input_errors_as_failures
from dagster_project.metadata import markdown_table, table_metadata
from dagster_project.partitions import RAW_PARTITIONS
from dagster_project.resources import SETTINGS, MarketDataResource, WarehouseResource
from qml_pipeline.store import schemas
from qml_pipeline.sources.ingest import fetch, ingest, partition_ranges
from qml_pipeline.store.schemas import Table

RAW_GROUP = "raw_market_data"
CONTRACT_CHECK = "contract"


def _variants(table: Table) -> list[dict[str, str]]:
    if table is schemas.KLINES:
        return [{"interval": i} for i in SETTINGS.kline_intervals]
    return [{}]


def _raw_asset(table: Table, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=table.name,
        description=description,
        partitions_def=RAW_PARTITIONS,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=RAW_GROUP,
        kinds={"parquet", "duckdb"},
        metadata=table_metadata(table),
        check_specs=[dg.AssetCheckSpec(
            CONTRACT_CHECK, asset=table.name, blocking=True,
            description=f"fetched rows meet the {table.name} contract (pandera: types, ranges, finite numbers, one "
                        "row per key" + (", plausible bars (QML_BAR_OUTLIER_*)" if table is schemas.KLINES else "")
                        + "); failures are named by symbol and time, and nothing of the run is written")],
    )
    def raw_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                  market: MarketDataResource) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        wh = warehouse.get()
        source = market.open(context.log.info, cache_dir=wh.root / "cache")
        ranges = partition_ranges(context.partition_keys)
        frames = []
        for symbol, symbol_ranges in ranges.items():
            for start, end in symbol_ranges:
                for parts in _variants(table):
                    what = " ".join([table.name, symbol, *parts.values(), f"[{start:%Y-%m-%d}, {end:%Y-%m-%d})"])
                    context.log.info(f"fetching {what}")
                    with input_errors_as_failures(f"{what}: "):
                        frame = fetch(source, table, symbol, start, end, oi_period=market.oi_period, **parts)
                    failures = schemas.validation_failures(table, schemas.conform(table, frame),
                                                           market.funding_rate_cap, market.plausibility())
                    if failures.height:
                        yield dg.AssetCheckResult(
                            check_name=CONTRACT_CHECK, passed=False,
                            metadata={"symbol": symbol, "failures": markdown_table(failures.drop("index"))})
                        raise dg.Failure(description=schemas.describe_failures(table.name, failures),
                                         metadata={"failures": markdown_table(failures.drop("index"))},
                                         allow_retries=False)
                    frames.append((symbol, start, end, parts, frame))
        with input_errors_as_failures(f"{table.name}: "):
            results = [ingest(wh, table, frame, symbol=symbol, start=start, end=end,
                              funding_rate_cap=market.funding_rate_cap, **parts)
                       for symbol, start, end, parts, frame in frames]
        wh.refresh_catalog()
        summary = pl.DataFrame([r.as_row() for r in results]) if results else pl.DataFrame()
        empty = sorted({r.symbol for r in results if r.rows == 0})
        if empty:
            context.log.warning(f"{table.name}: source '{market.source}' has no rows for {empty} in this range")
        stats = getattr(source, "request_stats", lambda: {})()
        archive = [r.as_dict() for r in getattr(source, "archive_reports", [])]
        collapsed = getattr(source, "identical_duplicates", {})
        archive_md = markdown_table(pl.DataFrame([
            {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()} for r in archive]
        )) if archive else "no archive files used"
        yield dg.MaterializeResult(
            metadata={
                "source": market.source,
                "rows_fetched": sum(r.rows for r in results),
                "rows_replaced": sum(r.rows_replaced for r in results),
                "first_time": str(min((r.first_time for r in results if r.first_time), default="")),
                "last_time": str(max((r.last_time for r in results if r.last_time), default="")),
                "symbols_without_rows": ", ".join(empty) or "none",
                "requests": stats.get("requests", 0),
                "weight_used": stats.get("weight_used", 0),
                "bytes_received": stats.get("bytes_received", 0),
                "ranges": markdown_table(summary),
                "archive_files": archive_md,
                "identical_duplicate_rows_collapsed": ", ".join(f"{k}: {v}" for k, v in collapsed.items()) or "none",
            },
            check_results=[dg.AssetCheckResult(check_name=CONTRACT_CHECK, passed=True,
                                               metadata={"rows_checked": sum(r.rows for r in results)})],
        )

    return raw_asset


funding_rates = _raw_asset(schemas.FUNDING_RATES,
                           "Funding settlements (fraction per interval), snapped to the settlement grid.")
open_interest = _raw_asset(schemas.OPEN_INTEREST,
                           "Open interest snapshots (base units and USDT), knowable at stamp + period + lag.")
klines = _raw_asset(schemas.KLINES, "Closed candles per configured interval, knowable at their close.")

RAW_ASSETS = [funding_rates, open_interest, klines]


def _stored_contract_check(table: Table) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=table.name, name="stored_rows_valid",
                    description=f"every stored {table.name} row meets the contract, keys unique across files")
    def check(warehouse: WarehouseResource, market: MarketDataResource) -> dg.AssetCheckResult:
        stored = warehouse.get().read(table)
        failures = schemas.validation_failures(table, stored, market.funding_rate_cap, market.plausibility())
        return dg.AssetCheckResult(passed=failures.height == 0,
                                   metadata={"rows": stored.height, "failures": markdown_table(failures.drop("index"))})

    return check


RAW_CHECKS = [_stored_contract_check(t) for t in (schemas.FUNDING_RATES, schemas.OPEN_INTEREST, schemas.KLINES)]
