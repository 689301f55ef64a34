"""The phase 10 backtest of the overlay: four variants (baseline, sizing, filtering, confidence_only) on the
same trades, paired differences against each variant's control, bootstrap intervals by cluster and by
trade, and gains of chance of the same size (nulls.py); the equity-curve plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from qml_pipeline.research.bootstrap import CLUSTER_BY, bootstrap_distribution, cluster_labels, interval
from qml_pipeline.research.nulls import null_position, permuted, random_subsets
from qml_pipeline.research.overlay import OverlayConfig, rule_counts
from qml_pipeline.research.power import mde_from_se
from qml_pipeline.trades.contract import FILLED_OUTCOMES
from qml_pipeline.trades.metrics import YEAR, batch_metrics, equity_curve, summarize, trade_calendar, TradeArrays


VARIANTS = ("baseline", "sizing", "filtering", "confidence_only")
# (variant, control): every comparison the backtest reports. The filtering variant's control is the
# same filter with every multiplier 1 (confidence alone); "baseline" is every trade, unfiltered.
COMPARISONS = (("sizing", "baseline"), ("filtering", "confidence_only"), ("filtering", "baseline"),
               ("confidence_only", "baseline"))
CONTROL_LABELS = {"baseline": "unfiltered (every trade at size 1)",
                  "confidence_only": "confidence alone (the same filter, every multiplier 1)"}


# ---------------------------------------------------------------- backtest

# Metrics with a bootstrap interval and a null; the others get the point difference only.
BOOT_METRICS = ("win_rate", "expectancy_r", "sharpe_per_trade", "sharpe_daily", "sharpe_trade_count_dependent")
DIFF_METRICS = (*BOOT_METRICS, "total_r", "max_drawdown_r", "profit_factor", "trades")


@dataclass(frozen=True)
class BacktestResult:
    """Baseline vs overlay on the same trades.

    metrics: metrics.summarize per variant (column `variant`), overall and per calendar year, all on
      the baseline's calendar.
    differences: per comparison (variant, control; COMPARISONS) and metric: control_value,
      variant_value, diff (variant - control); for BOOT_METRICS a paired bootstrap by cluster
      (ci_low, ci_high, se, share_not_better, n_undefined) and by independent trade
      (ci_low_independent, ci_high_independent, se_independent), the null of the same size
      (null_mean, null_p95, null_percentile) and the minimum detectable effect at 80% power (mde).
    rule_counts: how often each rule fired on the filled trades.
    """

    metrics: pl.DataFrame
    differences: pl.DataFrame
    rule_counts: pl.DataFrame
    equity: dict[str, pl.DataFrame]
    config: OverlayConfig
    n_trades: int
    n_filtered_in: int
    n_without_confidence: int
    n_resamples: int
    n_null: int = 0
    cluster_by: str = "overlap"
    n_clusters: int = 0
    notes: list[str] = field(default_factory=list)

    def overall(self, variant: str) -> dict:
        rows = self.metrics.filter((pl.col("variant") == variant) & (pl.col("scope") == "overall"))
        return rows.row(0, named=True)

    def difference(self, variant: str, metric: str, control: str = "baseline") -> dict:
        rows = self.differences.filter((pl.col("variant") == variant) & (pl.col("control") == control)
                                       & (pl.col("metric") == metric))
        if rows.is_empty():
            raise KeyError(f"no difference {variant} vs {control} for {metric}; comparisons: {COMPARISONS}")
        return rows.row(0, named=True)


def control_of(variant: str) -> str:
    """The control a variant is judged against: the same procedure without the context rules."""
    return "confidence_only" if variant == "filtering" else "baseline"


def _sized(df: pl.DataFrame, variant: str, config: OverlayConfig) -> tuple[pl.DataFrame, str | None]:
    if variant == "sizing":
        return df, "multiplier"
    if variant == "filtering":
        return df.filter(pl.col("adjusted_confidence") >= config.min_confidence), None
    if variant == "confidence_only":
        return df.filter(pl.col("base_confidence") >= config.min_confidence), None
    return df, None


def _keeps_and_sizes(df: pl.DataFrame, config: OverlayConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    """Per variant: which of df's rows it takes (bool) and their size (None = 1)."""
    n = df.height
    every = np.ones(n, dtype=bool)
    keeps = {"baseline": every, "sizing": every,
             "filtering": df["adjusted_confidence"].fill_null(-1.0).to_numpy() >= config.min_confidence,
             "confidence_only": df["base_confidence"].cast(pl.Float64).fill_null(-1.0).to_numpy()
             >= config.min_confidence}
    sizes = {v: None for v in VARIANTS}
    sizes["sizing"] = df["multiplier"].cast(pl.Float64).to_numpy()
    return keeps, sizes


