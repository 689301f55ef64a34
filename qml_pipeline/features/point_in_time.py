"""Point-in-time context features per trade, computed in DuckDB SQL.

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

from dataclasses import dataclass

import uuid

import duckdb
import numpy as np
import polars as pl

from qml_pipeline.store.schemas import TRADE_CONTEXT_FEATURES
from qml_pipeline.timeutil import interval_values_sql

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


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


# One OI row as a struct whose order is the preference among known rows: latest stamp, then the
# earliest available_at (the first publication of a stamp), then the largest value and period.
OI_ROW = ("struct_pack(ev := epoch_ms(event_time), nav := -epoch_ms(available_at), v := open_interest, "
          "p := period_minutes)")
# (stamp, -available_at) of an OI_ROW r as one HUGEINT with the same order
_OI_RANK = "(r.ev::HUGEINT * 18446744073709551616 + r.nav)"
_HUGEINT_MIN = "(-170141183460469231731687303715884105727)::HUGEINT"

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


def oi_known_sql(config: FeatureConfig = FeatureConfig()) -> str:
    """The open interest known at every instant the features need: per trade at t (k = 0), t - 24h
    (k = 1) and t - 7d (k = 2), and per symbol at every whole hour of the percentile windows (k = 3,
    trade_id NULL). Columns trade_id, symbol, k, at_ms, ev_ms, age_min, period_minutes, v (NULL if stale)."""
    c = config
    pct_win = c.oi_percentile_window_days * DAY_MS
    oi_short = c.oi_change_short_hours * HOUR_MS
    oi_long = c.oi_change_long_days * DAY_MS
    return f"""
