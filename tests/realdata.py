"""Klines and funding frames built from the bundled Freqtrade data directory (for tests only)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qml_pipeline.sources.candles import resample_klines
from qml_pipeline.store.schemas import TS

FREQTRADE_DIR = Path("/work/shared/data/freqtrade/binance/futures")


def available() -> bool:
    return (FREQTRADE_DIR / "BTC_USDT_USDT-1h-futures.feather").exists()


def klines(symbol: str, interval: str = "1h") -> pl.DataFrame:
    """KLINES-shaped frame (the columns the detector and simulator use) for BTCUSDT or ETHUSDT."""
    base = symbol.removesuffix("USDT")
    raw = pl.read_ipc(FREQTRADE_DIR / f"{base}_USDT_USDT-1h-futures.feather")
    k = raw.select(
        pl.lit(symbol).alias("symbol"), pl.lit("1h").alias("interval"),
        pl.col("date").cast(TS).alias("event_time"),
        (pl.col("date").cast(TS) + pl.duration(hours=1)).alias("close_time"),
        "open", "high", "low", "close", "volume",
    ).sort("event_time").unique("event_time", keep="first", maintain_order=True)
    return k if interval == "1h" else resample_klines(k, interval)


def funding(symbol: str) -> pl.DataFrame:
    """FUNDING_RATES-shaped subset: symbol, event_time snapped to the hour, funding_rate."""
    base = symbol.removesuffix("USDT")
    raw = pl.read_ipc(FREQTRADE_DIR / f"{base}_USDT_USDT-8h-funding_rate.feather")
    return raw.select(
        pl.lit(symbol).alias("symbol"),
        pl.col("date").cast(TS).dt.round("1h").alias("event_time"),
        pl.col("open").alias("funding_rate"),
        pl.lit(None, dtype=pl.Float64).alias("mark_price"),
    ).sort("event_time")
