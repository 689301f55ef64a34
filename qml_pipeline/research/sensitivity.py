"""Sensitivity runs: the phase 9 and phase 10 gates re-evaluated under other settings
(docs/evidence.md). Each returns rows in the SENSITIVITY_* layout (store/schemas.py): one per
setting and gate part, plus phase 9's per-feature Cliff's delta (gate 'phase9_features'), so a
verdict can be read next to how it moves.

- `oi_lag_sensitivity`: open-interest publication lag 0 / 60 / 300 / 900 s (the point-in-time
  features recomputed with the lag added to every OI row's available_at);
- `timeout_sensitivity`: timeouts as losses (the seed's meaning), excluded, or by the sign of R;
- `threshold_sensitivity`: the overlay's default thresholds vs those tuned on the earlier trades,
  both judged on the later trades;
- `regime_sensitivity`: per calendar year and per trend / volatility regime (regimes.py), with the
  default thresholds on every trade of the regime (no tuning inside a regime: too few trades).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from qml_pipeline.features.point_in_time import OI_COLUMNS, FeatureConfig, build_trade_context_features
from qml_pipeline.research.gates import GateResult
from qml_pipeline.research.overlay import OverlayConfig, apply_overlay
from qml_pipeline.research.overlay_backtest import overlay_backtest
from qml_pipeline.research.overlay_gate import phase10_gate
from qml_pipeline.research.overlay_tuning import split_by_time, tune_and_judge
from qml_pipeline.research.phase9 import AnalysisConfig
from qml_pipeline.research.phases import Phase9Result, Phase10Settings, run_phase9
from qml_pipeline.research.regimes import trade_regimes
from qml_pipeline.trades.contract import FILLED_OUTCOMES
from qml_pipeline.trades.metrics import TIMEOUT_POLICIES, apply_timeout_policy

OI_LAGS_SECONDS = (0, 60, 300, 900)
PLOTTED_FEATURE = "funding_fuel_8h"  # the seed's funding "fuel": its meaning across regimes is risk 2
_PART_FIELDS = ("passed", "value", "threshold", "control", "n", "p_value", "null_percentile", "null_p95", "mde",
                "ci_low", "ci_high", "ci_low_independent", "ci_high_independent", "message")


@dataclass(frozen=True)
class SensitivityInputs:
    """What every run starts from: the trades, their stored context features and the phase 9 / 10
    settings of the main run (each sensitivity changes one thing)."""

    trades: pl.DataFrame
    features: pl.DataFrame
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    phase10: Phase10Settings = field(default_factory=Phase10Settings)


def gate_sensitivity_rows(setting: str, phase9: Phase9Result | None, phase10: GateResult | None) -> pl.DataFrame:
    """Rows of the SENSITIVITY layout for one setting: every part of both gates and phase 9's features."""
    rows = []
    for gate_name, gate in (("phase9", phase9.gate if phase9 else None), ("phase10", phase10)):
        if gate is None:
            continue
        for p in gate.parts:
            rows.append({"setting": setting, "gate": gate_name, "part": p.name, "gate_passed": gate.passed,
                         **{k: getattr(p, k) for k in _PART_FIELDS}})
    if phase9 is not None:
        for r in phase9.stats.filter(pl.col("cliffs_delta").is_not_null()).iter_rows(named=True):
            rows.append({"setting": setting, "gate": "phase9_features", "part": r["feature"],
                         "passed": bool(r["significant"]), "gate_passed": phase9.gate.passed,
                         "value": r["cliffs_delta"], "threshold": None, "control": "winners vs losers",
                         "n": r["n_win"] + r["n_loss"], "p_value": r["p_adj"], "mde": r["mde_cliffs_delta"],
                         "message": (f"{r['feature']}: Cliff's delta {r['cliffs_delta']:+.3f} ({r['n_win']} winners, "
                                     f"{r['n_loss']} losers), BH-adjusted p {r['p_adj']:.3g}"
                                     + (f"; MDE {r['mde_cliffs_delta']:.3f}" if r["mde_cliffs_delta"] else ""))})
    schema = {"setting": pl.Utf8, "gate": pl.Utf8, "part": pl.Utf8, "gate_passed": pl.Boolean, "passed": pl.Boolean,
              "value": pl.Float64, "threshold": pl.Float64, "control": pl.Utf8, "n": pl.Int64, "p_value": pl.Float64,
              "null_percentile": pl.Float64, "null_p95": pl.Float64, "mde": pl.Float64, "ci_low": pl.Float64,
              "ci_high": pl.Float64, "ci_low_independent": pl.Float64, "ci_high_independent": pl.Float64,
              "message": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)