def _paired_differences(arrays: TradeArrays, keeps: dict, sizes: dict):
    """statistic(weights) -> (len(COMPARISONS) * len(BOOT_METRICS), b) differences, variant - control."""
    def statistic(weights: np.ndarray) -> np.ndarray:
        per = {v: batch_metrics(arrays, weights * keeps[v], sizes[v]) for v in VARIANTS}
        return np.stack([per[v][m] - per[c][m] for v, c in COMPARISONS for m in BOOT_METRICS])
    return statistic


def _null_gains(arrays: TradeArrays, df: pl.DataFrame, keeps: dict, sizes: dict, control_values: dict,
                config: OverlayConfig, n_null: int, seed: int) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """Per comparison: each metric's gain over the control when the variant's choices are random
    (nulls.py): sizing and the context filter against confidence alone get the same multipliers
    dealt at random; a filter against every trade gets as many trades kept at random."""
    out = {}
    for i, (variant, control) in enumerate(COMPARISONS):
        s = seed + 1000 * (i + 1)
        if variant == "sizing":
            values = batch_metrics(arrays, np.ones((n_null, arrays.n)), permuted(sizes["sizing"], n_null, s))
        elif control == "baseline":
            values = batch_metrics(arrays, random_subsets(arrays.n, int(keeps[variant].sum()), n_null, s))
        else:
            base = df["base_confidence"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
            dealt = permuted(sizes["sizing"], n_null, s)
            values = batch_metrics(arrays, (base[None, :] * dealt >= config.min_confidence).astype(np.float64))
        out[(variant, control)] = {m: values[m] - control_values[(control, m)] for m in BOOT_METRICS}
    return out


def _difference_rows(metrics: pl.DataFrame, boot_cluster: np.ndarray | None, boot_trade: np.ndarray | None,
                     nulls: dict, n_clusters: int) -> pl.DataFrame:
    overall = {r["variant"]: r for r in metrics.filter(pl.col("scope") == "overall").iter_rows(named=True)}
    rows = []
    for i, (variant, control) in enumerate(COMPARISONS):
        for m in DIFF_METRICS:
            c, v = overall[control][m], overall[variant][m]
            diff = v - c if c is not None and v is not None else None
            row = {"variant": variant, "control": control, "metric": m, "control_value": _f(c),
                   "variant_value": _f(v), "diff": _f(diff), "n_clusters": None}
            if m in BOOT_METRICS:
                j = i * len(BOOT_METRICS) + BOOT_METRICS.index(m)
                if boot_cluster is not None:
                    clus = interval(boot_cluster[j])
                    row.update(ci_low=clus.low, ci_high=clus.high, se=clus.se, share_not_better=clus.share_not_better,
                               n_undefined=clus.n_undefined, mde=mde_from_se(clus.se), n_clusters=n_clusters)
                if boot_trade is not None:
                    ind = interval(boot_trade[j])
                    row.update(ci_low_independent=ind.low, ci_high_independent=ind.high, se_independent=ind.se)
                pos = null_position(row["diff"], nulls[(variant, control)][m])
                row.update(null_mean=pos.mean, null_p95=pos.p95, null_percentile=pos.percentile)
            rows.append(row)
    return pl.DataFrame(rows, schema=DIFFERENCES_SCHEMA)


DIFFERENCES_SCHEMA = {
    "variant": pl.Utf8, "control": pl.Utf8, "metric": pl.Utf8, "control_value": pl.Float64,
    "variant_value": pl.Float64, "diff": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
    "se": pl.Float64, "share_not_better": pl.Float64, "n_undefined": pl.Int64, "ci_low_independent": pl.Float64,
    "ci_high_independent": pl.Float64, "se_independent": pl.Float64, "n_clusters": pl.Int64,
    "null_mean": pl.Float64, "null_p95": pl.Float64, "null_percentile": pl.Float64, "mde": pl.Float64}


def overlay_backtest(trades: pl.DataFrame, overlay: pl.DataFrame, config: OverlayConfig | None = None,
                     n_resamples: int = 2000, seed: int = 0, n_null: int = 2000,
                     cluster_by: str = "overlap") -> BacktestResult:
    """Baseline vs the overlay (from `apply_overlay` with the same config) on the same trades.

    Only filled trades (WIN/LOSS/TIMEOUT with an r_multiple) are judged. Raises ValueError when the
    overlay lacks a row for one of them. Intervals: paired bootstrap (bootstrap.py) by `cluster_by`
    clusters and by independent trade; nulls: nulls.py, `n_null` seeded draws per comparison.
    """
    config = config or OverlayConfig()
    if cluster_by not in CLUSTER_BY:
        raise ValueError(f"cluster_by must be one of {CLUSTER_BY}, got {cluster_by!r}")
    filled = trades.filter(pl.col("outcome").is_in(FILLED_OUTCOMES) & pl.col("r_multiple").is_not_null())
    ov = overlay.select("trade_id", "multiplier", "adjusted_confidence").unique("trade_id", keep="first")
    df = filled.drop([c for c in ("multiplier", "adjusted_confidence") if c in filled.columns]).join(
        ov, on="trade_id", how="left")
    lacking = df.filter(pl.col("multiplier").is_null())
    if lacking.height:
        raise ValueError(f"the overlay has no row for {lacking.height} filled trade(s) (e.g. "
                         f"{lacking['trade_id'].head(3).to_list()}): run apply_overlay on the same trades")
    for col in ("gross_r_multiple", "base_confidence"):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias(col))
    df = df.sort("decision_time", "trade_id")
    calendar = trade_calendar(df)

    metric_frames, equity = [], {}
    for variant in VARIANTS:
        frame, size = _sized(df, variant, config)
        metric_frames.append(summarize(frame, by=[YEAR], size_col=size, calendar=calendar)
                             .with_columns(pl.lit(variant).alias("variant")))
        equity[variant] = equity_curve(frame, size_col=size)
    metrics = pl.concat(metric_frames, how="diagonal_relaxed").select("variant", pl.exclude("variant"))

    arrays = TradeArrays.from_frame(df, calendar)
    keeps, sizes = _keeps_and_sizes(df, config)
    overall = {r["variant"]: r for r in metrics.filter(pl.col("scope") == "overall").iter_rows(named=True)}
    control_values = {(v, m): np.nan if overall[v][m] is None else overall[v][m] for v in VARIANTS for m in BOOT_METRICS}
    labels = cluster_labels(df, cluster_by)
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    boot_cluster = boot_trade = None
    notes = []
    statistic = _paired_differences(arrays, keeps, sizes)
    if n_resamples > 0 and df.height >= 2:
        boot_trade = bootstrap_distribution(statistic, cluster_labels(df, "trade"), n_resamples, seed)
    if n_resamples > 0 and n_clusters >= 2:
        boot_cluster = bootstrap_distribution(statistic, labels, n_resamples, seed)
    elif n_resamples > 0:
        notes.append(f"{df.height} filled trade(s) in {n_clusters} {cluster_by} cluster(s): no dependence-aware interval")
    nulls = _null_gains(arrays, df, keeps, sizes, control_values, config, max(n_null, 1), seed)
    differences = _difference_rows(metrics, boot_cluster, boot_trade, nulls, n_clusters)

    counted = overlay.join(df.select("trade_id"), on="trade_id", how="semi")
    n_no_conf = int(df["base_confidence"].is_null().sum())
    if n_no_conf:
        notes.append(f"{n_no_conf} of {df.height} filled trades have no base_confidence: the filtering "
                     "variants never take them")
    return BacktestResult(metrics=metrics, differences=differences, rule_counts=rule_counts(counted),
                          equity=equity, config=config, n_trades=df.height, n_filtered_in=int(keeps["filtering"].sum()),
                          n_without_confidence=n_no_conf, n_resamples=n_resamples, n_null=n_null,
                          cluster_by=cluster_by, n_clusters=n_clusters, notes=notes)


def _f(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]


def equity_curve_plot(baseline_curve: pl.DataFrame, overlay_curve: pl.DataFrame, path: str | Path,
                      overlay_label: str = "overlay", title: str = "Baseline vs context overlay") -> Path:
    """PNG of cumulative R over exit_time for two `metrics.equity_curve` frames (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(10, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for curve, label in ((baseline_curve, "baseline"), (overlay_curve, overlay_label)):
        if curve.height:
            ax.step(curve["exit_time"].to_list(), curve["cum_r"].to_list(), where="post", label=label)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("exit time (UTC)")
    ax.set_ylabel("cumulative R")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
