"""The trades the research judges (a user's export, or the reference detector) and their baseline metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.trades.detector import DetectorConfig
from qml_pipeline.trades.metrics import summarize
from qml_pipeline.trades.simulate import SimulationConfig, reference_trades
from qml_pipeline.trades.contract import MarketCoverage, read_trade_export, validate_trades
from qml_pipeline.store.warehouse import Warehouse


@dataclass(frozen=True)
class TradeSourceConfig:
    """`export_path` empty: the reference detector on the warehouse's klines (`timeframes`)."""

    export_path: str = ""
    column_map: dict[str, str] = field(default_factory=dict)
    timeframes: tuple[str, ...] = ("1h", "4h")
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)


@dataclass(frozen=True)
class TradeBuild:
    trades: pl.DataFrame
    source: str
    warnings: list[str]


def market_coverage(wh: Warehouse) -> MarketCoverage:
    """The klines the warehouse holds, per symbol and interval: first open time, last close time."""
    return MarketCoverage.from_frame(wh.query(
        "SELECT symbol, interval, min(event_time) AS first_time, max(close_time) AS last_time "
        "FROM klines GROUP BY symbol, interval"))


def build_trades(wh: Warehouse, config: TradeSourceConfig) -> TradeBuild:
    """Read the user's export or run the detector. Nothing is written here: a refused export raises
    (FileInputError, TradeInputError: both InputError) before the caller could replace stored trades."""
    if config.export_path:
        trades, warnings = read_trade_export(Path(config.export_path), config.column_map or None,
                                             market_coverage(wh))
        return TradeBuild(trades, f"user_export:{Path(config.export_path).name}", warnings)
    klines = wh.read(schemas.KLINES)
    missing = sorted(set(config.timeframes) - set(klines["interval"].unique().to_list()))
    warnings = [f"no klines stored for timeframe(s) {missing}: add them to QML_KLINE_INTERVALS"] if missing else []
    trades = reference_trades(klines, wh.read(schemas.FUNDING_RATES, venue="binance"), list(config.timeframes),
                              config.detector, config.simulation)
    validate_trades(trades)
    return TradeBuild(trades, "reference_detector", warnings)


def baseline_metrics(trades: pl.DataFrame) -> pl.DataFrame:
    """The seed's baseline checklist: overall, per calendar year, per symbol and per timeframe, long form."""
    frames = [summarize(trades).with_columns(pl.lit("overall").alias("dimension"), pl.lit("all").alias("group"))]
    for dim in ("year", "symbol", "timeframe"):
        per = summarize(trades, by=[dim]).filter(pl.col("scope") == "group")
        frames.append(per.with_columns(pl.lit(dim).alias("dimension"),
                                       pl.col(dim).cast(pl.Utf8).alias("group")).drop(dim))
    out = pl.concat(frames, how="diagonal_relaxed").drop("scope")
    return schemas.conform(schemas.BASELINE_METRICS, out)
