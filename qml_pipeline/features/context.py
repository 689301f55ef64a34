"""The full per-trade context: point-in-time features, the estimated liquidation map's distance to
the nearest cluster, (with Coinglass data) realised liquidations before the decision, and the features
across venues (open interest aggregate, funding spread: features/aggregate.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime, timedelta

import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.features.aggregate import aggregate_features
from qml_pipeline.features.point_in_time import FeatureConfig, build_trade_context_features
from qml_pipeline.features.liquidation_map import LiqMapConfig, estimate_liquidation_map, liq_features_for_trades
from qml_pipeline.timeutil import utc_now
from qml_pipeline.store.warehouse import Warehouse, frame

REALISED_LIQ_SQL = """
SELECT t.trade_id,
       sum(l.long_liquidation_usd)  AS realised_long_liq_usd_24h,
       sum(l.short_liquidation_usd) AS realised_short_liq_usd_24h
FROM trades t
JOIN liquidations l
  ON l.symbol = t.symbol
 AND l.available_at <= t.decision_time
 AND l.available_at > t.decision_time - INTERVAL 24 HOUR
GROUP BY t.trade_id
"""


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
    """One row per trade in the TRADE_CONTEXT_FEATURES shape, everything as known at decision_time (the
    features across venues over `venues`)."""
    with contextlib.closing(wh.connect(venue="binance")) as con:
        features = build_trade_context_features(con, feature_config or FeatureConfig())
        realised = frame(con, REALISED_LIQ_SQL)
    trades = wh.read(schemas.TRADES).select("trade_id", "symbol", "direction", "decision_time")
    liq = liq_features_for_trades(trades, wh.read(schemas.OPEN_INTEREST, venue="binance"), wh.read(schemas.KLINES),
                                  features.select("trade_id", "atr"), liq_config)
    liq = liq.select("trade_id", "distance_to_liq_cluster",
                     pl.col("liq_cluster_notional_usd").alias("liq_cluster_size"),
                     "liq_cluster_price", "liq_map_age_minutes")
    out = (features.drop([c for c in liq.columns if c != "trade_id"] + list(realised.columns[1:]), strict=False)
           .join(liq, on="trade_id", how="left")
           .join(realised, on="trade_id", how="left"))
    # across venues: open_interest_aggregate and every venue's funding (a connection showing all venues)
    with contextlib.closing(wh.connect()) as con:
        across = aggregate_features(con, venues, feature_config or FeatureConfig())
    out = out.join(across, on="trade_id", how="left")
    return schemas.conform(schemas.TRADE_CONTEXT_FEATURES, out)
