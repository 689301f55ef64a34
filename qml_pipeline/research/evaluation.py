"""Phase 11 judged out of sample: purged walk-forward folds, four models compared on the same test
trades, metrics overall / per fold / per calendar year, calibration, and paired bootstrap intervals.

Models (each gets a probability of a win per test trade):
- baseline: the pattern's base_confidence alone;
- logistic: L2 logistic regression on the normalised context vector (fitted per fold);
- overlay: the phase-10 rule overlay's adjusted confidence, when supplied;
- fusion: the FusionNet of `qml_pipeline.research.model`, trained per fold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import polars as pl
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import rankdata

from qml_pipeline.research.model import ContextNormaliser, ModelConfig, check_inputs, epoch_ms, targets, train_model
from qml_pipeline.store.schemas import TS

EPS = 1e-7


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------

def walk_forward_splits(decision_times: pl.Series | np.ndarray | list, exit_times: pl.Series | np.ndarray | list,
                        n_folds: int = 5, min_train: int | None = None,
                        gap: timedelta | int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window folds in decision-time order, as (train_idx, test_idx) into the inputs.

    The first `min_train` trades (default: n // (n_folds + 1)) only ever train; the rest are cut
    into n_folds consecutive test blocks. A fold trains on trades decided before its first test
    decision whose exit_time is earlier than that decision minus `gap` (a timedelta or ms): a trade
    still open when testing starts is purged, since its label was not yet known. A trade with no
    exit_time is never used for training."""
    decision_ms = epoch_ms(decision_times)
    exit_ms = np.nan_to_num(epoch_ms(exit_times), nan=np.inf)
    n = decision_ms.size
    if exit_ms.size != n:
        raise ValueError(f"{n} decision times but {exit_ms.size} exit times")
    if np.isnan(decision_ms).any():
        raise ValueError("every trade needs a decision_time")
    gap_ms = gap / timedelta(milliseconds=1) if isinstance(gap, timedelta) else float(gap)
    if gap_ms < 0:
        raise ValueError("gap must be >= 0")
    if n_folds < 1:
        raise ValueError("n_folds must be at least 1")
    min_train = n // (n_folds + 1) if min_train is None else min_train
    if min_train < 1 or n - min_train < n_folds:
        raise ValueError(f"{n} trades cannot give {n_folds} test folds after {min_train} training trades; "
                         "lower n_folds or min_train")
    order = np.argsort(decision_ms, kind="stable")
    splits = []
    for block in np.array_split(order[min_train:], n_folds):
        start = decision_ms[block[0]]
        candidates = order[decision_ms[order] < start]
        train = candidates[exit_ms[candidates] < start - gap_ms]
        if train.size == 0:
            raise ValueError(f"a fold starting at decision ms {int(start)} has no closed training trade; "
                             "raise min_train or lower gap")
        splits.append((np.sort(train), np.sort(block)))
    return splits


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney rank formula (ties get average ranks)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUC of each row of (B, n) arrays y, p."""
    ranks = rankdata(p, axis=1)
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.clip(p, 0, 1) - y) ** 2)) if len(y) else float("nan")


def calibration_table(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pl.DataFrame:
    """Equal-width probability bins: mean predicted, observed win rate, count (empty bins kept)."""
    p = np.clip(p, 0, 1)
    b = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=p, minlength=n_bins) / count
        rate = np.bincount(b, weights=y, minlength=n_bins) / count
    return pl.DataFrame({
        "bin": np.arange(n_bins), "lower": np.arange(n_bins) / n_bins, "upper": np.arange(1, n_bins + 1) / n_bins,
        "mean_predicted": mean_p, "observed_win_rate": rate, "count": count.astype(np.int64),
    }).with_columns(pl.col("mean_predicted", "observed_win_rate").fill_nan(None))


def _metric_row(y: np.ndarray, p: np.ndarray) -> dict:
    return {"n": len(y), "win_rate": float(y.mean()) if len(y) else float("nan"),
            "mean_predicted": float(np.clip(p, 0, 1).mean()) if len(y) else float("nan"),
            "auc": auc(y, p), "log_loss": log_loss(y, p), "brier": brier(y, p)}


# ---------------------------------------------------------------------------------------------
# Logistic regression (no sklearn): L2-penalised, L-BFGS on the exact gradient
# ---------------------------------------------------------------------------------------------

@dataclass
class LogisticModel:
    coef: np.ndarray
    intercept: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return expit(x @ self.coef + self.intercept)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> LogisticModel:
    """Minimise mean log loss + l2 / (2 n) * |w|^2 (the intercept is not penalised)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, k = x.shape

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k]
        z = x @ w + b
        loss = np.mean(np.logaddexp(0, z) - y * z) + l2 / (2 * n) * w @ w
        r = (expit(z) - y) / n
        return loss, np.concatenate([x.T @ r + l2 / n * w, [r.sum()]])

    rate = np.clip(y.mean(), EPS, 1 - EPS)
    theta0 = np.concatenate([np.zeros(k), [np.log(rate / (1 - rate))]])
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 1000})
    return LogisticModel(coef=res.x[:k], intercept=float(res.x[k]))


