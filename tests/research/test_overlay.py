import math
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from qml_pipeline.research import overlay as ov
from qml_pipeline.research import overlay_tuning
from qml_pipeline.research.gates import GateResult
from qml_pipeline.research.overlay import OverlayConfig, apply_overlay, rule_counts
from qml_pipeline.research.overlay_backtest import VARIANTS, equity_curve_plot, overlay_backtest
from qml_pipeline.research.overlay_gate import OverlayGateConfig, phase10_gate
from qml_pipeline.research.overlay_tuning import split_by_time, tune_and_judge
from qml_pipeline.store.schemas import TS

T0 = datetime(2023, 1, 1, tzinfo=UTC)


def make_trades(rows: list[dict]) -> pl.DataFrame:
    """rows: direction, outcome, r (optional), base (optional); one trade per day from 2023-01-01."""
    n = len(rows)
    dt = [T0 + timedelta(days=i) for i in range(n)]
    return pl.DataFrame({
        "trade_id": [f"T{i:03d}" for i in range(n)],
        "symbol": ["BTCUSDT"] * n,
        "timeframe": ["4h"] * n,
        "direction": [r["direction"] for r in rows],
        "decision_time": dt,
        "exit_time": [d + timedelta(days=1) for d in dt],
        "outcome": [r.get("outcome", "WIN") for r in rows],
        "r_multiple": [r.get("r", 1.0) for r in rows],
        "gross_r_multiple": [r.get("r", 1.0) for r in rows],
        "base_confidence": [r.get("base", 0.6) for r in rows],
    }, schema_overrides={"r_multiple": pl.Float64, "gross_r_multiple": pl.Float64,
                         "base_confidence": pl.Float64}).with_columns(
        pl.col("decision_time").cast(TS), pl.col("exit_time").cast(TS))


def make_features(trades: pl.DataFrame, funding=None, oi=None, liq=None, hours=None) -> pl.DataFrame:
    n = trades.height
    return pl.DataFrame({
        "trade_id": trades["trade_id"],
        "funding_rate": funding if funding is not None else [None] * n,
        "funding_interval_hours": hours if hours is not None else [8] * n,
        "oi_change_24h": oi if oi is not None else [None] * n,
        "distance_to_liq_cluster": liq if liq is not None else [None] * n,
    }, schema={"trade_id": pl.Utf8, "funding_rate": pl.Float64, "funding_interval_hours": pl.Int16,
               "oi_change_24h": pl.Float64, "distance_to_liq_cluster": pl.Float64})


def one(direction, funding=None, oi=None, liq=None, hours=8, base=0.6, config=None) -> dict:
    t = make_trades([{"direction": direction, "base": base}])
    f = make_features(t, [funding], [oi], [liq], [hours])
    return apply_overlay(t, f, config or OverlayConfig()).row(0, named=True)


# ---------------------------------------------------------------- rules one by one

def test_default_funding_threshold_is_a_fraction_per_8h_not_the_seeds_one_percent():
    c = OverlayConfig()
    assert c.funding_threshold == 0.0002          # 0.02% per 8h
    assert c.oi_change_threshold == 5.0           # percent
    # The seed's card calls +0.021% "High": the default must fire on it.
    assert one("BEARISH", funding=0.00021)["funding_rule"] == "crowded_longs"
    # With the seed's literal 0.01 it would not.
    assert one("BEARISH", funding=0.00021, config=OverlayConfig(funding_threshold=0.01))["funding_mult"] == 1.0


@pytest.mark.parametrize("direction,funding,rule,mult", [
    ("BEARISH", 0.0005, "crowded_longs", 1.2),     # crowded longs = bearish fuel
    ("BEARISH", -0.0005, "crowded_shorts", 0.8),   # crowded shorts = risky bearish
    ("BULLISH", -0.0005, "crowded_shorts", 1.2),   # crowded shorts = bullish fuel
    ("BULLISH", 0.0005, "crowded_longs", 0.8),     # crowded longs = risky bullish
    ("BULLISH", 0.0001, "neutral", 1.0),
    ("BEARISH", 0.0002, "neutral", 1.0),           # strictly beyond the threshold, as the seed
])
def test_funding_rule(direction, funding, rule, mult):
    r = one(direction, funding=funding)
    assert (r["funding_rule"], r["funding_mult"]) == (rule, pytest.approx(mult))
    assert r["multiplier"] == pytest.approx(mult)


