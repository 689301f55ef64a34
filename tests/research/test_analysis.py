from math import comb

import numpy as np
import zipfile

import polars as pl
import pytest
from scipy.stats import false_discovery_control, fisher_exact

from qml_pipeline.research.phase9 import (
    AnalysisConfig,
    bh_adjusted,
    context_issue_share,
    issue_sensitivity,
    identifiable_context_issue,
    label_trades,
    phase9_gate,
    review_export,
    winners_vs_losers,
)
from qml_pipeline.research.overlay import OverlayConfig, join_context
from tests.research.test_overlay import make_features, make_trades


def win_loss(n_win: int, n_loss: int, extra: list[dict] | None = None) -> pl.DataFrame:
    rows = ([{"direction": "BEARISH", "outcome": "WIN", "r": 2.0}] * n_win
            + [{"direction": "BEARISH", "outcome": "LOSS", "r": -1.0}] * n_loss + (extra or []))
    return make_trades(rows)


def test_perfect_separation_gives_tiny_p_and_delta_one():
    t = win_loss(8, 8)   # scipy's exact test at this size
    f = pl.DataFrame({"trade_id": t["trade_id"],
                      "oi_change_24h": [float(v) for v in range(8, 16)] + [float(v) for v in range(8)],
                      "oi_change_7d": [float(v) for v in range(8)] + [float(v) for v in range(8, 16)],
                      "oi_percentile_30d": [float(v) for v in range(1, 16, 2)] + [float(v) for v in range(2, 17, 2)]})
    s = {r["feature"]: r for r in winners_vs_losers(t, f).iter_rows(named=True)}
    up = s["oi_change_24h"]
    assert (up["n_win"], up["n_loss"]) == (8, 8)
    assert up["cliffs_delta"] == 1.0 and up["mw_u"] == 64.0 and up["ks_stat"] == 1.0
    assert up["mw_p"] == pytest.approx(2 / comb(16, 8))      # exact two-sided p, no ties
    assert (up["median_win"], up["median_loss"]) == (11.5, 3.5)
    assert s["oi_change_7d"]["cliffs_delta"] == -1.0 and s["oi_change_7d"]["significant"]
    # interleaved: winners 1,3,..,15, losers 2,4,..,16: P(w>l) = 28/64, P(w<l) = 36/64
    mixed = s["oi_percentile_30d"]
    assert mixed["cliffs_delta"] == pytest.approx(-8 / 64)
    assert mixed["mw_p"] > 0.5 and mixed["ks_p"] > 0.5 and not mixed["significant"]
    assert up["p_adj"] == pytest.approx(min(1.0, up["mw_p"] * 3 / 2))   # ties with oi_change_7d at rank 2


def test_nulls_are_excluded_and_counted_and_unfilled_trades_ignored():
    t = win_loss(4, 4, extra=[{"direction": "BULLISH", "outcome": "NOT_FILLED", "r": None}])
    f = pl.DataFrame({"trade_id": t["trade_id"],
                      "funding_rate_z30d": [1.0, None, 2.0, float("nan"), -1.0, -2.0, None, -3.0, 99.0],
                      "distance_to_liq_cluster": [None] * 9},
                     schema_overrides={"distance_to_liq_cluster": pl.Float64})
    s = {r["feature"]: r for r in winners_vs_losers(t, f).iter_rows(named=True)}
    z = s["funding_rate_z30d"]
    assert (z["n_win"], z["n_null_win"], z["n_loss"], z["n_null_loss"]) == (2, 2, 3, 1)
    assert z["cliffs_delta"] == 1.0
    liq = s["distance_to_liq_cluster"]
    assert liq["n_win"] == 0 and liq["mw_p"] is None and liq["p_adj"] is None and not liq["significant"]


