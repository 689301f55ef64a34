"""Phase 9: do winners and losers differ in their derivatives context? (docs/overlay.md)

- `winners_vs_losers`: per feature, Mann-Whitney U and Kolmogorov-Smirnov tests (two-sided),
  Cliff's delta as the effect size, Benjamini-Hochberg adjusted p-values across features
  (scipy.stats.false_discovery_control) and the minimum detectable |Cliff's delta| at 80% power.
- `review_export`: up to 100 losing and 100 winning trades with their context, as CSV, for the
  seed's manual spreadsheet review, as CSV and as one XLSX workbook (a sheet each).
- `identifiable_context_issue`: per judged trade (winners too: the control group), did context
  oppose the trade? Three definitions (ISSUE_DEFINITIONS), the gate uses one, all are reported.
- `context_issue_share`: the share among losers and among winners and Fisher's exact test of the
  difference; `issue_sensitivity`: the same for every definition.
- `phase9_gate`: the seed's checklist (200+ trades, a significant feature, 70% of losers with an
  issue) plus the part that discriminates: losers have an issue more often than winners.

Winners are WIN trades; losers are LOSS trades and, by default, TIMEOUT trades (a timeout is "not
won", as in metrics.win_rate); the policy is `timeout_as` (metrics.TIMEOUT_POLICIES: loss,
exclude, r_sign). Unfilled trades are never judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import xlsxwriter
from scipy import stats as sps

from qml_pipeline.research.gates import GatePart, GateResult, make_gate, power_text
from qml_pipeline.research.overlay import (OverlayConfig, funding_8h_expr, join_context, rule_columns, with_overlay_inputs)
from qml_pipeline.research.power import mde_cliffs_delta, mde_two_shares
from qml_pipeline.trades.contract import FILLED_OUTCOMES
from qml_pipeline.trades.metrics import TIMEOUT_POLICIES, apply_timeout_policy

__all__ = [
    "DEFAULT_FEATURES",
    "ISSUE_DEFINITIONS",
    "AnalysisConfig",
    "GatePart",
    "GateResult",
    "context_issue_share",
    "identifiable_context_issue",
    "issue_sensitivity",
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
# What counts as an "identifiable context issue" (docs/overlay.md), from narrow to broad:
# narrow: a rule of the overlay that lowers the multiplier fired (funding against the trade beyond
#   the threshold, OI falling beyond the threshold): phase 9 and phase 10 test one hypothesis;
# seed: any of the seed's three manual checks against the trade, whatever the size: the crowd
#   positioned with the trade (funding_fuel_8h < 0), OI falling over 24h, no liquidation cluster
#   within liq_max_distance_atr;
# broad: seed, or no rule of the overlay supported the trade although some context was known.
ISSUE_DEFINITIONS = ("narrow", "seed", "broad")


@dataclass(frozen=True)
class AnalysisConfig:
    """Phase 9 thresholds (the seed's decision checklist), all configurable."""

    alpha: float = 0.05                 # BH-adjusted p below this = significant; Fisher's p below this
    min_trades: int = 200               # filled trades (WIN/LOSS/TIMEOUT)
    min_significant_features: int = 1
    min_issue_share: float = 0.70       # share of losers with an identifiable context issue
    timeout_as: str = "loss"            # metrics.TIMEOUT_POLICIES
    issue_definition: str = "narrow"    # ISSUE_DEFINITIONS

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"AnalysisConfig.alpha must lie in (0, 1), got {self.alpha}")
        if not 0 <= self.min_issue_share <= 1:
            raise ValueError(f"AnalysisConfig.min_issue_share must lie in [0, 1], got {self.min_issue_share}")
        if self.timeout_as not in TIMEOUT_POLICIES:
            raise ValueError(f"AnalysisConfig.timeout_as must be one of {TIMEOUT_POLICIES}, got {self.timeout_as!r}")
        if self.issue_definition not in ISSUE_DEFINITIONS:
            raise ValueError(f"AnalysisConfig.issue_definition must be one of {ISSUE_DEFINITIONS}, "
                             f"got {self.issue_definition!r}")


