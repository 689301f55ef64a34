"""Phase 11 judged out of sample: purged walk-forward folds, the models compared on the same test
trades, metrics overall / per fold / per calendar year, calibration, and paired bootstrap intervals
(by cluster of overlapping trades and by independent trade: qml_pipeline.research.bootstrap).

Models (each gets a probability of a win per test trade, every parameter fitted on the fold's
training trades only):
- base_rate: the training trades' win rate, the same for every test trade (a probability baseline);
- confidence: the pattern's base_confidence calibrated by Platt scaling (a logistic fit of the win on
  base_confidence) on the fold's training trades (the other probability baseline). The raw
  base_confidence is a score, not a probability (its mean is far from the win rate), so its Brier
  and log loss say nothing about context;
- logistic: L2 logistic regression on the normalised context vector;
- overlay: the phase-10 rule overlay's adjusted confidence (with the thresholds phase 10 tuned),
  Platt-calibrated the same way, when supplied;
- fusion: the FusionNet of `qml_pipeline.research.model`.
Brier and log-loss verdicts are only ever against the two probability baselines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import polars as pl
from scipy.optimize import minimize
from scipy.special import expit

from qml_pipeline.research.bootstrap import bootstrap_distribution, cluster_labels, interval
from qml_pipeline.research.model import train_model
from qml_pipeline.research.model_data import ContextNormaliser, ModelConfig, check_inputs, targets
from qml_pipeline.timeutil import epoch_ms
from qml_pipeline.store.schemas import TS

EPS = 1e-7
PROBABILITY_BASELINES = ("base_rate", "confidence")


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

def weighted_auc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for each row of weights (B, n): P(p_win > p_loss) + P(tie) / 2 over weighted pairs of a
    winner and a loser (weights = how often a bootstrap drew each trade). NaN with one class only."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if y.size == 0:
        return np.full(w.shape[0], np.nan)
    order = np.argsort(p, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(p[order]) != 0])
    pos = np.add.reduceat(w[:, order] * y[order], starts, axis=1)
    neg = np.add.reduceat(w[:, order] * (1 - y[order]), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (ties count half)."""
    return float(weighted_auc(y, p, np.ones((1, len(y))))[0])


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


def platt(score_train: np.ndarray, y_train: np.ndarray, score_test: np.ndarray) -> np.ndarray:
    """Platt scaling: P(win) = expit(a * score + b) fitted on the training trades only. A missing
    score (NaN), or training trades of one class or without scores, gets the training win rate."""
    rate = float(np.mean(y_train)) if len(y_train) else 0.5
    ok = np.isfinite(score_train)
    out = np.full(len(score_test), rate)
    if ok.sum() < 2 or len(np.unique(y_train[ok])) < 2:
        return out
    model = fit_logistic(score_train[ok, None], y_train[ok])
    known = np.isfinite(score_test)
    out[known] = model.predict(score_test[known, None])
    return out


# ---------------------------------------------------------------------------------------------
# Bootstrap and verdict
# ---------------------------------------------------------------------------------------------

BOOT_COLUMNS = ("auc", "brier", "log_loss")


def _pairs(models: list[str], best: str) -> list[tuple[str, str]]:
    """(model, reference) pairs: the best-ranked model against each other (ranking), and every model
    that is not a probability baseline against each probability baseline (probability quality)."""
    pairs = [(best, m) for m in models if m != best]
    pairs += [(m, b) for m in models if m not in PROBABILITY_BASELINES for b in PROBABILITY_BASELINES
              if b in models and (m, b) not in pairs]
    return pairs


