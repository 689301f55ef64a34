"""Phase 11: fusion network, context normalisation, walk-forward evaluation (small synthetic sets)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qml_pipeline.research.evaluation import (
    auc,
    brier,
    calibration_table,
    evaluate_models,
    compare_models,
    fit_logistic,
    log_loss,
    platt,
    walk_forward_splits,
)
from qml_pipeline.research.model import TrainedModel, train_model
from qml_pipeline.research.model_data import ContextNormaliser, ModelConfig, align_inputs, data_fingerprint
from qml_pipeline.research.model_network import FusionNet
from qml_pipeline.store.schemas import TS
from tests.synthetic import model_set as synthetic

T0 = datetime(2021, 1, 1, tzinfo=UTC)
FAST = ModelConfig(epochs=15, lr=3e-3, batch_size=64, patience=5, seed=0)


# --- network and training -----------------------------------------------------------------------

def test_shapes_through_the_network() -> None:
    import torch  # after qml_pipeline.research.model_network, which sets OpenMP's wait policy before torch loads

    windows, context, labels = synthetic(60)
    norm = ContextNormaliser.for_frame(context).fit(context)
    net = FusionNet(norm.width, ModelConfig())
    logits = net(torch.from_numpy(windows[:7]), torch.from_numpy(norm.transform(context[:7])))
    assert logits.shape == (7,)
    assert net.lstm.hidden_size == 128 and net.context[0].out_features == 32
    assert net.fused[0].in_features == 160 and net.fused[0].out_features == 64

    clf = train_model(windows, context, labels, ModelConfig(epochs=1, val_fraction=0))
    p = clf.predict(windows[:7], context[:7])
    assert p.shape == (7,) and np.all((p >= 0) & (p <= 1))

    reg = train_model(windows, context, labels, ModelConfig(epochs=1, val_fraction=0, head="regression"))
    r = reg.predict(windows[:7], context[:7])
    assert r.shape == (7,) and np.isfinite(r).all()

    attn = train_model(windows, context, labels, ModelConfig(epochs=1, val_fraction=0, sequence="attention"))
    p = attn.predict(windows[:7], context[:7])
    assert p.shape == (7,) and np.all((p >= 0) & (p <= 1))


def test_context_signal_is_learned_out_of_sample() -> None:
    windows, context, labels = synthetic(600, signal=True, hold_hours=5)
    report = evaluate_models(windows, context, labels, config=FAST, n_folds=3, n_bootstrap=200)
    by_model = dict(zip(report.overall["model"], report.overall["auc"]))
    assert by_model["fusion"] > 0.75
    assert by_model["logistic"] > 0.75
    assert 0.35 < by_model["confidence"] < 0.65
    best = report.best_model
    vs_conf = report.bootstrap.filter((pl.col("model") == best) & (pl.col("reference") == "confidence")).row(0, named=True)
    assert vs_conf["auc_beyond_noise"] and vs_conf["auc_ci_low"] > 0 and vs_conf["auc_ci_low_independent"] > 0
    vs_rate = report.bootstrap.filter((pl.col("model") == "logistic") & (pl.col("reference") == "base_rate")).row(0, named=True)
    assert vs_rate["brier_beyond_noise"]
    assert "beyond noise" in report.verdict and "judged only against the probability baselines" in report.verdict


def test_random_labels_give_chance_auc() -> None:
    windows, context, labels = synthetic(600, signal=False, seed=1)
    report = evaluate_models(windows, context, labels, config=FAST, n_folds=3, n_bootstrap=200)
    for model, value in zip(report.overall["model"], report.overall["auc"]):
        assert 0.35 < value < 0.65, (model, value)


def test_same_seed_same_predictions_and_other_seed_differs() -> None:
    windows, context, labels = synthetic(200)
    cfg = ModelConfig(epochs=3, seed=7)
    a = train_model(windows, context, labels, cfg).predict(windows, context)
    b = train_model(windows, context, labels, cfg).predict(windows, context)
    c = train_model(windows, context, labels, ModelConfig(epochs=3, seed=8)).predict(windows, context)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_save_and_load_give_identical_predictions(tmp_path) -> None:
    windows, context, labels = synthetic(200)
    model = train_model(windows, context, labels, ModelConfig(epochs=3))
    sidecar = model.save(tmp_path / "fusion.pt")
    meta = json.loads(sidecar.read_text())
    assert meta["data_fingerprint"] == data_fingerprint(windows, context, labels)
    assert meta["config"]["epochs"] == 3 and meta["normaliser"]["fitted"]
    assert meta["metrics"]["epochs_run"] == len(meta["metrics"]["history"])

    loaded = TrainedModel.load(tmp_path / "fusion.pt")
    assert np.array_equal(loaded.predict(windows, context), model.predict(windows, context))

    (tmp_path / "fusion.pt").write_bytes((tmp_path / "fusion.pt").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="checksum"):
        TrainedModel.load(tmp_path / "fusion.pt")


def test_fingerprint_changes_with_the_data() -> None:
    windows, context, labels = synthetic(50)
    fp = data_fingerprint(windows, context, labels)
    assert fp == data_fingerprint(windows.copy(), context.clone(), labels.clone())
    flipped = labels.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("LOSS" if labels["outcome"][0] == "WIN" else "WIN"))
                                  .otherwise(pl.col("outcome")).alias("outcome"))
    assert data_fingerprint(windows, context, flipped) != fp
    w2 = windows.copy()
    w2[3, 4, 2] += 1e-3
    assert data_fingerprint(w2, context, labels) != fp


def test_inputs_are_checked() -> None:
    windows, context, labels = synthetic(40)
    with pytest.raises(ValueError, match="same trade order"):
        train_model(windows, context, labels.reverse(), ModelConfig(epochs=1))
    with pytest.raises(ValueError, match="oi_change_24h"):
        train_model(windows, context.drop("oi_change_24h"), labels, ModelConfig(epochs=1))
    unfilled = labels.with_columns(pl.when(pl.int_range(pl.len()) < 2).then(pl.lit("NOT_FILLED"))
                                   .otherwise(pl.col("outcome")).alias("outcome"))
    with pytest.raises(ValueError, match="never opened"):
        train_model(windows, context, unfilled, ModelConfig(epochs=1))
    bad = windows.copy()
    bad[5, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"rows \[5\]"):
        train_model(bad, context, labels, ModelConfig(epochs=1))


def test_align_inputs_reorders_frames_to_the_windows() -> None:
    windows, context, labels = synthetic(30)
    ids = context["trade_id"].to_list()
    _, ctx, lab = align_inputs(ids, windows, context.sample(fraction=1.0, shuffle=True, seed=3),
                               labels.reverse())
    assert ctx["trade_id"].to_list() == ids and lab["trade_id"].to_list() == ids
    with pytest.raises(ValueError, match="no row"):
        align_inputs(ids, windows, context.slice(1), labels)


# --- context normalisation -----------------------------------------------------------------------

def test_normaliser_uses_training_statistics_and_flags_missing() -> None:
    _, context, _ = synthetic(100)
    train, test = context[:60], context[60:]
    norm = ContextNormaliser.for_frame(context).fit(train)
    names = norm.feature_names
    oi = train["oi_change_24h"].to_numpy()
    assert norm.means["oi_change_24h"] == pytest.approx(oi.mean())
    x = norm.transform(test)
    assert x.shape == (40, norm.width) and norm.width == len(names)
    j = names.index("oi_change_24h")
    expected = np.clip((test["oi_change_24h"].to_numpy() - oi.mean()) / oi.std(), -5, 5)
    assert np.allclose(x[:, j], expected, atol=1e-5)
    assert np.allclose(x[:, names.index("oi_percentile_30d")], test["oi_percentile_30d"].to_numpy() / 100, atol=1e-6)
    # distance_to_liq_cluster is all NULL: value 0, indicator 1
    assert (x[:, names.index("distance_to_liq_cluster")] == 0).all()
    assert (x[:, names.index("distance_to_liq_cluster_missing")] == 1).all()
    fuel = x[:, names.index("funding_fuel")]
    sign = np.where(test["direction"].to_numpy() == "BULLISH", 1.0, -1.0)
    assert np.allclose(fuel, np.clip(-sign * test["funding_rate_z30d"].to_numpy(), -5, 5), atol=1e-5)

    holes = test.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(None)
                              .otherwise(pl.col("funding_rate_z30d")).alias("funding_rate_z30d"))
    y = norm.transform(holes)
    assert y[0, names.index("funding_rate_z30d")] == 0 and y[0, names.index("funding_rate_z30d_missing")] == 1
    assert y[1, names.index("funding_rate_z30d_missing")] == 0
    assert ContextNormaliser.from_dict(json.loads(json.dumps(norm.to_dict()))).transform(test).tobytes() == x.tobytes()


# --- walk-forward splits -------------------------------------------------------------------------

def _ms(ts: list[datetime]) -> np.ndarray:
    return np.array([t.timestamp() * 1000 for t in ts])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 72), min_size=30, max_size=80), st.integers(1, 4), st.integers(0, 12),
       st.randoms(use_true_random=False))
def test_walk_forward_never_leaks(holds: list[int], n_folds: int, gap_h: int, rnd) -> None:
    n = len(holds)
    decisions = [T0 + timedelta(hours=rnd.randint(0, 24 * 30)) for _ in range(n)]
    exits = [d + timedelta(hours=h) for d, h in zip(decisions, holds)]
    try:
        splits = walk_forward_splits(pl.Series(decisions).cast(TS), pl.Series(exits).cast(TS), n_folds,
                                     min_train=10, gap=timedelta(hours=gap_h))
    except ValueError as e:
        assert "no closed training trade" in str(e)
        return
    d_ms, e_ms = _ms(decisions), _ms(exits)
    tested = np.concatenate([test for _, test in splits])
    assert len(tested) == len(set(tested.tolist())) == n - 10
    prev_train: set[int] = set()
    for train, test in splits:
        start = d_ms[test].min()
        assert d_ms[train].max() < start  # no training trade decided at or after the test start
        assert (e_ms[train] < start - gap_h * 3_600_000).all()  # purged + embargo
        assert not set(train.tolist()) & set(test.tolist())
        overlapping = {i for i in range(n) if d_ms[i] < start and e_ms[i] >= start}
        assert not overlapping & set(train.tolist())
        assert prev_train <= set(train.tolist())  # expanding window
        prev_train = set(train.tolist())


def test_walk_forward_purges_a_trade_open_across_the_fold_start() -> None:
    decisions = [T0 + timedelta(hours=i) for i in range(20)]
    exits = [d + timedelta(minutes=30) for d in decisions]
    exits[8] = T0 + timedelta(hours=15)  # decided before fold 1's start (h10) and still open then
    splits = walk_forward_splits(decisions, exits, n_folds=2, min_train=10)
    (train0, test0), (train1, test1) = splits
    assert test0.tolist() == list(range(10, 15)) and test1.tolist() == list(range(15, 20))
    assert 8 not in train0 and 8 not in train1  # exit h15 is not before h15 either
    assert train0.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    with_gap = walk_forward_splits(decisions, exits, n_folds=2, min_train=10, gap=timedelta(hours=1))
    assert 9 not in with_gap[0][0]  # exits h9:30, within 1h of the h10 start


# --- metrics -------------------------------------------------------------------------------------

def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    p = np.round(rng.random(200), 1)  # many ties
    pos, neg = p[y], p[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auc(y, p) == pytest.approx(pairwise)
    assert np.isnan(auc(np.ones(5), np.arange(5)))


def test_log_loss_brier_and_calibration() -> None:
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.8, 0.2, 0.6, 0.4])
    assert brier(y, p) == pytest.approx((0.04 + 0.04 + 0.16 + 0.16) / 4)
    assert log_loss(y, p) == pytest.approx(-(2 * np.log(0.8) + 2 * np.log(0.6)) / 4)
    table = calibration_table(y, p)
    assert table.height == 10 and table["count"].sum() == 4
    row = table.filter(pl.col("bin") == 8).row(0, named=True)
    assert row["count"] == 1 and row["mean_predicted"] == pytest.approx(0.8) and row["observed_win_rate"] == 1.0
    assert table.filter(pl.col("bin") == 0)["observed_win_rate"][0] is None


def test_logistic_regression_recovers_a_linear_rule() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    y = (rng.random(2000) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] + 0.5)))).astype(float)
    m = fit_logistic(x, y, l2=1e-6)
    assert m.coef == pytest.approx([2, -1, 0], abs=0.25) and m.intercept == pytest.approx(0.5, abs=0.2)


def test_compare_models_separates_signal_from_noise_by_cluster_and_trade() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.5).astype(float)
    good = np.clip(0.5 + 0.4 * (y - 0.5) + 0.1 * rng.normal(size=400), 0, 1)
    noise_a, noise_b = rng.random(400), rng.random(400)
    preds = {"good": good, "a": noise_a, "b": noise_b}
    clusters = np.arange(400) // 4
    res = compare_models(y, preds, [("good", "a"), ("a", "b")], clusters, 300, seed=1)
    real, none = res.row(0, named=True), res.row(1, named=True)
    assert real["auc_ci_low"] > 0 and real["brier_ci_low"] > 0 and real["log_loss_ci_low"] > 0
    assert real["auc_gain"] == pytest.approx(auc(y, good) - auc(y, noise_a))
    assert real["brier_gain"] == pytest.approx(brier(y, noise_a) - brier(y, good))
    assert none["auc_ci_low"] < 0 < none["auc_ci_high"] and real["n_clusters"] == 100
    assert compare_models(y, preds, [("good", "a"), ("a", "b")], clusters, 300, seed=1).equals(res)  # seeded
    # one cluster: no dependence-aware interval, the independent one stays
    single = compare_models(y, preds, [("good", "a")], np.zeros(400, dtype=np.int64), 100, seed=1).row(0, named=True)
    assert single["auc_ci_low"] is None and single["auc_ci_low_independent"] > 0


def test_platt_is_fitted_on_training_trades_only() -> None:
    rng = np.random.default_rng(2)
    score = rng.uniform(0.4, 0.8, 300)
    y = (rng.random(300) < 0.15 + 0.3 * (score - 0.4)).astype(float)   # a score, not a probability
    p = platt(score[:200], y[:200], score[200:])
    assert 0 < p.min() and p.max() < 0.5 and abs(p.mean() - y[:200].mean()) < 0.05
    flipped = y.copy()
    flipped[200:] = 1 - flipped[200:]
    assert np.array_equal(platt(score[:200], flipped[:200], score[200:]), p)  # test labels never reach the fit
    assert np.all(platt(score[:10], np.zeros(10), score[10:20]) == 0.0)       # one class: its rate
    missing = platt(score[:200], y[:200], np.array([np.nan, 0.6]))
    assert missing[0] == pytest.approx(y[:200].mean())


def test_raw_confidence_loses_to_the_base_rate_but_its_calibration_does_not() -> None:
    """The issue's finding: a score that is not a probability (mean 0.57 at a 26% win rate) makes
    any model look well calibrated; the calibrated version is the fair baseline."""
    windows, context, labels = synthetic(400, signal=False, seed=5, hold_hours=5)
    report = evaluate_models(windows, context, labels, include_fusion=False, n_folds=4, n_bootstrap=100)
    y = (labels["outcome"] == "WIN").to_numpy().astype(float)
    tested = report.predictions["trade_id"].to_list()
    raw = context.filter(pl.col("trade_id").is_in(tested))["base_confidence"].to_numpy()
    yt = report.predictions["y"].to_numpy()
    by = dict(zip(report.overall["model"], report.overall["brier"]))
    assert brier(yt, raw) > by["base_rate"] + 0.01
    assert by["confidence"] < by["base_rate"] + 0.01
    assert set(report.overall["model"]) == {"base_rate", "confidence", "logistic"} and y.size == 400


def test_evaluation_accepts_overlay_and_reports_per_year() -> None:
    windows, context, labels = synthetic(400, signal=True, seed=2)
    context = context.with_columns(
        pl.Series("decision_time", [datetime(2021 + i // 200, 1, 1, tzinfo=UTC) + timedelta(hours=6 * (i % 200))
                                    for i in range(400)]).cast(TS))
    labels = labels.with_columns((context["decision_time"] + timedelta(hours=12)).alias("exit_time"))
    fuel = -np.where(context["direction"].to_numpy() == "BULLISH", 1, -1) * context["funding_rate_z30d"].to_numpy()
    overlay = context["base_confidence"].to_numpy() * np.where(fuel > 1, 1.5, 1.0)  # some values > 1
    report = evaluate_models(windows, context, labels, overlay_confidence=overlay, include_fusion=False,
                             n_folds=4, n_bootstrap=100)
    assert set(report.overall["model"]) == {"base_rate", "confidence", "logistic", "overlay"}
    assert sorted(set(report.per_year["year"])) == [2021, 2022]
    assert report.per_fold.height == 4 * 4
    assert (report.calibration.group_by("model").agg(pl.col("count").sum())["count"] == report.overall["n"][0]).all()
    assert report.best_model == "logistic"
    assert report.predictions.height == report.overall["n"][0]
    with pytest.raises(ValueError, match="overlay_confidence has shape"):
        evaluate_models(windows, context, labels, overlay_confidence=overlay[:-1], include_fusion=False)
