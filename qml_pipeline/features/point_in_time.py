"""Point-in-time context features per trade: funding and ATR in DuckDB SQL, open interest in numpy
from each symbol's rows as known.

Reads the views `funding_rates`, `open_interest`, `klines` and `trades` of a connection and returns
one row per trade. Every value is chosen among rows with `available_at <= decision_time` only;
formulas, windows and units are documented in docs/features.md.

Rules shared by every source:
- Duplicates (same symbol, event_time; for klines also interval) are collapsed to one row: the one
  with the earliest `available_at`, then the largest value. Earliest rather than latest keeps the
  rule point-in-time: a later republication of a stamp can never replace what was already known.
- "The value known at t" is the row with the latest event_time among rows with available_at <= t.
- A value older than its source's staleness limit becomes NULL; its event time and age are kept.
- Open interest rows with open_interest = 0 (or NULL) are missing data (Binance archive defect)
  and are dropped before anything else, so the previous value ages instead of reading as zero.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import duckdb
import numpy as np
import polars as pl

from qml_pipeline.store.schemas import TRADE_CONTEXT_FEATURES, TS
from qml_pipeline.timeutil import DAY_MS, HOUR_MS, interval_values_sql



@dataclass(frozen=True)
class FeatureConfig:
    """Windows, minimum counts and staleness limits (units in the field names)."""

    funding_stale_factor: float = 1.5          # stale if age > factor * the row's funding interval
    funding_z_window_days: int = 30
    funding_z_min_count: int = 10
    funding_change_hours: int = 8
    oi_stale_periods: float = 3.0              # stale if age > max(periods * row period, min minutes)
    oi_stale_min_minutes: float = 120.0
    oi_change_short_hours: int = 24
    oi_change_long_days: int = 7
    oi_percentile_window_days: int = 30
    oi_percentile_min_points: int = 240        # hourly snapshots (10 days of the 30)
    atr_period: int = 14
    atr_stale_bars: float = 2.0                # stale if age > bars * the timeframe

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"FeatureConfig.{name} must be a positive number, got {value!r}")


# The bars of the trades' symbols and timeframes (CTE `t`), one row per bar: a bar served twice keeps
# its earliest published copy, so a later re-publication never replaces what a trader saw.
TRADE_KLINES_CTE = """kl AS (
    SELECT symbol, interval, epoch_ms(event_time) AS ev_ms, open, high, low, close, volume,
           epoch_ms(close_time) AS ct_ms, epoch_ms(available_at) AS av_ms
    FROM klines
    WHERE interval IN (SELECT DISTINCT timeframe FROM t) AND symbol IN (SELECT DISTINCT symbol FROM t)
    QUALIFY row_number() OVER (PARTITION BY symbol, interval, event_time
                               ORDER BY available_at, close DESC, high DESC, low DESC, open DESC,
                                        close_time DESC, volume DESC) = 1
)"""


# Whether available_at - event_time is constant per symbol (reported by the benchmark; the SQL does
# not depend on it).
OI_LAG_CONSTANT_SQL = """
SELECT coalesce(bool_and(lo = hi), true) FROM (
    SELECT symbol, min(epoch_ms(available_at) - epoch_ms(event_time)) AS lo,
           max(epoch_ms(available_at) - epoch_ms(event_time)) AS hi
    FROM open_interest WHERE open_interest > 0 GROUP BY symbol)
"""


TRADES_CTE = """t AS (
    SELECT trade_id, symbol, timeframe, direction, decision_time, epoch_ms(decision_time) AS t_ms
    FROM trades
)"""


def feature_sql(config: FeatureConfig = FeatureConfig()) -> str:
    """The SQL behind build_trade_context_features: the trades with their funding and ATR columns
    (the open interest columns come from `oi_features`)."""
    c = config
    z_win = c.funding_z_window_days * DAY_MS
    f_back = c.funding_change_hours * HOUR_MS
    bars = c.atr_period + 1
    return f"""