def compare_models(y: np.ndarray, predictions: dict[str, np.ndarray], pairs: list[tuple[str, str]],
                   clusters: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Paired bootstrap of model vs reference on the same test trades, by cluster (`clusters`) and
    by independent trade. Gains are positive when `model` is better: auc_gain = AUC(model) -
    AUC(reference), brier_gain and log_loss_gain = reference's - model's. Columns per measure:
    gain, ci_low/ci_high (cluster), ci_low_independent/ci_high_independent."""
    y = np.asarray(y, dtype=np.float64)
    probs = {m: np.clip(np.asarray(p, dtype=np.float64), 0, 1) for m, p in predictions.items()}
    logs = {m: -(y * np.log(np.clip(p, EPS, 1 - EPS)) + (1 - y) * np.log(np.clip(1 - p, EPS, 1 - EPS)))
            for m, p in probs.items()}

    def statistic(w: np.ndarray) -> np.ndarray:
        total = w.sum(axis=1)
        aucs = {m: weighted_auc(y, predictions[m], w) for m in {m for pair in pairs for m in pair}}
        out = []
        for m, ref in pairs:
            out.append(aucs[m] - aucs[ref])
            out.append((w @ ((probs[ref] - y) ** 2) - w @ ((probs[m] - y) ** 2)) / total)
            out.append((w @ logs[ref] - w @ logs[m]) / total)
        return np.stack(out)

    observed = statistic(np.ones((1, len(y))))[:, 0]
    n_clusters = int(clusters.max()) + 1 if len(clusters) else 0
    # one cluster (every test trade overlapping the next) leaves no dependence-aware interval
    by_cluster = bootstrap_distribution(statistic, clusters, n_resamples, seed) if n_clusters >= 2 else None
    by_trade = bootstrap_distribution(statistic, np.arange(len(y)), n_resamples, seed)
    rows = []
    for i, (m, ref) in enumerate(pairs):
        row = {"model": m, "reference": ref, "n_resamples": n_resamples, "n_clusters": n_clusters}
        for j, measure in enumerate(BOOT_COLUMNS):
            k = 3 * i + j
            ind = interval(by_trade[k])
            clus = interval(by_cluster[k]) if by_cluster is not None else interval(np.array([np.nan]))
            row.update({f"{measure}_gain": float(observed[k]), f"{measure}_ci_low": clus.low,
                        f"{measure}_ci_high": clus.high, f"{measure}_ci_low_independent": ind.low,
                        f"{measure}_ci_high_independent": ind.high})
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.col("^.*_ci_.*$").cast(pl.Float64)).with_columns(
        (pl.col("auc_ci_low") > 0).fill_null(False).alias("auc_beyond_noise"),
        (pl.col("brier_ci_low") > 0).fill_null(False).alias("brier_beyond_noise"))


def _ci(row: dict, measure: str, fmt: str) -> str:
    low, high = row[f"{measure}_ci_low"], row[f"{measure}_ci_high"]
    return "n/a: one cluster" if low is None else f"{low:{fmt}} to {high:{fmt}}"


def _noise(low: float | None, high: float | None, better: str, worse: str) -> str:
    if low is not None and low > 0:
        return better
    if high is not None and high < 0:
        return worse
    return "within noise"


def _verdict(overall: pl.DataFrame, boot: pl.DataFrame, per_year: pl.DataFrame, n_folds: int,
             notes: list[str]) -> str:
    best = overall.row(0, named=True)
    lines = [(f"Out of sample over {best['n']} test trades in {n_folds} purged walk-forward folds, "
             f"'{best['model']}' ranks trades best (AUC {best['auc']:.3f}, Brier {best['brier']:.4f}, "
             f"log loss {best['log_loss']:.4f}).")]
    if not best["auc"] > 0.5:
        lines.append("No model separates winners from losers better than chance.")
    ranking = boot.filter(pl.col("model") == best["model"])
    for r in ranking.iter_rows(named=True):
        lines.append(f"AUC versus '{r['reference']}': {r['auc_gain']:+.3f} (95% CI by cluster {_ci(r, 'auc', '+.3f')}), "
                     + _noise(r["auc_ci_low"], r["auc_ci_high"], "beyond noise", "worse beyond noise") + ".")
    rates = dict(zip(overall["model"], overall["brier"]))
    base = [b for b in PROBABILITY_BASELINES if b in rates]
    if base:
        lines.append("Probabilities (Brier, log loss) are judged only against the probability baselines: "
                     + ", ".join(f"'{b}' Brier {rates[b]:.4f}" for b in base) + ".")
    for r in boot.filter(pl.col("reference").is_in(list(PROBABILITY_BASELINES))
                         & ~pl.col("model").is_in(list(PROBABILITY_BASELINES))).iter_rows(named=True):
        lines.append(f"'{r['model']}' vs '{r['reference']}': Brier improvement {r['brier_gain']:+.4f} (95% CI "
                     f"{_ci(r, 'brier', '+.4f')}), "
                     + _noise(r["brier_ci_low"], r["brier_ci_high"], "better probabilities beyond noise",
                              "worse probabilities beyond noise")
                     + f"; log loss improvement {r['log_loss_gain']:+.4f}.")
    years = per_year.filter(pl.col("model") == best["model"]).select("year", "auc")
    others = per_year.filter(pl.col("model") != best["model"]).group_by("year").agg(pl.col("auc").max().alias("rival"))
    yr = years.join(others, on="year", how="inner").filter(pl.col("auc").is_not_nan() & pl.col("rival").is_not_nan())
    if yr.height > 1:
        wins = int((yr["auc"] > yr["rival"]).sum())
        lines.append(f"By calendar year it has the highest AUC in {wins} of {yr.height} years "
                     "(regime dependence: see per_year).")
    if ranking.height:
        tied = [r["reference"] for r in ranking.iter_rows(named=True) if not (r["auc_ci_low"] or 0) > 0]
        if not tied:
            lines.append(f"Verdict: '{best['model']}' ranks trades better than every alternative beyond noise.")
        else:
            lines.append(f"Verdict: '{best['model']}' is not distinguishable from "
                         f"{', '.join(repr(t) for t in tied)} on these trades; prefer the simpler model.")
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
    """Compare base_rate, confidence, logistic, overlay (if given) and fusion (if include_fusion) on
    the same purged walk-forward test trades. Rows of windows, context and labels are the same trades
    in the same order; labels need outcome and exit_time. `overlay_confidence` is one score per trade
    (or a function of the context frame returning them), Platt-calibrated per fold like
    base_confidence. Bootstrap intervals: by cluster of trades overlapping in time (decision to
    exit) and by independent trade."""
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
    if splits is None:
        splits = walk_forward_splits(context["decision_time"], labels["exit_time"], n_folds, min_train, gap)
    tested = np.concatenate([test for _, test in splits])
    if len(np.unique(tested)) != len(tested):
        raise ValueError("test sets of the given splits overlap; each trade may be tested once")

    models = [*PROBABILITY_BASELINES, "logistic"] + (["overlay"] if overlay is not None else []) + \
        (["fusion"] if include_fusion else [])
    pred_rows, fold_rows, fold_training = [], [], []
    dt = context["decision_time"]
    years = dt.dt.year().to_numpy()
    for k, (train, test) in enumerate(splits):
        preds: dict[str, np.ndarray] = {}
        preds["base_rate"] = np.full(len(test), float(y[train].mean()))
        preds["confidence"] = platt(base[train], y[train], base[test])
        norm = ContextNormaliser.for_frame(context).fit(context[train])
        lr = fit_logistic(norm.transform(context[train]), y[train], logistic_l2)
        preds["logistic"] = lr.predict(norm.transform(context[test]))
        if overlay is not None:
            preds["overlay"] = platt(overlay[train], y[train], overlay[test])
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
    rows = pred["row"].to_numpy()
    clusters = cluster_labels(pl.DataFrame({"decision_time": dt.gather(rows), "exit_time": labels["exit_time"].gather(rows)}))
    boot = compare_models(yt, {m: pred[m].to_numpy() for m in models}, _pairs(models, best), clusters,
                          n_bootstrap, bootstrap_seed)
    predictions = pl.concat([
        context.select("trade_id", "decision_time")[pred["row"].to_list()],
        pred.drop("row", "year"),
    ], how="horizontal")
    return EvaluationReport(per_fold=per_fold, overall=overall, per_year=per_year, calibration=calibration,
                            bootstrap=boot, predictions=predictions,
                            verdict=_verdict(overall, boot, per_year, len(splits), notes),
                            best_model=best, fold_training=fold_training)