# ---------------------------------------------------------------------------------------------
# Bootstrap and verdict
# ---------------------------------------------------------------------------------------------

def paired_bootstrap(y: np.ndarray, p_best: np.ndarray, p_other: np.ndarray, n_resamples: int = 1000,
                     seed: int = 0, chunk: int = 100) -> dict:
    """Resample test trades with replacement (the same draw for both models). Returns the observed
    AUC gain (best - other) and Brier gain (other - best), each positive when `best` is better,
    with 2.5% / 97.5% percentile intervals."""
    rng = np.random.default_rng(seed)
    n = len(y)
    auc_d, brier_d = [], []
    pb, po = np.clip(p_best, 0, 1), np.clip(p_other, 0, 1)
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        yy = y[idx]
        auc_d.append(_auc_rows(yy, p_best[idx]) - _auc_rows(yy, p_other[idx]))
        brier_d.append(((po[idx] - yy) ** 2).mean(axis=1) - ((pb[idx] - yy) ** 2).mean(axis=1))
    a, b = np.concatenate(auc_d), np.concatenate(brier_d)
    a = a[np.isfinite(a)]
    return {
        "auc_gain": auc(y, p_best) - auc(y, p_other),
        "auc_ci_low": float(np.percentile(a, 2.5)) if a.size else float("nan"),
        "auc_ci_high": float(np.percentile(a, 97.5)) if a.size else float("nan"),
        "brier_gain": brier(y, p_other) - brier(y, p_best),
        "brier_ci_low": float(np.percentile(b, 2.5)),
        "brier_ci_high": float(np.percentile(b, 97.5)),
        "n_resamples": int(n_resamples),
    }


