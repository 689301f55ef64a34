"""Chance of the same size (docs/evidence.md): what a filter or sizing rule gains when its choices
are random but its size is not.

- `random_subsets`: keep the same number of trades, chosen at random (the null of a filter
  judged against every trade);
- `permuted`: the same multipliers dealt to the trades at random: the null of sizing, and of the
  context filter judged against the same filter without context (base_confidence x a random
  multiplier >= min_confidence). Dealing the multipliers, rather than dropping random trades of
  the control, keeps what any multiplier does near the confidence threshold: a multiplier below 1
  drops the least confident trades first, which is a confidence effect, not a context effect.

Every draw is seeded and vectorised: an array (n_draws, n) of weights for metrics.batch_metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _pick(eligible: np.ndarray, count: int, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """(n_draws, n) bool: in each row exactly `count` of the eligible positions, uniformly at random."""
    eligible = np.asarray(eligible, dtype=bool)
    n = eligible.size
    out = np.zeros((n_draws, n), dtype=bool)
    if count <= 0:
        return out
    available = int(eligible.sum())
    if count > available:
        raise ValueError(f"cannot pick {count} of {available} eligible trades")
    keys = np.where(eligible[None, :], rng.random((n_draws, n)), np.inf)
    chosen = np.argpartition(keys, count - 1, axis=1)[:, :count]
    np.put_along_axis(out, chosen, True, axis=1)
    return out


def random_subsets(n: int, k: int, n_draws: int = 2000, seed: int = 0) -> np.ndarray:
    """(n_draws, n) bool masks, each keeping exactly k of the n trades at random."""
    return _pick(np.ones(n, dtype=bool), k, n_draws, np.random.default_rng(seed))


def permuted(values: np.ndarray, n_draws: int = 2000, seed: int = 0) -> np.ndarray:
    """(n_draws, n): each row a random permutation of `values`."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return rng.permuted(np.broadcast_to(values, (n_draws, values.size)), axis=1)


@dataclass(frozen=True)
class NullPosition:
    """Where an observed gain lies in its null: mean, 95th percentile, the observed gain's
    percentile (0..100; ties count half) and the draws that gave a defined gain."""

    mean: float | None
    p95: float | None
    percentile: float | None
    n_draws: int


def null_position(observed: float | None, null: np.ndarray, quantile: float = 0.95) -> NullPosition:
    null = np.asarray(null, dtype=np.float64)
    ok = null[np.isfinite(null)]
    if ok.size == 0:
        return NullPosition(None, None, None, 0)
    pct = None
    if observed is not None and np.isfinite(observed):
        pct = float(100 * ((ok < observed).sum() + 0.5 * (ok == observed).sum()) / ok.size)
    return NullPosition(float(ok.mean()), float(np.quantile(ok, quantile)), pct, int(ok.size))
