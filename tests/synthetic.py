"""Synthetic data: klines for detector and simulation tests, trade sets for the model (tests and
benchmarks/bench_model.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from qml_pipeline.store.schemas import TS

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
MODEL_T0 = datetime(2021, 1, 1, tzinfo=timezone.utc)


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


def model_set(n: int = 600, signal: bool = True, seed: int = 0, hold_hours: float = 12.0
              ) -> tuple[np.ndarray, pl.DataFrame, pl.DataFrame]:
    """Trades every 6h. With signal, a trade wins when the crowd leans against it (the seed's
    "fuel": bearish with positive funding z, bullish with negative), plus noise; otherwise labels
    are coin flips. Windows are noise."""
    rng = np.random.default_rng(seed)
    times = [MODEL_T0 + timedelta(hours=6 * i) for i in range(n)]
    z = rng.normal(size=n)
    d = rng.choice([-1, 1], size=n)
    win = (-d * z + 0.5 * rng.normal(size=n) > 0) if signal else rng.random(n) < 0.45
    context = pl.DataFrame({
        "trade_id": [f"t{i}" for i in range(n)], "decision_time": times,
        "funding_rate": z * 1e-4, "funding_rate_z30d": z, "funding_rate_change_8h": rng.normal(size=n) * 1e-5,
        "oi_change_24h": rng.normal(size=n) * 0.03, "oi_change_7d": rng.normal(size=n) * 0.1,
        "oi_percentile_30d": rng.uniform(0, 100, n), "distance_to_liq_cluster": [None] * n,
        "base_confidence": rng.uniform(0.4, 0.8, n), "direction": np.where(d > 0, "BULLISH", "BEARISH"),
    }).with_columns(pl.col("decision_time").cast(TS), pl.col("distance_to_liq_cluster").cast(pl.Float64))
    labels = pl.DataFrame({
        "trade_id": context["trade_id"], "outcome": np.where(win, "WIN", "LOSS"),
        "r_multiple": np.where(win, 2.0, -1.0), "exit_time": [t + timedelta(hours=hold_hours) for t in times],
    }).with_columns(pl.col("exit_time").cast(TS))
    windows = rng.normal(size=(n, 50, 5)).astype(np.float32)
    return windows, context, labels
