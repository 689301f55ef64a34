"""Open interest across venues (open_interest_aggregate) and the features built on it, point in time."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone

import duckdb
import polars as pl
import pytest

from qml_pipeline.features.aggregate import aggregate_features, build_open_interest_aggregate
from qml_pipeline.features.point_in_time import FeatureConfig
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse

UTC = timezone.utc
T0 = datetime(2024, 3, 1, tzinfo=UTC)
M5, H = timedelta(minutes=5), timedelta(hours=1)
# a venue's row is stale 15 minutes after its stamp (the default, 120 minutes, needs longer data)
CONFIG = FeatureConfig(oi_stale_min_minutes=15, oi_percentile_min_points=5)


def oi(venue: str, n: int, coins: float = 100.0, price: float = 50_000.0, start: datetime = T0,
       skip: range | tuple = (), lag: timedelta = timedelta(0), step: timedelta = M5) -> pl.DataFrame:
    """`n` rows every `step` from `start` (minus `skip`), coins rising by 1 a row, USD = coins x price,
    each known at stamp + 5 min + lag."""
    rows = [{"venue": venue, "symbol": "BTCUSDT", "event_time": start + i * step, "period_minutes": 5,
             "open_interest": coins + i, "open_interest_value": (coins + i) * price,
             "available_at": start + i * step + M5 + lag, "source": f"{venue}_test"}
            for i in range(n) if i not in skip]
    return schemas.conform(schemas.OPEN_INTEREST, pl.DataFrame(rows))


def connection(**tables: pl.DataFrame) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, df in tables.items():
        con.register(name, df.to_arrow())
    return con


def aggregate(rows: pl.DataFrame, venues=schemas.VENUES, config: FeatureConfig = CONFIG,
              until: datetime | None = None) -> pl.DataFrame:
    return build_open_interest_aggregate(connection(open_interest=rows), venues, config, until)


def at(agg: pl.DataFrame, t: datetime) -> dict:
    return agg.filter(pl.col("event_time") == t).row(0, named=True)


# ------------------------------------------------------------------------------------------ the table

def test_sums_the_venues_known_at_each_instant_with_shares_and_coverage():
    rows = pl.concat([oi("binance", 36), oi("bybit", 36, coins=50.0), oi("okx", 36, coins=20.0, skip=range(12, 24))])
    agg = aggregate(rows)
    assert agg.columns == schemas.OPEN_INTEREST_AGGREGATE.names
    # from the first row known (T0 + 5 min) until the last rows go stale (stamp T0 + 175 min + 15 min)
    assert agg["event_time"].to_list() == [T0 + (i + 1) * M5 for i in range(38)]
    assert (agg["available_at"] == agg["event_time"]).all()
    assert aggregate(rows, until=T0 + 20 * M5 + timedelta(minutes=2))["event_time"].max() == T0 + 20 * M5

    full = at(agg, T0 + 6 * M5)  # each venue's newest known row: stamp T0 + 25 min
    assert full["venue_count"] == 3 and full["venues_present"] == "binance,bybit,okx" and full["venues_missing"] == ""
    assert full["oi_usd_total"] == pytest.approx((105 + 55 + 25) * 50_000.0)
    assert full["oi_coins_total"] == pytest.approx(105 + 55 + 25)
    assert full["binance_share"] + full["bybit_share"] + full["okx_share"] == pytest.approx(1.0)
    assert full["okx_share"] == pytest.approx(25 / 185) and full["okx_event_time"] == T0 + 5 * M5

    # OKX's rows 12..23 are missing: its row stamped T0 + 55 min ages out 15 minutes later
    assert at(agg, T0 + 14 * M5)["venues_present"] == "binance,bybit,okx"
    gap = at(agg, T0 + 16 * M5)
    assert gap["venue_count"] == 2 and gap["venues_missing"] == "okx"
    assert gap["okx_oi_usd"] is None and gap["okx_share"] is None and gap["okx_event_time"] is None
    assert gap["oi_usd_total"] == pytest.approx(gap["binance_oi_usd"] + gap["bybit_oi_usd"])  # not a zero added
    missing = agg.filter(pl.col("venues_missing") == "okx")["event_time"]
    assert missing.min() == T0 + 15 * M5 and missing.max() == T0 + 24 * M5  # back with the row stamped T0 + 2h
    assert agg.filter(pl.col("venues_missing") != "")["event_time"].to_list() == missing.to_list()


def test_a_row_counts_only_once_available_and_unusable_rows_never():
    late = oi("bybit", 12, coins=50.0, lag=timedelta(minutes=7))  # known 12 minutes after its stamp
    no_usd = oi("okx", 12, coins=20.0).with_columns(pl.lit(None, dtype=pl.Float64).alias("open_interest_value"))
    zero = oi("binance", 12).with_columns(pl.when(pl.col("event_time") == T0 + 5 * M5).then(0.0)
                                          .otherwise(pl.col("open_interest")).alias("open_interest"))
    agg = aggregate(pl.concat([zero, late, no_usd]))
    row = at(agg, T0 + 3 * M5)
    assert row["bybit_event_time"] == T0  # stamped T0, known at T0 + 12 min; T0 + 5 min's row not yet
    assert row["binance_event_time"] == T0 + 2 * M5
    assert "okx" in row["venues_missing"]  # no USD value: not summed, never a zero
    assert at(agg, T0 + 7 * M5)["binance_event_time"] == T0 + 6 * M5
    # the zero (a defect, not an open interest) is skipped: at T0 + 6 * 5 min the row before it still counts
    assert at(agg, T0 + 6 * M5)["binance_event_time"] == T0 + 4 * M5


def test_venues_not_configured_stay_out():
    agg = aggregate(pl.concat([oi("binance", 6), oi("okx", 6)]), venues=("binance", "bybit"))
    assert set(agg["venues_present"]) == {"binance"} and set(agg["venues_missing"]) == {"bybit"}
    assert agg["okx_oi_usd"].null_count() == agg.height


def test_appending_later_rows_never_changes_a_past_aggregate_row():
    """Every cut: the aggregate built from the rows known by the cut equals the full build up to the cut,
    though later rows arrive for every venue, a venue starts after the cut, and an early stamp is revised."""
    later_venue = oi("okx", 20, coins=20.0, start=T0 + 3 * H)
    revision = (oi("binance", 1).with_columns(pl.lit(999.0).alias("open_interest"), pl.lit(1).alias("revision"),
                                               pl.lit(T0 + 4 * H).cast(schemas.TS).alias("available_at")))
    everything = pl.concat([oi("binance", 60), oi("bybit", 60, coins=50.0, skip=range(20, 30)), later_venue, revision])
    full = aggregate(everything)
    assert full.filter(pl.col("venue_count") == 3).height > 0
    for cut in (T0 + 30 * M5, T0 + 2 * H, T0 + 3 * H + 10 * M5 + timedelta(minutes=3), T0 + 4 * H + 20 * M5):
        before = aggregate(everything.filter(pl.col("available_at") <= cut), until=cut)
        assert before.height and before["event_time"].max() <= cut
        assert before.equals(full.filter(pl.col("event_time") <= cut)), cut


def test_appending_through_the_warehouse_keeps_past_rows(tmp_path):
    wh = Warehouse(tmp_path)
    wh.merge(schemas.OPEN_INTEREST, pl.concat([oi("binance", 24), oi("bybit", 24, coins=50.0)]))
    built_at = T0 + 2 * H + timedelta(minutes=2)  # the last rows so far are known at T0 + 2 h
    with contextlib.closing(wh.connect()) as con:
        first = build_open_interest_aggregate(con, schemas.VENUES, CONFIG, until=built_at)
    wh.replace_table(schemas.OPEN_INTEREST_AGGREGATE, first)
    # later rows, a venue joining, and a re-publication of an early stamp (stored as revision 1)
    wh.merge(schemas.OPEN_INTEREST, pl.concat([
        oi("binance", 48).filter(pl.col("event_time") >= T0 + 24 * M5),
        oi("bybit", 48, coins=50.0).filter(pl.col("event_time") >= T0 + 24 * M5),
        oi("okx", 24, coins=20.0, start=T0 + 24 * M5), oi("binance", 1, coins=777.0)]))
    assert wh.read(schemas.OPEN_INTEREST).filter(pl.col("event_time") >= T0 + 24 * M5)["available_at"].min() > built_at
    assert wh.read(schemas.OPEN_INTEREST, revisions=True).filter(pl.col("revision") == 1).height == 1
    with contextlib.closing(wh.connect()) as con:
        second = build_open_interest_aggregate(con, schemas.VENUES, CONFIG)
    wh.replace_table(schemas.OPEN_INTEREST_AGGREGATE, second)
    stored = wh.read(schemas.OPEN_INTEREST_AGGREGATE)
    assert stored.height == second.height > first.height
    assert stored.filter(pl.col("event_time") <= first["event_time"].max()).equals(first)


# ------------------------------------------------------------------------------------------ the features

def funding(venue: str, rates: list[float], hours: int, start: datetime) -> pl.DataFrame:
    times = [start + i * timedelta(hours=hours) for i in range(len(rates))]
    return schemas.conform(schemas.FUNDING_RATES, pl.DataFrame({
        "venue": venue, "symbol": "BTCUSDT", "event_time": times, "funding_rate": rates,
        "funding_interval_hours": hours, "exchange_time": times, "available_at": times, "source": f"{venue}_test"}))


def trades(*times: datetime) -> pl.DataFrame:
    return pl.DataFrame({"trade_id": [f"t{i}" for i in range(len(times))], "symbol": "BTCUSDT",
                         "decision_time": list(times)}, schema={"trade_id": pl.Utf8, "symbol": pl.Utf8,
                                                                "decision_time": schemas.TS})


def features(agg: pl.DataFrame, probes: pl.DataFrame, funding_rows: pl.DataFrame | None = None,
             venues=schemas.VENUES, config: FeatureConfig = CONFIG) -> dict[str, dict]:
    con = connection(open_interest_aggregate=agg, trades=probes,
                     funding_rates=funding_rows if funding_rows is not None else schemas.empty(schemas.FUNDING_RATES))
    return {r["trade_id"]: r for r in aggregate_features(con, venues, config).iter_rows(named=True)}


def hourly(venue: str, days: int, coins: float, growth: float, start: datetime = T0, skip=()) -> pl.DataFrame:
    """Hourly rows (stamped hh:55, known at the next hour) whose coins grow by `growth` a row."""
    return oi(venue, days * 24, coins=coins, start=start + 55 * timedelta(minutes=1), skip=skip, step=H).with_columns(
        (coins + pl.int_range(pl.len()) * growth).alias("open_interest")).with_columns(
        (pl.col("open_interest") * 50_000.0).alias("open_interest_value"))


def test_oi_features_across_venues_need_the_same_two_venues_at_both_instants():
    config = FeatureConfig(oi_percentile_min_points=5)  # hourly rows: the default 120-minute staleness fits
    rows = pl.concat([hourly("binance", 10, 1000.0, 1.0), hourly("bybit", 10, 500.0, 2.0),
                      hourly("okx", 3, 200.0, 0.0, start=T0 + 7 * timedelta(days=1))])
    agg = aggregate(rows, config=config)
    t_both = T0 + 5 * timedelta(days=1)          # binance and bybit now and 24 h before
    t_okx_joined = T0 + 8 * timedelta(days=1)    # okx present now, not 24 h before
    got = features(agg, trades(t_both, t_okx_joined), config=config)
    now, before = at(agg, t_both), at(agg, t_both - timedelta(days=1))
    assert got["t0"]["oi_agg_change_24h"] == pytest.approx((now["oi_usd_total"] / before["oi_usd_total"] - 1) * 100)
    assert got["t0"]["oi_agg_venues"] == "binance,bybit"
    assert got["t0"]["oi_binance_share"] == pytest.approx(now["binance_share"])
    assert got["t0"]["oi_agg_change_7d"] is None  # 7 days back there is no data at all
    # the venue set changed between t - 24h and t: a venue joining is not a change in open interest
    assert got["t1"]["oi_agg_venues"] == "binance,bybit,okx" and got["t1"]["oi_agg_change_24h"] is None
    assert got["t1"]["oi_binance_share"] == pytest.approx(at(agg, t_okx_joined)["binance_share"])
    # percentile: the hourly totals with the same venues in (t - 30d, t]; rising totals: the newest is the max
    assert got["t0"]["oi_agg_percentile_30d"] == pytest.approx(100.0)
    assert got["t1"]["oi_agg_percentile_30d"] == pytest.approx(100.0)  # >= 5 hourly rows with okx by then


def test_oi_features_are_null_without_a_second_venue():
    agg = aggregate(hourly("binance", 9, 1000.0, 1.0), config=FeatureConfig())
    got = features(agg, trades(T0 + 8 * timedelta(days=1)), config=FeatureConfig())["t0"]
    assert got["oi_agg_venues"] == "binance"
    assert [got[c] for c in ("oi_agg_change_24h", "oi_agg_change_7d", "oi_agg_percentile_30d", "oi_binance_share",
                             "funding_spread_8h", "funding_spread_venues")] == [None] * 6
    # a decision with no aggregate row at all (before the first, or the table not built)
    assert features(agg, trades(T0 - H))["t0"]["oi_agg_venues"] is None


def test_percentile_counts_hourly_totals_with_the_same_venues():
    config = FeatureConfig(oi_percentile_min_points=5)
    falling = hourly("bybit", 3, 900.0, -3.0)
    agg = aggregate(pl.concat([hourly("binance", 3, 1000.0, 1.0), falling]), config=config)
    t = T0 + 2 * timedelta(days=1) + 12 * H
    got = features(agg, trades(t), config=config)["t0"]
    window = agg.filter((pl.col("event_time") > t - timedelta(days=30)) & (pl.col("event_time") <= t)
                        & (pl.col("event_time").dt.minute() == 0) & (pl.col("venue_count") == 2))
    total = at(agg, t)["oi_usd_total"]
    assert got["oi_agg_percentile_30d"] == pytest.approx(100 * (window["oi_usd_total"] <= total).sum() / window.height)
    assert 0 < got["oi_agg_percentile_30d"] < 100


def test_funding_spread_is_binance_8h_minus_the_mean_of_the_others_known_at_t():
    start = T0 - timedelta(days=1)
    rows = pl.concat([funding("binance", [0.0001] * 6, 8, start), funding("bybit", [0.0002] * 6, 8, start),
                      funding("okx", [0.00005] * 12, 4, start)])  # 0.00005 per 4 h = 0.0001 per 8 h
    agg = aggregate(oi("binance", 3))
    t = start + 17 * H  # binance, bybit at 16:00; okx at 16:00
    got = features(agg, trades(t, start + 60 * H, start - H), rows)
    assert got["t0"]["funding_spread_8h"] == pytest.approx(0.0001 - (0.0002 + 0.0001) / 2)
    assert got["t0"]["funding_spread_venues"] == "bybit,okx"
    # at 60 h every last rate is stale: OKX's (4 h interval) after 6 h, Binance's and Bybit's (8 h) after 12 h
    later = got["t1"]
    assert later["funding_spread_8h"] is None and later["funding_spread_venues"] is None
    assert got["t2"]["funding_spread_8h"] is None  # nothing known yet
    # a rate known only after t never counts
    early = features(agg, trades(start + 7 * H), rows)["t0"]
    assert early["funding_spread_8h"] == pytest.approx(0.0001 - (0.0002 + 0.0001) / 2)
    only_okx_stale = features(agg, trades(start + 47 * H + 30 * timedelta(minutes=1)), pl.concat([
        funding("binance", [0.0001] * 6, 8, start), funding("bybit", [0.0002] * 6, 8, start),
        funding("okx", [0.00005] * 9, 4, start)]))["t0"]
    assert only_okx_stale["funding_spread_venues"] == "bybit"
    assert only_okx_stale["funding_spread_8h"] == pytest.approx(0.0001 - 0.0002)


def test_features_do_not_change_when_later_rows_arrive():
    config = FeatureConfig(oi_percentile_min_points=5)
    rows = pl.concat([hourly("binance", 6, 1000.0, 1.0), hourly("bybit", 6, 500.0, 2.0)])
    fund = pl.concat([funding("binance", [0.0001] * 18, 8, T0), funding("bybit", [0.0003] * 18, 8, T0)])
    t = T0 + 3 * timedelta(days=1) + 30 * timedelta(minutes=1)
    early = features(aggregate(rows.filter(pl.col("available_at") <= t), config=config, until=t), trades(t),
                     fund.filter(pl.col("available_at") <= t), config=config)
    later = features(aggregate(rows, config=config), trades(t), fund, config=config)
    assert early == later and early["t0"]["oi_agg_change_24h"] is not None
