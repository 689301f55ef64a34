"""The seed's research phases: 9 (winners vs losers), 10 (rule overlay backtest), 11 (model), and the gates between
them: `phase9_gate` and `phase10_gate` are assets whose blocking `passed` check stops the next phase, in a run and
in declarative automation alike. They sit on their own nodes (not on the phase assets) so the sensitivity runs
and the report, which explain the verdicts, still run when a gate fails. QML_OVERRIDE_GATES=1 turns a failed gate
into a WARN result (visible in the UI and the report) that blocks nothing."""

import dagster as dg
import polars as pl

from dagster_project.automation import after_rebuild_of
from dagster_project.defs.context import (
    ohlcv_windows,
    trade_context_features,
    windows_path,
)
from dagster_project.metadata import markdown_table, row_count, table_metadata
from dagster_project.resources import ResearchResource, WarehouseResource
from qml_pipeline.features.windows import load_windows
from qml_pipeline.research.overlay import apply_overlay
from qml_pipeline.research.overlay_tuning import config_from_tuning
from qml_pipeline.research.phase9 import AnalysisConfig
from qml_pipeline.research.phases import (
    GateClosedError,
    Phase10Settings,
    gate_rows,
    gate_summary,
    list_model_versions,
    model_inputs,
    require_gate,
    run_phase9,
    run_phase10,
    run_phase11,
)
from qml_pipeline.store import schemas
from qml_pipeline.trades.metrics import apply_timeout_policy

GROUP = "research"


GATE_CHECK = "passed"


def gate_status(gates: pl.DataFrame, gate: str, override: bool) -> tuple[bool, str]:
    """(the stored `gate` passed, its one-line status: passed, FAILED with the failed parts and how to override,
    or OVERRIDDEN: ...)."""
    rows = gates.filter(pl.col("gate") == gate)
    passed = bool(rows.height and rows["gate_passed"][0])
    try:
        return passed, require_gate(rows, gate, override)
    except GateClosedError as exc:
        return passed, str(exc)


@dg.asset(deps=[trade_context_features], group_name=GROUP, kinds={"ducklake", "duckdb"},
          metadata=table_metadata(schemas.CONTEXT_ERROR_ANALYSIS))
def context_error_analysis(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                           research: ResearchResource) -> dg.MaterializeResult:
    """Phase 9: winners vs losers on every context feature (with the minimum detectable effect), the
    identifiable-issue shares of losers and winners under each definition, the manual-review export,
    and the gate."""
    wh = warehouse.for_run(context)
    result = run_phase9(wh.read(schemas.TRADES), wh.read(schemas.TRADE_CONTEXT_FEATURES), wh.root / "review",
                        AnalysisConfig(timeout_as=research.timeout_as))
    wh.replace_table(schemas.CONTEXT_ERROR_ANALYSIS, result.stats)
    wh.replace_table(schemas.CONTEXT_ISSUE_SHARES, result.issue_sensitivity)
    wh.replace_group(schemas.RESEARCH_GATES, gate_rows("phase9", result.gate), "gate", "phase9")
    shown = result.stats.select("feature", "n_win", "n_loss", "median_win", "median_loss", "cliffs_delta",
                                "mw_p", "ks_p", "p_adj", "significant", "mde_cliffs_delta")
    return dg.MaterializeResult(
        metadata={"dagster/row_count": result.stats.height, "filled_trades": result.n_trades, "losers_with_context_issue": result.issue["share"],
                  "winners_with_context_issue": result.issue["winner_share"],
                  "issue_fisher_p": result.issue["fisher_p"], "timeout_as": research.timeout_as,
                  "winners_vs_losers": markdown_table(shown),
                  "issue_shares_by_definition": markdown_table(result.issue_sensitivity),
                  "review_sheet": dg.MetadataValue.path(str(result.review_files["combined"])),
                  "review_workbook": dg.MetadataValue.path(str(result.review_files["workbook"])),
                  "gate": result.gate.message, "gate_parts": markdown_table(gate_summary(result.gate))})


