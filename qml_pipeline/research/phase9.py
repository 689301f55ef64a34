"""Phase 9: do winners and losers differ in their derivatives context? (docs/overlay.md)

- `winners_vs_losers`: per feature, Mann-Whitney U and Kolmogorov-Smirnov tests (two-sided),
  Cliff's delta as the effect size, Benjamini-Hochberg adjusted p-values across features.
- `review_export`: up to 100 losing and 100 winning trades with their context, as CSV, for the
  seed's manual spreadsheet review, as CSV and as one XLSX workbook (a sheet each).
- `identifiable_context_issue`: per losing trade, did context oppose the trade by the overlay's rules?
- `phase9_gate`: the seed's checklist (200+ trades, a significant feature, 70% of losers with an issue).

Winners are WIN trades; losers are LOSS trades and, by default, TIMEOUT trades (a timeout is "not
won", as in metrics.win_rate); `timeout_as="exclude"` leaves timeouts out. Unfilled trades are
never judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import xlsxwriter
from scipy import stats as sps

from qml_pipeline.research.overlay import (
    GatePart,
    GateResult,
    OverlayConfig,
    funding_8h_expr,
    join_context,
    make_gate,
    rule_columns,
    with_overlay_inputs,
)
from qml_pipeline.trades.contract import FILLED_OUTCOMES

__all__ = [
    "DEFAULT_FEATURES",
    "AnalysisConfig",
    "GatePart",
    "GateResult",
    "benjamini_hochberg",
    "context_issue_share",
    "identifiable_context_issue",
    "label_trades",
    "phase9_gate",
    "review_export",
    "winners_vs_losers",
]

# funding_rate_8h and funding_fuel_8h are derived here (see with_derived_features). The raw
# funding_rate is left out (for 8h symbols it duplicates funding_rate_8h, and a duplicate test only
# inflates the BH correction), and so is atr (USDT: a symbol's price level, not context); atr_pct is
# the comparable one. The features across venues (features/aggregate.py) stand beside the Binance ones;
# they are NULL where no venue beside Binance is known, and a feature without values is not tested.
# Pass feature_cols to test others.
DEFAULT_FEATURES = ("funding_rate_8h", "funding_fuel_8h", "funding_rate_z30d", "funding_rate_change_8h",
                    "oi_change_24h", "oi_change_7d", "oi_percentile_30d", "distance_to_liq_cluster",
                    "atr_pct", "oi_agg_change_24h", "oi_agg_change_7d", "oi_agg_percentile_30d",
                    "oi_binance_share", "funding_spread_8h")
TIMEOUT_AS = ("loss", "exclude")


@dataclass(frozen=True)
class AnalysisConfig:
    """Phase 9 thresholds (the seed's decision checklist), all configurable."""

    alpha: float = 0.05                 # BH-adjusted p below this = significant
    min_trades: int = 200               # filled trades (WIN/LOSS/TIMEOUT)
    min_significant_features: int = 1
    min_issue_share: float = 0.70       # share of losers with an identifiable context issue
    timeout_as: str = "loss"            # "loss" or "exclude"

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"AnalysisConfig.alpha must lie in (0, 1), got {self.alpha}")
        if not 0 <= self.min_issue_share <= 1:
            raise ValueError(f"AnalysisConfig.min_issue_share must lie in [0, 1], got {self.min_issue_share}")
        if self.timeout_as not in TIMEOUT_AS:
            raise ValueError(f"AnalysisConfig.timeout_as must be one of {TIMEOUT_AS}, got {self.timeout_as!r}")


def label_trades(trades: pl.DataFrame, timeout_as: str = "loss") -> pl.DataFrame:
    """Filled trades only, with `label` 'win' / 'loss' (TIMEOUT per `timeout_as`)."""
    if timeout_as not in TIMEOUT_AS:
        raise ValueError(f"timeout_as must be one of {TIMEOUT_AS}, got {timeout_as!r}")
    losing = ["LOSS", "TIMEOUT"] if timeout_as == "loss" else ["LOSS"]
    return (trades.filter(pl.col("outcome").is_in(FILLED_OUTCOMES))
            .with_columns(pl.when(pl.col("outcome") == "WIN").then(pl.lit("win"))
                          .when(pl.col("outcome").is_in(losing)).then(pl.lit("loss")).alias("label"))
            .filter(pl.col("label").is_not_null()))