@pytest.mark.parametrize("oi,rule,mult", [(7.5, "rising", 1.1), (-6.0, "falling", 0.9), (4.9, "flat", 1.0),
                                          (-5.0, "flat", 1.0)])
def test_oi_rule_in_percent(oi, rule, mult):
    for direction in ("BULLISH", "BEARISH"):
        r = one(direction, oi=oi)
        assert (r["oi_rule"], r["oi_mult"], r["multiplier"]) == (rule, pytest.approx(mult), pytest.approx(mult))


def test_rules_multiply_and_reason_is_itemised():
    r = one("BEARISH", funding=0.00021, oi=3.2 + 4)
    assert r["multiplier"] == pytest.approx(1.2 * 1.1)
    assert r["reason"] == "Funding +0.021%/8h (crowded longs) +20%; OI rising +7.2% 24h (conviction) +10%"
    r = one("BULLISH", funding=0.0003, oi=-8.0)
    assert r["reason"] == "Funding +0.03%/8h (crowded longs) -20%; OI falling -8.0% 24h (weak) -10%"
    assert one("BULLISH")["reason"] == ""


def test_liquidation_rule_fires_only_with_a_distance():
    assert (one("BEARISH", liq=0.5)["liq_rule"], one("BEARISH", liq=0.5)["liq_mult"]) == ("near_cluster", 1.05)
    assert one("BEARISH", liq=0.5)["reason"] == "Near liq cluster 0.5 ATR +5%"
    assert (one("BULLISH", liq=2.0)["liq_rule"], one("BULLISH", liq=2.0)["liq_mult"]) == ("far", 1.0)
    assert (one("BULLISH")["liq_rule"], one("BULLISH")["liq_mult"]) == ("missing", 1.0)
    off = OverlayConfig(liq_max_distance_atr=None)
    assert one("BEARISH", liq=0.1, config=off)["liq_mult"] == 1.0


def test_clamp_to_half_and_one_and_a_half():
    high = OverlayConfig(funding_fuel_mult=1.4, oi_rising_mult=1.2)
    r = one("BEARISH", funding=0.001, oi=10.0, config=high)
    assert r["raw_multiplier"] == pytest.approx(1.68) and r["multiplier"] == 1.5 and r["clamped"]
    low = OverlayConfig(funding_against_mult=0.6, oi_falling_mult=0.7)
    r = one("BEARISH", funding=-0.001, oi=-10.0, config=low)
    assert r["raw_multiplier"] == pytest.approx(0.42) and r["multiplier"] == 0.5 and r["clamped"]


def test_adjusted_confidence_is_clipped_to_one_and_null_without_base():
    assert one("BEARISH", funding=0.001, base=0.9)["adjusted_confidence"] == 1.0
    assert one("BEARISH", funding=0.001, base=0.5)["adjusted_confidence"] == pytest.approx(0.6)
    assert one("BEARISH", funding=0.001, base=None)["adjusted_confidence"] is None


def test_null_context_and_absent_feature_rows_do_not_fire_and_are_counted():
    t = make_trades([{"direction": "BEARISH"}, {"direction": "BULLISH"}, {"direction": "BEARISH"}])
    f = make_features(t, [0.001, None, None], [None, 9.0, None]).head(2)   # third trade has no row
    out = apply_overlay(t, f)
    assert out["trade_id"].to_list() == t["trade_id"].to_list()
    assert out["funding_rule"].to_list() == ["crowded_longs", "missing", "missing"]
    assert out["oi_rule"].to_list() == ["missing", "rising", "missing"]
    assert out["multiplier"].to_list() == pytest.approx([1.2, 1.1, 1.0])
    counts = {(r["rule"], r["branch"]): r["trades"] for r in rule_counts(out).iter_rows(named=True)}
    assert counts[("funding", "missing")] == 2 and counts[("oi", "missing")] == 2
    assert counts[("liq", "missing")] == 3 and counts[("clamp", "clamped")] == 0


