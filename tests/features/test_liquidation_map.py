from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from qml_pipeline.features.liquidation_map import (
    FEATURE_SCHEMA,
    LIQUIDATION_MAP,
    LiqMapConfig,
    estimate_liquidation_map,
    liq_features_for_trades,
)
from qml_pipeline.features import liquidation_map as lm
from qml_pipeline.features.point_in_time import ms, prepare_oi
from qml_pipeline.store.schemas import TS
from qml_pipeline.timeutil import DAY_MS

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
H = timedelta(hours=1)
# one 10x tier, 0.5% maintenance margin, $100 bins, a snapshot every hour
ONE_TIER = LiqMapConfig(leverage_tiers=(10.0,), leverage_weights=(1.0,), maintenance_margin_rate=0.005,
                        bin_width_bps=None, bin_width_usd=100.0, snapshot_every_minutes=60,
                        cluster_min_share_of_oi=0.01)
LONG_LIQ = 50_000 * (1 - 0.1 + 0.005)   # 45,250
SHORT_LIQ = 50_000 * (1 + 0.1 - 0.005)  # 54,750


def oi_frame(rows: list[tuple[datetime, float]], symbol: str = "BTCUSDT") -> pl.DataFrame:
    return pl.DataFrame({
        "symbol": symbol,
        "event_time": [t - timedelta(minutes=5) for t, _ in rows],
        "available_at": [t for t, _ in rows],
        "open_interest": [v for _, v in rows],
    }).with_columns(pl.col("event_time", "available_at").cast(TS))


def bars_frame(rows: list[tuple[datetime, float, float, float]], symbol: str = "BTCUSDT",
               published: list[datetime] | None = None) -> pl.DataFrame:
    """rows: (open time, high, low, close) of 1h bars; published: available_at (default close_time)."""
    return pl.DataFrame({
        "symbol": symbol, "interval": "1h",
        "event_time": [t for t, *_ in rows], "close_time": [t + H for t, *_ in rows],
        "available_at": published if published is not None else [t + H for t, *_ in rows],
        "open": [c for *_, c in rows], "high": [h for _, h, _, _ in rows],
        "low": [lo for _, _, lo, _ in rows], "close": [c for *_, c in rows],
    }).with_columns(pl.col("event_time", "close_time", "available_at").cast(TS))


def flat_bars(n: int, price: float = 50_000.0, spread: float = 500.0) -> list[tuple[datetime, float, float, float]]:
    return [(T0 + i * H, price + spread, price - spread, price) for i in range(n)]


def snapshot(m: pl.DataFrame, t: datetime) -> pl.DataFrame:
    return m.filter(pl.col("snapshot_time") == t)


def trades_frame(rows: list[tuple[str, str, datetime]]) -> pl.DataFrame:
    return pl.DataFrame({
        "trade_id": [r[0] for r in rows], "symbol": "BTCUSDT",
        "direction": [r[1] for r in rows], "decision_time": [r[2] for r in rows],
    }).with_columns(pl.col("decision_time").cast(TS))


def atr_frame(ids: list[str], atr: float = 1_000.0) -> pl.DataFrame:
    return pl.DataFrame({"trade_id": ids, "atr": [atr] * len(ids)})


# ------------------------------------------------------------------ the model on a hand-made path

def test_oi_increase_opens_longs_and_shorts_at_their_liquidation_prices() -> None:
    # bar closing at 01:00 closes at 50,000; OI rises 1,000 -> 1,100 BTC in the row known at 01:00
    oi = oi_frame([(T0, 1_000.0), (T0 + H, 1_100.0), (T0 + 2 * H, 1_100.0), (T0 + 3 * H, 1_100.0)])
    m = estimate_liquidation_map(oi, bars_frame(flat_bars(4)), ONE_TIER)
    assert m.schema == LIQUIDATION_MAP.polars_schema
    snap = snapshot(m, T0 + 3 * H)
    longs = snap.filter(pl.col("long_liq_notional") > 0)
    shorts = snap.filter(pl.col("short_liq_notional") > 0)
    assert longs.height == 1 and shorts.height == 1
    lrow, srow = longs.row(0, named=True), shorts.row(0, named=True)
    assert lrow["long_liq_notional"] == pytest.approx(50.0)
    assert lrow["long_liq_notional_usd"] == pytest.approx(50.0 * LONG_LIQ)
    assert lrow["price_bin_low"] <= LONG_LIQ < lrow["price_bin_high"]
    assert lrow["price_bin_high"] - lrow["price_bin_low"] == pytest.approx(100.0)
    assert srow["short_liq_notional"] == pytest.approx(50.0)
    assert srow["price_bin_low"] <= SHORT_LIQ < srow["price_bin_high"]
    assert lrow["open_interest"] == 1_100.0 and lrow["reference_price"] == 50_000.0
    assert set(m["source"]) == {"estimated"}
    # nothing exists before the increase became known
    assert snapshot(m, T0).height == 0