def test_funding_fuel_is_signed_by_direction_and_scaled_to_8h():
    t = make_trades([{"direction": "BEARISH", "outcome": "WIN"}, {"direction": "BULLISH", "outcome": "WIN"},
                     {"direction": "BEARISH", "outcome": "LOSS"}, {"direction": "BULLISH", "outcome": "LOSS"}])
    f = make_features(t, [0.0003, -0.0003, -0.0001, 0.0001], hours=[8, 4, 8, 1])
    s = {r["feature"]: r for r in winners_vs_losers(t, f).iter_rows(named=True)}
    assert (s["funding_fuel_8h"]["median_win"], s["funding_fuel_8h"]["median_loss"]) == \
        pytest.approx((0.00045, -0.00045))
    assert s["funding_fuel_8h"]["cliffs_delta"] == 1.0
    # the unsigned 8h rate (winners 0.0003, -0.0006; losers -0.0001, 0.0008) separates less
    assert s["funding_rate_8h"]["cliffs_delta"] == pytest.approx(-0.5)


def test_timeouts_are_losses_unless_excluded():
    t = make_trades([{"direction": "BEARISH", "outcome": o} for o in ("WIN", "LOSS", "TIMEOUT", "INVALIDATED")])
    assert label_trades(t)["label"].to_list() == ["win", "loss", "loss"]
    assert label_trades(t, "exclude")["label"].to_list() == ["win", "loss"]
    with pytest.raises(ValueError, match="AnalysisConfig.timeout_as"):
        AnalysisConfig(timeout_as="win")


def test_bh_is_scipys_over_the_tests_that_exist():
    assert bh_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # NaN / None is not a test: m = 2
    out = bh_adjusted([0.02, None, 0.9])
    assert out[0] == pytest.approx(0.04) and np.isnan(out[1]) and out[2] == pytest.approx(0.9)
    p = np.random.default_rng(3).uniform(0, 0.2, 30)
    assert bh_adjusted(list(p)) == pytest.approx(false_discovery_control(p))
    assert np.isnan(bh_adjusted([None, None])).all()


def test_identifiable_context_issue_by_the_overlays_rules():
    t = make_trades([
        {"direction": "BULLISH", "outcome": "LOSS"},    # crowded longs against a long: issue
        {"direction": "BEARISH", "outcome": "LOSS"},    # crowded shorts against a short: issue
        {"direction": "BEARISH", "outcome": "LOSS"},    # crowded longs = fuel for a short: no issue
        {"direction": "BEARISH", "outcome": "TIMEOUT"},  # OI falling 10%: issue
        {"direction": "BULLISH", "outcome": "LOSS"},    # no context: no issue
        {"direction": "BULLISH", "outcome": "WIN"},     # not a loser
        {"direction": "BULLISH", "outcome": "NOT_FILLED"},
    ])
    f = make_features(t, [0.0005, -0.0005, 0.0005, None, None, 0.0005, 0.0005],
                      [None, None, None, -10.0, None, None, None])
    joined = join_context(t, f)
    issue = identifiable_context_issue(joined, OverlayConfig())
    # winners are flagged too (the control group): the BULLISH winner had crowded longs against it
    assert issue.to_list() == [True, True, False, True, False, True, None]
    share = context_issue_share(joined, OverlayConfig())
    assert {k: share[k] for k in ("share", "losers", "with_issue", "without_context")} == \
        {"share": 3 / 5, "losers": 5, "with_issue": 3, "without_context": 1}
    assert (share["winners"], share["winners_with_issue"], share["winner_share"]) == (1, 1, 1.0)
    assert context_issue_share(joined, OverlayConfig(), timeout_as="exclude")["share"] == 2 / 4
    # a threshold beyond every rate leaves only the OI issue
    assert context_issue_share(joined, OverlayConfig(funding_threshold=0.001))["with_issue"] == 1


