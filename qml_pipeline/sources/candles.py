"""Candle arithmetic shared by sources and the detector."""

from __future__ import annotations

import polars as pl

from qml_pipeline.timeutil import interval_ms


def resample_klines(klines: pl.DataFrame, interval: str) -> pl.DataFrame:
    """Aggregate finer klines (one symbol and interval) to `interval`, keeping complete groups only.

    First open, max high, min low, last close, summed volumes; a group is complete when it holds
    every finer bar of its span. Returns the KLINES columns that can be derived.
    """
    src = klines.sort("event_time")
    if src.height == 0:
        return src
    fine = int((src["close_time"][0] - src["event_time"][0]).total_seconds() * 1000)
    target = interval_ms(interval)
    if target % fine:
        raise ValueError(f"cannot build {interval} bars from {fine} ms bars")
    per_group = target // fine
    sums = [pl.col(c).sum() for c in ("volume", "quote_volume", "trade_count", "taker_buy_volume")
            if c in src.columns]
    firsts = [pl.col(c).first() for c in ("symbol",) if c in src.columns]
    out = (src.group_by_dynamic("event_time", every=f"{target}ms", closed="left", label="left")
           .agg(*firsts, pl.col("open").first(), pl.col("high").max(), pl.col("low").min(),
                pl.col("close").last(), *sums, pl.len().alias("_n"))
           .filter(pl.col("_n") == per_group).drop("_n")
           .with_columns(pl.lit(interval).alias("interval"),
                         (pl.col("event_time") + pl.duration(milliseconds=target)).alias("close_time")))
    return out
