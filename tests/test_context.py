"""The full per-trade context on the real sample: liquidation-map distance and Coinglass realised liquidations."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from qml_pipeline.store import schemas
from qml_pipeline.features.context import REALISED_LIQ_SQL, build_context
from qml_pipeline.sources.ingest import fetch, ingest
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
    for table, parts in ((schemas.FUNDING_RATES, {}), (schemas.OPEN_INTEREST, {}), (schemas.KLINES, {"interval": "1h"})):
        frame = fetch(source, table, "BTCUSDT", START, END, **parts)
        ingest(wh, table, frame, symbol="BTCUSDT", start=START, end=END, **parts)
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
    warehouse.write_window(schemas.LIQUIDATIONS, rows, symbol="BTCUSDT", interval="4h", start=START, end=END)
    ctx = build_context(warehouse)
    # knowable at -24h (excluded: the window is (decision - 24h, decision]), -20h, -16h, 0h (included)
    # and +4h (not known at the decision): 10 + 100 + 1000
    assert ctx["realised_long_liq_usd_24h"].to_list() == [1110.0, 1110.0]
    assert ctx["realised_short_liq_usd_24h"].to_list() == [2220.0, 2220.0]


# The range join REALISED_LIQ_SQL replaced: the definition it must keep.
REFERENCE_REALISED_SQL = """
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


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_realised_liquidations_equal_the_range_join(seed: int) -> None:
    """Buckets of several exchanges and intervals sharing available_at, gaps, a symbol without
    buckets, decisions exactly on bucket ends and 24 h after them."""
    rng = np.random.default_rng(seed)
    rows = []
    for symbol in ("AAA", "BBB"):
        for interval, hours in (("1h", 1), ("4h", 4)):
            for exchange in ("Binance", "ALL"):
                starts = np.sort(rng.choice(24 * 20, 150, replace=False))
                for h in starts[starts % hours == 0]:
                    start = START + timedelta(hours=int(h))
                    rows.append((symbol, exchange, interval, start, start + timedelta(hours=hours),
                                 float(rng.integers(0, 10**6)), float(rng.integers(0, 10**6))))
    liq = pl.DataFrame(rows, orient="row", schema=["symbol", "exchange", "interval", "event_time", "available_at",
                                                   "long_liquidation_usd", "short_liquidation_usd"])
    ends = liq["available_at"].to_list()
    decisions = ([START + timedelta(minutes=int(m)) for m in rng.integers(0, 24 * 21 * 60, 200)]
                 + ends[:20] + [e + timedelta(hours=24) for e in ends[20:40]])
    trades = pl.DataFrame({"trade_id": [f"t{i}" for i in range(len(decisions))],
                           "symbol": rng.choice(["AAA", "BBB", "CCC"], len(decisions)),
                           "decision_time": decisions})
    con = duckdb.connect()
    # duckdb 1.5.5 plans an ASOF JOIN whose left side is a registered frame as a nested loop without this
    con.execute("SET TimeZone = 'UTC'; SET asof_loop_join_threshold = 0")
    con.register("liquidations", liq)
    con.register("trades", trades)
    got = con.sql(REALISED_LIQ_SQL).pl().sort("trade_id")
    expected = con.sql(REFERENCE_REALISED_SQL).pl().sort("trade_id")
    assert got.height > 100
    assert_frame_equal(got, expected, check_exact=True)  # integer-valued USD: any summation order is exact