def test_issue_definitions_narrow_seed_broad_are_nested():
    t = make_trades([
        {"direction": "BULLISH", "outcome": "LOSS"},    # funding 0.0001 with the crowd (longs) for a long: seed only
        {"direction": "BEARISH", "outcome": "LOSS"},    # OI -2%: falling but within the threshold: seed only
        {"direction": "BEARISH", "outcome": "LOSS"},    # fuel +0.0001 below the threshold, OI +1%: broad only
        {"direction": "BEARISH", "outcome": "LOSS"},    # crowded longs 0.0005 = fuel: no issue anywhere
        {"direction": "BEARISH", "outcome": "LOSS"},    # no context: no issue anywhere
        {"direction": "BULLISH", "outcome": "WIN"},     # crowded longs against a long: narrow
    ])
    f = make_features(t, [0.0001, None, 0.0001, 0.0005, None, 0.0005], [None, -2.0, 1.0, None, None, None])
    joined = join_context(t, f)
    flags = {d: identifiable_context_issue(joined, definition=d).to_list() for d in ("narrow", "seed", "broad")}
    assert flags["narrow"] == [False, False, False, False, False, True]
    assert flags["seed"] == [True, True, False, False, False, True]
    assert flags["broad"] == [True, True, True, False, False, True]
    table = issue_sensitivity(joined)
    assert table["definition"].to_list() == ["narrow", "seed", "broad"] and table["gate"].to_list() == [True, False, False]
    assert table["share"].to_list() == pytest.approx([0.0, 0.4, 0.6]) and table["winner_share"].to_list() == [1.0] * 3
    with pytest.raises(ValueError, match="issue_definition"):
        AnalysisConfig(issue_definition="loose")


def test_fisher_part_tests_losers_against_winners():
    # 30 of 40 losers and 3 of 20 winners with funding against them
    rows = ([{"direction": "BULLISH", "outcome": "LOSS"}] * 40 + [{"direction": "BULLISH", "outcome": "WIN"}] * 20)
    t = make_trades(rows)
    f = make_features(t, [0.0005] * 30 + [None] * 10 + [0.0005] * 3 + [None] * 17)
    share = context_issue_share(join_context(t, f))
    expected = fisher_exact([[30, 10], [3, 17]], alternative="greater")
    assert share["fisher_p"] == pytest.approx(expected.pvalue) and share["odds_ratio"] == pytest.approx(expected.statistic)
    assert share["difference"] == pytest.approx(0.75 - 0.15) and 0 < share["mde"] < 0.6
    gate = phase9_gate(stats_frame([0.01]), share, 250)
    part = {p.name: p for p in gate.parts}["issue_discriminates"]
    assert part.passed and part.p_value == pytest.approx(expected.pvalue) and part.value == pytest.approx(60.0)
    # the same 75% among winners: the literal 70% part passes, the discriminating part does not
    same = make_features(t, [0.0005] * 30 + [None] * 10 + [0.0005] * 15 + [None] * 5)
    equal = context_issue_share(join_context(t, same))
    parts = {p.name: p for p in phase9_gate(stats_frame([0.01]), equal, 250).parts}
    assert parts["losers_with_context_issue"].passed and not parts["issue_discriminates"].passed
    assert "no effect larger than" in parts["issue_discriminates"].message


def test_review_export_samples_seeded_and_writes_csv_and_xlsx(tmp_path):
    t = win_loss(30, 150)
    f = make_features(t, [0.0005] * 180, [(-1.0) ** i * 7 for i in range(180)])
    paths = review_export(t, f, tmp_path, n=100, seed=1)
    assert set(paths) == {"losers", "winners", "combined", "workbook"}
    with zipfile.ZipFile(paths["workbook"]) as book:  # a real XLSX: a zip with both sheets
        sheets = [n for n in book.namelist() if n.startswith("xl/worksheets/sheet")]
        assert len(sheets) == 2 and b"losers" in book.read("xl/workbook.xml")
    losers, winners = pl.read_csv(paths["losers"]), pl.read_csv(paths["winners"])
    assert (losers.height, winners.height) == (100, 30)
    assert pl.read_csv(paths["combined"]).height == 130
    assert set(losers["label"]) == {"loss"} and set(winners["outcome"]) == {"WIN"}
    for col in ("funding_rate", "funding_fuel_8h", "oi_change_24h", "overlay_multiplier", "overlay_reason",
                "context_issue", "context_issue_reason", "reviewer_notes"):
        assert col in losers.columns
    again = review_export(t, f, tmp_path / "again", n=100, seed=1)
    assert pl.read_csv(again["losers"])["trade_id"].equals(losers["trade_id"])
    other = review_export(t, f, tmp_path / "other", n=100, seed=2)
    assert not pl.read_csv(other["losers"])["trade_id"].equals(losers["trade_id"])