def label_trades(trades: pl.DataFrame, timeout_as: str = "loss") -> pl.DataFrame:
    """Filled trades only (after the timeout policy), with `label` 'win' (WIN) or 'loss'."""
    labelled = apply_timeout_policy(trades.filter(pl.col("outcome").is_in(FILLED_OUTCOMES)), timeout_as)
    return labelled.with_columns(
        pl.when(pl.col("outcome") == "WIN").then(pl.lit("win")).otherwise(pl.lit("loss")).alias("label"))


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


def bh_adjusted(p: list[float | None]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy.stats.false_discovery_control) over the finite
    ones; NaN/None stay NaN and do not count in the number of tests."""
    arr = np.array([np.nan if v is None else v for v in p], dtype=float)
    out = np.full(arr.shape, np.nan)
    ok = np.isfinite(arr)
    if ok.any():
        out[ok] = sps.false_discovery_control(arr[ok], method="bh")
    return out


STATS_SCHEMA = {
    "feature": pl.Utf8, "n_win": pl.Int64, "n_loss": pl.Int64, "n_null_win": pl.Int64,
    "n_null_loss": pl.Int64, "median_win": pl.Float64, "median_loss": pl.Float64, "mean_win": pl.Float64,
    "mean_loss": pl.Float64, "mw_u": pl.Float64, "mw_p": pl.Float64, "ks_stat": pl.Float64,
    "ks_p": pl.Float64, "cliffs_delta": pl.Float64, "p_adj": pl.Float64, "significant": pl.Boolean,
    "mde_cliffs_delta": pl.Float64,
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
    mde_cliffs_delta: the |Cliff's delta| found with 80% power at this feature's n_win / n_loss after
    BH over the features tested (power.mde_cliffs_delta).
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
    adj = bh_adjusted([r["mw_p"] for r in rows])
    n_tests = int(np.isfinite(adj).sum())
    for r, a in zip(rows, adj):
        r["p_adj"] = _nan_to_none(a)
        r["significant"] = bool(r["p_adj"] is not None and r["p_adj"] < config.alpha)
        r["mde_cliffs_delta"] = (mde_cliffs_delta(r["n_win"], r["n_loss"], config.alpha, n_tests)
                                 if r["mw_p"] is not None else None)
    return pl.DataFrame(rows, schema=STATS_SCHEMA)


def _issue_expr(definition: str, config: OverlayConfig) -> pl.Expr:
    """True when context opposed the trade under `definition` (on rule_columns' output plus
    funding_fuel_8h); False when it did not or nothing was known."""
    penalised = (pl.col("funding_mult") < 1.0) | (pl.col("oi_mult") < 1.0)
    if definition == "narrow":
        return penalised
    dist = pl.col("distance_to_liq_cluster").cast(pl.Float64)
    liq_far = (dist > config.liq_max_distance_atr) if config.liq_max_distance_atr is not None else pl.lit(False)
    adverse = ((pl.col("funding_fuel_8h") < 0).fill_null(False) | (pl.col("oi_change_24h") < 0).fill_null(False)
               | liq_far.fill_null(False))
    if definition == "seed":
        return adverse
    known = pl.any_horizontal(pl.col("funding_rate_8h").is_not_null(), pl.col("oi_change_24h").is_not_null(),
                              dist.is_not_null())
    unsupported = (pl.col("funding_mult") <= 1.0) & (pl.col("oi_mult") <= 1.0) & (pl.col("liq_mult") <= 1.0)
    return adverse | (known & unsupported)


def _issue_frame(trades_with_features: pl.DataFrame, overlay_config: OverlayConfig, timeout_as: str,
                 definition: str = "narrow") -> pl.DataFrame:
    """Per row of the frame: label ('win' / 'loss', NULL when not judged), context_issue (NULL when
    not judged), its reason, and whether the trade had no funding and no OI context."""
    if definition not in ISSUE_DEFINITIONS:
        raise ValueError(f"issue definition must be one of {ISSUE_DEFINITIONS}, got {definition!r}")
    judged = label_trades(trades_with_features, timeout_as).select("trade_id", "label")
    df = rule_columns(with_derived_features(trades_with_features.drop("label", strict=False)), overlay_config)
    df = df.join(judged, on="trade_id", how="left", maintain_order="left")
    reasons = pl.concat_list(
        pl.when(pl.col("funding_mult") < 1.0).then(pl.concat_str(
            pl.lit("funding against the trade ("), pl.col("funding_rule").str.replace("_", " "), pl.lit(")"))),
        pl.when(pl.col("oi_mult") < 1.0).then(pl.lit("open interest falling")),
    ).list.drop_nulls().list.join("; ")
    is_judged = pl.col("label").is_not_null()
    return df.select(
        "label",
        pl.when(is_judged).then(_issue_expr(definition, overlay_config)).alias("context_issue"),
        pl.when(is_judged).then(reasons).alias("context_issue_reason"),
        (is_judged & (pl.col("funding_rule") == "missing") & (pl.col("oi_rule") == "missing")).alias("_no_context"),
    )


def identifiable_context_issue(trades_with_features: pl.DataFrame, overlay_config: OverlayConfig | None = None,
                               timeout_as: str = "loss", definition: str = "narrow") -> pl.Series:
    """Per row: True if context opposed the trade under `definition` (ISSUE_DEFINITIONS), False if
    not, NULL for rows that are not judged (unfilled, or a timeout left out by `timeout_as`).
    Winners are flagged too: they are the control group of the losers' share.

    narrow (the gate's default): a rule of the overlay that lowers the multiplier fired: funding
    against the direction beyond the threshold (8h-equivalent; BULLISH with crowded longs, funding >
    threshold; BEARISH with crowded shorts, funding < -threshold) or open interest falling more than
    the OI threshold over 24h. NULL context fires nothing, so a trade without context counts as
    having no identifiable issue.
    """
    overlay_config = overlay_config or OverlayConfig()
    return _issue_frame(trades_with_features, overlay_config, timeout_as, definition)["context_issue"]


def context_issue_share(trades_with_features: pl.DataFrame, overlay_config: OverlayConfig | None = None,
                        timeout_as: str = "loss", definition: str = "narrow", alpha: float = 0.05) -> dict:
    """Losers and winners with an identifiable context issue, and the test of the difference.

    Keys: definition; share (losers with an issue / losers; None without losers), losers,
    with_issue, without_context (losers with neither funding nor OI); winner_share, winners,
    winners_with_issue; difference (share - winner_share); odds_ratio and fisher_p of Fisher's exact
    test, one-sided (losers have an issue more often than winners: scipy.stats.fisher_exact,
    alternative 'greater'); mde: the difference found with 80% power at alpha
    (power.mde_two_shares)."""
    overlay_config = overlay_config or OverlayConfig()
    f = _issue_frame(trades_with_features, overlay_config, timeout_as, definition)
    counts = {}
    for label in ("loss", "win"):
        part = f.filter(pl.col("label") == label)
        counts[label] = (part.height, int(part["context_issue"].sum()), int(part["_no_context"].sum()))
    (losers, with_issue, no_ctx), (winners, win_issue, _) = counts["loss"], counts["win"]
    share = with_issue / losers if losers else None
    winner_share = win_issue / winners if winners else None
    out = {"definition": definition, "share": share, "losers": losers, "with_issue": with_issue,
           "without_context": no_ctx, "winner_share": winner_share, "winners": winners,
           "winners_with_issue": win_issue, "difference": None, "odds_ratio": None, "fisher_p": None, "mde": None}
    if losers and winners:
        test = sps.fisher_exact([[with_issue, losers - with_issue], [win_issue, winners - win_issue]],
                                alternative="greater")
        pooled = (with_issue + win_issue) / (losers + winners)
        out.update(difference=share - winner_share, odds_ratio=_nan_to_none(float(test.statistic)),
                   fisher_p=float(test.pvalue), mde=mde_two_shares(losers, winners, pooled, alpha))
    return out


def issue_sensitivity(trades_with_features: pl.DataFrame, overlay_config: OverlayConfig | None = None,
                      timeout_as: str = "loss", alpha: float = 0.05, gate_definition: str = "narrow") -> pl.DataFrame:
    """`context_issue_share` under every definition (ISSUE_DEFINITIONS), one row each; `gate` marks
    the definition the gate uses."""
    rows = [context_issue_share(trades_with_features, overlay_config, timeout_as, d, alpha) for d in ISSUE_DEFINITIONS]
    return pl.DataFrame(rows, schema=ISSUE_SCHEMA).with_columns(
        (pl.col("definition") == gate_definition).alias("gate"), pl.lit(timeout_as).alias("timeout_as"))


ISSUE_SCHEMA = {"definition": pl.Utf8, "share": pl.Float64, "losers": pl.Int64, "with_issue": pl.Int64,
                "without_context": pl.Int64, "winner_share": pl.Float64, "winners": pl.Int64,
                "winners_with_issue": pl.Int64, "difference": pl.Float64, "odds_ratio": pl.Float64,
                "fisher_p": pl.Float64, "mde": pl.Float64}


REVIEW_TRADE_COLUMNS = ("trade_id", "symbol", "timeframe", "direction", "decision_time", "outcome",
                        "r_multiple", "base_confidence", "entry_price", "stop_price", "target_price",
                        "exit_time")
REVIEW_CONTEXT_COLUMNS = ("funding_rate", "funding_interval_hours", "funding_rate_8h", "funding_fuel_8h",
                          "funding_rate_z30d", "funding_rate_change_8h", "oi_change_24h", "oi_change_7d",
                          "oi_percentile_30d", "distance_to_liq_cluster", "atr")


def review_export(trades: pl.DataFrame, features: pl.DataFrame, path_dir: str | Path, n: int = 100,
                  seed: int = 0, overlay_config: OverlayConfig | None = None,
                  timeout_as: str = "loss", definition: str = "narrow") -> dict[str, Path]:
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
    issues = _issue_frame(df, overlay_config, timeout_as, definition)
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


def phase9_gate(stats: pl.DataFrame, issue: dict | None, n_trades: int, config: AnalysisConfig | None = None,
                sensitivity: pl.DataFrame | None = None) -> GateResult:
    """The phase 9 decision gate: enough trades, a significant feature, enough losers with an issue
    (the seed's literal 70%), and losers with an issue more often than winners (the part that
    discriminates: Fisher's exact test, one-sided, p < alpha).

    `stats` from winners_vs_losers (its p_adj is compared with config.alpha here), `issue` from
    context_issue_share(..., definition=config.issue_definition), `n_trades` the filled trades
    judged, `sensitivity` (optional) from issue_sensitivity: quoted in the issue parts' messages.
    """
    config = config or AnalysisConfig()
    parts = []
    ok = n_trades >= config.min_trades
    msg = f"{n_trades} filled trades, need >= {config.min_trades}"
    parts.append(GatePart("min_trades", ok, float(n_trades), float(config.min_trades),
                          msg if ok else f"{msg} ({config.min_trades - n_trades} short)", n=n_trades))

    tested = stats.filter(pl.col("p_adj").is_not_null()).sort("p_adj")
    n_sig = int((tested["p_adj"] < config.alpha).sum())
    ok = n_sig >= config.min_significant_features
    mde = None
    if tested.height:
        best = tested.row(0, named=True)
        largest = tested.sort(pl.col("cliffs_delta").abs(), descending=True).row(0, named=True)
        mde = tested["mde_cliffs_delta"].min() if "mde_cliffs_delta" in tested.columns else None
        sig_names = tested.filter(pl.col("p_adj") < config.alpha)["feature"].to_list()
        msg = (f"{n_sig} feature(s) with BH-adjusted p < {config.alpha} "
               f"({', '.join(sig_names) if sig_names else 'none'}), need >= "
               f"{config.min_significant_features}; best: {best['feature']} p_adj={best['p_adj']:.4g}, "
               f"Cliff's delta={best['cliffs_delta']:+.3f}")
        if not ok and best["p_adj"] >= config.alpha:
            msg += f" ({best['p_adj'] - config.alpha:.4g} above alpha)"
        msg += f"; largest |Cliff's delta| {abs(largest['cliffs_delta']):.3f} ({largest['feature']})"
        if mde is not None:
            msg += power_text(mde, not ok, ".3f", f"in |Cliff's delta| (best-powered feature, BH over {tested.height})")
        parts.append(GatePart("significant_feature", ok, float(n_sig), float(config.min_significant_features), msg,
                              n=int(best["n_win"] + best["n_loss"]), p_value=best["p_adj"], mde=mde))
    else:
        parts.append(GatePart("significant_feature", False, 0.0, float(config.min_significant_features),
                              "no feature could be tested (no winners or no losers with values)"))

    others = _other_definitions_text(sensitivity, config.issue_definition)
    need = config.min_issue_share
    share = None if issue is None else issue["share"]
    if share is None:
        parts.append(GatePart("losers_with_context_issue", False, None, need, "no losing trades to judge"))
    else:
        ok = share >= need
        msg = (f"{share:.1%} of {issue['losers']} losers had an identifiable context issue "
               f"({config.issue_definition} definition), need >= {need:.0%}")
        if not ok:
            msg += f" ({(need - share) * 100:.1f} points short)"
        if issue.get("winner_share") is not None:
            msg += f"; winners (the control): {issue['winner_share']:.1%}"
        parts.append(GatePart("losers_with_context_issue", ok, float(share), need, msg + others,
                              control="none (the seed's literal part)", n=issue["losers"]))

    if issue is None or issue.get("fisher_p") is None:
        parts.append(GatePart("issue_discriminates", False, None, 0.0,
                              "needs losers and winners to compare", control="winners"))
    else:
        diff = issue["difference"] * 100
        ok = issue["fisher_p"] < config.alpha
        mde_points = None if issue["mde"] is None else issue["mde"] * 100
        msg = (f"losers {issue['share']:.1%} ({issue['with_issue']}/{issue['losers']}) vs winners "
               f"{issue['winner_share']:.1%} ({issue['winners_with_issue']}/{issue['winners']}) with an issue "
               f"({config.issue_definition}): {diff:+.1f} points, Fisher's exact one-sided p={issue['fisher_p']:.3g}, "
               f"need p < {config.alpha}")
        msg += power_text(mde_points, not ok, ".1f", "points") + others
        parts.append(GatePart("issue_discriminates", ok, diff, 0.0, msg, control="winners",
                              n=issue["losers"] + issue["winners"], p_value=issue["fisher_p"], mde=mde_points))
    return make_gate("phase 9 analysis gate", parts)


def _other_definitions_text(sensitivity: pl.DataFrame | None, used: str) -> str:
    if sensitivity is None or sensitivity.is_empty():
        return ""
    bits = [f"{r['definition']} {_pct_or_na(r['share'])} vs {_pct_or_na(r['winner_share'])}"
            + (f" (p={r['fisher_p']:.2g})" if r["fisher_p"] is not None else "")
            for r in sensitivity.iter_rows(named=True) if r["definition"] != used]
    return "; other definitions, losers vs winners: " + ", ".join(bits) if bits else ""


def _pct_or_na(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"
