"""Market regimes from candles only, known at each trade's decision_time (docs/evidence.md).

Per symbol, UTC days built from the `interval` bars (default 1h): a day's close is its last bar's
close and the day is known once its last bar is available (max available_at). At a decision, the
latest day known:
- trend: the sign of the 90-day return (close / close 90 days before - 1): 'up' or 'down';
- volatility: the standard deviation of the last 30 daily log returns, placed in the terciles of
  that volatility over the trailing 365 days (so the cut points are known at the time too):
  'low', 'mid' or 'high'. Fewer than `min_history_days` of volatility: 'unknown'.
regime = '<trend> / <volatility> vol' ('unknown' without enough history).
"""

from __future__ import annotations

import duckdb
import polars as pl

REGIME_SQL = """
WITH days AS (
    SELECT symbol, date_trunc('day', event_time) AS day, arg_max(close, event_time) AS close,
           max(available_at) AS known_at
    FROM klines
    WHERE interval = $interval AND symbol IN (SELECT DISTINCT symbol FROM trades)
    GROUP BY ALL
), returns AS (
    SELECT *, ln(close / lag(close) OVER (PARTITION BY symbol ORDER BY day)) AS log_ret,
           close / lag(close, $trend_days) OVER (PARTITION BY symbol ORDER BY day) - 1 AS ret_trend
    FROM days
), vol AS (
    SELECT *, CASE WHEN count(log_ret) OVER w30 >= $vol_days THEN stddev_samp(log_ret) OVER w30 END AS vol
    FROM returns
    WINDOW w30 AS (PARTITION BY symbol ORDER BY day ROWS BETWEEN $vol_days - 1 PRECEDING AND CURRENT ROW)
), cuts AS (
    SELECT *, quantile_cont(vol, 1 / 3) OVER w AS cut_low, quantile_cont(vol, 2 / 3) OVER w AS cut_high,
           count(vol) OVER w AS vol_points
    FROM vol
    WINDOW w AS (PARTITION BY symbol ORDER BY day ROWS BETWEEN 364 PRECEDING AND CURRENT ROW)
)
SELECT t.trade_id, year(t.decision_time) AS year,
       CASE WHEN c.ret_trend IS NULL THEN NULL WHEN c.ret_trend > 0 THEN 'up' ELSE 'down' END AS trend,
       CASE WHEN c.vol IS NULL OR c.vol_points < $min_history THEN NULL
            WHEN c.vol <= c.cut_low THEN 'low' WHEN c.vol > c.cut_high THEN 'high' ELSE 'mid' END AS volatility,
       c.ret_trend AS return_90d, c.vol AS volatility_30d, c.day AS regime_day
FROM trades t
ASOF LEFT JOIN cuts c ON c.symbol = t.symbol AND t.decision_time >= c.known_at
ORDER BY t.trade_id
"""


def trade_regimes(klines: pl.DataFrame, trades: pl.DataFrame, interval: str = "1h", trend_days: int = 90,
                  vol_days: int = 30, min_history_days: int = 90) -> pl.DataFrame:
    """Per trade: trade_id, year, trend, volatility, regime, return_90d (fraction), volatility_30d
    (std of daily log returns), regime_day (the day whose close was used). Needs klines with symbol,
    interval, event_time, close, available_at and trades with trade_id, symbol, decision_time."""
    con = duckdb.connect()
    try:
        con.register("klines", klines.select("symbol", "interval", "event_time", "close", "available_at"))
        con.register("trades", trades.select("trade_id", "symbol", "decision_time"))
        out = con.execute(REGIME_SQL, {"interval": interval, "trend_days": trend_days, "vol_days": vol_days,
                                       "min_history": min_history_days}).pl()
    finally:
        con.close()
    known = pl.col("trend").is_not_null() & pl.col("volatility").is_not_null()
    return out.with_columns(pl.when(known).then(pl.concat_str(pl.col("trend"), pl.lit(" / "), pl.col("volatility"),
                                                              pl.lit(" vol"))).otherwise(pl.lit("unknown"))
                            .alias("regime"))
