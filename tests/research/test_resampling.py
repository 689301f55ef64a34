"""The one bootstrap (by cluster or by trade), chance of the same size, and minimum detectable effects."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from qml_pipeline.research.bootstrap import bootstrap_distribution, cluster_labels, interval
from qml_pipeline.research.nulls import null_position, permuted, random_subsets
from qml_pipeline.research.power import mde_cliffs_delta, mde_from_se, mde_two_shares
from qml_pipeline.store.schemas import TS

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def lives(spans: list[tuple[float, float | None]]) -> pl.DataFrame:
    """Trades with decision / exit times in hours after T0."""
    return pl.DataFrame({
        "decision_time": [T0 + timedelta(hours=a) for a, _ in spans],
        "exit_time": [None if b is None else T0 + timedelta(hours=b) for _, b in spans],
    }).with_columns(pl.col("decision_time", "exit_time").cast(TS))


def test_cluster_labels_by_overlap_day_and_trade():
    # 0-5 overlaps 3-8 (chained with 7-9); 9-10 starts when 7-9 ends: apart; 30 (no exit) alone;
    # the rows are not in time order
    trades = lives([(3, 8), (0, 5), (9, 10), (7, 9), (30, None), (31, 33)])
    assert cluster_labels(trades, "overlap").tolist() == [0, 0, 1, 0, 2, 3]
    assert cluster_labels(trades, "day").tolist() == [0, 0, 0, 0, 1, 1]
    assert cluster_labels(trades, "trade").tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="cluster_by"):
        cluster_labels(trades, "week")


def _mean_statistic(x: np.ndarray):
    return lambda w: ((w @ x) / w.sum(axis=1))[None, :]


def test_one_trade_per_cluster_is_the_independent_bootstrap_and_matches_scipys_interval():
    x = np.random.default_rng(0).normal(size=80)
    dist = bootstrap_distribution(_mean_statistic(x), np.arange(80), n_resamples=2000, seed=3)
    ours = interval(dist[0])
    ref = sps.bootstrap((x,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(3))
    assert (ours.low, ours.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert ours.se == pytest.approx(ref.standard_error)
    assert np.array_equal(dist, bootstrap_distribution(_mean_statistic(x), np.arange(80), 2000, seed=3))


def test_cluster_bootstrap_widens_the_interval_of_duplicated_trades():
    """Four copies of each of 50 outcomes: taken as independent they look like 200 observations; as
    clusters they are 50, and the interval is about twice as wide."""
    x = np.repeat(np.random.default_rng(1).normal(size=50), 4)
    clusters = np.repeat(np.arange(50), 4)
    by_trade = interval(bootstrap_distribution(_mean_statistic(x), np.arange(200), 2000, seed=0)[0])
    by_cluster = interval(bootstrap_distribution(_mean_statistic(x), clusters, 2000, seed=0)[0])
    ratio = (by_cluster.high - by_cluster.low) / (by_trade.high - by_trade.low)
    assert ratio == pytest.approx(2.0, rel=0.15)


def test_interval_leaves_out_undefined_resamples_and_counts_them():
    values = np.array([np.nan, -1.0, 0.0, 1.0, 2.0, 3.0, np.nan])
    iv = interval(values)
    assert iv.n_undefined == 2 and iv.n_resamples == 7 and iv.share_not_better == pytest.approx(2 / 5)
    assert (iv.low, iv.high) == pytest.approx(tuple(np.percentile([-1, 0, 1, 2, 3], [2.5, 97.5])))
    assert interval(np.array([np.nan])).low is None
    with pytest.raises(ValueError, match="at least 2 clusters"):
        bootstrap_distribution(_mean_statistic(np.ones(3)), np.zeros(3, dtype=int), 10)


def test_random_subsets_keep_exactly_k_each_trade_equally_often():
    masks = random_subsets(40, 13, n_draws=4000, seed=2)
    assert masks.shape == (4000, 40) and (masks.sum(axis=1) == 13).all()
    assert masks.mean(axis=0) == pytest.approx(np.full(40, 13 / 40), abs=0.03)
    assert np.array_equal(masks, random_subsets(40, 13, n_draws=4000, seed=2))
    assert not random_subsets(5, 0, 3).any() and random_subsets(5, 5, 3).all()


def test_permuted_deals_the_same_values():
    values = np.array([0.8, 1.0, 1.0, 1.2, 1.32])
    dealt = permuted(values, n_draws=500, seed=1)
    assert (np.sort(dealt, axis=1) == np.sort(values)).all()
    assert len({tuple(row) for row in dealt}) > 10


def test_null_position_percentile_counts_ties_half():
    null = np.array([0.0] * 50 + [1.0] * 40 + [2.0] * 10 + [np.nan] * 5)
    pos = null_position(1.0, null)
    assert pos.percentile == pytest.approx(100 * (50 + 20) / 100) and pos.n_draws == 100
    assert pos.mean == pytest.approx(0.6) and pos.p95 == pytest.approx(2.0)
    assert null_position(None, null).percentile is None
    assert null_position(1.0, np.array([np.nan])).p95 is None


def test_mde_of_cliffs_delta_has_80_percent_power_by_simulation():
    """Noether's approximation, checked: a normal shift with Cliff's delta = the MDE is found by the
    two-sided Mann-Whitney test at alpha / m in about 80% of samples."""
    rng = np.random.default_rng(0)
    for n1, n2, m in ((83, 243, 9), (40, 60, 1)):
        delta = mde_cliffs_delta(n1, n2, 0.05, m)
        shift = np.sqrt(2) * sps.norm.ppf((delta + 1) / 2)   # P(X > Y) = (delta + 1) / 2 for unit normals
        p = sps.mannwhitneyu(rng.normal(shift, 1, (1500, n1)), rng.normal(0, 1, (1500, n2)), axis=1).pvalue
        assert (p < 0.05 / m).mean() == pytest.approx(0.80, abs=0.05), (n1, n2, m)
    assert mde_cliffs_delta(83, 243, 0.05, 9) == pytest.approx(0.266, abs=0.002)   # the sample's ~0.27
    assert mde_cliffs_delta(0, 10) is None


def test_mde_of_two_shares_has_about_80_percent_power_with_fishers_test():
    rng = np.random.default_rng(1)
    for n1, n2, pooled in ((243, 83, 0.3), (60, 60, 0.2)):
        d = mde_two_shares(n1, n2, pooled)
        a = rng.binomial(n1, pooled + d * n2 / (n1 + n2), 600)
        b = rng.binomial(n2, pooled - d * n1 / (n1 + n2), 600)
        power = np.mean([sps.fisher_exact([[x, n1 - x], [y, n2 - y]], alternative="greater").pvalue < 0.05
                         for x, y in zip(a, b)])
        assert 0.72 < power < 0.92, (n1, n2, pooled, power)


def test_mde_from_the_bootstrap_se():
    assert mde_from_se(1.0) == pytest.approx(sps.norm.ppf(0.95) + sps.norm.ppf(0.80))
    assert mde_from_se(None) is None and mde_from_se(float("nan")) is None and mde_from_se(0.0) is None