def _verdict(overall: pl.DataFrame, boot: pl.DataFrame, per_year: pl.DataFrame, n_folds: int,
             notes: list[str]) -> str:
    best = overall.row(0, named=True)
    lines = [(f"Out of sample over {best['n']} test trades in {n_folds} purged walk-forward folds, "
             f"'{best['model']}' ranks trades best (AUC {best['auc']:.3f}, Brier {best['brier']:.4f}, "
             f"log loss {best['log_loss']:.4f}).")]
    if not best["auc"] > 0.5:
        lines.append("No model separates winners from losers better than chance.")
    for r in boot.iter_rows(named=True):
        auc_beyond = r["auc_ci_low"] > 0
        brier_beyond = r["brier_ci_low"] > 0
        brier_worse = r["brier_ci_high"] < 0
        lines.append(
            f"Versus '{r['other']}': AUC {r['auc_gain']:+.3f} (95% CI {r['auc_ci_low']:+.3f} to "
            f"{r['auc_ci_high']:+.3f}), " + ("beyond noise" if auc_beyond else "within noise")
            + f"; Brier improvement {r['brier_gain']:+.4f} (95% CI {r['brier_ci_low']:+.4f} to "
            f"{r['brier_ci_high']:+.4f}), "
            + ("beyond noise." if brier_beyond else
               "significantly worse calibrated." if brier_worse else "within noise."))
    years = per_year.filter(pl.col("model") == best["model"]).select("year", "auc")
    others = per_year.filter(pl.col("model") != best["model"]).group_by("year").agg(pl.col("auc").max().alias("rival"))
    yr = years.join(others, on="year", how="inner").filter(pl.col("auc").is_not_nan() & pl.col("rival").is_not_nan())
    if yr.height > 1:
        wins = int((yr["auc"] > yr["rival"]).sum())
        lines.append(f"By calendar year it has the highest AUC in {wins} of {yr.height} years "
                     "(regime dependence: see per_year).")
    if not boot.height:
        pass
    elif all(r["auc_ci_low"] > 0 for r in boot.iter_rows(named=True)):
        lines.append(f"Verdict: '{best['model']}' beats every alternative beyond noise.")
    else:
        tied = [r["other"] for r in boot.iter_rows(named=True) if not r["auc_ci_low"] > 0]
        lines.append(f"Verdict: '{best['model']}' is not distinguishable from {', '.join(repr(t) for t in tied)} "
                     "on these trades; prefer the simpler model.")
    return " ".join(lines + notes)


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------

@dataclass
class EvaluationReport:
    per_fold: pl.DataFrame
    overall: pl.DataFrame
    per_year: pl.DataFrame
    calibration: pl.DataFrame
    bootstrap: pl.DataFrame
    predictions: pl.DataFrame
    verdict: str
    best_model: str
    fold_training: list[dict] = field(default_factory=list)