@pytest.mark.parametrize("low, removed", [(45_251.0, False), (LONG_LIQ, True), (45_000.0, True)])
def test_long_is_removed_when_a_later_bar_low_reaches_its_liquidation_price(low: float, removed: bool) -> None:
    bars = flat_bars(6)
    bars[3] = (T0 + 3 * H, 50_100.0, low, 49_000.0)  # closes at 04:00
    oi = oi_frame([(T0 + i * H, 1_000.0 if i == 0 else 1_100.0) for i in range(6)])
    m = estimate_liquidation_map(oi, bars_frame(bars), ONE_TIER)
    before, after = snapshot(m, T0 + 3 * H), snapshot(m, T0 + 4 * H)
    assert before["long_liq_notional"].sum() == pytest.approx(50.0)
    assert after["long_liq_notional"].sum() == pytest.approx(0.0 if removed else 50.0)
    assert after["short_liq_notional"].sum() == pytest.approx(50.0)  # shorts untouched by a drop


def test_short_is_removed_when_a_later_bar_high_reaches_its_liquidation_price() -> None:
    bars = flat_bars(6)
    bars[2] = (T0 + 2 * H, 55_000.0, 49_900.0, 54_000.0)
    oi = oi_frame([(T0 + i * H, 1_000.0 if i == 0 else 1_100.0) for i in range(6)])
    m = estimate_liquidation_map(oi, bars_frame(bars), ONE_TIER)
    assert snapshot(m, T0 + 2 * H)["short_liq_notional"].sum() == pytest.approx(50.0)
    assert snapshot(m, T0 + 3 * H)["short_liq_notional"].sum() == pytest.approx(0.0)
    assert snapshot(m, T0 + 3 * H)["long_liq_notional"].sum() == pytest.approx(50.0)


def test_oi_decrease_removes_notional_proportionally() -> None:
    # +100 at 01:00, +100 at 02:00 (both at 50,000), then -240 (20% of 1,200) at 03:00
    oi = oi_frame([(T0, 1_000.0), (T0 + H, 1_100.0), (T0 + 2 * H, 1_200.0), (T0 + 3 * H, 960.0),
                   (T0 + 4 * H, 960.0)])
    m = estimate_liquidation_map(oi, bars_frame(flat_bars(5)), ONE_TIER)
    assert snapshot(m, T0 + 2 * H)["long_liq_notional"].sum() == pytest.approx(100.0)
    after = snapshot(m, T0 + 3 * H)
    assert after["long_liq_notional"].sum() == pytest.approx(80.0)
    assert after["short_liq_notional"].sum() == pytest.approx(80.0)
    assert after["long_liq_notional_usd"].sum() == pytest.approx(80.0 * LONG_LIQ)
    # a later increase adds at full size; earlier positions keep their reduced size
    oi2 = oi.vstack(oi_frame([(T0 + 5 * H, 1_060.0)]))
    later = snapshot(estimate_liquidation_map(oi2, bars_frame(flat_bars(6)), ONE_TIER), T0 + 5 * H)
    assert later["long_liq_notional"].sum() == pytest.approx(130.0)


def test_long_share_leverage_weights_and_expiry() -> None:
    cfg = LiqMapConfig(leverage_tiers=(5.0, 20.0), leverage_weights=(0.25, 0.75), long_share=0.6,
                       maintenance_margin_rate=0.0, bin_width_bps=None, bin_width_usd=100.0,
                       snapshot_every_minutes=60, expiry_days=2 / 24, max_oi_age_minutes=600)
    oi = oi_frame([(T0, 1_000.0), (T0 + H, 1_100.0)])
    m = estimate_liquidation_map(oi, bars_frame(flat_bars(5, spread=100.0)), cfg)
    snap = snapshot(m, T0 + 2 * H)
    by_bin = dict(zip(snap["price_bin_low"], snap["long_liq_notional"]))
    assert by_bin[40_000.0] == pytest.approx(100 * 0.6 * 0.25)    # 5x: 50,000 * 0.8
    assert by_bin[47_500.0] == pytest.approx(100 * 0.6 * 0.75)    # 20x: 50,000 * 0.95
    assert snap["short_liq_notional"].sum() == pytest.approx(40.0)
    assert snapshot(m, T0 + 3 * H).height == 0                   # older than expiry_days (2 h)


def test_zero_open_interest_rows_are_missing_data_not_a_collapse() -> None:
    oi = oi_frame([(T0, 1_000.0), (T0 + H, 1_100.0), (T0 + 2 * H, 0.0), (T0 + 3 * H, 1_100.0)])
    m = estimate_liquidation_map(oi, bars_frame(flat_bars(4)), ONE_TIER)
    assert snapshot(m, T0 + 3 * H)["long_liq_notional"].sum() == pytest.approx(50.0)


def test_stale_price_opens_nothing_and_stale_oi_emits_no_snapshot() -> None:
    oi = oi_frame([(T0, 1_000.0), (T0 + 10 * H, 1_100.0)])
    # bars end at 02:00: the increase known at 10:00 has no price within 2 h
    m = estimate_liquidation_map(oi, bars_frame(flat_bars(2)), ONE_TIER)
    assert m.height == 0
    oi = oi_frame([(T0, 1_000.0), (T0 + H, 1_100.0)])
    m = estimate_liquidation_map(oi, bars_frame(flat_bars(12)), ONE_TIER)
    assert m["snapshot_time"].max() == T0 + 4 * H  # newest OI 01:00 + max_oi_age 3 h


