"""The full per-trade context on the real sample: liquidation-map distance and Coinglass realised liquidations."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import contextlib

import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from qml_pipeline.store import schemas
from qml_pipeline.features.aggregate import build_open_interest_aggregate
from qml_pipeline.view.build import build_context_cards, card_as_of
from qml_pipeline.features.context import REALISED_LIQ_SQL, build_context
from qml_pipeline.features.point_in_time import (
    OI_COLUMNS,
    FeatureConfig,
    _stale_limits,
    build_trade_context_features,
)
from qml_pipeline.timeutil import DAY_MS, HOUR_MS
from tests.features.test_features import CFG as FEATURES_CFG
from tests.features.test_features import connect as features_connection
from tests.features.test_features import random_data
from qml_pipeline.sources.sample import SampleSource
from qml_pipeline.store.warehouse import Warehouse

UTC = timezone.utc
SAMPLE = Path(__file__).parents[2] / "sample_data"
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


# ------------------------------------------------------------------ open interest: numpy = the old SQL

# The open-interest part of the features SQL before it moved to numpy (commit c75d929): the reference.
REFERENCE_OI_SQL = """
WITH
t AS (
    SELECT trade_id, symbol, timeframe, direction, decision_time, epoch_ms(decision_time) AS t_ms
    FROM trades
),
-- open interest ------------------------------------------------------------------------------
oi_raw AS NOT MATERIALIZED (
    -- b: the first whole hour (in hours since epoch) at which the row is known
    SELECT symbol, epoch_ms(available_at) AS av_ms, (epoch_ms(available_at) + {hour_minus_1}) // {HOUR_MS} AS b,
           {oi_row} AS r
    FROM open_interest WHERE open_interest > 0
),
oi_run AS (
    -- r: the row known at whole hour b, the best of the rows published up to then. Rows are ranked
    -- by (latest stamp, earliest available_at, largest value, largest period): the max of OI_ROW.
    SELECT symbol, b, max(r) OVER (PARTITION BY symbol ORDER BY b ROWS UNBOUNDED PRECEDING) AS r
    FROM (SELECT symbol, b, max(r) AS r FROM oi_raw GROUP BY symbol, b)
),
grid AS (
    -- whole hours h whose snapshot may fall in some trade's percentile window
    SELECT symbol, unnest(range(((min(t_ms) - {pct_win}) // {HOUR_MS} + 1) * {HOUR_MS},
                                max(t_ms) + 1, {HOUR_MS})) AS at_ms
    FROM t GROUP BY symbol
),
o_probe AS (
    SELECT trade_id, symbol, 0 AS k, t_ms AS at_ms FROM t
    UNION ALL SELECT trade_id, symbol, 1, t_ms - {oi_short} FROM t
    UNION ALL SELECT trade_id, symbol, 2, t_ms - {oi_long} FROM t
    UNION ALL SELECT NULL, symbol, 3, at_ms FROM grid
),
o_part AS (
    -- rows published after the last whole hour before a trade's instant and by that instant
    SELECT p.trade_id, p.k, max(o.r) AS r
    FROM (SELECT trade_id, k, symbol, at_ms, at_ms // {HOUR_MS} + 1 AS b FROM o_probe
          WHERE k < 3 AND at_ms % {HOUR_MS} <> 0) p
    JOIN oi_raw o ON o.symbol = p.symbol AND o.b = p.b AND o.av_ms <= p.at_ms
    GROUP BY p.trade_id, p.k
),
o_at AS MATERIALIZED (
    SELECT trade_id, symbol, k, at_ms, r.ev AS ev_ms, (at_ms - r.ev) / 60000.0 AS age_min,
           r.p AS period_minutes,
           CASE WHEN (at_ms - r.ev) / 60000.0 <= greatest({c.oi_stale_periods} * r.p, {c.oi_stale_min_minutes})
                THEN r.v END AS v
    FROM (
        SELECT p.trade_id, p.symbol, p.k, p.at_ms, greatest(h.r, q.r) AS r
        FROM (SELECT *, at_ms // {HOUR_MS} AS b FROM o_probe) p
        ASOF LEFT JOIN oi_run h ON h.symbol = p.symbol AND h.b <= p.b
        LEFT JOIN o_part q ON q.trade_id = p.trade_id AND q.k = p.k
    )
),
o_wide AS (
    SELECT trade_id,
           any_value(v) FILTER (WHERE k = 0) AS v0,
           any_value(ev_ms) FILTER (WHERE k = 0) AS ev0,
           any_value(age_min) FILTER (WHERE k = 0) AS age0,
           any_value(period_minutes) FILTER (WHERE k = 0) AS period0,
           any_value(v) FILTER (WHERE k = 1) AS v1,
           any_value(ev_ms) FILTER (WHERE k = 1) AS ev1,
           any_value(age_min) FILTER (WHERE k = 1) AS age1,
           any_value(v) FILTER (WHERE k = 2) AS v2,
           any_value(ev_ms) FILTER (WHERE k = 2) AS ev2,
           any_value(age_min) FILTER (WHERE k = 2) AS age2
    FROM o_at WHERE k < 3 GROUP BY trade_id
),
o_pct AS (
    SELECT q.trade_id, count(g.v) AS n, count(*) FILTER (WHERE g.v <= q.v0) AS n_le
    FROM (SELECT t.trade_id, t.symbol, t.t_ms, w.v0,
                 unnest(range((t.t_ms - {pct_win}) // {DAY_MS}, t.t_ms // {DAY_MS} + 1)) AS d
          FROM t JOIN o_wide w USING (trade_id) WHERE w.v0 IS NOT NULL) q
    JOIN (SELECT symbol, at_ms, v, at_ms // {DAY_MS} AS d FROM o_at WHERE k = 3 AND v IS NOT NULL) g
      ON g.symbol = q.symbol AND g.d = q.d
    WHERE g.at_ms > q.t_ms - {pct_win} AND g.at_ms <= q.t_ms
    GROUP BY q.trade_id
)
SELECT
    t.trade_id,
    ow.v0 AS oi,
    make_timestamptz(ow.ev0 * 1000) AS oi_event_time,
    ow.age0 AS oi_age_minutes,
    ow.period0::INTEGER AS oi_period_minutes,
    (ow.v0 / ow.v1 - 1) * 100 AS oi_change_24h,
    make_timestamptz(ow.ev1 * 1000) AS oi_24h_event_time,
    ow.age1 AS oi_24h_age_minutes,
    (ow.v0 / ow.v2 - 1) * 100 AS oi_change_7d,
    make_timestamptz(ow.ev2 * 1000) AS oi_7d_event_time,
    ow.age2 AS oi_7d_age_minutes,
    CASE WHEN op.n >= {c.oi_percentile_min_points} THEN 100.0 * op.n_le / op.n END AS oi_percentile_30d,
    coalesce(op.n, 0) AS oi_percentile_points
FROM t
LEFT JOIN o_wide ow ON ow.trade_id = t.trade_id
LEFT JOIN o_pct op ON op.trade_id = t.trade_id
ORDER BY t.trade_id
"""
OLD_OI_ROW = ("struct_pack(ev := epoch_ms(event_time), nav := -epoch_ms(available_at), v := open_interest, "
              "p := period_minutes)")


def reference_oi_features(con: duckdb.DuckDBPyConnection, c: FeatureConfig) -> pl.DataFrame:
    sql = REFERENCE_OI_SQL.format(
        c=c, oi_row=OLD_OI_ROW, HOUR_MS=HOUR_MS, DAY_MS=DAY_MS, hour_minus_1=HOUR_MS - 1,
        pct_win=c.oi_percentile_window_days * DAY_MS,
        oi_short=c.oi_change_short_hours * HOUR_MS, oi_long=c.oi_change_long_days * DAY_MS)
    return con.sql(sql).pl()


@pytest.mark.parametrize("config", [
    FEATURES_CFG,
    FeatureConfig(oi_stale_periods=2.0, oi_stale_min_minutes=40.0, oi_change_short_hours=5, oi_change_long_days=1,
                  oi_percentile_window_days=1, oi_percentile_min_points=3),
])
@pytest.mark.parametrize("seed", [3, 17, 2024])
def test_open_interest_columns_equal_the_old_sql(seed: int, config: FeatureConfig) -> None:
    """Bit for bit: the value known at t, t - 24h, t - 7d and the percentile, computed per symbol in
    numpy from the rows as known, against the single SQL statement that did it before (duplicate
    stamps, out-of-order publications, zero rows, gaps, decisions on whole hours)."""
    data = random_data(seed, n_trades=60)
    con = features_connection(data)
    got = build_trade_context_features(con, config, workers=2).select("trade_id", *OI_COLUMNS)
    expected = reference_oi_features(con, config).select(
        "trade_id", *(pl.col(c).cast(got.schema[c]) for c in OI_COLUMNS))
    assert got["oi"].null_count() < got.height and got["oi_percentile_30d"].null_count() < got.height
    assert_frame_equal(got, expected, check_exact=True)


def test_open_interest_staleness_limit_is_rounded_like_sql_decimals() -> None:
    """The SQL compared ages with greatest(periods * period, minimum) in DECIMAL arithmetic:
    0.1 * 3 is 0.3 there, 0.30000000000000004 in floats."""
    config = FeatureConfig(oi_stale_periods=0.1, oi_stale_min_minutes=0.25)
    periods = np.array([1, 2, 3, 5, 7, 15, 60, 240])
    sql = duckdb.sql(f"SELECT greatest({config.oi_stale_periods} * p, {config.oi_stale_min_minutes})::DOUBLE "
                     f"FROM unnest({periods.tolist()}) AS u(p)").fetchnumpy()
    expected = next(iter(sql.values()))
    assert expected[2] == 0.3 and 0.1 * 3 != 0.3
    np.testing.assert_array_equal(_stale_limits(periods, config), expected)