def evaluate_models(windows: np.ndarray, context: pl.DataFrame, labels: pl.DataFrame, *,
                    config: ModelConfig | None = None,
                    overlay_confidence: np.ndarray | Callable[[pl.DataFrame], np.ndarray] | None = None,
                    n_folds: int = 5, min_train: int | None = None, gap: timedelta | int = 0,
                    splits: list[tuple[np.ndarray, np.ndarray]] | None = None,
                    include_fusion: bool = True, logistic_l2: float = 1.0,
                    n_bootstrap: int = 1000, bootstrap_seed: int = 0) -> EvaluationReport:
    """Compare baseline, logistic, overlay (if given) and fusion (if include_fusion) on the same
    purged walk-forward test trades. Rows of windows, context and labels are the same trades in the
    same order; labels need outcome and exit_time. `overlay_confidence` is one value per trade or a
    function of the context frame returning them; values outside [0, 1] keep their ranking for AUC
    and are clipped for log loss, Brier and calibration."""
    config = config or ModelConfig()
    if config.head != "classification":
        raise ValueError("evaluate_models compares win probabilities; use a classification head")
    check_inputs(windows, context, labels)
    if "exit_time" not in labels.columns:
        raise ValueError("labels need exit_time to purge training trades that overlap a test fold")
    y = targets(labels, config).astype(np.float64)
    base = context["base_confidence"].cast(pl.Float64).to_numpy().astype(np.float64)
    finite_base = base[np.isfinite(base)]
    if finite_base.size and (finite_base.min() < 0 or finite_base.max() > 1):
        raise ValueError("base_confidence must be a probability in [0, 1] (72% is 0.72)")
    notes: list[str] = []
    overlay = None
    if overlay_confidence is not None:
        overlay = np.asarray(overlay_confidence(context) if callable(overlay_confidence) else overlay_confidence,
                             dtype=np.float64)
        if overlay.shape != (context.height,):
            raise ValueError(f"overlay_confidence has shape {overlay.shape}, expected ({context.height},)")
        if not np.isfinite(overlay).all():
            raise ValueError("overlay_confidence has NaN/inf values")
        outside = int(((overlay < 0) | (overlay > 1)).sum())
        if outside:
            notes.append(f"Note: {outside} overlay confidences lay outside [0, 1] and were clipped for "
                         "log loss, Brier and calibration.")
    if splits is None:
        splits = walk_forward_splits(context["decision_time"], labels["exit_time"], n_folds, min_train, gap)
    tested = np.concatenate([test for _, test in splits])
    if len(np.unique(tested)) != len(tested):
        raise ValueError("test sets of the given splits overlap; each trade may be tested once")

    models = ["baseline", "logistic"] + (["overlay"] if overlay is not None else []) + (["fusion"] if include_fusion else [])
    pred_rows, fold_rows, fold_training = [], [], []
    dt = context["decision_time"]
    years = dt.dt.year().to_numpy()
    for k, (train, test) in enumerate(splits):
        preds: dict[str, np.ndarray] = {}
        base_rate = float(y[train].mean())
        preds["baseline"] = np.where(np.isfinite(base[test]), base[test], base_rate)
        norm = ContextNormaliser.for_frame(context).fit(context[train])
        lr = fit_logistic(norm.transform(context[train]), y[train], logistic_l2)
        preds["logistic"] = lr.predict(norm.transform(context[test]))
        if overlay is not None:
            preds["overlay"] = overlay[test]
        if include_fusion:
            trained = train_model(windows[train], context[train], labels[train], config)
            preds["fusion"] = trained.predict(windows[test], context[test])
            fold_training.append({"fold": k, **{m: v for m, v in trained.metrics.items() if m != "history"}})
        for m in models:
            fold_rows.append({"fold": k, "model": m, "n_train": len(train),
                              "test_start": dt[test].min(), "test_end": dt[test].max(),
                              **_metric_row(y[test], preds[m])})
        pred_rows.append(pl.DataFrame({"row": test, "fold": np.full(len(test), k), "y": y[test],
                                       "year": years[test], **{m: preds[m] for m in models}}))

    pred = pl.concat(pred_rows).sort("row")
    yt = pred["y"].to_numpy()
    per_fold = pl.DataFrame(fold_rows).with_columns(pl.col("test_start", "test_end").cast(TS))
    overall = pl.DataFrame([{"model": m, **_metric_row(yt, pred[m].to_numpy())} for m in models])
    overall = overall.with_columns(pl.col("auc").fill_nan(None)).sort(
        ["auc", "brier"], descending=[True, False], nulls_last=True).with_columns(pl.col("auc").fill_null(float("nan")))
    per_year = pl.DataFrame([
        {"year": int(yr), "model": m, **_metric_row(g["y"].to_numpy(), g[m].to_numpy())}
        for (yr,), g in pred.group_by("year", maintain_order=True) for m in models
    ]).sort(["year", "model"])
    calibration = pl.concat([
        calibration_table(yt, pred[m].to_numpy()).select(pl.lit(m).alias("model"), pl.all()) for m in models])
    best = overall["model"][0]
    boot = pl.DataFrame([
        {"best": best, "other": m, **paired_bootstrap(yt, pred[best].to_numpy(), pred[m].to_numpy(),
                                                        n_bootstrap, bootstrap_seed)}
        for m in models if m != best])
    if boot.height:
        boot = boot.with_columns(
            (pl.col("auc_ci_low") > 0).alias("auc_beyond_noise"),
            (pl.col("brier_ci_low") > 0).alias("brier_beyond_noise"))
    predictions = pl.concat([
        context.select("trade_id", "decision_time")[pred["row"].to_list()],
        pred.drop("row", "year"),
    ], how="horizontal")
    return EvaluationReport(per_fold=per_fold, overall=overall, per_year=per_year, calibration=calibration,
                            bootstrap=boot, predictions=predictions,
                            verdict=_verdict(overall, boot, per_year, len(splits), notes),
                            best_model=best, fold_training=fold_training)