def _gate_asset(gate: str, phase: str, judges: str) -> dg.AssetsDefinition:
    name = f"{gate}_gate"

    @dg.asset(name=name, deps=[phase], group_name=GROUP, kinds={"ducklake"},
              description=f"The {gate} gate as {phase} stored it (table research_gates, gate = '{gate}'); its "
                          f"blocking `{GATE_CHECK}` check stops everything downstream unless QML_OVERRIDE_GATES=1.",
              check_specs=[dg.AssetCheckSpec(GATE_CHECK, asset=name, blocking=True, description=judges)])
    def gate_asset(warehouse: WarehouseResource, research: ResearchResource) -> dg.MaterializeResult:
        rows = warehouse.get().read(schemas.RESEARCH_GATES).filter(pl.col("gate") == gate)
        passed, status = gate_status(rows, gate, research.override_gates)
        overridden = research.override_gates and not passed
        parts = {r["part"]: dg.MetadataValue.text(("PASS " if r["passed"] else "FAIL ") + r["message"])
                 for r in rows.iter_rows(named=True)}
        return dg.MaterializeResult(
            metadata={"status": status, "evaluated_at": str(rows["evaluated_at"][0]) if rows.height else "never"},
            check_results=[dg.AssetCheckResult(
                check_name=GATE_CHECK, passed=passed, description=status,
                # an overridden failure is shown (WARN) but blocks nothing
                severity=dg.AssetCheckSeverity.WARN if overridden else dg.AssetCheckSeverity.ERROR,
                metadata={"overridden": overridden, **parts})])

    return gate_asset


phase9_gate = _gate_asset("phase9", "context_error_analysis",
                          "200+ trades, a feature that differs significantly (BH-adjusted), 70% of losers with an "
                          "identifiable context issue (the seed's literal part) and losers with an issue more often "
                          "than winners (Fisher's exact test)")


@dg.asset(deps=[phase9_gate], group_name=GROUP, kinds={"ducklake", "duckdb"},
          metadata=table_metadata(schemas.CONTEXT_OVERLAY))
def context_overlay(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                    research: ResearchResource) -> dg.MaterializeResult:
    """Phase 10: the seed's ContextOverlay per trade (itemised), its backtest vs the baseline (sizing,
    filtering and its control confidence_only; tuned on earlier trades, judged on later ones) with
    nulls, cluster bootstrap intervals and minimum detectable effects, and the gate. Runs only past
    the phase 9 gate (its blocking check), or with QML_OVERRIDE_GATES=1 (recorded)."""
    wh = warehouse.for_run(context)
    _, phase9_status = gate_status(wh.read(schemas.RESEARCH_GATES), "phase9", research.override_gates)
    plot = wh.root / "reports" / "equity_baseline_vs_overlay.png"
    result = run_phase10(wh.read(schemas.TRADES), wh.read(schemas.TRADE_CONTEXT_FEATURES), plot,
                         Phase10Settings(timeout_as=research.timeout_as))
    wh.replace_table(schemas.CONTEXT_OVERLAY, result.overlay)
    wh.replace_table(schemas.OVERLAY_BACKTEST, result.metrics)
    wh.replace_table(schemas.OVERLAY_DIFFERENCES, result.differences)
    wh.replace_table(schemas.OVERLAY_TUNING, result.tuning)
    wh.replace_group(schemas.RESEARCH_GATES, gate_rows("phase10", result.gate), "gate", "phase10")
    overall = result.metrics.filter(pl.col("scope") == "overall").select(
        "period", "variant", "trades", "win_rate", "expectancy_r", "profit_factor", "sharpe_per_trade",
        "sharpe_daily", "sharpe_trade_count_dependent", "max_drawdown_r")
    judged = result.differences.filter(
        (pl.col("period") == "judging") & pl.col("metric").is_in(["win_rate", "sharpe_per_trade", "sharpe_daily"])
    ).select("variant", "control", "metric", "control_value", "variant_value", "diff", "ci_low", "ci_high",
             "ci_low_independent", "ci_high_independent", "null_p95", "null_percentile", "mde")
    return dg.MaterializeResult(
        metadata={**row_count(wh, schemas.CONTEXT_OVERLAY), "phase9_gate": phase9_status,
                  "metrics": markdown_table(overall),
                  "judged_differences": markdown_table(judged),
                  "rules_fired": markdown_table(result.backtest.rule_counts),
                  "tuned_thresholds": str(result.tuned.config), "tuning_objective": result.tuned.objective,
                  "equity_curve": dg.MetadataValue.md(f"![equity curve](file://{result.plot})"),
                  "equity_curve_path": dg.MetadataValue.path(str(result.plot)),
                  "gate": result.gate.message, "gate_parts": markdown_table(gate_summary(result.gate))})


phase10_gate = _gate_asset("phase10", "context_overlay",
                           "out of sample (thresholds tuned on earlier trades): win rate up > 5 points and per-trade "
                           "Sharpe up > 0.2 (annualised at the control's trade rate), against confidence alone and "
                           "against every trade, each above chance of the same size")