def test_config_rejects_inconsistent_assumptions() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        LiqMapConfig(leverage_weights=(0.5, 0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="liquidated at entry"):
        LiqMapConfig(leverage_tiers=(250.0,), leverage_weights=(1.0,))
    with pytest.raises(ValueError, match="exactly one"):
        LiqMapConfig(bin_width_usd=10.0)


# ------------------------------------------------------------------ per-trade feature

def _two_sided_setup() -> tuple[pl.DataFrame, pl.DataFrame]:
    oi = oi_frame([(T0 + i * H, 1_000.0 if i == 0 else 1_100.0) for i in range(8)])
    return oi, bars_frame(flat_bars(8))


def test_feature_direction_bearish_uses_longs_below_bullish_uses_shorts_above() -> None:
    oi, bars = _two_sided_setup()
    cfg = LiqMapConfig(**{**ONE_TIER.__dict__, "long_share": 0.7})
    d = T0 + 3 * H + timedelta(minutes=17)
    trades = trades_frame([("bear", "BEARISH", d), ("bull", "bullish", d)])
    f = liq_features_for_trades(trades, oi, bars, atr_frame(["bear", "bull"], 500.0), cfg)
    assert f.schema == FEATURE_SCHEMA
    bear = f.filter(pl.col("trade_id") == "bear").row(0, named=True)
    bull = f.filter(pl.col("trade_id") == "bull").row(0, named=True)
    assert bear["liq_cluster_price"] == pytest.approx(LONG_LIQ)
    assert bear["liq_cluster_notional_usd"] == pytest.approx(70.0 * LONG_LIQ)
    assert bear["distance_to_liq_cluster"] == pytest.approx((50_000 - LONG_LIQ) / 500.0)
    assert bull["liq_cluster_price"] == pytest.approx(SHORT_LIQ)
    assert bull["liq_cluster_notional_usd"] == pytest.approx(30.0 * SHORT_LIQ)
    assert bull["distance_to_liq_cluster"] == pytest.approx((SHORT_LIQ - 50_000) / 500.0)
    assert bear["liq_map_time"] == T0 + 3 * H and bear["liq_map_age_minutes"] == pytest.approx(17.0)


def test_feature_picks_the_nearest_cluster_in_the_trade_direction() -> None:
    cfg = LiqMapConfig(**{**ONE_TIER.__dict__, "leverage_tiers": (5.0, 10.0), "leverage_weights": (0.5, 0.5)})
    oi, bars = _two_sided_setup()
    f = liq_features_for_trades(trades_frame([("b", "BEARISH", T0 + 4 * H)]), oi, bars, atr_frame(["b"]), cfg)
    assert f["liq_cluster_price"][0] == pytest.approx(LONG_LIQ)  # the 10x level, not the 5x at 40,250


def test_feature_is_null_when_no_cluster_lies_in_the_trade_direction() -> None:
    bars = flat_bars(8)
    bars[3] = (T0 + 3 * H, 50_100.0, 45_000.0, 49_000.0)  # wipes the longs out at 04:00
    oi = oi_frame([(T0 + i * H, 1_000.0 if i == 0 else 1_100.0) for i in range(8)])
    trades = trades_frame([("bear", "BEARISH", T0 + 5 * H), ("bull", "BULLISH", T0 + 5 * H),
                           ("early", "BEARISH", T0 + 3 * H + timedelta(minutes=59))])
    f = liq_features_for_trades(trades, oi, bars_frame(bars), atr_frame(["bear", "bull", "early"]), ONE_TIER)
    rows = {r["trade_id"]: r for r in f.iter_rows(named=True)}
    assert rows["bear"]["distance_to_liq_cluster"] is None and rows["bear"]["liq_cluster_price"] is None
    assert rows["bear"]["liq_map_time"] == T0 + 5 * H  # the map existed; it just had no cluster there
    assert rows["bull"]["liq_cluster_price"] == pytest.approx(SHORT_LIQ)
    # as of exactly decision_time: one minute before the liquidating bar closed, the longs were there
    assert rows["early"]["liq_cluster_price"] == pytest.approx(LONG_LIQ)


def test_feature_below_cluster_threshold_is_null() -> None:
    oi, bars = _two_sided_setup()
    cfg = LiqMapConfig(**{**ONE_TIER.__dict__, "cluster_min_share_of_oi": 0.05})  # 55 BTC > 50 BTC
    f = liq_features_for_trades(trades_frame([("b", "BEARISH", T0 + 4 * H)]), oi, bars, atr_frame(["b"]), cfg)
    assert f["liq_cluster_price"][0] is None


def test_feature_is_null_when_open_interest_is_stale_but_keeps_the_age() -> None:
    oi, bars = _two_sided_setup()
    bars = bars_frame(flat_bars(20))
    d = T0 + 7 * H + timedelta(minutes=181)
    f = liq_features_for_trades(trades_frame([("b", "BULLISH", d), ("x", "BULLISH", T0 - H)]), oi, bars,
                                atr_frame(["b", "x"]), ONE_TIER)
    b = f.row(0, named=True)
    assert b["liq_cluster_price"] is None and b["liq_map_age_minutes"] == pytest.approx(181.0)
    x = f.row(1, named=True)
    assert x["liq_map_time"] is None and x["liq_cluster_price"] is None


def test_feature_distance_is_null_without_atr_and_bad_direction_is_refused() -> None:
    oi, bars = _two_sided_setup()
    f = liq_features_for_trades(trades_frame([("b", "BEARISH", T0 + 4 * H)]), oi, bars,
                                pl.DataFrame({"trade_id": ["other"], "atr": [1.0]}), ONE_TIER)
    assert f["distance_to_liq_cluster"][0] is None and f["liq_cluster_price"][0] == pytest.approx(LONG_LIQ)
    with pytest.raises(ValueError, match="BULLISH or BEARISH"):
        liq_features_for_trades(trades_frame([("b", "LONG", T0)]), oi, bars, atr_frame(["b"]), ONE_TIER)


# ------------------------------------------------------------------ point in time

def random_market(seed: int, hours: int = 24 * 40) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    close = 30_000 * np.exp(np.cumsum(rng.normal(0, 0.01, hours)))
    open_ = np.concatenate([[30_000.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.004, hours)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.004, hours)))
    oi_values = 50_000 * np.exp(np.cumsum(rng.normal(0, 0.01, hours)))
    oi_values[rng.choice(hours, 5, replace=False)] = 0.0  # missing-data rows, as in the archive
    # each bar is published 0-39 minutes after it closes: it is known at available_at, not close_time
    lag = rng.integers(0, 40, hours)
    bars = bars_frame([(T0 + i * H, high[i], low[i], close[i]) for i in range(hours)],
                      published=[T0 + (i + 1) * H + timedelta(minutes=int(lag[i])) for i in range(hours)])
    oi = oi_frame([(T0 + (i + 1) * H, float(v)) for i, v in enumerate(oi_values)])
    return oi, bars


