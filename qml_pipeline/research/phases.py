"""The seed's research phases as functions of warehouse frames: phase 9 (winners vs losers and its
gate), phase 10 (the rule overlay, its backtest tuned early and judged late, and its gate) and
phase 11 (the fusion model judged out of sample). Each returns frames in warehouse contracts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from qml_pipeline.research.evaluation import EvaluationReport, evaluate_models
from qml_pipeline.research.gates import GateResult
from qml_pipeline.research.overlay import OverlayConfig, apply_overlay, join_context
from qml_pipeline.research.overlay_backtest import BacktestResult, equity_curve_plot, overlay_backtest
from qml_pipeline.research.overlay_gate import OverlayGateConfig, phase10_gate
from qml_pipeline.research.overlay_tuning import TuneResult, tune_and_judge, tuning_rows
from qml_pipeline.research.phase9 import (AnalysisConfig, issue_sensitivity, label_trades,
                                          phase9_gate, review_export, winners_vs_losers, with_derived_features)
from qml_pipeline.store import schemas
from qml_pipeline.timeutil import utc_now
from qml_pipeline.trades.contract import FILLED_OUTCOMES
from qml_pipeline.trades.metrics import apply_timeout_policy, summarize, trade_calendar

DEFAULT_TUNING_GRID: dict[str, list[float]] = {
    "funding_threshold": [0.0001, 0.0002, 0.0003],   # fraction per 8h
    "oi_change_threshold": [3.0, 5.0, 8.0],          # percent over 24h
}


class GateClosedError(RuntimeError):
    """A later phase was asked to run past a failed gate without the override."""


def gate_rows(gate: str, result: GateResult, evaluated_at: datetime | None = None) -> pl.DataFrame:
    at = evaluated_at or utc_now()
    rows = [{**p._asdict(), "gate": gate, "part": p.name, "gate_passed": result.passed, "evaluated_at": at}
            for p in result.parts]
    return schemas.conform(schemas.RESEARCH_GATES, pl.DataFrame(rows))


def gate_summary(result: GateResult) -> pl.DataFrame:
    """One row per part (without the message): what it compared, chance, power and intervals."""
    return gate_rows("-", result).select("part", "passed", "value", "threshold", "control", "n", "p_value",
                                         "null_percentile", "null_p95", "mde", "ci_low", "ci_high",
                                         "ci_low_independent", "ci_high_independent")


def require_gate(gates: pl.DataFrame, gate: str, override: bool) -> str:
    """Raise GateClosedError unless `gate` passed or `override` is set; returns a one-line status."""
    rows = gates.filter(pl.col("gate") == gate)
    if rows.is_empty():
        status = f"{gate} gate not evaluated yet"
    elif rows["gate_passed"][0]:
        return f"{gate} gate passed"
    else:
        failed = rows.filter(~pl.col("passed"))["message"].to_list()
        status = f"{gate} gate FAILED: " + "; ".join(failed)
    if override:
        return f"OVERRIDDEN: {status}"
    raise GateClosedError(f"{status}. The next phase does not run past it; set QML_OVERRIDE_GATES=1 "
                          "to run it anyway (the override is recorded in the results).")


# ------------------------------------------------------------------------------ phase 9

@dataclass(frozen=True)
class Phase9Result:
    stats: pl.DataFrame
    issue: dict
    issue_sensitivity: pl.DataFrame
    gate: GateResult
    n_trades: int
    review_files: dict[str, Path]


def run_phase9(trades: pl.DataFrame, features: pl.DataFrame, review_dir: Path | None,
               config: AnalysisConfig | None = None, overlay_config: OverlayConfig | None = None) -> Phase9Result:
    """Winners vs losers, the identifiable-issue shares (every definition), the gate, and (with a
    `review_dir`) the manual-review export."""
    config = config or AnalysisConfig()
    stats = winners_vs_losers(trades, features, config=config)
    judged = with_derived_features(join_context(trades, features))
    sensitivity = issue_sensitivity(judged, overlay_config, config.timeout_as, config.alpha, config.issue_definition)
    issue = sensitivity.filter(pl.col("gate")).drop("gate", "timeout_as").row(0, named=True)
    n_trades = label_trades(trades, config.timeout_as).height
    gate = phase9_gate(stats, issue, n_trades, config, sensitivity)
    files = {} if review_dir is None else review_export(
        trades, features, review_dir, overlay_config=overlay_config, timeout_as=config.timeout_as,
        definition=config.issue_definition)
    return Phase9Result(schemas.conform(schemas.CONTEXT_ERROR_ANALYSIS, stats), issue,
                        schemas.conform(schemas.CONTEXT_ISSUE_SHARES, sensitivity), gate, n_trades, files)


# ------------------------------------------------------------------------------ phase 10

@dataclass(frozen=True)
class Phase10Result:
    overlay: pl.DataFrame
    backtest: BacktestResult
    tuned: TuneResult
    gate: GateResult
    metrics: pl.DataFrame
    differences: pl.DataFrame
    tuning: pl.DataFrame
    plot: Path | None


@dataclass(frozen=True)
class Phase10Settings:
    """How phase 10 is run: the overlay's base thresholds, the gate, the tuning grid and split, the
    timeout policy (metrics.TIMEOUT_POLICIES), the bootstrap / null sizes and the clusters."""

    config: OverlayConfig = field(default_factory=OverlayConfig)
    gate: OverlayGateConfig = field(default_factory=OverlayGateConfig)
    grid: Mapping[str, Sequence[float]] = field(default_factory=lambda: dict(DEFAULT_TUNING_GRID))
    split_fraction: float = 0.6
    timeout_as: str = "loss"
    n_resamples: int = 2000
    n_null: int = 2000
    cluster_by: str = "overlap"
    seed: int = 0


def run_phase10(trades: pl.DataFrame, features: pl.DataFrame, plot_path: Path | None,
                settings: Phase10Settings | None = None) -> Phase10Result:
    """The overlay with the base thresholds on every trade (period 'all'), thresholds tuned on the
    earlier trades and judged on the later ones, and the gate on the judging period."""
    settings = settings or Phase10Settings()
    trades = apply_timeout_policy(trades, settings.timeout_as)
    kw = {"n_resamples": settings.n_resamples, "seed": settings.seed, "n_null": settings.n_null,
          "cluster_by": settings.cluster_by}
    overlay = apply_overlay(trades, features, settings.config)
    backtest = overlay_backtest(trades, overlay, settings.config, **kw)
    tuned = tune_and_judge(trades, features, settings.grid, split_fraction=settings.split_fraction,
                           base_config=settings.config, objective_variant=settings.gate.variant, **kw)
    gate = phase10_gate(tuned, settings.gate)
    periods = {"all": backtest, "tuning": tuned.tuning, "judging": tuned.judging}
    metrics = pl.concat([r.metrics.with_columns(pl.lit(p).alias("period")) for p, r in periods.items()],
                        how="diagonal_relaxed")
    differences = pl.concat([r.differences.with_columns(pl.lit(p).alias("period")) for p, r in periods.items()],
                            how="diagonal_relaxed")
    plot = None if plot_path is None else equity_curve_plot(
        backtest.equity["baseline"], backtest.equity[settings.gate.variant], plot_path)
    return Phase10Result(schemas.conform(schemas.CONTEXT_OVERLAY, overlay), backtest, tuned, gate,
                         schemas.conform(schemas.OVERLAY_BACKTEST, metrics),
                         schemas.conform(schemas.OVERLAY_DIFFERENCES, differences),
                         schemas.conform(schemas.OVERLAY_TUNING, tuning_rows(tuned)), plot)


# ------------------------------------------------------------------------------ phase 11

@dataclass(frozen=True)
class ModelInputs:
    trade_ids: list[str]
    windows: np.ndarray
    context: pl.DataFrame
    labels: pl.DataFrame
    overlay_confidence: np.ndarray
    trades: pl.DataFrame
    dropped: int = 0


def model_inputs(trades: pl.DataFrame, features: pl.DataFrame, overlay: pl.DataFrame,
                 window_ids: list[str], windows: np.ndarray) -> ModelInputs:
    """Filled trades that have a full OHLCV window, in decision-time order, aligned row for row."""
    filled = trades.filter(pl.col("outcome").is_in(FILLED_OUTCOMES))
    context = (filled.select("trade_id", "decision_time", "direction", "base_confidence")
               .join(features.drop("symbol", "timeframe", "direction", "decision_time"), on="trade_id", how="left")
               .join(overlay.select("trade_id", "adjusted_confidence"), on="trade_id", how="left"))
    position = {t: i for i, t in enumerate(window_ids)}
    kept = context.filter(pl.col("trade_id").is_in(list(position))).sort("decision_time", "trade_id")
    labels = kept.select("trade_id").join(filled.select("trade_id", "outcome", "r_multiple", "exit_time"),
                                          on="trade_id", how="left", maintain_order="left")
    rows = np.array([position[t] for t in kept["trade_id"]], dtype=np.int64)
    return ModelInputs(kept["trade_id"].to_list(), windows[rows] if rows.size else windows[:0], kept, labels,
                       kept["adjusted_confidence"].fill_null(kept["base_confidence"]).to_numpy(),
                       trades=filled.filter(pl.col("trade_id").is_in(kept["trade_id"].to_list())),
                       dropped=context.height - kept.height)


@dataclass
class Phase11Result:
    version: str
    path: Path
    report: EvaluationReport
    evaluation: pl.DataFrame
    predictions: pl.DataFrame
    backtest: pl.DataFrame
    notes: list[str] = field(default_factory=list)


def probability_backtest(trades: pl.DataFrame, oos: pl.DataFrame, version: str,
                         overlay_min_confidence: float = OverlayConfig().min_confidence) -> pl.DataFrame:
    """Backtest metrics (qml_pipeline.trades.metrics, overall and per year, on the baseline's calendar)
    on the walk-forward test trades: every trade; the rule overlay's filter (raw adjusted confidence
    `overlay` >= its min_confidence) and its control, the same filter on base_confidence alone
    (confidence_filter); and the logistic / fusion probabilities as adjusted confidence (take a
    trade when its expected R is positive at that win probability)."""
    df = trades.join(oos, on="trade_id", how="inner").with_columns(
        ((pl.col("target_price") - pl.col("entry_price")).abs()
         / (pl.col("entry_price") - pl.col("stop_price")).abs()).alias("_reward_r"))
    if "base_confidence" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("base_confidence"))

    def positive_ev(col: str) -> pl.Expr:
        return pl.col(col) * pl.col("_reward_r") - (1 - pl.col(col)) > 0

    variants = {"baseline": pl.lit(True), "confidence_filter": pl.col("base_confidence") >= overlay_min_confidence,
                "overlay_filter": pl.col("overlay") >= overlay_min_confidence,
                "logistic_filter": positive_ev("logistic"), "model_filter": positive_ev("fusion")}
    calendar = trade_calendar(df)
    frames = [summarize(df.filter(keep.fill_null(False)), by=["year"], calendar=calendar)
              .with_columns(pl.lit(name).alias("variant")) for name, keep in variants.items()]
    out = pl.concat(frames, how="diagonal_relaxed").with_columns(pl.lit(version).alias("period"))
    return schemas.conform(schemas.MODEL_BACKTEST, out)


def model_version(fingerprint: str, seed: int) -> str:
    """Same data and seed -> same version name, so a rerun is recognisable as one."""
    return f"{fingerprint[:12]}-s{seed}"


def evaluation_rows(version: str, report: EvaluationReport) -> pl.DataFrame:
    cols = ["model", "n", "win_rate", "mean_predicted", "auc", "log_loss", "brier"]
    parts = [
        report.overall.select(cols).with_columns(pl.lit("overall").alias("scope"), pl.lit("all").alias("group")),
        report.per_fold.select(["fold", *cols]).with_columns(pl.lit("fold").alias("scope"),
                                                              pl.col("fold").cast(pl.Utf8).alias("group")).drop("fold"),
        report.per_year.select(["year", *cols]).with_columns(pl.lit("year").alias("scope"),
                                                              pl.col("year").cast(pl.Utf8).alias("group")).drop("year"),
    ]
    return schemas.conform(schemas.MODEL_EVALUATION,
                           pl.concat(parts, how="diagonal_relaxed").with_columns(pl.lit(version).alias("model_version")))


def run_phase11(inputs: ModelInputs, model_dir: Path, model_config, n_folds: int = 5,
                overlay_min_confidence: float = OverlayConfig().min_confidence) -> Phase11Result:
    """Walk-forward evaluation against the probability baselines (base rate, calibrated confidence),
    logistic and the overlay (its scores from `inputs`, i.e. with the thresholds phase 10 tuned),
    then the published model trained on every trade, saved under `model_dir/<version>/` beside
    earlier versions."""
    from qml_pipeline.research.model import train_model
    from qml_pipeline.research.model_data import data_fingerprint

    if len(inputs.trade_ids) < 4 * n_folds:
        raise ValueError(f"only {len(inputs.trade_ids)} filled trades with a full OHLCV window: too few for "
                         f"{n_folds} walk-forward folds")
    report = evaluate_models(inputs.windows, inputs.context, inputs.labels, config=model_config,
                             overlay_confidence=inputs.overlay_confidence, n_folds=n_folds)
    fingerprint = data_fingerprint(inputs.windows, inputs.context, inputs.labels)
    version = model_version(fingerprint, model_config.seed)
    trained = train_model(inputs.windows, inputs.context, inputs.labels, model_config)
    trained.metrics = {**trained.metrics, "walk_forward": report.overall.to_dicts(), "verdict": report.verdict}
    trained.save(model_dir / version / "model.pt")
    path = model_dir / version / "model.pt"
    oos = report.predictions.select("trade_id", "fold", pl.col("fusion").alias("probability"),
                                    pl.col("logistic").alias("logistic_probability"))
    predictions = (pl.DataFrame({"trade_id": inputs.trade_ids})
                   .join(oos, on="trade_id", how="left").with_columns(pl.lit(version).alias("model_version")))
    notes = [f"{inputs.dropped} filled trade(s) without a full 50-bar window were left out"] if inputs.dropped else []
    scores = pl.DataFrame({"trade_id": inputs.trade_ids, "overlay": inputs.overlay_confidence})
    backtest = probability_backtest(
        inputs.trades, report.predictions.select("trade_id", "logistic", "fusion").join(scores, on="trade_id"),
        version, overlay_min_confidence)
    return Phase11Result(version, path, report, evaluation_rows(version, report),
                         schemas.conform(schemas.MODEL_PREDICTIONS, predictions), backtest, notes)


def list_model_versions(model_dir: Path) -> pl.DataFrame:
    """Every saved version with its fingerprint and out-of-sample fusion AUC, newest first."""
    rows = []
    for sidecar in sorted(model_dir.glob("*/model.json")):
        meta = json.loads(sidecar.read_text())
        fusion = next((m for m in meta.get("metrics", {}).get("walk_forward", []) if m.get("model") == "fusion"), {})
        rows.append({"version": sidecar.parent.name, "saved": sidecar.stat().st_mtime,
                     "fingerprint": meta.get("data_fingerprint", ""), "fusion_auc": fusion.get("auc")})
    if not rows:
        return pl.DataFrame(schema={"version": pl.Utf8, "saved": pl.Float64, "fingerprint": pl.Utf8,
                                    "fusion_auc": pl.Float64})
    return pl.DataFrame(rows).sort("saved", descending=True)
