"""Synthetic klines for detector and simulation tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from qml_pipeline.schemas import TS

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def path(*vertices: float) -> np.ndarray:
    """Closes moving one unit per bar between the given vertices (vertices included once)."""
    out = [vertices[0]]
    for a, b in zip(vertices, vertices[1:]):
        step = 1.0 if b > a else -1.0
        out.extend(np.arange(a + step, b + step / 2, step))
    return np.asarray(out, dtype=float)


def bars_from_closes(closes: np.ndarray, interval_h: int = 1, wick: float = 0.5,
                     symbol: str = "TESTUSDT") -> pl.DataFrame:
    """Bars with open = close and high/low = close +/- wick: each bar's extreme is its own close's."""
    n = len(closes)
    opens = [T0 + timedelta(hours=interval_h * i) for i in range(n)]
    return pl.DataFrame({
        "symbol": [symbol] * n, "interval": [f"{interval_h}h"] * n,
        "event_time": opens, "close_time": [t + timedelta(hours=interval_h) for t in opens],
        "open": closes, "high": closes + wick, "low": closes - wick, "close": closes,
        "volume": np.ones(n),
    }).with_columns(pl.col("event_time").cast(TS), pl.col("close_time").cast(TS))


def ohlc_bars(rows: list[tuple[float, float, float, float]], start: datetime = T0,
              interval_h: int = 1, symbol: str = "TESTUSDT") -> pl.DataFrame:
    n = len(rows)
    opens = [start + timedelta(hours=interval_h * i) for i in range(n)]
    o, h, l, c = ([float(v) for v in x] for x in zip(*rows))
    return pl.DataFrame({
        "symbol": [symbol] * n, "interval": [f"{interval_h}h"] * n, "event_time": opens,
        "close_time": [t + timedelta(hours=interval_h) for t in opens],
        "open": o, "high": h, "low": l, "close": c, "volume": [1.0] * n,
    }).with_columns(pl.col("event_time").cast(TS), pl.col("close_time").cast(TS))
