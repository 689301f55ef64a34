"""Per-trade market context: open interest across venues, the estimated liquidation map, optional Coinglass
liquidations, the point-in-time feature table and the OHLCV windows for the model."""

import contextlib
from pathlib import Path

import dagster as dg
import polars as pl

from dagster_project.defs.raw_market_data import raw_asset_keys
from dagster_project.failures import input_errors_as_failures
from dagster_project.metadata import markdown_table, row_count, table_metadata
from dagster_project.resources import CoinglassResource, MarketDataResource, WarehouseResource
from qml_pipeline.store import schemas
from qml_pipeline.features.aggregate import build_open_interest_aggregate
from qml_pipeline.features.context import build_context, rebuild_liquidation_maps
from qml_pipeline.features.point_in_time import MAX_NULL_SHARE, core_feature_nulls
from qml_pipeline.sources.coinglass import SKIP_REASON
from qml_pipeline.timeutil import day_start, utc_now
from qml_pipeline.features.windows import build_ohlcv_windows, save_windows

GROUP = "context"


def windows_path(warehouse: WarehouseResource) -> Path:
    return warehouse.get().root / "artifacts" / "ohlcv_windows" / "windows.npz"


@dg.asset(deps=raw_asset_keys(schemas.OPEN_INTEREST), group_name=GROUP, kinds={"ducklake", "duckdb"},
          metadata=table_metadata(schemas.OPEN_INTEREST_AGGREGATE))
def open_interest_aggregate(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                            market: MarketDataResource) -> dg.MaterializeResult:
    """USD open interest summed over the configured venues (QML_VENUES) known at each 5-minute instant, point
    in time, with per-venue shares and which venues were present (docs/venues.md)."""
    wh = warehouse.for_run(context)
    with contextlib.closing(wh.connect()) as con:
        aggregate = build_open_interest_aggregate(con, tuple(market.venues), until=utc_now())
    wh.replace_table(schemas.OPEN_INTEREST_AGGREGATE, aggregate)
    coverage = (aggregate.group_by("symbol", "venues_present").agg(pl.len().alias("instants"),
                                                                    pl.col("event_time").min().alias("first"),
                                                                    pl.col("event_time").max().alias("last"))
                .sort("symbol", "first"))
    return dg.MaterializeResult(metadata={"dagster/row_count": aggregate.height,
                                          "venues_configured": ", ".join(market.venues),
                                          "instants_per_venue_set": markdown_table(coverage)})


@dg.asset(deps=["open_interest", "klines"], group_name=GROUP, kinds={"ducklake", "duckdb"},
          metadata=table_metadata(schemas.LIQUIDATION_MAP))
def liquidation_map(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                    market: MarketDataResource) -> dg.MaterializeResult:
    """Estimated liquidation notional per price bin every 4 hours, from OI increases and klines
    (an open model, not exchange data: docs/liquidation_map.md)."""
    wh = warehouse.for_run(context)
    rows = rebuild_liquidation_maps(wh, market.symbols, day_start(market.start_date))
    for symbol in (s for s, n in rows.items() if n == 0):
        context.log.warning(f"{symbol}: no open interest, so no estimated liquidation map")
    return dg.MaterializeResult(metadata={**row_count(wh, schemas.LIQUIDATION_MAP), "rows": sum(rows.values()),
                                          "rows_per_symbol": markdown_table(pl.DataFrame(
                                              {"symbol": list(rows), "rows": list(rows.values())}))})


@dg.asset(group_name=GROUP, kinds={"ducklake", "duckdb"}, metadata=table_metadata(schemas.LIQUIDATIONS),
          output_required=False)
def liquidations(context: dg.AssetExecutionContext, warehouse: WarehouseResource, market: MarketDataResource,
                 coinglass: CoinglassResource):
    """Realised liquidations per symbol from Coinglass (optional, paid: COINGLASS_API_KEY). Without a key
    the asset is skipped with the reason logged and recorded; the rest of the pipeline runs."""
    with input_errors_as_failures("Coinglass: "):  # a malformed key is refused, never quoted
        client = coinglass.client()
    if client is None:
        context.log.warning(SKIP_REASON)
        context.log_event(dg.AssetObservation(asset_key="liquidations", metadata={"skipped": SKIP_REASON}))
        return
    wh = warehouse.for_run(context)
    start, end = day_start(market.start_date), utc_now()
    total = 0
    with wh.write(f"merge liquidations (Coinglass) for {len(market.symbols)} symbol(s)") as batch:
        for symbol in market.symbols:
            frame = client.pair_history("Binance", symbol, client.plan_min_interval, start, end)
            batch.merge(schemas.LIQUIDATIONS, frame)
            total += frame.height
    yield dg.MaterializeResult(metadata={**row_count(wh, schemas.LIQUIDATIONS), "rows": total, **client.metadata()})


# Not a hard dependency on `liquidations`: that asset is skipped without a Coinglass key, and a skipped
# upstream would skip the features too. Its rows are used whenever they are in the warehouse.
@dg.asset(deps=["trades", *raw_asset_keys(schemas.FUNDING_RATES), "open_interest", "klines", liquidation_map,
                open_interest_aggregate],
          group_name=GROUP, kinds={"ducklake", "duckdb"}, metadata=table_metadata(schemas.TRADE_CONTEXT_FEATURES),
          check_specs=[dg.AssetCheckSpec("feature_nulls", asset="trade_context_features",
                                         description=f"no core feature NULL for more than {MAX_NULL_SHARE:.0%} "
                                                     "of trades (NULL = missing or stale input)")])
def trade_context_features(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                           market: MarketDataResource) -> dg.MaterializeResult:
    """Per trade, the market context as known at decision_time (available_at <= decision_time only)."""
    wh = warehouse.for_run(context)
    features = build_context(wh, venues=tuple(market.venues))
    wh.replace_table(schemas.TRADE_CONTEXT_FEATURES, features)
    core, too_sparse = core_feature_nulls(features)
    return dg.MaterializeResult(
        metadata={"dagster/row_count": features.height, "trades": features.height,
                  "null_counts": markdown_table(core)},
        check_results=[dg.AssetCheckResult(
            check_name="feature_nulls", passed=not too_sparse, severity=dg.AssetCheckSeverity.WARN,
            description=f"mostly NULL: {too_sparse}" if too_sparse else "every core feature mostly present",
            metadata={"null_counts": markdown_table(core)})])


@dg.asset(deps=["trades", "klines"], group_name=GROUP, kinds={"numpy"})
def ohlcv_windows(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The 50 bars ending at the last bar closed before each trade's decision_time, normalised
    (prices / last close - 1, volume / window mean), as float32 (n, 50, 5) in an .npz file."""
    with contextlib.closing(warehouse.get().connect()) as con:
        trade_ids, array = build_ohlcv_windows(con)
    path = save_windows(windows_path(warehouse), trade_ids, array)
    return dg.MaterializeResult(metadata={"trades": len(trade_ids), "shape": str(array.shape),
                                          "path": dg.MetadataValue.path(str(path))})