def test_features_without_liq_or_interval_columns():
    t = make_trades([{"direction": "BULLISH"}])
    f = pl.DataFrame({"trade_id": ["T000"], "funding_rate": [-0.0005]})
    r = apply_overlay(t, f).row(0, named=True)
    assert r["funding_rate_8h"] == pytest.approx(-0.0005) and r["funding_mult"] == 1.2 and r["liq_rule"] == "missing"


def test_funding_of_shorter_intervals_is_scaled_to_8h():
    # 0.00005 per 1h = 0.0004 per 8h: crowded; the same raw rate on an 8h symbol is not.
    r1 = one("BEARISH", funding=0.00005, hours=1)
    assert r1["funding_rate_8h"] == pytest.approx(0.0004) and r1["funding_mult"] == 1.2
    assert one("BEARISH", funding=0.00005, hours=8)["funding_mult"] == 1.0
    r4 = one("BULLISH", funding=0.00011, hours=4)
    assert r4["funding_rate_8h"] == pytest.approx(0.00022) and r4["funding_mult"] == 0.8
    assert one("BULLISH", funding=0.00011, hours=None)["funding_rate_8h"] == pytest.approx(0.00011)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="min_multiplier"):
        OverlayConfig(min_multiplier=2.0)
    with pytest.raises(ValueError, match="magnitudes"):
        OverlayConfig(funding_threshold=-0.1)
    with pytest.raises(ValueError, match="variant"):
        OverlayGateConfig(variant="baseline")


# ---------------------------------------------------------------- backtest by hand

def hand_set():
    t = make_trades([
        {"direction": "BEARISH", "outcome": "WIN", "r": 2.0},    # funding fuel -> 1.2
        {"direction": "BULLISH", "outcome": "LOSS", "r": -1.0, "base": 0.9},   # against -> 0.8, kept
        {"direction": "BULLISH", "outcome": "LOSS", "r": -1.0},  # against -> 0.8, 0.48 < 0.5 filtered
        {"direction": "BULLISH", "outcome": "WIN", "r": 2.0},    # nothing fires
        {"direction": "BULLISH", "outcome": "NOT_FILLED", "r": None},
    ])
    f = make_features(t, [0.001, 0.001, 0.001, None, None])
    return t, f


def test_backtest_differences_by_hand():
    t, f = hand_set()
    res = overlay_backtest(t, apply_overlay(t, f), OverlayConfig(), n_resamples=200, n_null=2000)
    assert res.n_trades == 4 and res.n_filtered_in == 3
    tpy = 365.25  # 4 trades from 2023-01-01 (first decision) to 2023-01-05 (last exit)
    base = res.overall("baseline")
    assert base["win_rate"] == 0.5 and base["total_r"] == pytest.approx(2.0)
    assert base["sharpe_per_trade"] == pytest.approx(0.5 / math.sqrt(3))
    assert base["sharpe_trade_count_dependent"] == pytest.approx(0.5 / math.sqrt(3) * math.sqrt(tpy))

    sized = [2.4, -0.8, -0.8, 2.0]
    mean = sum(sized) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in sized) / 3)
    assert res.difference("sizing", "total_r")["diff"] == pytest.approx(0.8)
    assert res.difference("sizing", "win_rate")["diff"] == 0.0
    assert res.difference("sizing", "sharpe_per_trade")["diff"] == pytest.approx(mean / std - 0.5 / math.sqrt(3))
    assert res.difference("sizing", "win_rate")["ci_low"] == 0.0 == res.difference("sizing", "win_rate")["ci_high"]

    filt = res.difference("filtering", "win_rate")
    assert filt["variant_value"] == pytest.approx(2 / 3) and filt["diff"] == pytest.approx(2 / 3 - 0.5)
    assert res.difference("filtering", "trades")["diff"] == -1
    assert res.difference("filtering", "sharpe_trade_count_dependent")["variant_value"] == pytest.approx(
        1 / math.sqrt(3) * math.sqrt(3 / (4 / 365.25)))
    # every base confidence is >= 0.5: confidence alone keeps every trade, so the control is the baseline
    assert res.difference("filtering", "win_rate", "confidence_only")["control_value"] == 0.5
    assert res.difference("confidence_only", "win_rate")["diff"] == 0.0
    # chance of the same size: 3 of 4 trades at random drop a winner or a loser half the time each,
    # so a gain of +1/6 is the best a random filter can do: percentile 75 (ties count half)
    assert filt["null_mean"] == pytest.approx(0.0, abs=0.02) and filt["null_p95"] == pytest.approx(1 / 6)
    assert filt["null_percentile"] == pytest.approx(75, abs=2)
    per_year = res.metrics.filter(pl.col("scope") == "group")
    assert per_year["year"].to_list() == [2023] * 4 and set(per_year["variant"]) == set(VARIANTS)

    counts = {(r["rule"], r["branch"], r["mult"]): r["trades"] for r in res.rule_counts.iter_rows(named=True)}
    assert counts[("funding", "crowded_longs", 1.2)] == 1 and counts[("funding", "crowded_longs", 0.8)] == 2
    assert counts[("funding", "missing", 1.0)] == 1   # the unfilled trade is not counted


