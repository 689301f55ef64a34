"""The full per-trade context on the real sample: liquidation-map distance and Coinglass realised liquidations."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import contextlib

import polars as pl
import pytest

from qml_pipeline.store import schemas
from qml_pipeline.features.aggregate import build_open_interest_aggregate
from qml_pipeline.features.context import build_context
from qml_pipeline.view.build import build_context_cards, card_as_of
from qml_pipeline.sources.sample import SampleSource
from qml_pipeline.store.warehouse import Warehouse

UTC = timezone.utc
SAMPLE = Path(__file__).parent.parent / "sample_data"
START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)
DECISION = datetime(2024, 2, 20, 14, tzinfo=UTC)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    wh = Warehouse(tmp_path_factory.mktemp("ctx"))
    source = SampleSource(SAMPLE)
    wh.merge(schemas.FUNDING_RATES, source.funding_rates("BTCUSDT", START, END))
    wh.merge(schemas.OPEN_INTEREST, source.open_interest("BTCUSDT", "5m", START, END))
    wh.merge(schemas.KLINES, source.klines("BTCUSDT", "1h", START, END))
    trades = pl.DataFrame({
        "trade_id": ["bear", "bull"], "symbol": "BTCUSDT", "timeframe": "1h", "direction": ["BEARISH", "BULLISH"],
        "decision_time": [DECISION, DECISION], "entry_price": [52000.0, 51000.0], "stop_price": [53000.0, 50000.0],
        "outcome": "NOT_FILLED", "source": "test"})
    wh.replace_table(schemas.TRADES, trades)
    return wh


def test_liquidation_distance_is_filled_and_point_in_time(warehouse: Warehouse) -> None:
    ctx = build_context(warehouse).sort("trade_id")
    assert ctx["distance_to_liq_cluster"].null_count() == 0
    assert (ctx["distance_to_liq_cluster"] >= 0).all()
    bear, bull = ctx.filter(pl.col("trade_id") == "bear").row(0, named=True), ctx.filter(
        pl.col("trade_id") == "bull").row(0, named=True)
    assert bear["liq_cluster_price"] < bear["last_close"] < bull["liq_cluster_price"]  # longs below, shorts above
    assert 0 <= bear["liq_map_age_minutes"] <= 60
    assert ctx["realised_long_liq_usd_24h"].null_count() == 2  # no Coinglass data: NULL, not zero


def test_realised_liquidations_use_only_buckets_closed_by_the_decision(warehouse: Warehouse) -> None:
    buckets = [DECISION - timedelta(hours=h) for h in (28, 24, 20, 4, 0)]
    rows = pl.DataFrame({
        "symbol": "BTCUSDT", "exchange": "Binance", "interval": "4h", "event_time": buckets,
        "long_liquidation_usd": [1.0, 10.0, 100.0, 1000.0, 10000.0],
        "short_liquidation_usd": [2.0, 20.0, 200.0, 2000.0, 20000.0],
        "available_at": [b + timedelta(hours=4) for b in buckets], "source": "coinglass"})
    warehouse.merge(schemas.LIQUIDATIONS, rows)
    ctx = build_context(warehouse)
    # knowable at -24h (excluded: the window is (decision - 24h, decision]), -20h, -16h, 0h (included)
    # and +4h (not known at the decision): 10 + 100 + 1000
    assert ctx["realised_long_liq_usd_24h"].to_list() == [1110.0, 1110.0]
    assert ctx["realised_short_liq_usd_24h"].to_list() == [2220.0, 2220.0]


def test_features_across_venues_are_null_with_binance_alone_and_filled_with_a_second_venue(
        warehouse: Warehouse) -> None:
    """The sample is Binance only: no aggregate feature is invented. A second venue (here Binance's own rows
    relabelled at half the size, a test fixture, not data) fills them: Binance's share is 2/3."""
    def rebuild() -> None:
        with contextlib.closing(warehouse.connect()) as con:
            warehouse.replace_table(schemas.OPEN_INTEREST_AGGREGATE, build_open_interest_aggregate(con))

    rebuild()
    alone = build_context(warehouse)
    assert alone["oi_agg_venues"].to_list() == ["binance", "binance"]
    for column in ("oi_agg_change_24h", "oi_agg_change_7d", "oi_agg_percentile_30d", "oi_binance_share",
                   "funding_spread_8h"):
        assert alone[column].null_count() == 2, column
    assert build_context_cards(warehouse, card_as_of(warehouse, live=False))["oi_agg_value"].to_list() == [None]

    binance = warehouse.read(schemas.OPEN_INTEREST, venue="binance")
    warehouse.merge(schemas.OPEN_INTEREST, binance.with_columns(
        pl.lit("bybit").alias("venue"), pl.col("open_interest") / 2, pl.col("open_interest_value") / 2,
        pl.lit("bybit_test_fixture").alias("source")))
    rebuild()
    both = build_context(warehouse).sort("trade_id")
    assert both["oi_agg_venues"].to_list() == ["binance,bybit"] * 2
    assert both["oi_binance_share"].to_list() == pytest.approx([2 / 3, 2 / 3])
    # the USD total moves with Binance's USD value when Bybit is a constant fraction of it
    agg = warehouse.read(schemas.OPEN_INTEREST_AGGREGATE, symbol="BTCUSDT")
    now, before = (agg.filter(pl.col("event_time") == t).row(0, named=True) for t in (DECISION, DECISION - timedelta(days=1)))
    assert both["oi_agg_change_24h"][0] == pytest.approx((now["oi_usd_total"] / before["oi_usd_total"] - 1) * 100)
    assert both["oi_agg_percentile_30d"].null_count() == 0
    assert both["funding_spread_8h"].null_count() == 2  # no Bybit funding: no spread
    card = build_context_cards(warehouse, card_as_of(warehouse, live=False)).row(0, named=True)
    assert card["oi_agg_venues"] == "binance,bybit" and card["oi_agg_value"].endswith("(binance, bybit)")
