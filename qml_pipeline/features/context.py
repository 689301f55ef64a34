"""The full per-trade context: point-in-time features, the estimated liquidation map's distance to
the nearest cluster, (with Coinglass data) realised liquidations before the decision, and the features
across venues (open interest aggregate, funding spread: features/aggregate.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime, timedelta

import duckdb
import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.features.aggregate import aggregate_features
from qml_pipeline.features.point_in_time import FeatureConfig, SymbolReader, build_trade_context_features
from qml_pipeline.features.liquidation_map import (
    LiqMapConfig,
    check_trades,
    estimate_liquidation_map,
    symbol_liq_features,
)
from qml_pipeline.timeutil import utc_now
from qml_pipeline.store.warehouse import Warehouse, frame

# Per trade, the Coinglass buckets of its symbol known in (decision - 24h, decision]. Buckets are
# numbered in available_at order per symbol; the two ends of the window are found by ASOF joins
# (`known`: how many buckets are known by then, ties included) and the buckets between them summed.
# No range join: that compared every trade with every bucket of its symbol.
REALISED_LIQ_SQL = """
WITH l AS (
    SELECT symbol, epoch_us(available_at) AS av_us, long_liquidation_usd, short_liquidation_usd,
           row_number() OVER w AS i, count(*) OVER (w RANGE UNBOUNDED PRECEDING) AS known
    FROM liquidations
    WHERE available_at IS NOT NULL AND symbol IN (SELECT DISTINCT symbol FROM trades)
    WINDOW w AS (PARTITION BY symbol ORDER BY available_at)
),
t AS (SELECT trade_id, symbol, epoch_us(decision_time) AS t_us FROM trades),
ends AS (
    SELECT t.trade_id, t.symbol, coalesce(before.known, 0) AS lo, now.known AS hi
    FROM t ASOF JOIN l now ON now.symbol = t.symbol AND now.av_us <= t.t_us
    ASOF LEFT JOIN l before ON before.symbol = t.symbol AND before.av_us <= t.t_us - 86400000000
)
SELECT e.trade_id,
       sum(l.long_liquidation_usd)  AS realised_long_liq_usd_24h,
       sum(l.short_liquidation_usd) AS realised_short_liq_usd_24h
FROM (SELECT trade_id, symbol, unnest(range(lo + 1, hi + 1)) AS i FROM ends WHERE hi > lo) e
JOIN l ON l.symbol = e.symbol AND l.i = e.i
GROUP BY e.trade_id
"""

# Symbols computed at once (threads; the machine's 2 cores).
WORKERS = 2
# DuckDB's memory for the features (it spills to disk beyond it): with one symbol's rows in Python at
# a time, the asset's peak stays near this plus the result whatever the number of trades.
DUCKDB_MEMORY_LIMIT = "3GB"


def rebuild_liquidation_maps(wh: Warehouse, symbols: Sequence[str], start: datetime,
                             config: LiqMapConfig | None = None) -> dict[str, int]:
    """Replace each symbol's estimated liquidation map (a derived table: snapshots of an earlier run or model
    configuration do not linger), keeping snapshots from `start` on; one warehouse snapshot for all symbols.
    Returns rows per symbol (0 without open interest)."""
    rows = {}
    with wh.write(f"rebuild liquidation_map for {len(symbols)} symbol(s)") as batch:
        for symbol in symbols:
            snapshots = estimate_liquidation_map(wh.read(schemas.OPEN_INTEREST, symbol=symbol, venue="binance"),
                                                 wh.read(schemas.KLINES, symbol=symbol), config)
            kept = snapshots.filter(pl.col("snapshot_time") >= start)
            batch.replace_group(schemas.LIQUIDATION_MAP, kept, "symbol", symbol)
            rows[symbol] = kept.height
    return rows


def build_context(wh: Warehouse, feature_config: FeatureConfig | None = None,
                  liq_config: LiqMapConfig | None = None,
                  venues: Sequence[str] = schemas.VENUES) -> pl.DataFrame:
    """One row per trade in the TRADE_CONTEXT_FEATURES shape, everything as known at decision_time: the
    Binance features (a connection showing Binance's rows only) and the features across `venues`."""
    with contextlib.closing(wh.connect(venue="binance")) as con:
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        binance = context_features(con, feature_config, liq_config)
    # across venues: open_interest_aggregate and every venue's funding (a connection showing all venues)
    with contextlib.closing(wh.connect()) as con:
        across = aggregate_features(con, venues, feature_config or FeatureConfig())
    out = binance.drop([c for c in across.columns if c != "trade_id"], strict=False)
    return schemas.conform(schemas.TRADE_CONTEXT_FEATURES, out.join(across, on="trade_id", how="left"))


def context_features(con: duckdb.DuckDBPyConnection, feature_config: FeatureConfig | None = None,
                     liq_config: LiqMapConfig | None = None) -> pl.DataFrame:
    """`build_context` on a connection whose views `trades`, `funding_rates`, `open_interest`, `klines`
    and `liquidations` hold the data (Warehouse.connect(), or any other storage). Tables are read
    one symbol at a time, never whole; SQL does the joins."""
    liq_config = liq_config or LiqMapConfig()
    check_trades(con.sql("SELECT trade_id, symbol, direction, decision_time FROM trades").pl())

    def liquidation_columns(symbol: str, ts: pl.DataFrame, oi: pl.DataFrame, reader: SymbolReader) -> pl.DataFrame:
        klines = reader.klines(symbol, liq_config.price_interval, ts["decision_time"].max())
        liq = symbol_liq_features(ts, oi, klines, liq_config)
        return ts.select("trade_id").hstack(liq.select(
            "distance_to_liq_cluster", pl.col("liq_cluster_notional_usd").alias("liq_cluster_size"),
            "liq_cluster_price", "liq_map_age_minutes"))

    features = build_trade_context_features(con, feature_config or FeatureConfig(), WORKERS, liquidation_columns)
    realised = frame(con, REALISED_LIQ_SQL)
    out = features.drop(realised.columns[1:], strict=False).join(realised, on="trade_id", how="left")
    return schemas.conform(schemas.TRADE_CONTEXT_FEATURES, out)
