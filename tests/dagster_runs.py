"""Running the raw assets in process for tests: an instance that knows the symbols, range tags by day."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import dagster as dg

from dagster_project.defs.raw_market_data import RAW_ASSETS, RAW_CHECKS, raw_assets, raw_checks
from dagster_project.partitions import range_tags, sync_symbols
from dagster_project.resources import MarketDataResource, WarehouseResource

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def instance_with(symbols: Iterable[str] = ("BTCUSDT", "ETHUSDT")) -> dg.DagsterInstance:
    instance = dg.DagsterInstance.ephemeral()
    sync_symbols(instance, symbols)
    return instance


def materialize_raw(root: Path, symbol: str, first_day: str, last_day: str, *,
                    market: MarketDataResource | None = None, instance: dg.DagsterInstance | None = None,
                    resources: Mapping[str, object] | None = None,
                    venues: tuple[str, ...] | None = None) -> dg.ExecuteInProcessResult:
    """The raw assets and their checks (the configured venues', or `venues`') for `symbol` over the months
    holding first_day .. last_day."""
    assets = [*RAW_ASSETS, *RAW_CHECKS] if venues is None else [*raw_assets(venues), *raw_checks(venues)]
    return dg.materialize(
        assets, instance=instance or instance_with([symbol]),
        resources={"warehouse": WarehouseResource(root=str(root)),
                   "market": market or MarketDataResource(source="sample"), **(resources or {})},
        tags=range_tags(symbol, first_day, last_day), raise_on_error=False, run_config=QUIET)


def partition_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, dict[str, object]]:
    """Partition key -> its materialisation metadata (values), for one asset."""
    return {str(e.partition): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset}