def with_derived_features(df: pl.DataFrame) -> pl.DataFrame:
    """Add funding_rate_8h (8h-equivalent rate) and funding_fuel_8h: the same signed by direction,
    positive when the crowd is positioned against the trade (longs crowded for BEARISH, shorts for
    BULLISH), i.e. the seed's "fuel". Pooled over directions the raw rate's effect cancels; this
    one does not."""
    df = with_overlay_inputs(df)
    direction = pl.col("direction").cast(pl.Utf8).str.to_uppercase()
    sign = pl.when(direction == "BEARISH").then(1.0).when(direction == "BULLISH").then(-1.0)
    return df.with_columns(funding_8h_expr().alias("funding_rate_8h")).with_columns(
        (pl.col("funding_rate_8h") * sign).alias("funding_fuel_8h"))


def benjamini_hochberg(p: np.ndarray | list[float | None]) -> np.ndarray:
    """BH adjusted p-values (step-up, monotone, capped at 1); NaN/None stay NaN and do not count in m."""
    arr = np.array([np.nan if v is None else v for v in p], dtype=float)
    out = np.full(arr.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(arr))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(arr[ok], kind="stable")]
    scaled = arr[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out


STATS_SCHEMA = {
    "feature": pl.Utf8, "n_win": pl.Int64, "n_loss": pl.Int64, "n_null_win": pl.Int64,
    "n_null_loss": pl.Int64, "median_win": pl.Float64, "median_loss": pl.Float64, "mean_win": pl.Float64,
    "mean_loss": pl.Float64, "mw_u": pl.Float64, "mw_p": pl.Float64, "ks_stat": pl.Float64,
    "ks_p": pl.Float64, "cliffs_delta": pl.Float64, "p_adj": pl.Float64, "significant": pl.Boolean,
}


def _nan_to_none(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def winners_vs_losers(trades: pl.DataFrame, features: pl.DataFrame, feature_cols: list[str] | None = None,
                      config: AnalysisConfig | None = None) -> pl.DataFrame:
    """One row per feature: columns STATS_SCHEMA.

    NULL (and NaN) values are excluded per feature and counted (n_null_win, n_null_loss).
    mw_u is the Mann-Whitney U of the winners; cliffs_delta = 2U/(n_win n_loss) - 1 =
    P(win > loss) - P(win < loss): +1 when every winner's value exceeds every loser's.
    p_adj: Benjamini-Hochberg over the features that have a test (mw_p); significant = p_adj < alpha.
    """
    config = config or AnalysisConfig()
    df = with_derived_features(join_context(label_trades(trades, config.timeout_as), features))
    cols = list(feature_cols) if feature_cols is not None else [c for c in DEFAULT_FEATURES if c in df.columns]
    if missing := [c for c in cols if c not in df.columns]:
        raise ValueError(f"features frame lacks columns {missing}; it has {features.columns}")
    rows = []
    for col in cols:
        values = pl.col(col).cast(pl.Float64)
        part = df.select("label", pl.when(values.is_nan()).then(None).otherwise(values).alias("v"))
        win = part.filter(pl.col("label") == "win")["v"]
        loss = part.filter(pl.col("label") == "loss")["v"]
        w, lo = win.drop_nulls().to_numpy(), loss.drop_nulls().to_numpy()
        row = {"feature": col, "n_win": w.size, "n_loss": lo.size,
               "n_null_win": win.null_count(), "n_null_loss": loss.null_count(),
               "median_win": _nan_to_none(np.median(w)) if w.size else None,
               "median_loss": _nan_to_none(np.median(lo)) if lo.size else None,
               "mean_win": _nan_to_none(w.mean()) if w.size else None,
               "mean_loss": _nan_to_none(lo.mean()) if lo.size else None,
               "mw_u": None, "mw_p": None, "ks_stat": None, "ks_p": None, "cliffs_delta": None}
        if w.size and lo.size:
            mw = sps.mannwhitneyu(w, lo, alternative="two-sided")
            ks = sps.ks_2samp(w, lo, alternative="two-sided")
            row.update(mw_u=float(mw.statistic), mw_p=_nan_to_none(mw.pvalue), ks_stat=float(ks.statistic),
                       ks_p=_nan_to_none(ks.pvalue),
                       cliffs_delta=2.0 * float(mw.statistic) / (w.size * lo.size) - 1.0)
        rows.append(row)
    adj = benjamini_hochberg([r["mw_p"] for r in rows])
    for r, a in zip(rows, adj):
        r["p_adj"] = _nan_to_none(a)
        r["significant"] = bool(r["p_adj"] is not None and r["p_adj"] < config.alpha)
    return pl.DataFrame(rows, schema=STATS_SCHEMA)


def _issue_frame(trades_with_features: pl.DataFrame, overlay_config: OverlayConfig,
                 timeout_as: str) -> pl.DataFrame:
    losing = ["LOSS", "TIMEOUT"] if timeout_as == "loss" else ["LOSS"]
    df = rule_columns(trades_with_features, overlay_config)
    against = (pl.col("funding_mult") < 1.0) | (pl.col("oi_mult") < 1.0)
    reasons = pl.concat_list(
        pl.when(pl.col("funding_mult") < 1.0).then(pl.concat_str(
            pl.lit("funding against the trade ("), pl.col("funding_rule").str.replace("_", " "), pl.lit(")"))),
        pl.when(pl.col("oi_mult") < 1.0).then(pl.lit("open interest falling")),
    ).list.drop_nulls().list.join("; ")
    is_loser = pl.col("outcome").is_in(losing)
    return df.select(
        pl.when(is_loser).then(against).alias("context_issue"),
        pl.when(is_loser).then(reasons).alias("context_issue_reason"),
        (is_loser & (pl.col("funding_rule") == "missing") & (pl.col("oi_rule") == "missing"))
        .alias("_no_context"),
    )


def identifiable_context_issue(trades_with_features: pl.DataFrame, overlay_config: OverlayConfig | None = None,
                               timeout_as: str = "loss") -> pl.Series:
    """Per row: True if a losing trade's context opposed it by the overlay's rules, False if not,
    NULL for rows that are not losers.

    The rule: a losing trade had an identifiable context issue when a rule of the overlay that
    lowers the multiplier fired: funding against the direction beyond the threshold (8h-equivalent;
    BULLISH with crowded longs, funding > threshold; BEARISH with crowded shorts, funding <
    -threshold) or open interest falling more than the OI threshold over 24h. NULL context fires
    nothing, so a loser without context counts as having no identifiable issue.
    """
    overlay_config = overlay_config or OverlayConfig()
    return _issue_frame(trades_with_features, overlay_config, timeout_as)["context_issue"]


def context_issue_share(trades_with_features: pl.DataFrame, overlay_config: OverlayConfig | None = None,
                        timeout_as: str = "loss") -> dict:
    """{'share': issues / losers (None without losers), 'losers', 'with_issue',
    'without_context' (losers with neither funding nor OI)}."""
    overlay_config = overlay_config or OverlayConfig()
    filled = trades_with_features.filter(pl.col("outcome").is_in(FILLED_OUTCOMES))
    f = _issue_frame(filled, overlay_config, timeout_as)
    losers = int(f["context_issue"].is_not_null().sum())
    with_issue = int(f["context_issue"].sum())
    return {"share": with_issue / losers if losers else None, "losers": losers, "with_issue": with_issue,
            "without_context": int(f["_no_context"].sum())}


REVIEW_TRADE_COLUMNS = ("trade_id", "symbol", "timeframe", "direction", "decision_time", "outcome",
                        "r_multiple", "base_confidence", "entry_price", "stop_price", "target_price",
                        "exit_time")
REVIEW_CONTEXT_COLUMNS = ("funding_rate", "funding_interval_hours", "funding_rate_8h", "funding_fuel_8h",
                          "funding_rate_z30d", "funding_rate_change_8h", "oi_change_24h", "oi_change_7d",
                          "oi_percentile_30d", "distance_to_liq_cluster", "atr")


def review_export(trades: pl.DataFrame, features: pl.DataFrame, path_dir: str | Path, n: int = 100,
                  seed: int = 0, overlay_config: OverlayConfig | None = None,
                  timeout_as: str = "loss") -> dict[str, Path]:
    """Write the seed's manual-review sheet as CSV: n losing and n winning trades (all if fewer),
    sampled with `seed`, each with its context, the overlay's multiplier and reason, the
    identifiable-issue flag, and an empty `reviewer_notes` column.

    Returns {'losers': ..., 'winners': ..., 'combined': ..., 'workbook': ...} paths: review_*.csv in
    path_dir and review.xlsx with one sheet each (losers, winners), timestamps as ISO text in UTC.
    """
    overlay_config = overlay_config or OverlayConfig()
    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    df = with_derived_features(join_context(label_trades(trades, timeout_as), features))
    ruled = rule_columns(df, overlay_config)
    issues = _issue_frame(df, overlay_config, timeout_as)
    df = df.with_columns(ruled["multiplier"].alias("overlay_multiplier"), ruled["reason"].alias("overlay_reason"),
                         issues["context_issue"], issues["context_issue_reason"],
                         pl.lit("").alias("reviewer_notes"))
    cols = ["label", *[c for c in REVIEW_TRADE_COLUMNS if c in df.columns],
            *[c for c in REVIEW_CONTEXT_COLUMNS if c in df.columns],
            "overlay_multiplier", "overlay_reason", "context_issue", "context_issue_reason", "reviewer_notes"]
    out: dict[str, Path] = {}
    picked = []
    for label, name in (("loss", "losers"), ("win", "winners")):
        part = df.filter(pl.col("label") == label).sort("decision_time", "trade_id")
        if part.height > n:
            part = part.sample(n=n, seed=seed).sort("decision_time", "trade_id")
        part = part.select(cols)
        picked.append(part)
        out[name] = path_dir / f"review_{name}.csv"
        part.write_csv(out[name])
    out["combined"] = path_dir / "review_combined.csv"
    pl.concat(picked).write_csv(out["combined"])
    out["workbook"] = path_dir / "review.xlsx"
    with xlsxwriter.Workbook(out["workbook"]) as workbook:
        for name, part in zip(("losers", "winners"), picked):
            as_text = part.with_columns(pl.col(pl.Datetime).dt.strftime("%Y-%m-%d %H:%M:%S UTC"))
            as_text.write_excel(workbook, worksheet=name, autofit=True)
    return out


def phase9_gate(stats: pl.DataFrame, issue_share: float | None, n_trades: int,
                config: AnalysisConfig | None = None) -> GateResult:
    """The phase 9 decision gate: enough trades, a significant feature, enough losers with an issue.

    `stats` from winners_vs_losers (its p_adj is compared with config.alpha here), `issue_share`
    from context_issue_share(...)['share'], `n_trades` the filled trades judged.
    """
    config = config or AnalysisConfig()
    parts = []
    ok = n_trades >= config.min_trades
    msg = f"{n_trades} filled trades, need >= {config.min_trades}"
    parts.append(GatePart("min_trades", ok, float(n_trades), float(config.min_trades),
                          msg if ok else f"{msg} ({config.min_trades - n_trades} short)"))

    tested = stats.filter(pl.col("p_adj").is_not_null()).sort("p_adj")
    n_sig = int((tested["p_adj"] < config.alpha).sum())
    ok = n_sig >= config.min_significant_features
    if tested.height:
        best = tested.row(0, named=True)
        best_txt = (f"best: {best['feature']} p_adj={best['p_adj']:.4g}, Cliff's delta="
                    f"{best['cliffs_delta']:+.3f}")
        sig_names = tested.filter(pl.col("p_adj") < config.alpha)["feature"].to_list()
        msg = (f"{n_sig} feature(s) with BH-adjusted p < {config.alpha} "
               f"({', '.join(sig_names) if sig_names else 'none'}), need >= "
               f"{config.min_significant_features}; {best_txt}")
        if not ok and best["p_adj"] >= config.alpha:
            msg += f" ({best['p_adj'] - config.alpha:.4g} above alpha)"
    else:
        msg = "no feature could be tested (no winners or no losers with values)"
    parts.append(GatePart("significant_feature", ok, float(n_sig), float(config.min_significant_features), msg))

    need = config.min_issue_share
    if issue_share is None:
        parts.append(GatePart("losers_with_context_issue", False, None, need,
                              "no losing trades to judge"))
    else:
        ok = issue_share >= need
        msg = f"{issue_share:.1%} of losers had an identifiable context issue, need >= {need:.0%}"
        if not ok:
            msg += f" ({(need - issue_share) * 100:.1f} points short)"
        parts.append(GatePart("losers_with_context_issue", ok, float(issue_share), need, msg))
    return make_gate("phase 9 analysis gate", parts)
