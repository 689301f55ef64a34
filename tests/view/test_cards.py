from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pytest

from qml_pipeline.view.card_text import context_cards_markdown, pattern_cards_markdown
from qml_pipeline.view.cards import CardConfig, context_cards, with_oi_aggregate
from qml_pipeline.view.pattern_cards import pattern_cards
from qml_pipeline.features.point_in_time import FeatureConfig, build_trade_context_features
from qml_pipeline.features.liquidation_map import LiqMapConfig
from qml_pipeline.research.overlay import apply_overlay, funding_8h_expr
from qml_pipeline.store.schemas import TS

AS_OF = datetime(2026, 1, 15, 14, 0, tzinfo=UTC)
H = timedelta(hours=1)


def funding_frame(rows: list[tuple[str, datetime, float, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"symbol": [r[0] for r in rows], "event_time": [r[1] for r in rows], "funding_rate": [r[2] for r in rows],
         "funding_interval_hours": [r[3] for r in rows], "available_at": [r[1] for r in rows]},
        schema={"symbol": pl.Utf8, "event_time": TS, "funding_rate": pl.Float64,
                "funding_interval_hours": pl.Int16, "available_at": TS})


def oi_frame(symbol: str, values: list[float], last: datetime = AS_OF - timedelta(minutes=5)) -> pl.DataFrame:
    """Hourly OI rows ending with event_time `last` (available 5 min later); values oldest first."""
    times = [last - H * (len(values) - 1 - i) for i in range(len(values))]
    return pl.DataFrame({"symbol": symbol, "event_time": times, "period_minutes": 5, "open_interest": values,
                         "available_at": [t + timedelta(minutes=5) for t in times]},
                        schema={"symbol": pl.Utf8, "event_time": TS, "period_minutes": pl.Int32,
                                "open_interest": pl.Float64, "available_at": TS})


def oi_rows(rows: list[tuple[datetime, datetime, float]], symbol: str = "BTCUSDT", period: int = 5) -> pl.DataFrame:
    """Explicit OI rows: (event_time, available_at, open_interest)."""
    return pl.DataFrame({"symbol": symbol, "event_time": [r[0] for r in rows], "period_minutes": period,
                         "open_interest": [r[2] for r in rows], "available_at": [r[1] for r in rows]},
                        schema={"symbol": pl.Utf8, "event_time": TS, "period_minutes": pl.Int32,
                                "open_interest": pl.Float64, "available_at": TS})


def klines_frame(symbol: str, close: float, close_time: datetime = AS_OF) -> pl.DataFrame:
    return pl.DataFrame({"symbol": symbol, "interval": "1h", "event_time": close_time - H,
                         "close_time": close_time, "open": close, "high": close, "low": close, "close": close,
                         "volume": 1.0, "available_at": close_time},
                        schema={"symbol": pl.Utf8, "interval": pl.Utf8, "event_time": TS, "close_time": TS,
                                "open": pl.Float64, "high": pl.Float64, "low": pl.Float64, "close": pl.Float64,
                                "volume": pl.Float64, "available_at": TS})


def liq_frame(symbol: str, snapshot: datetime, bins: list[tuple[float, float, float]], oi: float = 1000.0,
              ref: float = 100_000.0) -> pl.DataFrame:
    """bins: (liquidation price, long base units, short base units)."""
    return pl.DataFrame({
        "symbol": symbol, "snapshot_time": snapshot,
        "price_bin_low": [b[0] - 1 for b in bins], "price_bin_high": [b[0] + 1 for b in bins],
        "long_liq_notional": [b[1] for b in bins], "long_liq_notional_usd": [b[1] * b[0] for b in bins],
        "short_liq_notional": [b[2] for b in bins], "short_liq_notional_usd": [b[2] * b[0] for b in bins],
        "reference_price": ref, "open_interest": oi, "oi_available_at": snapshot, "source": "estimated"},
        schema_overrides={"snapshot_time": TS})


def one_card(funding=None, oi=None, liq=None, klines=None, **kw) -> dict:
    funding = funding if funding is not None else funding_frame([])
    oi = oi if oi is not None else oi_frame("BTCUSDT", [])
    klines = klines if klines is not None else klines_frame("BTCUSDT", 100_000.0)
    cards = context_cards(funding, oi, liq, klines, **kw)
    return cards.filter(pl.col("symbol") == "BTCUSDT").row(0, named=True)


# ---------------------------------------------------------------- funding

@pytest.mark.parametrize("rate,hours,status", [
    (0.0002, 8, "High"),            # at the High threshold (>=)
    (0.00021, 8, "High"),
    (0.000199, 8, "Neutral"),
    (0.0001, 8, "Neutral"),         # the usual baseline
    (0.00005, 8, "Neutral"),        # at the Low threshold: not below it
    (0.0000499, 8, "Low"),
    (0.0, 8, "Low"),
    (-0.0000999, 8, "Low"),
    (-0.0001, 8, "Negative"),       # at the Negative threshold (<=)
    (-0.0005, 8, "Negative"),
    (0.000025, 1, "High"),          # 0.0025%/1h = 0.02%/8h
    (0.0001, 4, "High"),            # 0.01% every 4h is 0.02% per 8h
    (0.00001, 1, "Neutral"),        # 0.001%/1h = 0.008%/8h
])
def test_funding_status_words_at_thresholds(rate, hours, status):
    card = one_card(funding=funding_frame([("BTCUSDT", AS_OF - H, rate, hours)]), as_of=AS_OF)
    assert card["funding_status"] == status
    assert card["funding_rate_8h"] == pytest.approx(rate * 8 / hours)


def test_funding_value_text_is_per_interval_with_8h_equivalent():
    card = one_card(funding=funding_frame([("BTCUSDT", AS_OF - 6 * H, 0.00021, 8)]), as_of=AS_OF)
    assert card["funding_value"] == "+0.021% / 8h"
    assert card["funding_age_minutes"] == 360
    card = one_card(funding=funding_frame([("BTCUSDT", AS_OF - H, 0.0001, 1)]), as_of=AS_OF)
    assert card["funding_value"] == "+0.010% / 1h (+0.080% / 8h)"
    card = one_card(funding=funding_frame([("BTCUSDT", AS_OF - H, -0.00012, 8)]), as_of=AS_OF)
    assert card["funding_value"] == "-0.012% / 8h"


def test_funding_uses_latest_settlement_known_at_as_of():
    f = funding_frame([("BTCUSDT", AS_OF - 8 * H, 0.0001, 8), ("BTCUSDT", AS_OF, 0.0003, 8),
                       ("BTCUSDT", AS_OF + 8 * H, -0.0005, 8)])
    assert one_card(funding=f, as_of=AS_OF)["funding_status"] == "High"
    assert one_card(funding=f, as_of=AS_OF - timedelta(minutes=1))["funding_status"] == "Neutral"


def test_stale_funding_is_labelled_stale_with_its_age():
    # an 8h settlement is stale after 8h + 60 min grace
    at_limit = one_card(funding=funding_frame([("BTCUSDT", AS_OF - 9 * H, 0.0003, 8)]), as_of=AS_OF)
    assert at_limit["funding_status"] == "High"
    stale = one_card(funding=funding_frame([("BTCUSDT", AS_OF - 9 * H - timedelta(minutes=1), 0.0003, 8)]),
                     as_of=AS_OF)
    assert stale["funding_status"] == "stale"
    assert stale["funding_age_minutes"] == 541
    assert stale["funding_value"] == "+0.030% / 8h"  # the number is kept, but not passed off as fresh
    # a 1h symbol goes stale much sooner
    assert one_card(funding=funding_frame([("BTCUSDT", AS_OF - 3 * H, 0.0, 1)]),
                    as_of=AS_OF)["funding_status"] == "stale"


def test_funding_8h_equivalent_is_the_overlays_rule():
    f = funding_frame([("BTCUSDT", AS_OF - H, 0.00003, 1), ("ETHUSDT", AS_OF - H, 0.0001, 4),
                       ("SOLUSDT", AS_OF - H, 0.0003, 8)])
    f = pl.concat([f, pl.DataFrame({"symbol": ["XRPUSDT"], "event_time": [AS_OF - H], "funding_rate": [0.0003],
                                    "funding_interval_hours": [None], "available_at": [AS_OF - H]},
                                   schema=f.schema)])
    cards = context_cards(f, oi_frame("BTCUSDT", []), None, klines_frame("BTCUSDT", 1.0), as_of=AS_OF)
    expected = f.select("symbol", funding_8h_expr().alias("want"))
    got = cards.join(expected, on="symbol")
    assert got.height == 4
    assert got["funding_rate_8h"].to_list() == pytest.approx(got["want"].to_list())
    xrp = cards.filter(pl.col("symbol") == "XRPUSDT").row(0, named=True)
    # no interval: taken as 8-hourly, shown as such, stale after 8h + grace
    assert (xrp["funding_interval_hours"], xrp["funding_value"], xrp["funding_status"]) == \
        (8, "+0.030% / 8h", "High")


def test_missing_sources_say_missing():
    card = one_card(as_of=AS_OF)
    assert (card["funding_status"], card["oi_status"], card["liq_status"]) == ("missing", "missing", "missing")
    assert card["price"] == 100_000.0


# ---------------------------------------------------------------- open interest

@pytest.mark.parametrize("now,status", [(103.2, "Rising"), (101.0, "Flat"), (99.0, "Flat"),
                                        (101.01, "Rising"), (98.5, "Falling")])
def test_oi_status_words(now, status):
    card = one_card(oi=oi_frame("BTCUSDT", [100.0] + [100.0] * 23 + [now]), as_of=AS_OF)
    assert card["oi_change_24h"] == pytest.approx(now - 100.0)
    assert card["oi_status"] == status


def test_oi_zero_rows_are_missing_not_zero():
    # newest row is a zero (archive defect): the previous row is used, so OI is +3% not -100%
    values = [100.0] * 24 + [103.0, 0.0]
    card = one_card(oi=oi_frame("BTCUSDT", values), as_of=AS_OF)
    assert card["oi"] == 103.0
    assert card["oi_change_24h"] == pytest.approx(3.0)
    assert card["oi_age_minutes"] == 60
    # a zero 24h ago is not a base either (would read as +inf): the change is missing
    values = [100.0, 0.0] + [100.0] * 23 + [103.0]
    oi = oi_frame("BTCUSDT", values)
    card = one_card(oi=oi.filter(pl.col("event_time") != oi["event_time"][0]), as_of=AS_OF)
    assert card["oi_change_24h"] is None
    assert card["oi_status"] == "missing"


def test_oi_stale_and_no_24h_history():
    stale = one_card(oi=oi_frame("BTCUSDT", [100.0] * 25 + [110.0], last=AS_OF - 3 * H), as_of=AS_OF)
    assert stale["oi_status"] == "stale" and stale["oi_value"] == "+10.0%"
    short = one_card(oi=oi_frame("BTCUSDT", [100.0] * 10), as_of=AS_OF)
    assert short["oi_status"] == "missing" and short["oi_change_24h"] is None


def test_oi_24h_base_is_the_value_known_24h_before_as_of():
    # the row stamped 24h before the newest one was published late (an hour after as_of - 24h):
    # at as_of - 24h the value known was the previous stamp's
    rows = [(AS_OF - 26 * H, AS_OF - 26 * H + timedelta(minutes=5), 100.0),
            (AS_OF - 25 * H, AS_OF - 25 * H + timedelta(minutes=5), 100.0),
            (AS_OF - 24 * H - timedelta(minutes=5), AS_OF - 23 * H, 50.0),
            (AS_OF - timedelta(minutes=5), AS_OF, 103.0)]
    card = one_card(oi=oi_rows(rows), as_of=AS_OF)
    assert card["oi_24h_event_time"] == AS_OF - 25 * H
    assert card["oi_change_24h"] == pytest.approx(3.0)
    assert card["oi_status"] == "Rising"
    # the base moves with as_of, not with the newest stamp: an hour later the late row is the base
    later = one_card(oi=oi_rows(rows), as_of=AS_OF + H)
    assert later["oi_24h_event_time"] == AS_OF - 24 * H - timedelta(minutes=5)
    assert later["oi_change_24h"] == pytest.approx(106.0)


def test_oi_24h_base_staleness_is_the_feature_configs():
    # 5-minute rows: the base may be max(3 * 5, 120) = 120 min old (features' limit), measured from its stamp
    def card_with_gap(minutes: float, **kw) -> dict:
        base = AS_OF - 24 * H - timedelta(minutes=minutes)
        rows = [(base, base, 100.0), (AS_OF - timedelta(minutes=5), AS_OF - timedelta(minutes=5), 110.0)]
        return one_card(oi=oi_rows(rows), as_of=AS_OF, **kw)

    assert card_with_gap(100)["oi_change_24h"] == pytest.approx(10.0)   # beyond the old 60-min tolerance
    assert card_with_gap(120)["oi_change_24h"] == pytest.approx(10.0)
    too_old = card_with_gap(121)
    assert too_old["oi_change_24h"] is None and too_old["oi_status"] == "missing"
    assert too_old["oi_24h_event_time"] == AS_OF - 24 * H - timedelta(minutes=121)  # the stamp stays visible
    cfg = CardConfig(features=FeatureConfig(oi_stale_min_minutes=180.0))
    assert card_with_gap(150, config=cfg)["oi_change_24h"] == pytest.approx(10.0)
    # a 60-minute period row may be 3 periods old
    base = AS_OF - 24 * H - timedelta(minutes=170)
    rows = [(base, base, 100.0), (AS_OF - timedelta(minutes=5), AS_OF - timedelta(minutes=5), 110.0)]
    assert one_card(oi=oi_rows(rows, period=60), as_of=AS_OF)["oi_change_24h"] == pytest.approx(10.0)


def test_oi_duplicate_stamp_keeps_earliest_published_copy():
    t0, t1 = AS_OF - 24 * H - timedelta(minutes=5), AS_OF - timedelta(minutes=30)
    rows = [(t0, t0, 100.0), (t1, t1 + timedelta(minutes=20), 200.0), (t1, t1 + timedelta(minutes=5), 103.0)]
    card = one_card(oi=oi_rows(rows), as_of=AS_OF)
    assert card["oi"] == 103.0 and card["oi_change_24h"] == pytest.approx(3.0)
    assert card["oi_age_minutes"] == 25


def test_oi_card_agrees_with_the_trade_feature():
    # messy history: uneven publication delays, a stamp published before an older one, duplicates,
    # zero rows and gaps; the card and features.py must report the same 24h change at every instant
    rows = []
    start = AS_OF - 30 * H
    for i in range(30 * 12):
        ev = start + timedelta(minutes=5 * i)
        if 150 <= i < 175 or 280 <= i < 300:
            continue  # gaps of ~2h and ~1.7h
        delay = timedelta(minutes=[1, 7, 40, 3][i % 4])
        value = 0.0 if i % 37 == 0 else 1000.0 + (i * 7919) % 113
        rows.append((ev, ev + delay, value))
        if i % 11 == 0:
            rows.append((ev, ev + delay + timedelta(minutes=30), value + 50.0))
    oi = oi_rows(rows)
    instants = [AS_OF - timedelta(minutes=m) for m in range(0, 6 * 60, 17)]
    trades = pl.DataFrame({"trade_id": [f"t{i}" for i in range(len(instants))], "symbol": "BTCUSDT",
                           "timeframe": "1h", "direction": "BULLISH", "decision_time": instants},
                          schema_overrides={"decision_time": TS})
    con = duckdb.connect()
    con.register("open_interest", oi)
    con.register("funding_rates", funding_frame([("BTCUSDT", AS_OF - 40 * H, 0.0001, 8)]))
    con.register("klines", klines_frame("BTCUSDT", 100.0, AS_OF - 40 * H))
    con.register("trades", trades)
    feats = build_trade_context_features(con).sort("decision_time")
    cards = pl.concat([context_cards(funding_frame([]), oi, None, klines_frame("BTCUSDT", 1.0), as_of=t)
                       for t in instants]).sort("as_of")
    assert cards["oi_24h_event_time"].to_list() == feats["oi_24h_event_time"].to_list()
    assert cards["oi_event_time"].to_list() == feats["oi_event_time"].to_list()
    fresh = feats["oi"].is_not_null()  # features NULL a stale current value; the card labels it instead
    assert fresh.sum() > 10 and feats.filter(fresh)["oi_change_24h"].null_count() > 0
    assert cards.filter(fresh)["oi_change_24h"].to_list() == pytest.approx(
        feats.filter(fresh)["oi_change_24h"].to_list(), nan_ok=True)


# ---------------------------------------------------------------- liquidations

def test_nearest_cluster_of_either_side_near_and_far():
    liq = liq_frame("BTCUSDT", AS_OF - 2 * H, [
        (98_000.0, 10.0, 0.0),     # long cluster 2.0% below
        (99_900.0, 1.0, 0.0),      # 0.1% share of OI: not a cluster
        (101_500.0, 0.0, 20.0),    # short cluster 1.5% above: the nearest
        (105_000.0, 0.0, 50.0),
    ])
    card = one_card(liq=liq, as_of=AS_OF)
    assert card["liq_cluster_side"] == "short"
    assert card["liq_cluster_price"] == pytest.approx(101_500.0)
    assert card["liq_value"] == "$101.5K"
    assert card["liq_distance_pct"] == pytest.approx(1.5)
    assert card["liq_status"] == "Near"
    assert card["liq_age_minutes"] == 120
    far = one_card(liq=liq, as_of=AS_OF, config=CardConfig(liq_near_pct=1.0))
    assert far["liq_status"] == "Far"
    longs_only = one_card(liq=liq.filter(pl.col("short_liq_notional") == 0), as_of=AS_OF)
    assert (longs_only["liq_cluster_side"], longs_only["liq_value"], longs_only["liq_status"]) == \
        ("long", "$98.0K", "Near")  # 2.0% is within the default 2% (inclusive)


def test_liq_cluster_the_price_has_passed_is_ignored_and_stale_snapshot():
    liq = liq_frame("BTCUSDT", AS_OF - H, [(101_000.0, 10.0, 0.0), (90_000.0, 10.0, 0.0)])
    card = one_card(liq=liq, as_of=AS_OF)  # a long cluster above the price was liquidated already
    assert card["liq_cluster_price"] == pytest.approx(90_000.0)
    assert card["liq_status"] == "Far"
    old = one_card(liq=liq_frame("BTCUSDT", AS_OF - 7 * H, [(99_000.0, 10.0, 0.0)]), as_of=AS_OF)
    assert old["liq_status"] == "stale"
    none = one_card(liq=liq_frame("BTCUSDT", AS_OF - H, [(99_000.0, 1.0, 0.0)]), as_of=AS_OF)
    assert none["liq_status"] == "none"


def test_liq_cluster_rule_is_the_liquidation_maps():
    liq = liq_frame("BTCUSDT", AS_OF - H, [(99_000.0, 6.0, 0.0), (97_000.0, 30.0, 0.0),
                                           (101_500.0, 0.0, 8.0), (104_000.0, 0.0, 2.0)])
    assert one_card(liq=liq, as_of=AS_OF)["liq_cluster_price"] == pytest.approx(99_000.0)  # 0.6% of OI
    # the map's share threshold, not a card-only one
    share = one_card(liq=liq, as_of=AS_OF, config=CardConfig(liq_map=LiqMapConfig(cluster_min_share_of_oi=0.007)))
    assert (share["liq_cluster_side"], share["liq_cluster_price"]) == ("short", pytest.approx(101_500.0))
    # the map's quantile, over the non-empty bins of each side of the snapshot separately:
    # longs [6, 30] -> 0.5 quantile 18 (only 30 qualifies); shorts [8, 2] -> 5 (8 qualifies)
    q = CardConfig(liq_map=LiqMapConfig(cluster_min_share_of_oi=None, cluster_quantile=0.5))
    card = one_card(liq=liq, as_of=AS_OF, config=q)
    assert (card["liq_cluster_side"], card["liq_cluster_price"]) == ("short", pytest.approx(101_500.0))
    longs = one_card(liq=liq.filter(pl.col("short_liq_notional") == 0), as_of=AS_OF, config=q)
    assert longs["liq_cluster_price"] == pytest.approx(97_000.0)
    both = CardConfig(liq_map=LiqMapConfig(cluster_min_share_of_oi=0.01, cluster_quantile=0.5))
    assert one_card(liq=liq.filter(pl.col("long_liq_notional") == 0), as_of=AS_OF,
                    config=both)["liq_status"] == "none"  # 8 passes the quantile but not 1% of OI


def test_as_of_defaults_to_latest_available_and_symbols_are_unioned():
    f = funding_frame([("BTCUSDT", AS_OF - 2 * H, 0.0001, 8), ("ETHUSDT", AS_OF - 2 * H, 0.0001, 8)])
    oi = oi_frame("BTCUSDT", [100.0] * 25)
    kl = pl.concat([klines_frame("BTCUSDT", 100_000.0), klines_frame("ETHUSDT", 3_000.0)])
    cards = context_cards(f, oi, None, kl)
    assert cards["as_of"].to_list() == [AS_OF, AS_OF]
    eth = cards.filter(pl.col("symbol") == "ETHUSDT").row(0, named=True)
    assert eth["oi_status"] == "missing" and eth["funding_status"] == "Neutral"
    md = context_cards_markdown(cards)
    assert "**ETHUSDT**" in md and "| FUNDING | OI 24h | LIQ |" in md and "+0.010% / 8h" in md
    assert "no data" in md


def test_oi_card_shows_the_change_across_venues_beside_binances_where_it_exists():
    f = funding_frame([("BTCUSDT", AS_OF - 2 * H, 0.0001, 8), ("ETHUSDT", AS_OF - 2 * H, 0.0001, 8)])
    oi = pl.concat([oi_frame("BTCUSDT", [100.0] * 24 + [103.0]), oi_frame("ETHUSDT", [50.0] * 25)])
    kl = pl.concat([klines_frame("BTCUSDT", 100_000.0), klines_frame("ETHUSDT", 3_000.0)])
    cards = context_cards(f, oi, None, kl)
    assert cards["oi_agg_change_24h"].null_count() == 2  # nothing across venues until it is given
    across = pl.DataFrame({"trade_id": ["BTCUSDT", "ETHUSDT"], "oi_agg_change_24h": [2.46, None],
                           "oi_agg_venues": ["binance,bybit,okx", "binance"]})
    out = with_oi_aggregate(cards, across)
    btc, eth = (out.filter(pl.col("symbol") == s).row(0, named=True) for s in ("BTCUSDT", "ETHUSDT"))
    assert btc["oi_value"] == "+3.0%" and btc["oi_agg_change_24h"] == 2.46
    assert btc["oi_agg_value"] == "+2.5% (binance, bybit, okx)"
    assert eth["oi_agg_value"] is None and eth["oi_agg_venues"] is None  # Binance alone is no aggregate
    md = context_cards_markdown(out)
    assert "+3.0% · all venues +2.5% (binance, bybit, okx)" in md
    assert md.count("all venues") == 1


# ---------------------------------------------------------------- pattern cards

def _trades() -> pl.DataFrame:
    t = datetime(2025, 1, 15, 14, 0, tzinfo=UTC)
    return pl.DataFrame({
        "trade_id": ["a", "b", "c"], "symbol": ["BTCUSDT", "ETHUSDT", "BTCUSDT"], "timeframe": ["4h", "1h", "4h"],
        "direction": ["BEARISH", "BULLISH", "BULLISH"], "decision_time": [t, t - 24 * H, t - 48 * H],
        "outcome": ["WIN", "LOSS", "WIN"], "base_confidence": [0.72, 0.6, None],
    }, schema_overrides={"decision_time": TS})


def _features() -> pl.DataFrame:
    return pl.DataFrame({
        "trade_id": ["a", "b", "c"], "funding_rate": [0.00021, 0.0003, None],
        "funding_interval_hours": [8.0, 8.0, None], "oi_change_24h": [7.2, 0.5, -8.0],
        "distance_to_liq_cluster": [0.5, None, 3.0]})


def test_pattern_card_itemises_each_adjustment_and_adjusted_confidence():
    trades = _trades()
    overlay = apply_overlay(trades, _features())
    preds = pl.DataFrame({"trade_id": ["a"], "probability": [0.64], "model_version": ["v3"]})
    cards = pattern_cards(trades, overlay, preds)
    assert cards["trade_id"].to_list() == ["a", "b", "c"]  # newest first
    a = cards.row(0, named=True)
    assert a["title"] == "BEARISH QML - BTCUSDT 4H"
    assert a["base_confidence_text"] == "72%"
    reasons = [(x["reason"], x["effect"]) for x in a["adjustments"]]
    assert reasons == [("Funding +0.021%/8h (crowded longs)", "+20%"),
                       ("OI rising +7.2% 24h (conviction)", "+10%"),
                       ("Near liq cluster (0.50 ATR)", "+5%")]
    assert a["multiplier"] == pytest.approx(1.2 * 1.1 * 1.05)
    assert a["adjusted_confidence"] == pytest.approx(min(1.0, 0.72 * 1.386))
    assert a["adjusted_confidence_text"] == "100%"
    assert a["model_probability"] == 0.64 and a["model_text"] == "64% (model v3)"

    b = cards.row(1, named=True)  # bullish with crowded longs: risky
    assert [(x["reason"], x["effect"]) for x in b["adjustments"]] == \
        [("Funding +0.030%/8h (crowded longs)", "-20%")]
    assert b["adjusted_confidence"] == pytest.approx(0.6 * 0.8)
    assert b["adjusted_confidence_text"] == "48%"
    assert "OI flat +0.5% 24h" in b["no_effect"]
    assert "Liq cluster: no estimate at decision time" in b["no_effect"]
    assert b["model_probability"] is None and b["model_text"] is None

    c = cards.row(2, named=True)
    assert c["base_confidence_text"] == "n/a" and c["adjusted_confidence_text"] == "n/a"
    assert "Funding: no data at decision time" in c["no_effect"]
    assert [x["effect"] for x in c["adjustments"]] == ["-10%"]

    md = pattern_cards_markdown(cards)
    assert "#### BEARISH QML - BTCUSDT 4H" in md
    assert "Funding +0.021%/8h (crowded longs) **+20%**" in md
    assert "**ADJUSTED CONFIDENCE: 100%**" in md and "Model probability: **64% (model v3)**" in md


def test_pattern_cards_selection_limit_and_clamp():
    trades = _trades()
    overlay = apply_overlay(trades, _features())
    assert pattern_cards(trades, overlay, limit=1)["trade_id"].to_list() == ["a"]
    assert pattern_cards(trades, overlay, trade_ids=["c", "a"])["trade_id"].to_list() == ["c", "a"]
    with pytest.raises(ValueError, match="zzz"):
        pattern_cards(trades, overlay, trade_ids=["zzz"])
    from qml_pipeline.research.overlay import OverlayConfig
    cfg = OverlayConfig(funding_fuel_mult=1.5, oi_rising_mult=1.5)
    card = pattern_cards(trades, apply_overlay(trades, _features(), cfg), trade_ids=["a"]).row(0, named=True)
    assert card["clamped"] and card["multiplier"] == 1.5
    assert "clamped from x2.36" in pattern_cards_markdown(pattern_cards(trades, apply_overlay(
        trades, _features(), cfg), trade_ids=["a"]))


def test_funding_reason_names_non_8h_interval():
    trades = _trades().head(1)
    feats = _features().head(1).with_columns(pl.lit(0.0001).alias("funding_rate"),
                                             pl.lit(1.0).alias("funding_interval_hours"))
    card = pattern_cards(trades, apply_overlay(trades, feats)).row(0, named=True)
    assert card["adjustments"][0]["reason"] == "Funding +0.010%/1h = +0.080%/8h (crowded longs)"


def test_rows_not_yet_available_at_as_of_are_ignored():
    oi = oi_frame("BTCUSDT", [100.0] * 25 + [150.0], last=AS_OF + timedelta(minutes=55))
    card = one_card(oi=oi, as_of=AS_OF)  # the 150 row becomes available at 15:00
    assert card["oi"] == 100.0 and card["oi_status"] == "Flat"
    liq = pl.concat([liq_frame("BTCUSDT", AS_OF - H, [(99_000.0, 10.0, 0.0)]),
                     liq_frame("BTCUSDT", AS_OF + H, [(99_900.0, 10.0, 0.0)])])
    card = one_card(liq=liq, as_of=AS_OF)
    assert card["liq_cluster_price"] == pytest.approx(99_000.0)
