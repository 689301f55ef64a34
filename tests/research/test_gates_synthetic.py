"""The gates judge context, not confidence: a trade set where only confidence matters fails phase 10
(against its control), one with a planted context effect passes phases 9 and 10."""

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from qml_pipeline.research.overlay import apply_overlay
from qml_pipeline.research.overlay_backtest import overlay_backtest
from qml_pipeline.research.phases import Phase10Settings, run_phase9, run_phase10
from tests.synthetic import context_trade_set

SETTINGS = Phase10Settings(n_resamples=1000, n_null=1000)


@pytest.fixture(scope="module")
def confidence_only():
    trades, features = context_trade_set(300, context_effect=False, seed=0)
    return trades, features, run_phase10(trades, features, None, SETTINGS)


def test_confidence_without_context_fails_the_phase10_gate(confidence_only):
    trades, features, result = confidence_only
    parts = {p.name: p for p in result.gate.parts}
    assert not result.gate.passed, result.gate.message
    # the old comparison (filter vs every trade) sees the confidence threshold's gain ...
    assert parts["win_rate_gain_vs_unfiltered"].value > 5.0
    assert parts["win_rate_gain_vs_unfiltered"].null_percentile > 95
    # ... the control (the same filter, every multiplier 1) shows context adds nothing beyond chance
    for name in ("win_rate_gain", "sharpe_gain"):
        assert not parts[name].passed, parts[name].message
        assert parts[name].control.startswith("confidence alone")
    assert "no effect larger than" in parts["win_rate_gain"].message
    phase9 = run_phase9(trades, features, None)
    assert not phase9.gate.passed   # funding and OI are noise here


def test_a_planted_context_effect_passes_both_gates():
    trades, features = context_trade_set(300, context_effect=True, seed=12)
    phase9 = run_phase9(trades, features, None)
    assert phase9.gate.passed, phase9.gate.message
    issue = phase9.issue
    assert issue["share"] > 0.7 and issue["winner_share"] < 0.2 and issue["fisher_p"] < 1e-6
    fuel = phase9.stats.filter(pl.col("feature") == "funding_fuel_8h").row(0, named=True)
    assert fuel["significant"] and fuel["cliffs_delta"] > fuel["mde_cliffs_delta"]

    result = run_phase10(trades, features, None, SETTINGS)
    assert result.gate.passed, result.gate.message
    for part in result.gate.parts:
        assert part.value > part.null_p95 and part.null_percentile > 95 and part.ci_low > 0, part.message
    # the control keeps every trade here (base_confidence >= 0.5), so both comparisons agree
    judged = result.differences.filter((pl.col("period") == "judging") & (pl.col("metric") == "win_rate"))
    by = {(r["variant"], r["control"]): r["diff"] for r in judged.iter_rows(named=True)}
    assert by[("filtering", "confidence_only")] == pytest.approx(by[("filtering", "baseline")])


def test_without_context_the_controls_null_percentile_is_uniform():
    """Chance of the same size is calibrated: with context unrelated to outcomes, the context filter's
    gain over confidence alone lands above the null's 95th percentile about 5% of the time (so the
    fixed-seed test above fails for a reason, not by luck of the draw alone)."""
    percentiles = []
    for seed in range(24):
        trades, features = context_trade_set(300, context_effect=False, seed=100 + seed)
        result = overlay_backtest(trades, apply_overlay(trades, features), n_resamples=0, n_null=500)
        percentiles.append(result.difference("filtering", "win_rate", "confidence_only")["null_percentile"])
    p = np.array(percentiles)
    assert (p > 95).mean() <= 0.15 and 30 < p.mean() < 70
    assert sps.kstest(p / 100, "uniform").pvalue > 0.01
