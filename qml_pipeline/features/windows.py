"""OHLCV windows for the model: the last `bars` closed candles of each trade's timeframe.

A window ends at the last bar of the trade's timeframe known at decision_time (available_at <=
decision_time, the bar with the latest open time among those; duplicates collapsed as in
qml_pipeline.features.point_in_time). It holds `bars` consecutive bars (no gaps), all known at decision_time, and
the last one closed at most `stale_bars` intervals before decision_time. Trades without such a window
(too little history, a gap, stale data) are excluded: the returned trade_ids name the rows kept.

Normalisation (per window, float32, columns open, high, low, close, volume):
    price columns: price / close of the window's last bar - 1   (0 at the last close)
    volume:        volume / mean volume of the window           (0 when that mean is 0)
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np

from qml_pipeline.features.point_in_time import TRADE_KLINES_CTE
from qml_pipeline.timeutil import interval_values_sql

FEATURES = ("open", "high", "low", "close", "volume")


def _sql(bars: int, stale_bars: float) -> str:
    intervals = interval_values_sql()
    return f"""
WITH
iv(interval, interval_ms) AS (VALUES {intervals}),
t AS (SELECT trade_id, symbol, timeframe, epoch_ms(decision_time) AS t_ms FROM trades),
{TRADE_KLINES_CTE},
kl_n AS (
    SELECT kl.*, iv.interval_ms,
           row_number() OVER w AS rn,
           min(ev_ms) OVER (w ROWS BETWEEN {bars - 1} PRECEDING AND CURRENT ROW) AS first_ev,
           count(*) OVER (w ROWS BETWEEN {bars - 1} PRECEDING AND CURRENT ROW) AS n,
           max(av_ms) OVER (w ROWS BETWEEN {bars - 1} PRECEDING AND CURRENT ROW) AS window_av_ms,
           avg(volume) OVER (w ROWS BETWEEN {bars - 1} PRECEDING AND CURRENT ROW) AS mean_volume,
           min(av_ms) OVER (w ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS next_av_ms
    FROM kl JOIN iv USING (interval)
    WINDOW w AS (PARTITION BY symbol, interval ORDER BY ev_ms)
),
last_bar AS (
    SELECT t.trade_id, k.symbol, k.interval, k.rn, k.close AS last_close, k.mean_volume
    FROM t ASOF JOIN (SELECT * FROM kl_n WHERE av_ms < coalesce(next_av_ms, 9223372036854775807)) k
      ON k.symbol = t.symbol AND k.interval = t.timeframe AND k.av_ms <= t.t_ms
    WHERE k.n = {bars} AND k.ev_ms - k.first_ev = {bars - 1} * k.interval_ms
      AND k.window_av_ms <= t.t_ms AND t.t_ms - k.ct_ms <= {stale_bars} * k.interval_ms
),
steps AS (SELECT b.*, unnest(range({bars})) AS i FROM last_bar b)
SELECT s.trade_id, s.i,
       (k.open / s.last_close - 1)::FLOAT AS open, (k.high / s.last_close - 1)::FLOAT AS high,
       (k.low / s.last_close - 1)::FLOAT AS low, (k.close / s.last_close - 1)::FLOAT AS close,
       (CASE WHEN s.mean_volume > 0 THEN k.volume / s.mean_volume ELSE 0 END)::FLOAT AS volume
FROM steps s JOIN kl_n k ON k.symbol = s.symbol AND k.interval = s.interval AND k.rn = s.rn - {bars - 1} + s.i
ORDER BY s.trade_id, s.i
"""


def build_ohlcv_windows(con: duckdb.DuckDBPyConnection, bars: int = 50,
                        stale_bars: float = 2.0) -> tuple[list[str], np.ndarray]:
    """(trade_ids, array of shape (len(trade_ids), bars, 5) float32), trades sorted by trade_id.

    Reads the views `klines` and `trades` of `con`; trades without a complete window are left out.
    """
    if bars < 2:
        raise ValueError(f"bars must be at least 2, got {bars}")
    df = con.sql(_sql(bars, stale_bars)).pl()
    n = df.height // bars
    if n * bars != df.height:
        raise RuntimeError(f"window rows ({df.height}) are not a multiple of bars ({bars})")
    trade_ids = df["trade_id"].gather(np.arange(0, df.height, bars)).to_list() if n else []
    array = df.select(FEATURES).to_numpy().astype(np.float32, copy=False).reshape(n, bars, len(FEATURES))
    return trade_ids, np.ascontiguousarray(array)


def save_windows(path: str | os.PathLike[str], trade_ids: list[str], array: np.ndarray) -> Path:
    """Write windows to an uncompressed .npz (memory-speed loads); atomic replace."""
    path = Path(path)
    if array.ndim != 3 or array.shape[0] != len(trade_ids) or array.shape[2] != len(FEATURES):
        raise ValueError(f"array shape {array.shape} does not match {len(trade_ids)} trades x bars x "
                         f"{len(FEATURES)} features")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, trade_ids=np.asarray(trade_ids, dtype=str), windows=array.astype(np.float32, copy=False),
             features=np.asarray(FEATURES))
    os.replace(tmp, path)
    return path


def load_windows(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        if tuple(z["features"].tolist()) != FEATURES:
            raise ValueError(f"{path}: features {z['features'].tolist()} != {list(FEATURES)}")
        return z["trade_ids"].tolist(), z["windows"]
