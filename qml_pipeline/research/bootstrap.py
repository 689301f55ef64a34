"""The one bootstrap of the research phases (docs/evidence.md): paired, by trade or by cluster.

A resample draws clusters with replacement (`scipy.stats.bootstrap` draws the cluster indices) and
every trade of a drawn cluster enters with it; the statistic sees a weight per trade (how many
times it was drawn) and computes every model or variant on the same resample, so differences are
paired. Clusters (`cluster_labels`):
- trade: each trade alone: the classical independent bootstrap, kept as the comparison;
- overlap: trades whose lives [decision_time, exit_time) overlap, chained (a connected component
  of the overlap graph; a trade decided when another exits does not overlap it): trades open at
  the same time share the market's path, funding settlements and near-duplicate patterns (1h and
  4h), so they are resampled together;
- day: trades decided on the same UTC calendar day.

The interval is the percentile interval of the resampled statistic. A resample where the statistic
is undefined (e.g. a filter that kept fewer than 2 trades) is counted (`n_undefined`) and left out of
the interval, which scipy's own interval would turn into NaN; that is why the interval is taken
from scipy's bootstrap distribution here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats as sps

from qml_pipeline.timeutil import DAY_MS, epoch_ms

CLUSTER_BY = ("trade", "overlap", "day")


def cluster_labels(trades: pl.DataFrame, by: str = "overlap") -> np.ndarray:
    """One integer cluster label per row of `trades` (row order), 0..k-1.

    Needs decision_time (and exit_time for 'overlap'; a trade without exit_time is a point at its
    decision_time)."""
    if by not in CLUSTER_BY:
        raise ValueError(f"cluster_by must be one of {CLUSTER_BY}, got {by!r}")
    n = trades.height
    if by == "trade" or n == 0:
        return np.arange(n, dtype=np.int64)
    decision = trades["decision_time"].dt.epoch("ms").to_numpy().astype(np.int64)
    if by == "day":
        return np.unique(decision // DAY_MS, return_inverse=True)[1].astype(np.int64)
    exits = epoch_ms(trades["exit_time"])
    exits = np.where(np.isfinite(exits), exits, decision).astype(np.float64)
    order = np.argsort(decision, kind="stable")
    reach = np.maximum.accumulate(exits[order])
    starts = np.r_[True, decision[order][1:] >= reach[:-1]]  # decided when the previous life ended: apart
    labels = np.empty(n, dtype=np.int64)
    labels[order] = np.cumsum(starts) - 1
    return labels


def bootstrap_distribution(statistic: Callable[[np.ndarray], np.ndarray], labels: np.ndarray,
                           n_resamples: int = 2000, seed: int = 0, batch: int = 500) -> np.ndarray:
    """(m, n_resamples) values of `statistic` over cluster resamples.

    `statistic(weights)` takes weights (b, n) (how often each trade was drawn) and returns m
    values per resample as an array (m, b). The same resamples feed all m values (paired).
    """
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if labels.size else 0
    if k < 2 or n_resamples <= 0:
        raise ValueError(f"a bootstrap needs at least 2 clusters and 1 resample (got {k} clusters, "
                         f"{n_resamples} resamples)")

    def on_clusters(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = np.atleast_2d(idx)
        b = drawn.shape[0]
        counts = np.bincount((drawn + k * np.arange(b)[:, None]).ravel(), minlength=b * k).reshape(b, k)
        out = np.atleast_2d(statistic(counts[:, labels].astype(np.float64)))
        return out[:, 0] if np.ndim(idx) == 1 else out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.bootstrap((np.arange(k),), on_clusters, n_resamples=n_resamples, batch=batch, vectorized=True,
                            method="percentile", rng=np.random.default_rng(seed))
    return np.atleast_2d(res.bootstrap_distribution)


@dataclass(frozen=True)
class Interval:
    """A bootstrap summary of one difference (or value). `share_not_better`: resamples <= 0."""

    low: float | None
    high: float | None
    se: float | None
    share_not_better: float | None
    n_undefined: int
    n_resamples: int


def interval(values: np.ndarray, level: float = 0.95) -> Interval:
    """Percentile interval, standard error and share <= 0 of one row of a bootstrap distribution,
    over its defined (finite) resamples."""
    values = np.asarray(values, dtype=np.float64)
    ok = values[np.isfinite(values)]
    n_undefined = int(values.size - ok.size)
    if ok.size == 0:
        return Interval(None, None, None, None, n_undefined, int(values.size))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ok, [tail, 100 - tail])
    se = float(ok.std(ddof=1)) if ok.size > 1 else None
    return Interval(float(low), float(high), se, float((ok <= 0).mean()), n_undefined, int(values.size))