def _tuned_gate(trades: pl.DataFrame, features: pl.DataFrame, settings: Phase10Settings,
                config: OverlayConfig | None = None) -> tuple[GateResult, OverlayConfig]:
    s = settings
    tuned = tune_and_judge(apply_timeout_policy(trades, s.timeout_as), features, s.grid, split_fraction=s.split_fraction,
                           base_config=config or s.config, objective_variant=s.gate.variant,
                           n_resamples=s.n_resamples, seed=s.seed, n_null=s.n_null, cluster_by=s.cluster_by)
    return phase10_gate(tuned, s.gate), tuned.config


def _fixed_gate(trades: pl.DataFrame, features: pl.DataFrame, settings: Phase10Settings,
                config: OverlayConfig) -> GateResult | None:
    """The gate on these trades with fixed thresholds (no tuning); None without 2 filled trades."""
    s = settings
    trades = apply_timeout_policy(trades, s.timeout_as)
    if trades.filter(pl.col("outcome").is_in(FILLED_OUTCOMES)).height < 2:
        return None
    result = overlay_backtest(trades, apply_overlay(trades, features, config), config, s.n_resamples, s.seed,
                              s.n_null, s.cluster_by)
    return phase10_gate(result, s.gate)


# ---------------------------------------------------------------- OI publication lag

OI_FEATURES = OI_COLUMNS


def features_with_oi_lag(trades: pl.DataFrame, features: pl.DataFrame, klines: pl.DataFrame, funding: pl.DataFrame,
                         open_interest: pl.DataFrame, extra_lag_seconds: float,
                         feature_config: FeatureConfig | None = None) -> pl.DataFrame:
    """`features` with its open-interest columns recomputed (features/point_in_time.py) as if every
    OI row became available `extra_lag_seconds` later. The stored rows are untouched: the shifted
    table is registered on a private in-memory connection. distance_to_liq_cluster keeps the
    configured lag (the liquidation map is not rebuilt)."""
    shifted = open_interest.with_columns(
        (pl.col("available_at") + pl.duration(milliseconds=round(extra_lag_seconds * 1000))).alias("available_at"))
    with contextlib.closing(duckdb.connect()) as con:
        con.execute("SET TimeZone = 'UTC'")
        for name, frame in (("trades", trades), ("klines", klines), ("funding_rates", funding),
                            ("open_interest", shifted)):
            # a table, not a registered view of the frame: the feature SQL scans each input many times
            con.register("_frame", frame)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _frame')
            con.unregister("_frame")
        recomputed = build_trade_context_features(con, feature_config or FeatureConfig())
    cols = [c for c in OI_FEATURES if c in recomputed.columns]
    return features.drop(cols, strict=False).join(recomputed.select("trade_id", *cols), on="trade_id", how="left")


def oi_lag_sensitivity(inputs: SensitivityInputs, klines: pl.DataFrame, funding: pl.DataFrame,
                       open_interest: pl.DataFrame, lags_seconds: tuple[float, ...] = OI_LAGS_SECONDS,
                       stored_lag_seconds: float = 0.0) -> pl.DataFrame:
    """Both gates per OI publication lag. `stored_lag_seconds`: the lag already in the stored
    available_at (MarketDataResource.oi_publication_lag_seconds), so lag L shifts rows by L - stored."""
    frames = []
    for lag in lags_seconds:
        features = features_with_oi_lag(inputs.trades, inputs.features, klines, funding, open_interest,
                                        lag - stored_lag_seconds)
        phase9 = run_phase9(inputs.trades, features, None, inputs.analysis, inputs.phase10.config)
        gate, _ = _tuned_gate(inputs.trades, features, inputs.phase10)
        frames.append(gate_sensitivity_rows(f"{lag:g} s", phase9, gate))
    return pl.concat(frames)


# ---------------------------------------------------------------- timeouts, thresholds, regimes

def timeout_sensitivity(inputs: SensitivityInputs, policies: tuple[str, ...] = TIMEOUT_POLICIES) -> pl.DataFrame:
    """Both gates per timeout label policy (metrics.TIMEOUT_POLICIES)."""
    frames = []
    for policy in policies:
        phase9 = run_phase9(inputs.trades, inputs.features, None, replace(inputs.analysis, timeout_as=policy),
                            inputs.phase10.config)
        gate, _ = _tuned_gate(inputs.trades, inputs.features, replace(inputs.phase10, timeout_as=policy))
        frames.append(gate_sensitivity_rows(policy, phase9, gate))
    return pl.concat(frames)