WITH
{TRADES_CTE},
oi_raw AS NOT MATERIALIZED (
    -- b: the first whole hour (in hours since epoch) at which the row is known
    SELECT symbol, epoch_ms(available_at) AS av_ms, (epoch_ms(available_at) + {HOUR_MS - 1}) // {HOUR_MS} AS b,
           {OI_ROW} AS r
    FROM open_interest WHERE open_interest > 0
),
oi_run AS (
    -- The row known at whole hour b is the best of the rows published up to then. Rows are ranked
    -- by (latest stamp, earliest available_at, largest value, largest period): the max of OI_ROW.
    -- Hours differ in available_at, so the best of several hours is decided by (stamp, available_at)
    -- alone (a HUGEINT, cheap to compare): it is the last hour up to b that beats all earlier ones.
    SELECT symbol, b, r
    FROM (SELECT symbol, b, max(r) AS r FROM oi_raw GROUP BY symbol, b)
    QUALIFY {_OI_RANK} > coalesce(max({_OI_RANK}) OVER (PARTITION BY symbol ORDER BY b
                                                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                                  {_HUGEINT_MIN})
),
grid AS (
    -- whole hours h whose snapshot may fall in some trade's percentile window
    SELECT symbol, unnest(range(((min(t_ms) - {pct_win}) // {HOUR_MS} + 1) * {HOUR_MS},
                                max(t_ms) + 1, {HOUR_MS})) AS at_ms
    FROM t GROUP BY symbol
),
o_probe AS (
    SELECT trade_id, symbol, 0 AS k, t_ms AS at_ms FROM t
    UNION ALL SELECT trade_id, symbol, 1, t_ms - {oi_short} FROM t
    UNION ALL SELECT trade_id, symbol, 2, t_ms - {oi_long} FROM t
    UNION ALL SELECT NULL, symbol, 3, at_ms FROM grid
),
o_part AS (
    -- rows published after the last whole hour before a trade's instant and by that instant
    SELECT p.trade_id, p.k, max(o.r) AS r
    FROM (SELECT trade_id, k, symbol, at_ms, at_ms // {HOUR_MS} + 1 AS b FROM o_probe
          WHERE k < 3 AND at_ms % {HOUR_MS} <> 0) p
    JOIN oi_raw o ON o.symbol = p.symbol AND o.b = p.b AND o.av_ms <= p.at_ms
    GROUP BY p.trade_id, p.k
)
SELECT trade_id, symbol, k, at_ms, r.ev AS ev_ms, (at_ms - r.ev) / 60000.0 AS age_min,
       r.p AS period_minutes,
       CASE WHEN (at_ms - r.ev) / 60000.0 <= greatest({c.oi_stale_periods} * r.p, {c.oi_stale_min_minutes})
            THEN r.v END AS v
FROM (
    SELECT p.trade_id, p.symbol, p.k, p.at_ms, greatest(h.r, q.r) AS r
    FROM (SELECT *, at_ms // {HOUR_MS} AS b FROM o_probe) p
    ASOF LEFT JOIN oi_run h ON h.symbol = p.symbol AND h.b <= p.b
    LEFT JOIN o_part q ON q.trade_id = p.trade_id AND q.k = p.k
)
"""


def feature_sql(config: FeatureConfig = FeatureConfig(), oi_known: str = "oi_known") -> str:
    """The SQL behind build_trade_context_features, reading `oi_known` (a table of `oi_known_sql`);
    without the OI percentile (`oi_percentiles`)."""
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
o_wide AS (
    SELECT trade_id,
           any_value(v) FILTER (WHERE k = 0) AS v0,
           any_value(ev_ms) FILTER (WHERE k = 0) AS ev0,
           any_value(age_min) FILTER (WHERE k = 0) AS age0,
           any_value(period_minutes) FILTER (WHERE k = 0) AS period0,
           any_value(v) FILTER (WHERE k = 1) AS v1,
           any_value(ev_ms) FILTER (WHERE k = 1) AS ev1,
           any_value(age_min) FILTER (WHERE k = 1) AS age1,
           any_value(v) FILTER (WHERE k = 2) AS v2,
           any_value(ev_ms) FILTER (WHERE k = 2) AS ev2,
           any_value(age_min) FILTER (WHERE k = 2) AS age2
    FROM {oi_known} WHERE k < 3 GROUP BY trade_id
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
    ow.v0 AS oi,
    make_timestamptz(ow.ev0 * 1000) AS oi_event_time,
    ow.age0 AS oi_age_minutes,
    ow.period0::INTEGER AS oi_period_minutes,
    (ow.v0 / ow.v1 - 1) * 100 AS oi_change_24h,
    make_timestamptz(ow.ev1 * 1000) AS oi_24h_event_time,
    ow.age1 AS oi_24h_age_minutes,
    (ow.v0 / ow.v2 - 1) * 100 AS oi_change_7d,
    make_timestamptz(ow.ev2 * 1000) AS oi_7d_event_time,
    ow.age2 AS oi_7d_age_minutes,
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
LEFT JOIN o_wide ow ON ow.trade_id = t.trade_id
LEFT JOIN k_at ka ON ka.trade_id = t.trade_id
ORDER BY t.trade_id
"""


def build_trade_context_features(con: duckdb.DuckDBPyConnection,
                                 config: FeatureConfig = FeatureConfig()) -> pl.DataFrame:
    """One row per trade of the `trades` view with its context at decision_time (TRADE_CONTEXT_FEATURES).

    `con` must expose views (or tables) funding_rates, open_interest, klines and trades. The OI known
    at every needed instant goes to a temporary table (dropped before returning) that the feature
    SQL and the percentile read.
    """
    oi_known = f"qml_oi_known_{uuid.uuid4().hex}"
    try:
        con.execute(f"CREATE TEMP TABLE {oi_known} AS {oi_known_sql(config)}")
        df = con.sql(feature_sql(config, oi_known)).pl()
        grid = con.sql(f"SELECT symbol, at_ms, v FROM {oi_known} WHERE k = 3 ORDER BY symbol, at_ms").pl()
    except duckdb.CatalogException as exc:
        raise ValueError(f"build_trade_context_features needs views funding_rates, open_interest, klines "
                         f"and trades in the connection (Warehouse.connect() or con.register): {exc}") from exc
    finally:
        con.execute(f"DROP TABLE IF EXISTS {oi_known}")
    n_le, n = oi_percentiles(df.select("symbol", _epoch_ms("decision_time"), "oi"), grid,
                             config.oi_percentile_window_days * DAY_MS)
    df = df.with_columns(
        pl.Series("oi_percentile_30d", np.where(n >= config.oi_percentile_min_points, 100.0 * n_le / np.maximum(n, 1),
                                                np.nan)).fill_nan(None),
        pl.Series("oi_percentile_points", n))
    # the liquidation and Coinglass columns of the contract are added by qml_pipeline.features.context
    return df.select(pl.col(c.name).cast(c.dtype) for c in TRADE_CONTEXT_FEATURES.columns if c.name in df.columns)


def _epoch_ms(col: str) -> pl.Expr:
    return pl.col(col).dt.epoch("ms").alias(col)


# (trades x window hours) compared at once when counting the percentile: bounds that memory.
_PERCENTILE_CELLS = 4_000_000


def oi_percentiles(trades: pl.DataFrame, grid: pl.DataFrame, window_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Per trade (symbol, decision_time in ms, oi): among the hourly snapshots (grid: symbol, at_ms, v,
    sorted by symbol and at_ms; v NULL when stale) of its symbol with at_ms in (t - window, t], how
    many are <= oi and how many are not NULL (both 0 when oi is NULL). Exact counts, so the same
    percentile as a SQL count; done here because a join of every trade with ~720 hours is 50x slower.
    """
    # codes in the grid's order, so (code, at_ms) keys are sorted; a symbol without snapshots gets -1
    code = {s: i for i, s in enumerate(grid.get_column("symbol").drop_nulls().unique(maintain_order=True).to_list())}
    shift = np.int64(1) << np.int64(42)  # ms below 2**42 (year 2109): (symbol, time) as one sortable key
    g_sym = grid.get_column("symbol").replace_strict(code, default=-1, return_dtype=pl.Int64).to_numpy()
    g_key = g_sym * shift + grid.get_column("at_ms").to_numpy()
    values = grid.get_column("v").fill_null(np.nan).to_numpy()
    known = np.concatenate([[0], np.cumsum(~np.isnan(values))])
    t_sym = trades.get_column("symbol").replace_strict(code, default=-1, return_dtype=pl.Int64).to_numpy()
    t_ms = trades.get_column("decision_time").to_numpy()
    v0 = trades.get_column("oi").fill_null(np.nan).to_numpy()
    lo = np.searchsorted(g_key, t_sym * shift + (t_ms - window_ms), side="right")
    hi = np.searchsorted(g_key, t_sym * shift + t_ms, side="right")
    has = ~np.isnan(v0)
    n = np.where(has, known[hi] - known[lo], 0)
    n_le = np.zeros(v0.size, dtype=np.int64)
    width = int((hi - lo).max(initial=0))
    if width:
        step = max(1, _PERCENTILE_CELLS // width)
        offsets = np.arange(width)
        for i in range(0, v0.size, step):
            idx = lo[i:i + step, None] + offsets
            inside = idx < hi[i:i + step, None]
            window = values[np.minimum(idx, values.size - 1)]
            n_le[i:i + step] = ((window <= v0[i:i + step, None]) & inside).sum(axis=1)
    return np.where(has, n_le, 0), n


def feature_null_counts(df: pl.DataFrame) -> dict[str, int]:
    """NULLs per feature column (for metadata and checks); identity columns are left out."""
    ident = {"trade_id", "symbol", "timeframe", "direction", "decision_time"}
    counts = df.null_count().row(0, named=True)
    return {name: int(n) for name, n in counts.items() if name not in ident}
