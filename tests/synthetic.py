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


CONTEXT_T0 = datetime(2023, 1, 1, tzinfo=timezone.utc)


def context_trade_set(n: int = 300, context_effect: bool = False, seed: int = 0
                      ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(trades, features) for the phase 9 / 10 gates: one trade every 14h, held 10h (no overlap).

    context_effect=False: the pattern's base_confidence (0.3..0.8) decides the win probability
    (0.1..0.8) and funding / OI are noise. context_effect=True: funding decides it: the crowd against
    the trade's side (the overlay's x0.8 rule) wins 2%, neutral 40%, fuel 70%; base_confidence
    (0.55..0.62) is noise and high enough that only the x0.8 rule pulls a trade below 0.5.
    A win is +2R (+-0.2), a loss -1R."""
    rng = np.random.default_rng(seed)
    decided = [CONTEXT_T0 + timedelta(hours=14 * i) for i in range(n)]
    bearish = rng.random(n) < 0.5
    crowd_side = np.where(bearish, 1.0, -1.0)   # funding sign that is fuel for the trade
    if context_effect:
        state = rng.choice(["against", "neutral", "fuel"], size=n, p=[0.55, 0.10, 0.35])
        p_win = np.select([state == "against", state == "neutral"], [0.02, 0.40], 0.70)
        base = rng.uniform(0.55, 0.62, n)
    else:
        state = rng.choice(["against", "neutral", "fuel"], size=n, p=[0.3, 0.4, 0.3])
        base = rng.uniform(0.3, 0.8, n)
        p_win = 0.1 + 0.7 * (base - 0.3) / 0.5
    funding = np.select([state == "against", state == "fuel"], [-0.0005 * crowd_side, 0.0005 * crowd_side],
                        rng.uniform(-0.00005, 0.00005, n))
    win = rng.random(n) < p_win
    r = np.where(win, 2.0 + rng.uniform(-0.2, 0.2, n), -1.0)
    trades = pl.DataFrame({
        "trade_id": [f"c{i:04d}" for i in range(n)], "symbol": ["BTCUSDT"] * n, "timeframe": ["1h"] * n,
        "direction": np.where(bearish, "BEARISH", "BULLISH"), "decision_time": decided,
        "exit_time": [d + timedelta(hours=10) for d in decided], "outcome": np.where(win, "WIN", "LOSS"),
        "r_multiple": r, "gross_r_multiple": r, "base_confidence": base,
    }).with_columns(pl.col("decision_time", "exit_time").cast(TS))
    features = pl.DataFrame({
        "trade_id": trades["trade_id"], "funding_rate": funding, "funding_interval_hours": [8] * n,
        "oi_change_24h": rng.normal(0, 3, n), "distance_to_liq_cluster": [None] * n,
    }, schema_overrides={"funding_interval_hours": pl.Int16, "distance_to_liq_cluster": pl.Float64})
    return trades, features