def threshold_sensitivity(inputs: SensitivityInputs) -> pl.DataFrame:
    """Both gates with the default thresholds and with those tuned on the earlier trades; phase 10 on
    the judging (later) trades in both cases, phase 9 (whose narrow issue uses the thresholds) on all."""
    s = inputs.phase10
    tuned_gate, tuned_config = _tuned_gate(inputs.trades, inputs.features, s)
    _, judging, _, _ = split_by_time(apply_timeout_policy(inputs.trades, s.timeout_as), None, s.split_fraction)
    default_gate = _fixed_gate(judging, inputs.features, s, s.config)
    frames = []
    for setting, config, gate in (("default", s.config, default_gate), ("tuned", tuned_config, tuned_gate)):
        phase9 = run_phase9(inputs.trades, inputs.features, None, inputs.analysis, config)
        frames.append(gate_sensitivity_rows(setting, phase9, gate))
    return pl.concat(frames)


def regime_sensitivity(inputs: SensitivityInputs, klines: pl.DataFrame, interval: str = "1h") -> pl.DataFrame:
    """Both gates per calendar year ('year 2023') and per trend / volatility regime ('up / high vol'),
    default thresholds, every trade of the group; regimes known at decision time (regimes.py)."""
    filled = inputs.trades.filter(pl.col("outcome").is_in(FILLED_OUTCOMES))
    regimes = trade_regimes(klines, filled, interval)
    groups = [(f"year {y}", regimes.filter(pl.col("year") == y)["trade_id"]) for y in sorted(regimes["year"].unique())]
    groups += [(r, regimes.filter(pl.col("regime") == r)["trade_id"]) for r in sorted(regimes["regime"].unique())]
    frames = []
    for setting, ids in groups:
        trades = filled.filter(pl.col("trade_id").is_in(ids.to_list()))
        phase9 = run_phase9(trades, inputs.features, None, inputs.analysis, inputs.phase10.config)
        frames.append(gate_sensitivity_rows(setting, phase9, _fixed_gate(trades, inputs.features, inputs.phase10,
                                                                         inputs.phase10.config)))
    return pl.concat(frames)


# ---------------------------------------------------------------- plot

def sensitivity_plot(rows: pl.DataFrame, path: str | Path, title: str, feature: str = PLOTTED_FEATURE) -> Path:
    """PNG, one column of points per setting: phase 10's win-rate and Sharpe gains against the
    control (95% cluster interval, the null's 95th percentile, the threshold) and phase 9's Cliff's
    delta of `feature` with its MDE band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = rows["setting"].unique(maintain_order=True).to_list()
    x = np.arange(len(settings))
    fig = Figure(figsize=(max(8.0, 1.3 * len(settings) + 4), 9))
    FigureCanvasAgg(fig)
    panels = [("phase10", "win_rate_gain", "win rate gain\n(points)"),
              ("phase10", "sharpe_gain", "Sharpe gain\n(per trade x sqrt(trades/yr))"),
              ("phase9_features", feature, f"Cliff's delta\n{feature}")]
    for i, (gate, part, label) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        sel = {r["setting"]: r for r in rows.filter((pl.col("gate") == gate) & (pl.col("part") == part)).iter_rows(named=True)}
        labelled: set[str] = set()

        def once(name: str) -> str | None:
            if name in labelled:
                return None
            labelled.add(name)
            return name

        for j, s in enumerate(settings):
            r = sel.get(s)
            if r is None or r["value"] is None:
                continue
            if gate == "phase9_features":
                if r["mde"] is not None:
                    ax.bar(j, 2 * r["mde"], bottom=-r["mde"], color="#e5e7eb", width=0.5,
                           label=once("no effect ruled out inside (MDE, 80% power)"))
            elif r["ci_low"] is not None:
                ax.vlines(j, r["ci_low"], r["ci_high"], color="#6b7280", linewidth=2, label=once("95% CI by cluster"))
            if r["null_p95"] is not None:
                ax.plot(j, r["null_p95"], marker="_", markersize=22, color="#d95f02",
                        label=once("chance of the same size, 95th percentile"))
            if r["threshold"] is not None and gate != "phase9_features":
                ax.plot(j, r["threshold"], marker="_", markersize=22, color="black", label=once("threshold"))
            ax.plot(j, r["value"], "o", color="#1b9e77" if r["passed"] else "#b91c1c")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(settings, fontsize=9)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{title} (green: part passed, red: failed)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    return path