@dg.multi_asset(
    specs=[
        dg.AssetSpec("context_model", deps=[phase10_gate, ohlcv_windows], group_name=GROUP, kinds={"pytorch"},
                     description="Phase 11: the fusion network (50-bar OHLCV CNN + LSTM, context dense, fused "
                                 "head), judged by purged walk-forward against the probability baselines (base rate, "
                                 "base_confidence calibrated per fold), a logistic regression and the rule overlay "
                                 "with phase 10's tuned thresholds, then trained on every trade and saved as a new "
                                 "version (warehouse/models/<version>/). Earlier versions are kept and listed.",
                     metadata=table_metadata(schemas.MODEL_EVALUATION)),
        dg.AssetSpec("model_predictions", deps=[phase10_gate, ohlcv_windows], group_name=GROUP,
                     kinds={"ducklake", "duckdb"}, metadata=table_metadata(schemas.MODEL_PREDICTIONS),
                     description="Each trade's adjusted confidence from the fusion model, out of sample "
                                 "(walk-forward), with the model version."),
    ])
def context_model(context: dg.AssetExecutionContext, warehouse: WarehouseResource, research: ResearchResource):
    """Runs only past the phase 10 gate (its blocking check), or with QML_OVERRIDE_GATES=1 (recorded)."""
    from qml_pipeline.research.model_data import ModelConfig

    wh = warehouse.for_run(context)
    _, phase10_status = gate_status(wh.read(schemas.RESEARCH_GATES), "phase10", research.override_gates)
    trade_ids, windows = load_windows(windows_path(warehouse))
    trades = apply_timeout_policy(wh.read(schemas.TRADES), research.timeout_as)
    features = wh.read(schemas.TRADE_CONTEXT_FEATURES)
    tuned = config_from_tuning(wh.read(schemas.OVERLAY_TUNING))
    inputs = model_inputs(trades, features, apply_overlay(trades, features, tuned), trade_ids, windows)
    result = run_phase11(inputs, wh.root / "models",
                         ModelConfig(epochs=research.model_epochs, seed=research.model_seed),
                         overlay_min_confidence=tuned.min_confidence)
    wh.replace_group(schemas.MODEL_EVALUATION, result.evaluation, "model_version", result.version)
    wh.replace_table(schemas.MODEL_PREDICTIONS, result.predictions)
    wh.replace_group(schemas.MODEL_BACKTEST, result.backtest, "period", result.version)
    for note in result.notes:
        context.log.info(note)
    yield dg.MaterializeResult(asset_key="context_model", metadata={
        **row_count(wh, schemas.MODEL_EVALUATION), "version": result.version, "phase10_gate": phase10_status, "verdict": result.report.verdict,
        "overlay_thresholds": str(tuned),
        "out_of_sample": markdown_table(result.report.overall),
        "per_year": markdown_table(result.report.per_year),
        "bootstrap": markdown_table(result.report.bootstrap),
        "calibration": markdown_table(result.report.calibration),
        "backtest_with_probabilities": markdown_table(result.backtest.filter(pl.col("scope") == "overall").select(
            "variant", "trades", "win_rate", "expectancy_r", "profit_factor", "sharpe_per_trade", "sharpe_daily",
            "max_drawdown_r")),
        "versions": markdown_table(list_model_versions(wh.root / "models")),
        "path": dg.MetadataValue.path(str(result.path))})
    predicted = result.predictions.filter(pl.col("probability").is_not_null()).height
    yield dg.MaterializeResult(asset_key="model_predictions", metadata={
        "dagster/row_count": result.predictions.height, "version": result.version, "trades": result.predictions.height, "out_of_sample_predictions": predicted,
        "phase10_gate": phase10_status})


@dg.asset_check(asset="context_model", automation_condition=after_rebuild_of("context_model"), description="the fusion model's out-of-sample (walk-forward) AUC is "
                                                   "above chance (0.5); a warning, since few trades make it noisy")
def model_beats_chance(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    rows = warehouse.get().read(schemas.MODEL_EVALUATION).filter(
        (pl.col("scope") == "overall") & (pl.col("model") == "fusion"))
    auc = rows.sort("model_version")["auc"][-1] if rows.height else None
    if auc is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   description="no out-of-sample AUC stored (model not evaluated, or one class only)")
    return dg.AssetCheckResult(passed=auc > 0.5, severity=dg.AssetCheckSeverity.WARN,
                               description=f"out-of-sample fusion AUC {auc:.3f} (0.5 = chance)",
                               metadata={"auc": auc})