def stats_frame(p_adj: list[float | None]) -> pl.DataFrame:
    return pl.DataFrame({"feature": [f"f{i}" for i in range(len(p_adj))], "p_adj": p_adj,
                         "cliffs_delta": [0.3] * len(p_adj), "n_win": [80] * len(p_adj), "n_loss": [240] * len(p_adj),
                         "mde_cliffs_delta": [0.27] * len(p_adj)}, schema_overrides={"p_adj": pl.Float64})


def issue(share: float | None, winner_share: float = 0.2, losers: int = 200, winners: int = 100) -> dict:
    """A context_issue_share-shaped dict with Fisher's test computed from the shares."""
    if share is None:
        return {"share": None, "losers": 0, "winner_share": None, "fisher_p": None}
    a, b = round(share * losers), round(winner_share * winners)
    test = fisher_exact([[a, losers - a], [b, winners - b]], alternative="greater")
    return {"share": a / losers, "losers": losers, "with_issue": a, "winner_share": b / winners, "winners": winners,
            "winners_with_issue": b, "difference": a / losers - b / winners, "odds_ratio": test.statistic,
            "fisher_p": test.pvalue, "mde": 0.1}


def test_phase9_gate_passes():
    gate = phase9_gate(stats_frame([0.01, 0.5]), issue(0.75), 250)
    assert gate.passed, gate.message
    assert [p.name for p in gate.parts] == ["min_trades", "significant_feature", "losers_with_context_issue",
                                            "issue_discriminates"]
    assert "f0" in gate.parts[1].message and gate.parts[1].mde == 0.27


def test_phase9_gate_fails_naming_each_part_and_by_how_much():
    gate = phase9_gate(stats_frame([0.08, None]), issue(0.455, winner_share=0.5), 150)
    assert not gate.passed and len(gate.failed_parts) == 4
    msg = gate.message
    assert "150 filled trades, need >= 200 (50 short)" in msg
    assert "best: f0 p_adj=0.08" in msg and "(0.03 above alpha)" in msg
    assert "no effect larger than 0.270 in |Cliff's delta|" in msg
    assert "45.5% of 200 losers had an identifiable context issue (narrow definition), need >= 70% (24.5 points short)" in msg
    only_issue = phase9_gate(stats_frame([0.001]), issue(0.5), 300)
    assert [p.name for p in only_issue.failed_parts] == ["losers_with_context_issue"]
    lenient = phase9_gate(stats_frame([0.08]), issue(0.5), 150,
                          AnalysisConfig(alpha=0.1, min_trades=100, min_issue_share=0.5))
    assert lenient.passed
    assert not phase9_gate(stats_frame([0.001]), issue(None), 300).passed


def test_winners_vs_losers_reports_the_mde_of_each_feature():
    t = win_loss(30, 90)
    rng = np.random.default_rng(0)
    f = pl.DataFrame({"trade_id": t["trade_id"], "oi_change_24h": rng.normal(size=120),
                      "oi_change_7d": list(rng.normal(size=30)) + [None] * 60 + list(rng.normal(size=30))},
                     schema_overrides={"oi_change_7d": pl.Float64})
    s = {r["feature"]: r for r in winners_vs_losers(t, f).iter_rows(named=True)}
    # fewer values, larger MDE; two features tested, so BH asks alpha / 2 of a single effect
    from qml_pipeline.research.power import mde_cliffs_delta
    assert s["oi_change_24h"]["mde_cliffs_delta"] == pytest.approx(mde_cliffs_delta(30, 90, 0.05, 2))
    assert s["oi_change_7d"]["mde_cliffs_delta"] > s["oi_change_24h"]["mde_cliffs_delta"]