def test_bootstrap_is_paired_seeded_and_brackets_the_estimate():
    rows = [{"direction": "BEARISH" if i % 2 else "BULLISH", "outcome": "WIN" if i % 3 == 0 else "LOSS",
             "r": 2.0 if i % 3 == 0 else -1.0} for i in range(60)]
    t = make_trades(rows)
    f = make_features(t, [0.001 if i % 3 == 0 else -0.001 for i in range(60)])
    overlay = apply_overlay(t, f)
    a = overlay_backtest(t, overlay, n_resamples=300, seed=7)
    b = overlay_backtest(t, overlay, n_resamples=300, seed=7)
    assert a.differences.equals(b.differences)
    wr = a.difference("filtering", "win_rate")
    assert wr["ci_low"] <= wr["diff"] <= wr["ci_high"]
    assert wr["ci_low_independent"] <= wr["diff"] <= wr["ci_high_independent"]
    assert 0 <= wr["share_not_better"] <= 1 and wr["mde"] > 0
    # one trade a day, each closed when the next is decided: every trade is its own cluster
    assert a.n_clusters == 60 and wr["ci_low"] == wr["ci_low_independent"]


def test_backtest_refuses_an_overlay_of_other_trades():
    t, f = hand_set()
    with pytest.raises(ValueError, match="no row for 1 filled trade"):
        overlay_backtest(t, apply_overlay(t, f).filter(pl.col("trade_id") != "T001"), n_resamples=10)


# ---------------------------------------------------------------- tuning and the gate

