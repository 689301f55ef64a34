"""The one implementation of the backtest metrics, overall and per group (year, symbol, ...).

Definitions (R = net `r_multiple`, multiplied by the size column when one is given):
- patterns: rows; trades: filled rows (outcome WIN, LOSS or TIMEOUT, with an r_multiple).
- win_rate = WIN / (WIN + LOSS + TIMEOUT): a timeout counts as not won, whatever its R.
- avg_gross_r: mean gross R (before fees and funding) per filled trade.
- expectancy_r: mean net R per filled trade (the "average R" after costs); total_r: their sum.
- avg_win_r / avg_loss_r: mean net R of WIN / LOSS trades.
- profit_factor = sum of positive R / |sum of negative R| (inf if no losing R, NULL if no R at all).
- sharpe = mean(R) / std(R, ddof=1) * sqrt(trades_per_year), with trades_per_year = trades / span
  in years (365.25 days) from the first decision_time to the last exit_time of the group; NULL with
  fewer than 2 trades, zero spread or zero span. Trade-level, not daily: comparable between runs of
  the same strategy, not with a daily-returns Sharpe.
- max_drawdown_r: the largest fall of cumulative R from its running peak (the curve starts at 0),
  trades ordered by exit_time then trade_id; reported as a positive number of R.
"""

from __future__ import annotations

import polars as pl

from qml_pipeline.trades.contract import FILLED_OUTCOMES

YEAR = "year"  # in `by`: the calendar year (UTC) of decision_time
_YEAR_MS = 365.25 * 24 * 3600 * 1000


def _prepared(trades: pl.DataFrame, size_col: str | None) -> pl.DataFrame:
    size = pl.col(size_col).cast(pl.Float64) if size_col else pl.lit(1.0)
    filled = pl.col("outcome").is_in(FILLED_OUTCOMES) & pl.col("r_multiple").is_not_null()
    df = trades.with_columns(
        _filled=filled,
        _r=pl.when(filled).then(pl.col("r_multiple") * size),
        _gross=pl.when(filled).then(pl.col("gross_r_multiple") * size),
    )
    if YEAR not in df.columns:
        df = df.with_columns(pl.col("decision_time").dt.year().alias(YEAR))
    return df


def _aggs() -> list[pl.Expr]:
    r = pl.col("_r").filter(pl.col("_filled"))
    ordered = r.sort_by([pl.col("exit_time").filter(pl.col("_filled")),
                         pl.col("trade_id").filter(pl.col("_filled"))])
    cum = ordered.cum_sum()
    n = pl.col("_filled").sum()
    span_ms = (pl.col("exit_time").filter(pl.col("_filled")).max()
               - pl.col("decision_time").filter(pl.col("_filled")).min()).dt.total_milliseconds()
    outcome = pl.col("outcome")
    wins, losses, timeouts = ((outcome == o).sum() for o in FILLED_OUTCOMES)
    pos = r.filter(r > 0).sum()
    neg = r.filter(r < 0).sum()
    return [
        pl.len().alias("patterns"),
        n.alias("trades"),
        wins.alias("wins"), losses.alias("losses"), timeouts.alias("timeouts"),
        (outcome == "NOT_FILLED").sum().alias("not_filled"),
        (outcome == "INVALIDATED").sum().alias("invalidated"),
        (wins / pl.when(n > 0).then(n)).alias("win_rate"),
        pl.col("_gross").filter(pl.col("_filled")).mean().alias("avg_gross_r"),
        r.mean().alias("expectancy_r"),
        r.sum().alias("total_r"),
        pl.col("_r").filter(outcome == "WIN").mean().alias("avg_win_r"),
        pl.col("_r").filter(outcome == "LOSS").mean().alias("avg_loss_r"),
        pl.when(neg < 0).then(pos / neg.abs()).when(pos > 0).then(float("inf"))
        .otherwise(None).alias("profit_factor"),
        (n / (span_ms / _YEAR_MS)).alias("trades_per_year"),
        r.mean().alias("_mean"), r.std(ddof=1).alias("_std"),
        (pl.max_horizontal(cum.cum_max(), pl.lit(0.0)) - cum).max().alias("_dd"),
    ]


def _finish(df: pl.DataFrame) -> pl.DataFrame:
    tpy = pl.col("trades_per_year")
    ok = (pl.col("trades") >= 2) & (pl.col("_std") > 0) & tpy.is_finite() & (tpy > 0)
    return df.with_columns(
        pl.when(ok).then(pl.col("_mean") / pl.col("_std") * tpy.sqrt()).alias("sharpe"),
        pl.when(pl.col("trades") > 0).then(pl.col("_dd").clip(lower_bound=0.0)).alias("max_drawdown_r"),
        pl.when(tpy.is_finite()).then(tpy).alias("trades_per_year"),
    ).drop("_mean", "_std", "_dd")


def summarize(trades: pl.DataFrame, by: list[str] | None = None,
              size_col: str | None = None) -> pl.DataFrame:
    """Metrics per group of `by` (column names, or "year" for decision_time's year) plus an overall row.

    The `scope` column says 'overall' or 'group'; the overall row has NULL group columns.
    `size_col`: a per-trade risk multiplier (e.g. the phase-10 overlay's); R is scaled by it.
    """
    by = list(by or [])
    df = _prepared(trades, size_col)
    overall = _finish(df.select(_aggs())).with_columns(pl.lit("overall").alias("scope"))
    if not by:
        return overall.select("scope", pl.exclude("scope"))
    groups = _finish(df.group_by(by).agg(_aggs())).sort(by).with_columns(pl.lit("group").alias("scope"))
    overall = overall.with_columns([pl.lit(None, dtype=groups.schema[c]).alias(c) for c in by])
    out = pl.concat([groups, overall.select(groups.columns)])
    return out.select("scope", *by, pl.exclude("scope", *by))


def equity_curve(trades: pl.DataFrame, size_col: str | None = None) -> pl.DataFrame:
    """Filled trades by exit_time: trade_id, exit_time, r, cum_r, peak_r (>= 0), drawdown_r (>= 0)."""
    df = _prepared(trades, size_col).filter(pl.col("_filled")).sort("exit_time", "trade_id")
    cum = pl.col("r").cum_sum()
    return df.select("trade_id", "exit_time", pl.col("_r").alias("r")).with_columns(
        cum.alias("cum_r")).with_columns(
        pl.max_horizontal(pl.col("cum_r").cum_max(), pl.lit(0.0)).alias("peak_r")).with_columns(
        (pl.col("peak_r") - pl.col("cum_r")).alias("drawdown_r"))

