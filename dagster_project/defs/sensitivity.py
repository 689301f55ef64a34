"""Sensitivity runs: the phase 9 and 10 gates under other OI publication lags, timeout label
policies, thresholds and market regimes (qml_pipeline/research/sensitivity.py). They explain the
gates' verdicts rather than follow them, so they run whatever the gates say."""

import dagster as dg
import polars as pl

from dagster_project.defs.research import context_error_analysis
from dagster_project.metadata import markdown_table, table_metadata
from dagster_project.resources import MarketDataResource, ResearchResource, WarehouseResource
from qml_pipeline.research.phase9 import AnalysisConfig
from qml_pipeline.research.phases import Phase10Settings
from qml_pipeline.research.sensitivity import (
    PLOTTED_FEATURE,
    SensitivityInputs,
    oi_lag_sensitivity,
    regime_sensitivity,
    sensitivity_plot,
    threshold_sensitivity,
    timeout_sensitivity,
)
from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import Table
from qml_pipeline.store.warehouse import Warehouse

GROUP = "sensitivity"


def _inputs(wh: Warehouse, research: ResearchResource) -> SensitivityInputs:
    return SensitivityInputs(wh.read(schemas.TRADES), wh.read(schemas.TRADE_CONTEXT_FEATURES),
                             AnalysisConfig(timeout_as=research.timeout_as),
                             Phase10Settings(timeout_as=research.timeout_as))


def _publish(wh: Warehouse, table: Table, rows: pl.DataFrame, title: str,
             feature: str = PLOTTED_FEATURE) -> dg.MaterializeResult:
    wh.replace_table(table, schemas.conform(table, rows))
    plot = sensitivity_plot(rows, wh.root / "reports" / f"{table.name}.png", title, feature)
    gates = (rows.filter(pl.col("gate") != "phase9_features")
             .select("setting", "gate", "part", "passed", "value", "threshold", "null_p95", "mde", "p_value"))
    verdicts = rows.group_by("setting", "gate", maintain_order=True).agg(pl.col("gate_passed").first()).filter(
        pl.col("gate") != "phase9_features")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": rows.height, "verdicts": markdown_table(verdicts), "gate_parts": markdown_table(gates, max_rows=120),
        "plot": dg.MetadataValue.md(f"![{title}](file://{plot})"), "plot_path": dg.MetadataValue.path(str(plot))})


@dg.asset(deps=[context_error_analysis, "klines", "funding_rates", "open_interest"], group_name=GROUP,
          kinds={"ducklake", "duckdb"}, metadata=table_metadata(schemas.SENSITIVITY_OI_LAG))
def sensitivity_oi_lag(context: dg.AssetExecutionContext, warehouse: WarehouseResource, research: ResearchResource,
                       market: MarketDataResource) -> dg.MaterializeResult:
    """Both gates with open interest published 0 / 60 / 300 / 900 s after each row's stamp + period
    (point-in-time features recomputed; stored rows untouched)."""
    wh = warehouse.for_run(context)
    rows = oi_lag_sensitivity(_inputs(wh, research), wh.read(schemas.KLINES), wh.read(schemas.FUNDING_RATES, venue="binance"),
                              wh.read(schemas.OPEN_INTEREST, venue="binance"), stored_lag_seconds=market.oi_publication_lag_seconds)
    return _publish(wh, schemas.SENSITIVITY_OI_LAG, rows, "OI publication lag", "oi_change_24h")


@dg.asset(deps=[context_error_analysis], group_name=GROUP, kinds={"ducklake", "duckdb"},
          metadata=table_metadata(schemas.SENSITIVITY_TIMEOUTS))
def sensitivity_timeouts(context: dg.AssetExecutionContext, warehouse: WarehouseResource, research: ResearchResource) -> dg.MaterializeResult:
    """Both gates with timeouts as losses (the seed's meaning), excluded, or won when their R is positive."""
    wh = warehouse.for_run(context)
    return _publish(wh, schemas.SENSITIVITY_TIMEOUTS, timeout_sensitivity(_inputs(wh, research)), "Timeout labels")


@dg.asset(deps=[context_error_analysis], group_name=GROUP, kinds={"ducklake", "duckdb"},
          metadata=table_metadata(schemas.SENSITIVITY_THRESHOLDS))
def sensitivity_thresholds(context: dg.AssetExecutionContext, warehouse: WarehouseResource, research: ResearchResource) -> dg.MaterializeResult:
    """Both gates with the overlay's default thresholds and with those tuned on the earlier trades
    (phase 10 on the later trades in both)."""
    wh = warehouse.for_run(context)
    return _publish(wh, schemas.SENSITIVITY_THRESHOLDS, threshold_sensitivity(_inputs(wh, research)),
                    "Default vs tuned thresholds")


@dg.asset(deps=[context_error_analysis, "klines"], group_name=GROUP, kinds={"ducklake", "duckdb"},
          metadata=table_metadata(schemas.SENSITIVITY_REGIMES))
def sensitivity_regimes(context: dg.AssetExecutionContext, warehouse: WarehouseResource, research: ResearchResource) -> dg.MaterializeResult:
    """Both gates per calendar year and per trend / volatility regime known at decision time (90-day
    return sign x 30-day volatility tercile): does context mean the same in every regime (the seed's
    risk 2)?"""
    wh = warehouse.for_run(context)
    return _publish(wh, schemas.SENSITIVITY_REGIMES, regime_sensitivity(_inputs(wh, research), wh.read(schemas.KLINES)),
                    "Per calendar year and market regime")

