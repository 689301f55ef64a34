"""The one implementation of the backtest metrics, overall and per group (year, symbol, ...).

Definitions (R = net `r_multiple`, multiplied by the size column when one is given):
- patterns: rows; trades: filled rows (outcome WIN, LOSS or TIMEOUT, with an r_multiple).
- win_rate = WIN / (WIN + LOSS + TIMEOUT): a timeout counts as not won, whatever its R. How a
  timeout is labelled is a policy (`apply_timeout_policy`): the default keeps the seed's meaning.
- avg_gross_r: mean gross R (before fees and funding) per filled trade.
- expectancy_r: mean net R per filled trade (the "average R" after costs); total_r: their sum.
- avg_win_r / avg_loss_r: mean net R of WIN / LOSS trades.
- profit_factor = sum of positive R / |sum of negative R| (inf if no losing R, NULL if no R at all).
- sharpe_per_trade = mean(R) / std(R, ddof=1) over the filled trades, not annualised. Keeping a
  random subset of the trades leaves its expectation unchanged: trading less cannot move it.
- sharpe_daily = mean(D) / std(D, ddof=1) * sqrt(365), D = the R realised on each calendar day
  (trades summed by the UTC day of exit_time) over ONE calendar: every day from `calendar`'s first
  to last day, days without an exit counting as 0 R. The calendar defaults to the first
  decision_time day .. the last exit_time day of the frame's filled trades; comparisons pass the
  baseline's calendar to every variant (`trade_calendar`). A `year` group uses the calendar's days
  of that year. Crypto trades every day, hence 365.
- sharpe_trade_count_dependent = mean(R) / std(R, ddof=1) * sqrt(trades_per_year), with
  trades_per_year = trades / span in years (365.25 days) from the first decision_time to the last
  exit_time of the group. TRADE-COUNT DEPENDENT: a random half of the trades has the same
  per-trade Sharpe but this one shrinks by sqrt(2) towards 0, so with a losing baseline any filter
  "improves" it. Kept for continuity; never use it to compare variants (docs/overlay.md).
- the three Sharpes are NULL with fewer than 2 trades (daily: 2 days), zero spread or zero span.
- max_drawdown_r: the largest fall of cumulative R from its running peak (the curve starts at 0),
  trades ordered by exit_time then trade_id; reported as a positive number of R.

`TradeArrays` + `batch_metrics` compute win rate, expectancy and the three Sharpes for many weight
vectors at once (bootstrap resamples, random filters) with numpy; with weights of 1 they equal
`summarize` (tests/trades/test_metrics.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from qml_pipeline.trades.contract import FILLED_OUTCOMES
from qml_pipeline.timeutil import DAY_MS, epoch_ms

YEAR = "year"  # in `by`: the calendar year (UTC) of decision_time
DAYS_PER_YEAR = 365
_YEAR_MS = 365.25 * DAY_MS
# How a TIMEOUT is labelled: the seed's "not won" (loss), left out (exclude), or by the sign of its
# net R (r_sign: a timeout that made money is a win).
TIMEOUT_POLICIES = ("loss", "exclude", "r_sign")

Calendar = tuple[date, date]


def apply_timeout_policy(trades: pl.DataFrame, policy: str = "loss") -> pl.DataFrame:
    """The trades with TIMEOUT rows labelled per `policy` (TIMEOUT_POLICIES).

    loss: unchanged (a timeout is not won, the seed's meaning); exclude: TIMEOUT rows dropped;
    r_sign: a TIMEOUT with net r_multiple > 0 becomes WIN, else LOSS.
    """
    if policy not in TIMEOUT_POLICIES:
        raise ValueError(f"timeout policy must be one of {TIMEOUT_POLICIES}, got {policy!r}")
    if policy == "loss":
        return trades
    if policy == "exclude":
        return trades.filter(pl.col("outcome") != "TIMEOUT")
    return trades.with_columns(
        pl.when(pl.col("outcome") != "TIMEOUT").then(pl.col("outcome"))
        .when(pl.col("r_multiple") > 0).then(pl.lit("WIN")).otherwise(pl.lit("LOSS")).alias("outcome"))


def _filled_expr() -> pl.Expr:
    return pl.col("outcome").is_in(FILLED_OUTCOMES) & pl.col("r_multiple").is_not_null()


def trade_calendar(trades: pl.DataFrame) -> Calendar | None:
    """(first decision_time day, last exit_time day), UTC, of the filled trades; None without any."""
    filled = trades.filter(_filled_expr())
    if filled.height == 0:
        return None
    first = filled["decision_time"].min().date()  # type: ignore[union-attr]
    last = filled["exit_time"].max().date()  # type: ignore[union-attr]
    return first, max(first, last)


def _prepared(trades: pl.DataFrame, size_col: str | None) -> pl.DataFrame:
    size = pl.col(size_col).cast(pl.Float64) if size_col else pl.lit(1.0)
    filled = _filled_expr()
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


def _daily_squares(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Per group of `by`: the sum over exit days of (R realised that day)^2, as `_ss`."""
    per_day = (df.filter(pl.col("_filled"))
               .group_by([*by, pl.col("exit_time").dt.date().alias("_day")])
               .agg(pl.col("_r").sum().alias("_rd")))
    square = (pl.col("_rd") ** 2).sum().alias("_ss")
    return per_day.group_by(by).agg(square) if by else per_day.select(square)


def _calendar_days(calendar: Calendar | None, by: list[str]) -> pl.Expr:
    """Days of the calendar a group covers: all of them, or those of the group's year."""
    if calendar is None:
        return pl.lit(None, dtype=pl.Int64)
    start, end = (pl.lit(d, dtype=pl.Date) for d in calendar)
    if YEAR not in by:
        return pl.lit((calendar[1] - calendar[0]).days + 1, dtype=pl.Int64)
    first = pl.max_horizontal(start, pl.date(pl.col(YEAR), 1, 1))
    last = pl.min_horizontal(end, pl.date(pl.col(YEAR), 12, 31))
    return pl.max_horizontal((last - first).dt.total_days() + 1, pl.lit(0)).cast(pl.Int64)


def _finish(df: pl.DataFrame) -> pl.DataFrame:
    tpy = pl.col("trades_per_year")
    per_trade_ok = (pl.col("trades") >= 2) & (pl.col("_std") > 0)
    ok = per_trade_ok & tpy.is_finite() & (tpy > 0)
    days = pl.col("_n_days").cast(pl.Float64)
    mean_d = pl.col("total_r").fill_null(0.0) / days
    var_d = (pl.col("_ss").fill_null(0.0) - days * mean_d ** 2) / (days - 1)
    daily_ok = (pl.col("trades") >= 1) & (days >= 2) & (var_d > 0)
    return df.with_columns(
        pl.when(per_trade_ok).then(pl.col("_mean") / pl.col("_std")).alias("sharpe_per_trade"),
        pl.when(daily_ok).then(mean_d / var_d.sqrt() * np.sqrt(DAYS_PER_YEAR)).alias("sharpe_daily"),
        pl.when(ok).then(pl.col("_mean") / pl.col("_std") * tpy.sqrt()).alias("sharpe_trade_count_dependent"),
        pl.when(pl.col("trades") > 0).then(pl.col("_dd").clip(lower_bound=0.0)).alias("max_drawdown_r"),
        pl.when(tpy.is_finite()).then(tpy).alias("trades_per_year"),
        pl.col("_n_days").alias("calendar_days"),
    ).drop("_mean", "_std", "_dd", "_ss", "_n_days")


def summarize(trades: pl.DataFrame, by: list[str] | None = None, size_col: str | None = None,
              calendar: Calendar | None = None) -> pl.DataFrame:
    """Metrics per group of `by` (column names, or "year" for decision_time's year) plus an overall row.

    The `scope` column says 'overall' or 'group'; the overall row has NULL group columns.
    `size_col`: a per-trade risk multiplier (e.g. the phase-10 overlay's); R is scaled by it.
    `calendar`: the days of sharpe_daily (default: `trade_calendar(trades)`); pass the baseline's
    calendar when comparing a subset of its trades with it.
    """
    by = list(by or [])
    df = _prepared(trades, size_col)
    calendar = calendar if calendar is not None else trade_calendar(trades)
    overall = pl.concat([df.select(_aggs()), _daily_squares(df, [])], how="horizontal")
    overall = _finish(overall.with_columns(_calendar_days(calendar, []).alias("_n_days"))
                      ).with_columns(pl.lit("overall").alias("scope"))
    if not by:
        return overall.select("scope", pl.exclude("scope"))
    groups = (df.group_by(by).agg(_aggs())
              .join(_daily_squares(df, by), on=by, how="left", nulls_equal=True)
              .with_columns(_calendar_days(calendar, by).alias("_n_days")))
    groups = _finish(groups).sort(by).with_columns(pl.lit("group").alias("scope"))
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


# ---------------------------------------------------------------- many weightings at once (numpy)

BATCH_METRICS = ("trades", "win_rate", "expectancy_r", "sharpe_per_trade", "sharpe_daily",
                 "sharpe_trade_count_dependent")


@dataclass(frozen=True)
class TradeArrays:
    """Filled trades (in the frame's row order) as arrays for `batch_metrics`.

    r: net R; won: 1.0 for WIN; day: index of the exit day in the calendar; n_days: calendar
    length; decision_ms / exit_ms: epoch milliseconds (for trades_per_year); trade_id.
    """

    r: np.ndarray
    won: np.ndarray
    day: np.ndarray
    n_days: int
    decision_ms: np.ndarray
    exit_ms: np.ndarray
    trade_id: list[str]

    @classmethod
    def from_frame(cls, trades: pl.DataFrame, calendar: Calendar | None = None) -> TradeArrays:
        filled = trades.filter(_filled_expr())
        calendar = calendar if calendar is not None else trade_calendar(filled)
        if calendar is None:
            empty = np.zeros(0)
            return cls(empty, empty, empty.astype(np.int64), 0, empty, empty, [])
        day = filled.select((pl.col("exit_time").dt.date() - pl.lit(calendar[0])).dt.total_days())
        day = day.to_series().to_numpy()
        n_days = (calendar[1] - calendar[0]).days + 1
        if day.size and (day.min() < 0 or day.max() >= n_days):
            raise ValueError(f"exit days outside the calendar {calendar[0]}..{calendar[1]}: pass the calendar "
                             "of the trades being compared (metrics.trade_calendar)")
        return cls(r=filled["r_multiple"].cast(pl.Float64).to_numpy(),
                   won=(filled["outcome"] == "WIN").cast(pl.Float64).to_numpy(),
                   day=day.astype(np.int64), n_days=n_days,
                   decision_ms=epoch_ms(filled["decision_time"]), exit_ms=epoch_ms(filled["exit_time"]),
                   trade_id=filled["trade_id"].to_list())

    @property
    def n(self) -> int:
        return int(self.r.size)


def batch_metrics(arrays: TradeArrays, weights: np.ndarray, size: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BATCH_METRICS for each row of `weights` (B, n): trade i counts weights[b, i] times (0 = not
    taken, 2 = drawn twice by a bootstrap), its R scaled by `size` ((n,) or (B, n); None = 1).
    Each value is an array (B,), NaN where the metric is undefined (as NULL in `summarize`)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    r = np.broadcast_to(arrays.r if size is None else arrays.r * np.asarray(size, dtype=np.float64), w.shape)
    wr = w * r
    with np.errstate(invalid="ignore", divide="ignore"):
        n = w.sum(axis=1)
        total = wr.sum(axis=1)
        mean = total / n
        var = (w * (r - mean[:, None]) ** 2).sum(axis=1) / (n - 1)
        per_trade = np.where((n >= 2) & (var > 1e-24), mean / np.sqrt(np.where(var > 0, var, np.nan)), np.nan)

        order = np.argsort(arrays.day, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(arrays.day[order]) != 0]) if arrays.n else np.zeros(0, int)
        active = np.add.reduceat(wr[:, order], starts, axis=1) if arrays.n else np.zeros((w.shape[0], 0))
        days = float(arrays.n_days)
        mean_d = total / days
        ss_d = ((active - mean_d[:, None]) ** 2).sum(axis=1) + (days - active.shape[1]) * mean_d ** 2
        var_d = ss_d / (days - 1)
        daily = np.where((n >= 1) & (days >= 2) & (var_d > 1e-24),
                         mean_d / np.sqrt(np.where(var_d > 0, var_d, np.nan)) * np.sqrt(DAYS_PER_YEAR), np.nan)

        taken = w > 0
        first = np.where(taken, arrays.decision_ms[None, :], np.inf).min(axis=1, initial=np.inf)
        last = np.where(taken, arrays.exit_ms[None, :], -np.inf).max(axis=1, initial=-np.inf)
        tpy = n / ((last - first) / _YEAR_MS)
        by_count = np.where(np.isfinite(tpy) & (tpy > 0), per_trade * np.sqrt(tpy), np.nan)
        return {"trades": n, "win_rate": np.where(n > 0, (w @ arrays.won) / n, np.nan),
                "expectancy_r": np.where(n > 0, mean, np.nan), "sharpe_per_trade": per_trade,
                "sharpe_daily": daily, "sharpe_trade_count_dependent": by_count}
