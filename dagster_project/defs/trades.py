"""The trades the research judges and their baseline metrics."""

import dagster as dg
import polars as pl

from dagster_project.failures import input_errors_as_failures
from dagster_project.metadata import markdown_table, table_metadata
from dagster_project.resources import ResearchResource, TradeSourceResource, WarehouseResource
from qml_pipeline.store import schemas
from qml_pipeline.research.phase9 import AnalysisConfig, label_trades
from qml_pipeline.trades.build import baseline_metrics as compute_baseline_metrics
from qml_pipeline.trades.build import build_trades
from qml_pipeline.trades.contract import FILLED_OUTCOMES

GROUP = "trades"
# the phase 9 gate's minimum (the library owns it: research/phase9.py AnalysisConfig)
MIN_TRADES_FOR_PHASE9 = AnalysisConfig().min_trades


@dg.asset(
    deps=["klines", "funding_rates"], group_name=GROUP, kinds={"ducklake", "duckdb"},
    metadata=table_metadata(schemas.TRADES),
    check_specs=[dg.AssetCheckSpec("enough_trades_for_phase9", asset="trades",
                                   description=f"at least {MIN_TRADES_FOR_PHASE9} filled trades as phase 9 counts "
                                               "them (after the timeout policy; seed checklist)")],
)
def trades(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
           trade_source: TradeSourceResource, research: ResearchResource) -> dg.MaterializeResult:
    """A user's backtest export (validated; bad rows named, nothing written) or the reference detector's trades."""
    wh = warehouse.for_run(context)
    with input_errors_as_failures():  # a refused export raises here, before the stored trades are touched
        build = build_trades(wh, trade_source.config())
    for warning in build.warnings:
        context.log.warning(warning)
    wh.replace_table(schemas.TRADES, build.trades, allow_empty=False)
    outcomes = build.trades.group_by("symbol", "timeframe", "outcome").len().sort("symbol", "timeframe", "outcome")
    filled = build.trades.filter(pl.col("outcome").is_in(FILLED_OUTCOMES)).height
    judged = label_trades(build.trades, research.timeout_as).height  # what phase 9 counts
    return dg.MaterializeResult(
        metadata={"source": build.source, "dagster/row_count": build.trades.height, "filled_trades": filled,
                  "warnings": "\n".join(build.warnings) or "none", "outcomes": markdown_table(outcomes)},
        check_results=[dg.AssetCheckResult(
            check_name="enough_trades_for_phase9", passed=judged >= MIN_TRADES_FOR_PHASE9,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"trades_phase9_counts": judged, "timeout_as": research.timeout_as,
                      "required": MIN_TRADES_FOR_PHASE9})],
    )


@dg.asset(deps=[trades], group_name=GROUP, kinds={"ducklake", "duckdb"},
          metadata=table_metadata(schemas.BASELINE_METRICS))
def baseline_metrics(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Win rate, average R, expectancy, profit factor, Sharpe, max drawdown: overall, per year, symbol, timeframe."""
    wh = warehouse.for_run(context)
    metrics = compute_baseline_metrics(wh.read(schemas.TRADES))
    wh.replace_table(schemas.BASELINE_METRICS, metrics)
    shown = metrics.select("dimension", "group", "trades", "win_rate", "expectancy_r", "profit_factor",
                           "sharpe_per_trade", "sharpe_daily", "max_drawdown_r")
    overall = metrics.filter(pl.col("dimension") == "overall").row(0, named=True)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": metrics.height, "trades": overall["trades"], "win_rate": overall["win_rate"], "expectancy_r": overall["expectancy_r"],
        "sharpe_per_trade": overall["sharpe_per_trade"], "sharpe_daily": overall["sharpe_daily"],
        "metrics": markdown_table(shown)})
