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

import duckdb
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

# Whether available_at - event_time is constant per symbol (reported by the benchmark; the SQL does
# not depend on it).
OI_LAG_CONSTANT_SQL = """
SELECT coalesce(bool_and(lo = hi), true) FROM (
    SELECT symbol, min(epoch_ms(available_at) - epoch_ms(event_time)) AS lo,
           max(epoch_ms(available_at) - epoch_ms(event_time)) AS hi
    FROM open_interest WHERE open_interest > 0 GROUP BY symbol)
"""


def feature_sql(config: FeatureConfig = FeatureConfig()) -> str:
    """The single SQL statement behind build_trade_context_features."""
    c = config
    z_win = c.funding_z_window_days * DAY_MS
    pct_win = c.oi_percentile_window_days * DAY_MS
    f_back = c.funding_change_hours * HOUR_MS
    oi_short = c.oi_change_short_hours * HOUR_MS
    oi_long = c.oi_change_long_days * DAY_MS
    bars = c.atr_period + 1
    return f"""
WITH
iv(interval, interval_ms) AS (VALUES {interval_values_sql()}),
t AS (
    SELECT trade_id, symbol, timeframe, direction, decision_time, epoch_ms(decision_time) AS t_ms
    FROM trades
),
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
-- open interest ------------------------------------------------------------------------------
oi_raw AS NOT MATERIALIZED (
    -- b: the first whole hour (in hours since epoch) at which the row is known
    SELECT symbol, epoch_ms(available_at) AS av_ms, (epoch_ms(available_at) + {HOUR_MS - 1}) // {HOUR_MS} AS b,
           {OI_ROW} AS r
    FROM open_interest WHERE open_interest > 0
),
oi_run AS (
    -- r: the row known at whole hour b, the best of the rows published up to then. Rows are ranked
    -- by (latest stamp, earliest available_at, largest value, largest period): the max of OI_ROW.
    SELECT symbol, b, max(r) OVER (PARTITION BY symbol ORDER BY b ROWS UNBOUNDED PRECEDING) AS r
    FROM (SELECT symbol, b, max(r) AS r FROM oi_raw GROUP BY symbol, b)
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
),
o_at AS MATERIALIZED (
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
    FROM o_at WHERE k < 3 GROUP BY trade_id
),
o_pct AS (
    SELECT q.trade_id, count(g.v) AS n, count(*) FILTER (WHERE g.v <= q.v0) AS n_le
    FROM (SELECT t.trade_id, t.symbol, t.t_ms, w.v0,
                 unnest(range((t.t_ms - {pct_win}) // {DAY_MS}, t.t_ms // {DAY_MS} + 1)) AS d
          FROM t JOIN o_wide w USING (trade_id) WHERE w.v0 IS NOT NULL) q
    JOIN (SELECT symbol, at_ms, v, at_ms // {DAY_MS} AS d FROM o_at WHERE k = 3 AND v IS NOT NULL) g
      ON g.symbol = q.symbol AND g.d = q.d
    WHERE g.at_ms > q.t_ms - {pct_win} AND g.at_ms <= q.t_ms
    GROUP BY q.trade_id
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
    CASE WHEN op.n >= {c.oi_percentile_min_points} THEN 100.0 * op.n_le / op.n END AS oi_percentile_30d,
    coalesce(op.n, 0) AS oi_percentile_points,
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
LEFT JOIN o_pct op ON op.trade_id = t.trade_id
LEFT JOIN k_at ka ON ka.trade_id = t.trade_id
ORDER BY t.trade_id
"""


def build_trade_context_features(con: duckdb.DuckDBPyConnection,
                                 config: FeatureConfig = FeatureConfig()) -> pl.DataFrame:
    """One row per trade of the `trades` view with its context at decision_time (TRADE_CONTEXT_FEATURES).

    `con` must expose views (or tables) funding_rates, open_interest, klines and trades.
    """
    try:
        df = con.sql(feature_sql(config)).pl()
    except duckdb.CatalogException as exc:
        raise ValueError(f"build_trade_context_features needs views funding_rates, open_interest, klines "
                         f"and trades in the connection (Warehouse.connect() or con.register): {exc}") from exc
    # the liquidation and Coinglass columns of the contract are added by qml_pipeline.features.context
    return df.select(pl.col(c.name).cast(c.dtype) for c in TRADE_CONTEXT_FEATURES.columns if c.name in df.columns)


def feature_null_counts(df: pl.DataFrame) -> dict[str, int]:
    """NULLs per feature column (for metadata and checks); identity columns are left out."""
    ident = {"trade_id", "symbol", "timeframe", "direction", "decision_time"}
    counts = df.null_count().row(0, named=True)
    return {name: int(n) for name, n in counts.items() if name not in ident}