WITH
iv(interval, interval_ms) AS (VALUES {interval_values_sql()}),
{TRADES_CTE},
-- funding ------------------------------------------------------------------------------------
fr AS (
    SELECT symbol, epoch_ms(event_time) AS ev_ms,
           arg_min(funding_rate, (epoch_ms(available_at), -funding_rate, -funding_interval_hours)) AS rate,
           arg_min(funding_interval_hours, (epoch_ms(available_at), -funding_rate, -funding_interval_hours))
               AS interval_h,
           min(epoch_ms(available_at)) AS av_ms
    FROM funding_rates WHERE funding_rate IS NOT NULL
    GROUP BY symbol, event_time
),
fr_known AS (
    SELECT * FROM fr
    QUALIFY av_ms < coalesce(min(av_ms) OVER (PARTITION BY symbol ORDER BY ev_ms
                                              ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING),
                             9223372036854775807)
),
f_probe AS (
    SELECT trade_id, symbol, 0 AS k, t_ms AS at_ms FROM t
    UNION ALL SELECT trade_id, symbol, 1, t_ms - {f_back} FROM t
),
f_at AS (
    SELECT p.trade_id, p.k, f.ev_ms, f.interval_h, (p.at_ms - f.ev_ms) / {HOUR_MS}.0 AS age_h,
           CASE WHEN (p.at_ms - f.ev_ms) / {HOUR_MS}.0 <= {c.funding_stale_factor} * f.interval_h
                THEN f.rate END AS rate
    FROM f_probe p ASOF JOIN fr_known f ON f.symbol = p.symbol AND f.av_ms <= p.at_ms
),
f_wide AS (
    SELECT trade_id,
           any_value(rate) FILTER (WHERE k = 0) AS rate0,
           any_value(ev_ms) FILTER (WHERE k = 0) AS ev0,
           any_value(age_h) FILTER (WHERE k = 0) AS age0,
           any_value(interval_h) FILTER (WHERE k = 0) AS interval0,
           any_value(rate) FILTER (WHERE k = 1) AS rate1,
           any_value(ev_ms) FILTER (WHERE k = 1) AS ev1,
           any_value(age_h) FILTER (WHERE k = 1) AS age1
    FROM f_at GROUP BY trade_id
),
f_z AS (
    SELECT t.trade_id, count(*) AS n, avg(fr.rate) AS mean, stddev_samp(fr.rate) AS sd
    FROM (SELECT t.*, unnest(range((t_ms - {z_win} + 1) // {DAY_MS}, t_ms // {DAY_MS} + 1)) AS d FROM t) t
    JOIN (SELECT *, av_ms // {DAY_MS} AS d FROM fr) fr ON fr.symbol = t.symbol AND fr.d = t.d
    WHERE fr.av_ms > t.t_ms - {z_win} AND fr.av_ms <= t.t_ms
    GROUP BY t.trade_id
),
-- klines / ATR -------------------------------------------------------------------------------
{TRADE_KLINES_CTE},
kl_tr AS (
    SELECT kl.*, iv.interval_ms,
           greatest(high, lag(close) OVER w) - least(low, lag(close) OVER w) AS tr
    FROM kl JOIN iv USING (interval)
    WINDOW w AS (PARTITION BY symbol, interval ORDER BY ev_ms)
),
kl_w AS (
    SELECT *,
           avg(tr) OVER (w ROWS BETWEEN {c.atr_period - 1} PRECEDING AND CURRENT ROW) AS atr,
           count(*) OVER (w ROWS BETWEEN {bars - 1} PRECEDING AND CURRENT ROW) AS nbars,
           min(ev_ms) OVER (w ROWS BETWEEN {bars - 1} PRECEDING AND CURRENT ROW) AS first_ev,
           max(av_ms) OVER (w ROWS BETWEEN {bars - 1} PRECEDING AND CURRENT ROW) AS window_av_ms,
           min(av_ms) OVER (w ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS next_av_ms
    FROM kl_tr
    WINDOW w AS (PARTITION BY symbol, interval ORDER BY ev_ms)
),
kl_known AS (
    SELECT * FROM kl_w WHERE av_ms < coalesce(next_av_ms, 9223372036854775807)
),
k_at AS (
    SELECT t.trade_id, k.ct_ms, k.close, (t.t_ms - k.ct_ms) / 60000.0 AS age_min,
           CASE WHEN k.nbars = {bars} AND k.ev_ms - k.first_ev = {bars - 1} * k.interval_ms
                     AND k.window_av_ms <= t.t_ms
                     AND t.t_ms - k.ct_ms <= {c.atr_stale_bars} * k.interval_ms
                THEN k.atr END AS atr,
           CASE WHEN t.t_ms - k.ct_ms <= {c.atr_stale_bars} * k.interval_ms THEN k.close END AS last_close
    FROM t ASOF JOIN kl_known k ON k.symbol = t.symbol AND k.interval = t.timeframe AND k.av_ms <= t.t_ms
)
SELECT
    t.trade_id, t.symbol, t.timeframe, t.direction, t.decision_time,
    fw.rate0 AS funding_rate,
    make_timestamptz(fw.ev0 * 1000) AS funding_event_time,
    fw.age0 AS funding_age_hours,
    fw.interval0::SMALLINT AS funding_interval_hours,
    CASE WHEN fz.n >= {c.funding_z_min_count} AND fz.sd > 0 THEN (fw.rate0 - fz.mean) / fz.sd END
        AS funding_rate_z30d,
    coalesce(fz.n, 0) AS funding_z30d_count,
    fw.rate0 - fw.rate1 AS funding_rate_change_8h,
    make_timestamptz(fw.ev1 * 1000) AS funding_8h_event_time,
    fw.age1 AS funding_8h_age_hours,
    NULL::DOUBLE AS distance_to_liq_cluster,
    NULL::DOUBLE AS liq_cluster_size,
    ka.atr,
    ka.atr / ka.last_close * 100 AS atr_pct,
    ka.last_close,
    make_timestamptz(ka.ct_ms * 1000) AS atr_bar_close_time,
    ka.age_min AS atr_age_minutes
FROM t
LEFT JOIN f_wide fw ON fw.trade_id = t.trade_id
LEFT JOIN f_z fz ON fz.trade_id = t.trade_id
LEFT JOIN k_at ka ON ka.trade_id = t.trade_id
ORDER BY t.trade_id
"""


# More columns for one symbol's trades (the feature rows so far), from its `prepare_oi` rows and the
# reader: a frame of trade_id and the new columns.
SymbolColumns = Callable[[str, pl.DataFrame, pl.DataFrame, "SymbolReader"], pl.DataFrame]


def build_trade_context_features(con: duckdb.DuckDBPyConnection, config: FeatureConfig = FeatureConfig(),
                                 workers: int = 2, more: SymbolColumns | None = None) -> pl.DataFrame:
    """One row per trade of the `trades` view with its context at decision_time (TRADE_CONTEXT_FEATURES).

    `con` must expose views (or tables) funding_rates, open_interest, klines and trades. Funding and
    ATR come from one SQL statement; open interest from each traded symbol's rows in turn
    (`oi_features`, `workers` symbols at a time, each read once: `more` adds columns from them).
    """
    try:
        df = con.sql(feature_sql(config)).pl()
        reader = SymbolReader(con)

        def one(symbol: str, ts: pl.DataFrame) -> pl.DataFrame:
            known = prepare_oi(reader.open_interest(symbol, ts["decision_time"].max()))
            part = oi_features(ts.select("trade_id", ms("decision_time").alias("t_ms")), known, config)
            return part if more is None else part.join(more(symbol, ts, known, reader), on="trade_id",
                                                        how="left", maintain_order="left")

        parts = per_symbol(df, one, workers)
    except duckdb.CatalogException as exc:
        raise ValueError(f"build_trade_context_features needs views funding_rates, open_interest, klines "
                         f"and trades in the connection (Warehouse.connect() or con.register): {exc}") from exc
    if parts:
        per_trade = pl.concat(parts, how="diagonal_relaxed")
        df = df.drop([c for c in per_trade.columns if c != "trade_id"], strict=False).join(
            per_trade, on="trade_id", how="left", maintain_order="left")
    df = df.with_columns(pl.lit(None, TRADE_CONTEXT_FEATURES.column(c).dtype).alias(c)
                         for c in OI_COLUMNS if c not in df.columns)
    df = df.with_columns(pl.col("oi_percentile_points").fill_null(0))
    # the Coinglass columns of the contract are added by qml_pipeline.features.context
    return df.select(*(pl.col(c.name).cast(c.dtype) for c in TRADE_CONTEXT_FEATURES.columns if c.name in df.columns),
                     *(c for c in df.columns if c not in TRADE_CONTEXT_FEATURES.names))


# ------------------------------------------------------------------ the value known at t, in numpy

def ms(col: str) -> pl.Expr:
    """A timestamp column (or Int64 ms since the epoch) as Int64 ms since the epoch."""
    return pl.col(col).cast(TS).dt.epoch("ms")


def latest_known(frame: pl.DataFrame, stamp: str) -> pl.DataFrame:
    """Drop rows published no earlier than some later-stamped row of the same symbol (column `avail`).

    "The value known at t" is the row with the latest stamp among rows with available_at <= t, so
    such a row is never the newest at any time. The rows left have strictly increasing available_at
    in stamp order: a search on available_at finds the value known at t.
    """
    later_min = pl.col("avail").cum_min(reverse=True).shift(-1)
    if in_stamp_order(frame, stamp):  # one symbol, already sorted: nothing to sort or group
        return frame.filter(later_min.is_null() | (pl.col("avail") < later_min))
    return (frame.sort("symbol", stamp)
            .filter(later_min.over("symbol").is_null() | (pl.col("avail") < later_min.over("symbol"))))


def in_stamp_order(frame: pl.DataFrame, stamp: str) -> bool:
    """Whether the rows are of one symbol with strictly increasing `stamp` (a symbol read from the
    warehouse): sorting them by (symbol, stamp, ...) and keeping one per stamp changes nothing."""
    if frame.height == 0:
        return True
    symbol = frame["symbol"]
    return (symbol.null_count() == 0 and bool((symbol == symbol[0]).all())
            and bool((frame[stamp].diff().drop_nulls() > 0).all()))


def first_copies(rows: pl.DataFrame, stamp: str, ties: list[str], descending: list[bool]) -> pl.DataFrame:
    """One row per (symbol, stamp): the first in (stamp, *ties) order, `descending` per tie."""
    if in_stamp_order(rows, stamp):
        return rows
    return (rows.sort(["symbol", stamp, *ties], descending=[False, False, *descending], nulls_last=True)
            .unique(["symbol", stamp], keep="first", maintain_order=True))


def prepare_oi(oi: pl.DataFrame) -> pl.DataFrame:
    """The open-interest rows that are ever the value known: symbol, stamp, avail (ms), open_interest,
    period (minutes), sorted by symbol and stamp, avail strictly increasing per symbol.

    OI <= 0 (or missing) is a hole in the data, never a real zero: dropped first. Of the copies of
    one stamp the earliest published wins, then the largest value (then the largest period_minutes),
    so a later re-publication never replaces what a trader saw. Without event_time, available_at is
    the stamp.
    """
    need = {"symbol", "available_at", "open_interest"}
    if missing := need - set(oi.columns):
        raise ValueError(f"open interest frame lacks columns {sorted(missing)}; got {oi.columns}")
    stamp = ms("event_time") if "event_time" in oi.columns else ms("available_at")
    period = pl.col("period_minutes") if "period_minutes" in oi.columns else pl.lit(0)
    rows = (oi.select("symbol", stamp.alias("stamp"), ms("available_at").alias("avail"),
                      pl.col("open_interest").cast(pl.Float64), period.cast(pl.Int64).alias("period"))
            .filter(pl.col("open_interest").is_not_null() & (pl.col("open_interest") > 0)
                    & pl.col("stamp").is_not_null() & pl.col("avail").is_not_null()))
    rows = first_copies(rows, "stamp", ["avail", "open_interest", "period"], [False, True, True])
    return latest_known(rows, "stamp")


# One symbol's open interest published by a time (times as ms since the epoch: converts 2-3x faster), in stamp
# order whatever the storage (a lake returns its per-year files in any order; sorted input skips polars' sort).
OI_ROWS_SQL = """
SELECT epoch_ms(event_time) AS event_time, epoch_ms(available_at) AS available_at, open_interest, period_minutes
FROM open_interest WHERE symbol = ? AND available_at <= ? ORDER BY event_time, available_at
"""
# One symbol's bars of one interval published by a time.
KLINE_ROWS_SQL = """
SELECT epoch_ms(event_time) AS event_time, epoch_ms(close_time) AS close_time,
       epoch_ms(available_at) AS available_at, open, high, low, close, volume
FROM klines WHERE symbol = ? AND interval = ? AND available_at <= ? ORDER BY event_time, available_at
"""

class SymbolReader:
    """One symbol's rows at a time from a connection's views, from any thread: one query at a time
    on the connection itself (DuckDB runs each on all its threads; a cursor would not see frames
    registered on the connection)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con, self._lock = con, threading.Lock()

    def _frame(self, sql: str, params: list) -> pl.DataFrame:
        with self._lock:
            # execute(), not con.sql(params=...): duckdb 1.5.5 converts that result ~50x slower
            return self.con.execute(sql, params).pl()

    def open_interest(self, symbol: str, last: datetime) -> pl.DataFrame:
        return self._frame(OI_ROWS_SQL, [symbol, last]).with_columns(pl.lit(symbol).alias("symbol"))

    def klines(self, symbol: str, interval: str, last: datetime) -> pl.DataFrame:
        return self._frame(KLINE_ROWS_SQL, [symbol, interval, last]).with_columns(pl.lit(symbol).alias("symbol"))


def per_symbol(trades: pl.DataFrame, work: Callable[[str, pl.DataFrame], pl.DataFrame | None],
               workers: int) -> list[pl.DataFrame]:
    """work(symbol, its trades) for every symbol of `trades` (NULL symbols skipped), in `workers`
    threads (numpy, polars and DuckDB release the GIL); the results that are not None."""
    groups = [(symbol, ts) for (symbol,), ts in trades.group_by(["symbol"], maintain_order=True)
              if symbol is not None]
    if workers > 1 and len(groups) > 1:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(lambda g: work(*g), groups))
    else:
        done = [work(*g) for g in groups]
    return [part for part in done if part is not None]


OI_COLUMNS = ("oi", "oi_event_time", "oi_age_minutes", "oi_period_minutes", "oi_change_24h", "oi_24h_event_time",
              "oi_24h_age_minutes", "oi_change_7d", "oi_7d_event_time", "oi_7d_age_minutes", "oi_percentile_30d",
              "oi_percentile_points")


# (trades x window hours) compared at once when counting the percentile: bounds that memory.
_PERCENTILE_CELLS = 4_000_000


def oi_features(trades: pl.DataFrame, known: pl.DataFrame, config: FeatureConfig) -> pl.DataFrame:
    """OI_COLUMNS for one symbol's trades (trade_id, t_ms) from its `prepare_oi` rows: the value known
    at t, t - 24h and t - 7d (by available_at), NULL when older than the staleness limit, and the
    percentile among the values known at each whole hour of the window (docs/features.md)."""
    c = config
    t = trades["t_ms"].to_numpy()
    avail, stamp = known["avail"].to_numpy(), known["stamp"].to_numpy()
    value, period = known["open_interest"].to_numpy(), known["period"].to_numpy()

    def at(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(known, value or NaN when stale, stamp, age in minutes, period) at each instant x."""
        i = np.searchsorted(avail, x, side="right") - 1
        has = i >= 0
        if not stamp.size:
            return has, np.full(x.size, np.nan), np.zeros(x.size, dtype=np.int64), np.zeros(x.size), \
                np.zeros(x.size, dtype=np.int64)
        i = np.maximum(i, 0)
        age = (x - stamp[i]) / 60000.0
        return has, np.where(has & (age <= _stale_limits(period[i], c)), value[i], np.nan), stamp[i], age, period[i]

    has0, v0, ev0, age0, p0 = at(t)
    has1, v1, ev1, age1, _ = at(t - c.oi_change_short_hours * HOUR_MS)
    has2, v2, ev2, age2, _ = at(t - c.oi_change_long_days * DAY_MS)
    n_le, n = _percentile_counts(t, v0, lambda h: at(h)[1], c.oi_percentile_window_days * DAY_MS)
    pct = np.where(n >= c.oi_percentile_min_points, 100.0 * n_le / np.maximum(n, 1), np.nan)

    def known_at(has: np.ndarray, col: np.ndarray) -> pl.Series:  # NULL where no row was known yet
        return pl.Series(col).scatter(np.nonzero(~has)[0], None)

    return pl.DataFrame({
        "trade_id": trades["trade_id"], "oi": v0,
        "oi_event_time": known_at(has0, ev0).cast(TS), "oi_age_minutes": known_at(has0, age0),
        "oi_period_minutes": known_at(has0, p0).cast(pl.Int32), "oi_change_24h": (v0 / v1 - 1) * 100,
        "oi_24h_event_time": known_at(has1, ev1).cast(TS), "oi_24h_age_minutes": known_at(has1, age1),
        "oi_change_7d": (v0 / v2 - 1) * 100,
        "oi_7d_event_time": known_at(has2, ev2).cast(TS), "oi_7d_age_minutes": known_at(has2, age2),
        "oi_percentile_30d": pct, "oi_percentile_points": n,
    }).with_columns(pl.col("oi", "oi_change_24h", "oi_change_7d", "oi_percentile_30d").fill_nan(None))


def _stale_limits(period: np.ndarray, c: FeatureConfig) -> np.ndarray:
    """max(oi_stale_periods * period, oi_stale_min_minutes) per row, minutes, rounded once from the
    exact decimal product as SQL's decimal arithmetic does (0.1 * 3 is 0.3, not 0.30000000000000004)."""
    floor = Decimal(repr(c.oi_stale_min_minutes))
    factor = Decimal(repr(c.oi_stale_periods))
    levels = np.unique(period)
    limits = np.array([float(max(factor * int(p), floor)) for p in levels], dtype=float)
    return limits[np.searchsorted(levels, period)] if period.size else np.zeros(0)


def _percentile_counts(t: np.ndarray, v0: np.ndarray, value_at: Callable[[np.ndarray], np.ndarray],
                       window_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Per trade: among the values known at each whole hour h with t - window < h <= t (NULL when
    stale), how many are <= v0 and how many are not NULL (both 0 when v0 is NULL)."""
    n = np.zeros(t.size, dtype=np.int64)
    n_le = np.zeros(t.size, dtype=np.int64)
    if t.size == 0:
        return n_le, n
    first = ((int(t.min()) - window_ms) // HOUR_MS + 1) * HOUR_MS
    hours = np.arange(first, int(t.max()) + 1, HOUR_MS, dtype=np.int64)
    snap = value_at(hours)
    known = np.concatenate([[0], np.cumsum(~np.isnan(snap))])
    lo = np.searchsorted(hours, t - window_ms, side="right")
    hi = np.searchsorted(hours, t, side="right")
    has = ~np.isnan(v0)
    n[:] = np.where(has, known[hi] - known[lo], 0)
    # every window holds the same number of whole hours, all on the grid
    width = window_ms // HOUR_MS
    assert (hi - lo == width).all(), "percentile windows must lie on the hour grid"
    windows = np.lib.stride_tricks.sliding_window_view(snap, width)
    step = max(1, _PERCENTILE_CELLS // width)
    for i in np.arange(0, t.size, step):
        rows = slice(i, i + step)
        n_le[rows] = (windows[lo[rows]] <= v0[rows, None]).sum(axis=1)
    return np.where(has, n_le, 0), n


def feature_null_counts(df: pl.DataFrame) -> dict[str, int]:
    """NULLs per feature column (for metadata and checks); identity columns are left out."""
    ident = {"trade_id", "symbol", "timeframe", "direction", "decision_time"}
    counts = df.null_count().row(0, named=True)
    return {name: int(n) for name, n in counts.items() if name not in ident}


# The features a trade's context rests on; the feature asset warns when one is NULL for most trades.
CORE_FEATURES = ("funding_rate", "funding_rate_z30d", "funding_rate_change_8h", "oi_change_24h", "oi_change_7d",
                 "oi_percentile_30d", "distance_to_liq_cluster", "atr")
MAX_NULL_SHARE = 0.5  # share of trades


def core_feature_nulls(features: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """(per core feature: NULL count and share of trades, the core features NULL for more than MAX_NULL_SHARE);
    a feature column absent from `features` counts as NULL for every trade."""
    nulls = feature_null_counts(features)
    n = max(features.height, 1)
    core = pl.DataFrame({"feature": list(CORE_FEATURES), "nulls": [nulls.get(f, n) for f in CORE_FEATURES]}
                        ).with_columns((pl.col("nulls") / n).alias("null_share"))
    return core, core.filter(pl.col("null_share") > MAX_NULL_SHARE)["feature"].to_list()