def republished(oi: pl.DataFrame, bars: pl.DataFrame, known_by: datetime, published: datetime,
                seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """oi and bars plus revised copies of rows known by `known_by`, published at `published`: the
    latest bars and OI rows and a few older ones, with different prices and OI values."""
    rng = np.random.default_rng(seed)
    past_bars = bars.filter(pl.col("available_at") <= known_by)
    past_oi = oi.filter(pl.col("available_at") <= known_by)
    bar_rows = np.unique(np.concatenate([np.arange(past_bars.height - 3, past_bars.height),
                                         rng.integers(0, past_bars.height, 3)]))
    oi_rows = np.unique(np.concatenate([np.arange(past_oi.height - 3, past_oi.height),
                                        rng.integers(0, past_oi.height, 3)]))
    bar_copies = past_bars[bar_rows].with_columns(
        pl.col("high") * 1.3, pl.col("low") * 0.7, pl.col("close") * 0.9, pl.col("open") * 1.1,
        pl.lit(published).cast(TS).alias("available_at"))
    oi_copies = past_oi[oi_rows].with_columns(
        pl.when(pl.col("open_interest") > 0).then(pl.col("open_interest") * 1.5).otherwise(40_000.0),
        pl.lit(published).cast(TS).alias("available_at"))
    return pl.concat([oi, oi_copies]), pl.concat([bars, bar_copies])


CFG_PIT = LiqMapConfig(expiry_days=10, snapshot_every_minutes=120, cluster_min_share_of_oi=0.0005)


@settings(max_examples=8, deadline=None)
@example(seed=6, cut_hours=107, minutes=0)  # once caught a parallel sum's varying order
@example(seed=1, cut_hours=300, minutes=10)  # a bar closed before the cut, published after it
@given(seed=st.integers(0, 10_000), cut_hours=st.integers(48, 24 * 39), minutes=st.integers(0, 59))
def test_appending_future_data_never_changes_a_past_map_or_feature(seed: int, cut_hours: int, minutes: int) -> None:
    """Everything published after `cut` (new bars and OI rows, and revised copies of rows known by
    then) leaves every map and feature as of `cut` or earlier exactly unchanged."""
    oi, bars = random_market(seed)
    cut = T0 + cut_hours * H + timedelta(minutes=minutes)
    oi, bars = republished(oi, bars, cut, cut + timedelta(minutes=1 + seed % 300), seed)
    oi_past = oi.filter(pl.col("available_at") <= cut)
    bars_past = bars.filter(pl.col("available_at") <= cut)

    full = estimate_liquidation_map(oi, bars, CFG_PIT).filter(pl.col("snapshot_time") <= cut)
    past = estimate_liquidation_map(oi_past, bars_past, CFG_PIT).filter(pl.col("snapshot_time") <= cut)
    assert full.height > 0
    assert_frame_equal(full, past, check_exact=True)

    rng = np.random.default_rng(seed)
    times = [cut - timedelta(minutes=int(m)) for m in rng.integers(0, 24 * 60, 20)] + [cut]
    trades = trades_frame([(f"t{i}", "BEARISH" if i % 2 else "BULLISH", t) for i, t in enumerate(times)])
    atr = atr_frame(trades["trade_id"].to_list(), 300.0)
    f_full = liq_features_for_trades(trades, oi, bars, atr, CFG_PIT)
    f_past = liq_features_for_trades(trades, oi_past, bars_past, atr, CFG_PIT)
    assert f_full["liq_cluster_price"].null_count() < f_full.height
    assert_frame_equal(f_full, f_past, check_exact=True)


def test_a_republished_copy_never_replaces_what_was_already_known() -> None:
    # revisions published after the whole series: not even the maps after their publication change
    oi, bars = random_market(11)
    end = T0 + 24 * 40 * H
    oi2, bars2 = republished(oi, bars, end, end + 3 * H, 11)
    assert oi2.height > oi.height and bars2.height > bars.height
    assert_frame_equal(estimate_liquidation_map(oi, bars, CFG_PIT),
                       estimate_liquidation_map(oi2, bars2, CFG_PIT), check_exact=True)
    times = [T0 + i * 7 * H + timedelta(minutes=i % 60) for i in range(20, 24 * 40 // 7 + 1)]
    trades = trades_frame([(f"t{i}", "BEARISH" if i % 2 else "BULLISH", t) for i, t in enumerate(times)])
    atr = atr_frame(trades["trade_id"].to_list(), 300.0)
    assert_frame_equal(liq_features_for_trades(trades, oi, bars, atr, CFG_PIT),
                       liq_features_for_trades(trades, oi2, bars2, atr, CFG_PIT), check_exact=True)


def test_a_bar_counts_from_its_available_at_and_duplicates_keep_the_earliest_copy() -> None:
    oi = oi_frame([(T0 + i * H, 1_000.0 if i == 0 else 1_100.0) for i in range(6)])
    bars = flat_bars(6)
    # the bar closing at 03:00 is published at 03:30 and liquidates the longs (low 45,000)
    bars[2] = (T0 + 2 * H, 50_100.0, 45_000.0, 49_000.0)
    published = [T0 + (i + 1) * H for i in range(6)]
    published[2] = T0 + 3 * H + timedelta(minutes=30)
    kl = bars_frame(bars, published=published)
    # two copies of the 04:00 bar published together: the larger close wins (the features.py rule) ...
    tie = kl.filter(pl.col("event_time") == T0 + 3 * H).with_columns(pl.col("close") + 10.0)
    # ... and an older stamp published after a newer one is known is never the price known at a time
    late = kl.filter(pl.col("event_time") == T0).with_columns(
        pl.col("close") * 0.5, pl.lit(T0 + 5 * H + timedelta(minutes=10)).cast(TS).alias("available_at"))
    kl = pl.concat([kl, tie, late])
    trades = trades_frame([("before", "BEARISH", T0 + 3 * H + timedelta(minutes=29)),
                           ("after", "BEARISH", T0 + 3 * H + timedelta(minutes=30)),
                           ("tie", "BULLISH", T0 + 4 * H), ("late", "BULLISH", T0 + 5 * H + timedelta(minutes=20))])
    f = liq_features_for_trades(trades, oi, kl, atr_frame(["before", "after", "tie", "late"], 100.0), ONE_TIER)
    rows = {r["trade_id"]: r for r in f.iter_rows(named=True)}
    # at 03:29 the price is the 02:00 bar's close (50,000) and the longs are still there
    assert rows["before"]["liq_cluster_price"] == pytest.approx(LONG_LIQ)
    assert rows["before"]["distance_to_liq_cluster"] == pytest.approx((50_000 - LONG_LIQ) / 100.0)
    assert rows["after"]["liq_cluster_price"] is None  # liquidated once the bar was published
    assert rows["tie"]["distance_to_liq_cluster"] == pytest.approx((SHORT_LIQ - 50_010.0) / 100.0)
    assert rows["late"]["distance_to_liq_cluster"] == pytest.approx((SHORT_LIQ - 50_000.0) / 100.0)
    m = estimate_liquidation_map(oi, kl, ONE_TIER)
    assert snapshot(m, T0 + 4 * H)["reference_price"][0] == 50_010.0


def test_open_interest_duplicates_keep_the_earliest_copy_then_the_largest_value() -> None:
    rows = [(T0 + i * H, 1_000.0 if i == 0 else 1_100.0) for i in range(6)]
    oi = oi_frame(rows)
    # the 01:00 row (+100) republished at 02:30 as +300, and a same-time copy valued 1,040 (+40)
    revised = oi_frame([(T0 + H, 1_300.0)]).with_columns(
        pl.lit(T0 + 2 * H + timedelta(minutes=30)).cast(TS).alias("available_at"))
    same_time = oi_frame([(T0 + H, 1_040.0)])
    # an older stamp published after newer ones are known: never the OI known at a time
    late_old = oi_frame([(T0 + H, 5_000.0)]).with_columns(
        pl.lit(T0 - H).cast(TS).alias("event_time"), pl.lit(T0 + 3 * H).cast(TS).alias("available_at"))
    zero = oi_frame([(T0 + 4 * H + timedelta(minutes=6), 0.0)])  # a hole, not a collapse: dropped
    m = estimate_liquidation_map(pl.concat([revised, oi, same_time, late_old, zero]),
                                 bars_frame(flat_bars(6)), ONE_TIER)
    expected = estimate_liquidation_map(oi, bars_frame(flat_bars(6)), ONE_TIER)
    assert_frame_equal(m, expected, check_exact=True)
    assert snapshot(m, T0 + 5 * H)["long_liq_notional"].sum() == pytest.approx(50.0)


def test_feature_at_a_snapshot_time_agrees_with_the_snapshot_table() -> None:
    oi, bars = random_market(7)
    m = estimate_liquidation_map(oi, bars, CFG_PIT)
    times = m["snapshot_time"].unique().sort()[::37].to_list()
    trades = trades_frame([(f"{d}{i}", d, t) for i, t in enumerate(times) for d in ("BEARISH", "BULLISH")])
    f = liq_features_for_trades(trades, oi, bars, atr_frame(trades["trade_id"].to_list()), CFG_PIT)
    checked = 0
    for tr, feat in zip(trades.iter_rows(named=True), f.iter_rows(named=True)):
        side = "long_liq_notional" if tr["direction"] == "BEARISH" else "short_liq_notional"
        snap = snapshot(m, tr["decision_time"]).filter(
            pl.col(side) >= CFG_PIT.cluster_min_share_of_oi * pl.col("open_interest"))
        snap = snap.sort("price_bin_low", descending=tr["direction"] == "BEARISH")
        if snap.height == 0:
            assert feat["liq_cluster_price"] is None
            continue
        near = snap.row(0, named=True)
        assert near["price_bin_low"] <= feat["liq_cluster_price"] < near["price_bin_high"]
        assert feat["liq_cluster_notional_usd"] == pytest.approx(near[side + "_usd"], rel=1e-9)
        checked += 1
    assert checked > 5


# ------------------------------------------------------------------ streaming gives the same as before

def random_symbols(seed: int, n_symbols: int = 3, hours: int = 24 * 40) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Several symbols' random markets, each with republished copies of some of its rows."""
    ois, bars = [], []
    for i in range(n_symbols):
        oi, kl = random_market(seed * 10 + i, hours)
        oi, kl = republished(oi, kl, T0 + (hours // 2) * H, T0 + (hours // 2 + 5) * H, seed + i)
        ois.append(oi.with_columns(pl.lit(f"S{i}").alias("symbol")))
        bars.append(kl.with_columns(pl.lit(f"S{i}").alias("symbol")))
    return pl.concat(ois), pl.concat(bars)


def random_trades(seed: int, n: int, n_symbols: int = 3, hours: int = 24 * 40) -> pl.DataFrame:
    """Trades at random minutes (and some at the same instant, before the data and after it ends), in
    random order, on every symbol plus one without data, in mixed-case directions."""
    rng = np.random.default_rng(seed)
    minutes = rng.integers(-24 * 60, (hours + 12) * 60, n)
    minutes[: n // 10] = minutes[n // 10]  # a tie of many trades
    symbols = rng.choice([f"S{i}" for i in range(n_symbols)] + ["NODATA"], n, p=[0.95 / n_symbols] * n_symbols
                         + [0.05])
    directions = rng.choice(["BEARISH", "BULLISH", "bearish", "Bullish"], n)
    return pl.DataFrame({
        "trade_id": [f"t{i}" for i in range(n)], "symbol": symbols, "direction": directions,
        "decision_time": [T0 + timedelta(minutes=int(m)) for m in minutes],
    }).with_columns(pl.col("decision_time").cast(TS))


EQUIVALENCE_CONFIGS = {
    "default": LiqMapConfig(),
    "pit": CFG_PIT,
    "usd_bins_short_expiry": LiqMapConfig(bin_width_bps=None, bin_width_usd=40.0, expiry_days=3,
                                          cluster_min_share_of_oi=0.001),
    "quantile": LiqMapConfig(cluster_min_share_of_oi=None, cluster_quantile=0.8, expiry_days=5),
    "share_and_quantile": LiqMapConfig(cluster_min_share_of_oi=0.0005, cluster_quantile=0.3),
    "every_bin_a_cluster": LiqMapConfig(cluster_min_share_of_oi=0.0, long_share=0.8),
}


@pytest.mark.parametrize("blocks", ["whole", "tiny"])
@pytest.mark.parametrize("name", sorted(EQUIVALENCE_CONFIGS))
def test_streaming_features_equal_the_reference_implementation(name: str, blocks: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit for bit: blocks of trades, screening and exact sums of the nearest bins give what summing
    every (trade, position) pair gave, also when blocks are tiny (many blocks, many gathers)."""
    if blocks == "tiny":
        monkeypatch.setattr(lm, "_SCREEN_CELLS", 40)
        monkeypatch.setattr(lm, "_PAIR_BUDGET", 5)
        monkeypatch.setattr(lm, "_MAX_LOG_SPAN", 0.002)
    config = EQUIVALENCE_CONFIGS[name]
    oi, bars = random_symbols(len(name))
    trades = random_trades(len(name), 240)
    atr = atr_frame(trades["trade_id"].to_list()[:-7], 250.0)  # a few trades without ATR
    got = liq_features_for_trades(trades, oi, bars, atr, config)
    assert got["liq_cluster_price"].null_count() < got.height * 0.8
    assert_frame_equal(got, reference_liq_features(trades, oi, bars, atr, config), check_exact=True)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 120))
def test_streaming_features_equal_the_reference_on_random_markets(seed: int, n: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm, "_SCREEN_CELLS", 500)
        mp.setattr(lm, "_PAIR_BUDGET", 300)
        oi, bars = random_symbols(seed, n_symbols=2, hours=24 * 20)
        trades = random_trades(seed, n, n_symbols=2, hours=24 * 20)
        atr = atr_frame(trades["trade_id"].to_list(), 100.0)
        got = liq_features_for_trades(trades, oi, bars, atr, CFG_PIT)
        assert_frame_equal(got, reference_liq_features(trades, oi, bars, atr, CFG_PIT), check_exact=True)


@pytest.mark.parametrize("name", sorted(EQUIVALENCE_CONFIGS))
def test_grouped_openings_give_the_positions_and_maps_of_before(name: str) -> None:
    """Prices, bins and liquidation times computed once per (entry bar, side, tier) and shared by the
    rows of that bar: the same positions, element by element, and the same snapshots."""
    config = EQUIVALENCE_CONFIGS[name]
    oi, bars = random_symbols(len(name) + 1)
    inputs = _reference_symbol_inputs(oi, bars, config)
    for s, expected in inputs.values():
        got = lm._positions(lm._openings(s, config))
        for field in expected.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)
    maps = pl.concat([lm._snapshots(symbol, s, p, config) for symbol, (s, p) in inputs.items()])
    assert maps.height > 0
    assert_frame_equal(estimate_liquidation_map(oi, bars, config), maps, check_exact=True)

# ------------------------------------------------------------------ the old implementation, as a reference

def reference_liq_features(trades: pl.DataFrame, oi: pl.DataFrame, klines: pl.DataFrame,
                           atr: pl.DataFrame, config: LiqMapConfig | None = None) -> pl.DataFrame:
    """liq_features_for_trades before it streamed (commit c75d929): every (trade, position) pair of a
    symbol at once. Slow and memory-hungry; kept only to prove the streaming version gives the same."""
    config = config or LiqMapConfig()
    lm.check_trades(trades)
    direction = pl.col("direction").cast(pl.Utf8).str.to_uppercase()
    t = trades.select(pl.col("trade_id").cast(pl.Utf8), "symbol", direction.alias("direction"),
                      ms("decision_time").alias("d_ms")).with_row_index("row")
    atr_df = atr.select(pl.col("trade_id").cast(pl.Utf8), pl.col("atr").cast(pl.Float64))

    inputs = _reference_symbol_inputs(oi, klines, config)
    heads, per_bins = [], []
    for (symbol,), ts in t.group_by(["symbol"], maintain_order=True):
        if symbol not in inputs:
            continue
        head, per_bin = _reference_trade_maps(ts, *inputs[symbol], config)
        heads.append(head)
        per_bins.append(per_bin)

    base = t.join(atr_df, on="trade_id", how="left")
    if heads:
        base = base.join(pl.concat(heads), on="row", how="left")
        clusters = lm._pick_clusters(pl.concat(per_bins), base, config)  # the cluster rule, as the library
        base = base.join(clusters, on="row", how="left")
    else:
        base = base.with_columns(pl.lit(None, pl.Float64).alias(c) for c in
                                 ("price", "oi_now", "cluster_price", "cluster_usd")).with_columns(
            pl.lit(None, pl.Int64).alias("map_ms"), pl.lit(None, pl.Boolean).alias("fresh"))
    usable = pl.col("fresh").fill_null(False)
    return base.sort("row").select(
        "trade_id", *lm.feature_columns(usable)).cast(dict(FEATURE_SCHEMA))


def _reference_trade_maps(ts: pl.DataFrame, s: lm._Series, p: lm._Positions, config: LiqMapConfig
                          ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per trade: price, OI, map time, freshness; per trade and bin on its side: alive amounts)."""
    d = ts["d_ms"].to_numpy()
    rows = ts["row"].to_numpy()
    has_oi, has_bar, oi_i, map_ms, fresh, price = lm._known_at(d, s, config)  # the library's point-in-time lookup
    head = pl.DataFrame({
        "row": rows, "price": np.where(has_bar, price, np.nan),
        "oi_now": np.where(has_oi, s.oi[oi_i], np.nan),
        "map_ms": map_ms, "has_oi": has_oi, "fresh": fresh,
    }).with_columns(pl.col("price").fill_nan(None), pl.col("oi_now").fill_nan(None),
                    pl.when("has_oi").then(pl.col("map_ms")).alias("map_ms")).drop("has_oi")

    # positions possibly alive at d: start in (d - expiry, d] (they are sorted by start)
    lo = np.searchsorted(p.start, d - int(config.expiry_days * DAY_MS), side="right")
    hi = np.searchsorted(p.start, d, side="right")
    hi = np.where(fresh, hi, lo)
    counts = hi - lo
    trade_of = np.repeat(np.arange(d.size), counts)
    offsets = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    pos = np.arange(trade_of.size) + offsets
    want_long = (ts["direction"] == "BEARISH").to_numpy()
    alive = (p.end[pos] > d[trade_of]) & (p.is_long[pos] == want_long[trade_of])
    trade_of, pos = trade_of[alive], pos[alive]
    amount = p.amount[pos] * np.exp(s.log_scale[oi_i[trade_of]] - p.log_scale[pos])
    # Sum per (trade, bin) sequentially in position order: a parallel group-by would sum in a varying
    # order, and the last-bit differences would break "the same inputs give the same feature".
    order = np.lexsort((pos, p.bin[pos], trade_of))
    trade_of, pos, amount = trade_of[order], pos[order], amount[order]
    bins = p.bin[pos]
    new_group = np.ones(trade_of.size, dtype=bool)
    new_group[1:] = (trade_of[1:] != trade_of[:-1]) | (bins[1:] != bins[:-1])
    first = np.nonzero(new_group)[0]
    per_bin = pl.DataFrame({
        "row": rows[trade_of[first]], "bin": bins[first],
        "base": np.add.reduceat(amount, first) if first.size else amount,
        "usd": np.add.reduceat(amount * p.liq_price[pos], first) if first.size else amount,
    })
    return head, per_bin


def _reference_positions(s: lm._Series, config: LiqMapConfig) -> lm._Positions:
    rows, entry_bar, d_oi, lev, w = lm._opening_rows(s, config)  # which rows open positions: the library's rule
    n_t = lev.size
    mmr = config.maintenance_margin_rate

    row = np.repeat(rows, 2 * n_t)
    tier = np.tile(np.arange(n_t), 2 * rows.size)
    is_long = np.tile(np.repeat([True, False], n_t), rows.size)
    price = s.close[entry_bar[row]]
    liq = np.where(is_long, price * (1 - 1 / lev[tier] + mmr), price * (1 + 1 / lev[tier] - mmr))
    amount = d_oi[row] * np.where(is_long, config.long_share, 1 - config.long_share) * w[tier]
    nz = amount > 0
    row, is_long, liq, amount = row[nz], is_long[nz], liq[nz], amount[nz]

    first = entry_bar[row] + 1
    cross = np.empty(row.size, dtype=np.int64)
    cross[is_long] = _reference_first_cross(s.low, first[is_long], liq[is_long])
    cross[~is_long] = _reference_first_cross(-s.high, first[~is_long], -liq[~is_long])
    n_bars = s.bar_avail.size
    liq_time = np.where(cross < n_bars, s.bar_avail[np.minimum(cross, n_bars - 1)], lm._NEVER)
    start = s.oi_avail[row]
    end = np.minimum(liq_time, start + int(config.expiry_days * DAY_MS))
    return lm._Positions(start=start, end=end, is_long=is_long, liq_price=liq, amount=amount,
                         log_scale=s.log_scale[row], bin=config.bin_index(liq))


def _reference_symbol_inputs(oi: pl.DataFrame, klines: pl.DataFrame, config: LiqMapConfig
                             ) -> dict[str, tuple[lm._Series, lm._Positions]]:
    # the inputs by the library's point-in-time rules (tested above); the reference is what follows
    oi_p = prepare_oi(oi).select("symbol", "avail", "open_interest")
    bars_p = lm._prepare_bars(klines, config)
    out = {}
    for (symbol,), oi_sym in oi_p.group_by(["symbol"], maintain_order=True):
        bars_sym = bars_p.filter(pl.col("symbol") == symbol)
        s = lm._series(oi_sym, bars_sym)
        out[symbol] = (s, _reference_positions(s, config))
    return out


def _reference_first_cross(values: np.ndarray, first: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """For each i: the smallest j >= first[i] with values[j] <= threshold[i], else len(values).

    Binary lifting over a sparse table of running minima: O((n + m) log n), all vectorised.
    """
    n = values.size
    pos = first.astype(np.int64).copy()
    if n == 0:
        return pos
    levels = [values]
    while (1 << len(levels)) <= n:
        prev, half = levels[-1], 1 << (len(levels) - 1)
        levels.append(np.minimum(prev[:-half], prev[half:]))
    for k in range(len(levels) - 1, -1, -1):
        table, width = levels[k], 1 << k
        ok = pos + width <= n
        idx = np.where(ok, pos, 0)
        jump = ok & (table[np.minimum(idx, table.size - 1)] > threshold)
        pos = np.where(jump, pos + width, pos)
    return np.minimum(pos, n)