def series(n: int, late_r: float | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Losers have funding against them, winners have fuel; every 4th loser has mild funding only."""
    rows, funding = [], []
    for i in range(n):
        win = i % 2 == 0
        r = 1.6 + 0.2 * (i % 5) if win else -1.0
        if late_r is not None and i >= n * 0.6:
            r = late_r
        rows.append({"direction": "BEARISH", "outcome": "WIN" if win else "LOSS", "r": r})
        funding.append(0.0005 if win else (-0.00015 if i % 4 == 1 else -0.0005))
    t = make_trades(rows)
    return t, make_features(t, funding)


GRID = {"funding_threshold": [0.0001, 0.0003], "min_confidence": [0.5, 0.55]}


def test_tune_on_early_judge_on_late_never_sees_late_trades(monkeypatch):
    t, f = series(50)
    seen: list[set[str]] = []
    real = ov.apply_overlay

    def spy(trades, features, config=None):
        seen.append(set(trades["trade_id"]))
        return real(trades, features, config)

    monkeypatch.setattr(overlay_tuning, "apply_overlay", spy)
    res = tune_and_judge(t, f, GRID, split_fraction=0.6, n_resamples=50)
    early, late = set(res.tuning_trade_ids), set(res.judging_trade_ids)
    assert early and late and not early & late
    split = pl.lit(res.split_time).cast(TS)
    assert t.filter(pl.col("trade_id").is_in(list(early)))["exit_time"].max() < res.split_time
    assert t.filter(pl.col("trade_id").is_in(list(late)) & (pl.col("decision_time") < split)).height == 0
    assert res.n_straddling == 1   # decided the day before the split, closed on it
    # every call but the final judging backtest saw early trades only
    assert all(s <= early for s in seen[:-1]) and seen[-1] == late
    assert len(seen) == 4 + 2
    # changing the late trades changes nothing about the choice
    t2, f2 = series(50, late_r=-5.0)
    f2 = f2.with_columns(pl.when(pl.col("trade_id").is_in(list(late))).then(0.01)
                         .otherwise(pl.col("funding_rate")).alias("funding_rate"))
    res2 = tune_and_judge(t2, f2, GRID, split_time=res.split_time, n_resamples=50)
    assert res2.config == res.config and res2.grid.equals(res.grid)
    assert res.grid["objective"].is_sorted(descending=True)


def test_tune_picks_the_threshold_that_filters_the_mild_losers():
    t, f = series(50)
    res = tune_and_judge(t, f, GRID, split_fraction=0.6, n_resamples=50)
    # 0.0001 also catches the -0.00015 losers; min_confidence 0.5 vs 0.55 filters the same trades
    assert res.config.funding_threshold == 0.0001 and res.config.min_confidence == 0.5
    assert res.judging.difference("filtering", "win_rate")["variant_value"] == 1.0


def test_split_rejects_empty_sides():
    t, _ = series(4)
    with pytest.raises(ValueError, match="judging"):
        split_by_time(t, split_time=T0 + timedelta(days=100))


def test_phase10_gate_passes_and_fails_with_messages():
    t, f = series(50)
    res = tune_and_judge(t, f, GRID, split_fraction=0.6, n_resamples=200)
    gate = phase10_gate(res)
    assert isinstance(gate, GateResult) and gate.passed, gate.message
    assert [p.name for p in gate.parts] == ["win_rate_gain", "sharpe_gain", "win_rate_gain_vs_unfiltered",
                                            "sharpe_gain_vs_unfiltered"]
    wr = gate.parts[0]
    assert wr.value == pytest.approx(50.0) and wr.threshold == 5.0   # 50% -> 100%
    assert wr.control.startswith("confidence alone") and wr.null_p95 < 50 and wr.null_percentile > 95
    assert wr.mde is not None and wr.ci_low is not None and wr.ci_low_independent is not None

    strict = phase10_gate(res, OverlayGateConfig(min_win_rate_gain_points=60.0))
    assert not strict.passed and strict.failed_parts[0].name == "win_rate_gain"
    assert "10.00 points short" in strict.message

    # nothing fires with an enormous threshold: no gain at all
    none = overlay_backtest(t, apply_overlay(t, f, OverlayConfig(funding_threshold=0.01)), n_resamples=20)
    g = phase10_gate(none)
    assert not g.passed and len(g.failed_parts) == 4
    assert "+0.00 points, need > +5.00 points (5.00 points short)" in g.parts[0].message
    assert "(0.200 short)" in g.parts[1].message
    # sizing with every multiplier 1 cannot beat chance (the same multipliers dealt at random), however low the bar
    sizing = phase10_gate(none, OverlayGateConfig(variant="sizing", min_win_rate_gain_points=-1, min_sharpe_gain=-1))
    assert [p.name for p in sizing.parts] == ["win_rate_gain", "sharpe_gain"] and not sizing.passed


def test_equity_curve_plot_writes_a_png(tmp_path):
    t, f = hand_set()
    res = overlay_backtest(t, apply_overlay(t, f), n_resamples=10)
    path = equity_curve_plot(res.equity["baseline"], res.equity["sizing"], tmp_path / "plots" / "eq.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
