"""The card tables: what each row holds (rule, direction, unit, ages), history per as_of, the dashboard views,
the model gate, and pattern cards that render the same from the tables as from the overlay."""

from __future__ import annotations

import contextlib
import re
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from qml_pipeline.research.overlay import apply_overlay
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import VIEWS_DIR, Warehouse
from qml_pipeline.view.build import (CARD_LOOKBACK, ModelGate, build_context_cards, build_pattern_cards,
                                     model_gate, recent_pattern_cards)
from qml_pipeline.view.card_store import (PATTERN_CARDS_SINCE_SQL, RECENT_PATTERN_DAYS, read_latest_context_cards,
                                          read_pattern_cards, write_context_cards, write_pattern_cards)
from qml_pipeline.view.card_text import pattern_cards_markdown
from qml_pipeline.view.cards import CONTEXT_CARD_SCHEMA, CardConfig, context_card_rows
from qml_pipeline.view.pattern_cards import pattern_card_rows, pattern_cards, pattern_cards_for_render
from tests.card_lake import card_lake, fill_market
from tests.view.test_cards import AS_OF, H, _features, _trades, funding_frame, klines_frame, liq_frame, one_card, oi_frame


def card_row(**kw) -> dict:
    """One BTCUSDT context_cards row (rules, directions, unit) from the test_cards inputs."""
    card = pl.DataFrame([one_card(**kw)], schema=CONTEXT_CARD_SCHEMA)
    return context_card_rows(card, kw.get("config", CardConfig())).row(0, named=True)


# ---------------------------------------------------------------- what a context card row holds

@pytest.mark.parametrize("rate,hours,status,direction,rule", [
    (0.00021, 8, "High", "up", "8h-equivalent rate >= funding_high_8h (+0.0200%/8h)"),
    (0.0001, 8, "Neutral", "up", "funding_low_8h (+0.0050%/8h) <= 8h-equivalent rate < funding_high_8h (+0.0200%/8h)"),
    (0.0, 8, "Low", "flat", "8h-equivalent rate < funding_low_8h (+0.0050%/8h)"),
    (-0.0002, 8, "Negative", "down", "8h-equivalent rate <= funding_negative_8h (-0.0100%/8h)"),
    (0.00003, 1, "High", "up", "8h-equivalent rate >= funding_high_8h (+0.0200%/8h)"),
])
def test_funding_row_says_which_rule_set_the_status(rate, hours, status, direction, rule):
    r = card_row(funding=funding_frame([("BTCUSDT", AS_OF - H, rate, hours)]), as_of=AS_OF)
    assert (r["funding_status"], r["funding_direction"], r["funding_rule"]) == (status, direction, rule)
    assert r["funding_unit"] == f"fraction per {hours}h"
    assert r["funding_age_minutes"] == 60  # as_of - the settlement (its available_at)


def test_stale_and_missing_rows_name_their_rule_and_the_thresholds_follow_the_config():
    stale = card_row(funding=funding_frame([("BTCUSDT", AS_OF - 10 * H, 0.0003, 8)]), as_of=AS_OF)
    assert stale["funding_status"] == "stale" and stale["funding_direction"] == "up"
    assert stale["funding_rule"].startswith("age > its interval + funding_grace_minutes (60 min)")
    missing = card_row(as_of=AS_OF)
    assert (missing["funding_status"], missing["funding_direction"], missing["funding_unit"]) == ("missing", None, None)
    assert missing["funding_rule"] == "no settlement known at as_of"
    assert missing["oi_rule"].startswith("no open interest known at as_of")
    assert missing["liq_rule"] == "no liquidation map snapshot at as_of"
    cfg = CardConfig(funding_high_8h=0.0003, oi_flat_pct=5.0, liq_near_pct=0.5)
    r = card_row(funding=funding_frame([("BTCUSDT", AS_OF - H, 0.00021, 8)]),
                 oi=oi_frame("BTCUSDT", [100.0] * 24 + [103.2]), config=cfg, as_of=AS_OF,
                 liq=liq_frame("BTCUSDT", AS_OF - H, [(99_000.0, 10.0, 0.0)]))
    assert r["funding_status"] == "Neutral" and "funding_high_8h (+0.0300%/8h)" in r["funding_rule"]
    assert (r["oi_status"], r["oi_rule"]) == ("Flat", "|24h change| <= oi_flat_pct (5%)")
    assert r["liq_status"] == "Far" and "farther than liq_near_pct (0.5%)" in r["liq_rule"]


@pytest.mark.parametrize("now,status,direction", [(103.2, "Rising", "up"), (98.5, "Falling", "down"),
                                                  (100.5, "Flat", "up"), (100.0, "Flat", "flat")])
def test_oi_direction_is_the_sign_of_the_change_and_the_status_its_rule(now, status, direction):
    r = card_row(oi=oi_frame("BTCUSDT", [100.0] * 24 + [now]), as_of=AS_OF)
    assert (r["oi_status"], r["oi_direction"]) == (status, direction)
    assert r["oi_rule"] == {"Rising": "24h change > +oi_flat_pct (1%)", "Falling": "24h change < -oi_flat_pct (1%)",
                            "Flat": "|24h change| <= oi_flat_pct (1%)"}[status]


def test_liq_direction_points_to_the_cluster_and_price_age_is_kept():
    below = card_row(liq=liq_frame("BTCUSDT", AS_OF - H, [(99_000.0, 10.0, 0.0)]), as_of=AS_OF,
                     klines=klines_frame("BTCUSDT", 100_000.0, AS_OF - H))
    assert (below["liq_cluster_side"], below["liq_direction"], below["liq_status"]) == ("long", "down", "Near")
    assert below["price_age_minutes"] == 60
    above = card_row(liq=liq_frame("BTCUSDT", AS_OF - H, [(101_000.0, 0.0, 10.0)]), as_of=AS_OF)
    assert (above["liq_direction"], above["liq_rule"].split(" (")[0]) == ("up", "the nearest cluster")
    none = card_row(liq=liq_frame("BTCUSDT", AS_OF - H, [(99_000.0, 1.0, 0.0)]), as_of=AS_OF)
    assert (none["liq_status"], none["liq_direction"]) == ("none", None)
    assert none["liq_rule"].startswith("no cluster (a bin with >= 0.5% of the map's OI)")


# ---------------------------------------------------------------- the tables in the lake

def test_context_cards_keep_history_per_as_of_and_the_view_shows_the_newest(tmp_path: Path):
    wh = Warehouse(tmp_path)
    fill_market(wh)
    first = build_context_cards(wh, AS_OF - H, ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    write_context_cards(wh, first)
    write_context_cards(wh, build_context_cards(wh, AS_OF, ["BTCUSDT", "ETHUSDT", "SOLUSDT"]))
    write_context_cards(wh, build_context_cards(wh, AS_OF, ["BTCUSDT", "ETHUSDT", "SOLUSDT"]))  # a rerun replaces
    stored = wh.read(schemas.CONTEXT_CARDS)
    assert stored.group_by("as_of").len().sort("as_of")["len"].to_list() == [3, 3]
    with contextlib.closing(wh.connect()) as con:
        latest = read_latest_context_cards(con)
    assert latest["symbol"].to_list() == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert latest["as_of"].to_list() == [AS_OF] * 3
    btc, eth, sol = latest.iter_rows(named=True)
    assert (btc["funding_status"], btc["funding_age_minutes"], btc["oi_status"], btc["liq_status"]) == \
        ("High", 120.0, "Rising", "Near")
    assert btc["oi_age_minutes"] == 0 and btc["liq_age_minutes"] == 120 and btc["price"] == 96_100.0
    assert (eth["funding_status"], eth["funding_age_minutes"], eth["oi_status"], eth["liq_status"]) == \
        ("stale", 1200.0, "missing", "missing")
    # a configured symbol the warehouse knows nothing about is shown as missing, not left out
    assert (sol["funding_status"], sol["oi_status"], sol["liq_status"], sol["price"]) == \
        ("missing", "missing", "missing", None)
    # the hour-earlier build is still there, with its own ages
    earlier = stored.filter((pl.col("as_of") == AS_OF - H) & (pl.col("symbol") == "BTCUSDT")).row(0, named=True)
    assert earlier["funding_age_minutes"] == 60.0


def test_values_older_than_the_lookback_are_not_read(tmp_path: Path):
    wh = Warehouse(tmp_path)
    fill_market(wh)
    later = AS_OF - 2 * H + CARD_LOOKBACK + timedelta(minutes=1)  # BTC's funding settled 2 h before AS_OF
    r = build_context_cards(wh, later, ["BTCUSDT"]).filter(pl.col("symbol") == "BTCUSDT").row(0, named=True)
    assert r["funding_status"] == "missing" and r["funding_value"] is None
    edge = build_context_cards(wh, later - timedelta(minutes=2), ["BTCUSDT"]).row(0, named=True)
    assert edge["funding_status"] == "stale" and edge["funding_value"] == "+0.021% / 8h"


def test_pattern_card_tables_render_exactly_like_the_overlays_cards(tmp_path: Path):
    trades = _trades()
    overlay = apply_overlay(trades, _features())
    preds = pl.DataFrame({"trade_id": ["a"], "probability": [0.64], "model_version": ["v3"]})
    direct = pattern_cards(trades, overlay, preds)
    rows, items = pattern_card_rows(direct, AS_OF, "shown: test")
    wh = Warehouse(tmp_path)
    write_pattern_cards(wh, schemas.conform(schemas.PATTERN_CARDS, rows.with_columns(pl.lit(AS_OF).alias("built_at"))),
                        schemas.conform(schemas.PATTERN_CARD_ADJUSTMENTS, items))
    stored = wh.read(schemas.PATTERN_CARD_ADJUSTMENTS)
    # every rule of every card, in card order, applied or not
    assert stored.filter(pl.col("trade_id") == "a").select("position", "rule", "applied", "effect_text").rows() == [
        (1, "funding", True, "+20%"), (2, "oi", True, "+10%"), (3, "liq", True, "+5%")]
    assert stored.filter(pl.col("trade_id") == "b").select("rule", "applied").rows() == [
        ("funding", True), ("oi", False), ("liq", False)]
    a = stored.filter((pl.col("trade_id") == "a") & (pl.col("rule") == "funding")).row(0, named=True)
    assert a["multiplier"] == 1.2 and a["effect_pct"] == pytest.approx(20.0)
    assert a["reason"] == "Funding +0.021%/8h (crowded longs)"
    not_applied = stored.filter(~pl.col("applied"))
    assert not_applied["effect_pct"].null_count() == not_applied.height
    rendered = recent_pattern_cards(wh, limit=10)
    assert rendered["trade_id"].to_list() == direct["trade_id"].to_list()
    assert rendered["adjustments"].to_list() == direct["adjustments"].to_list()
    assert rendered["no_effect"].to_list() == direct["no_effect"].to_list()
    shown = pattern_cards_markdown(rendered)
    assert shown == pattern_cards_markdown(direct.with_columns(pl.lit("shown: test").alias("model_gate")))
    assert "**ADJUSTED CONFIDENCE: 100%**" in shown and "Funding +0.021%/8h (crowded longs) **+20%**" in shown
    cards = wh.read(schemas.PATTERN_CARDS).sort("trade_id")
    assert cards["age_minutes"].to_list() == [(AS_OF - t).total_seconds() / 60 for t in cards["decision_time"]]


def test_the_recent_view_is_the_window_query_and_other_windows_take_a_parameter(tmp_path: Path):
    card_lake(tmp_path, as_of=_trades()["decision_time"].max() + timedelta(days=1))
    sql = (VIEWS_DIR / "31_pattern_cards_recent.sql").read_text()
    assert re.search(rf"INTERVAL {RECENT_PATTERN_DAYS:g} DAY", sql)
    wh = Warehouse(tmp_path)
    with contextlib.closing(wh.connect()) as con:
        view = con.sql("SELECT trade_id FROM v_pattern_cards_recent").fetchall()
        same = con.execute(PATTERN_CARDS_SINCE_SQL, [RECENT_PATTERN_DAYS]).fetchall()
        two_days = read_pattern_cards(con, days=2.0)[0]["trade_id"].to_list()
        all_cards, adjustments = read_pattern_cards(con, days=None)
        one, one_adj = read_pattern_cards(con, days=None, limit=1)
        with pytest.raises(ValueError, match=r"days=0: expected a number of days above 0"):
            read_pattern_cards(con, days=0)
    # decided 1, 2 and 3 days before as_of: the 7-day view holds all three, newest first
    assert [r[0] for r in view] == [r[0] for r in same] == ["a", "b", "c"]
    assert two_days == ["a", "b"]
    assert all_cards.height == 3 and adjustments.height == 9
    assert one["trade_id"].to_list() == ["a"] and set(one_adj["trade_id"]) == {"a"}


@pytest.mark.parametrize("gate_passed,auc,shown,reason", [
    (True, 0.61, True, "phase 10 gate passed; model m1 out-of-sample fusion AUC 0.610 > 0.5"),
    (False, 0.61, False, "the phase 10 gate failed, so model m1 ran only under QML_OVERRIDE_GATES"),
    (True, 0.5, False, "model m1: out-of-sample fusion AUC 0.500, not above chance (0.5)"),
])
def test_model_probability_only_where_the_model_passed_its_gate(tmp_path: Path, gate_passed, auc, shown, reason):
    wh = card_lake(tmp_path, gate_passed=gate_passed, auc=auc)
    assert model_gate(wh) == ModelGate(shown, reason)
    cards = wh.read(schemas.PATTERN_CARDS).sort("trade_id")
    if shown:
        assert cards["model_probability"].to_list() == [0.64, None, None]
        assert cards["model_text"][0] == "64% (model m1)"
        no_prediction = "no out-of-sample prediction for this trade (never a walk-forward test trade)"
        assert cards["model_gate"].to_list() == [reason, no_prediction, no_prediction]
        assert f"Model probability: not shown ({no_prediction})" in pattern_cards_markdown(recent_pattern_cards(wh))
    else:
        assert cards["model_gate"].unique().to_list() == [reason]
        assert cards["model_probability"].null_count() == 3 and cards["model_text"].null_count() == 3
        assert f"Model probability: not shown ({reason})" in pattern_cards_markdown(recent_pattern_cards(wh))


def test_no_model_and_no_trades(tmp_path: Path):
    wh = Warehouse(tmp_path)
    fill_market(wh)
    assert model_gate(wh).reason == "no model: phase 11 has not run" and not model_gate(wh).shown
    cards, adjustments = build_pattern_cards(wh, AS_OF)
    assert cards.height == 0 and adjustments.height == 0
    write_pattern_cards(wh, cards, adjustments)
    assert recent_pattern_cards(wh).height == 0


def test_card_rows_carry_the_tables_columns():
    wh_rows = pattern_card_rows(pattern_cards(_trades(), apply_overlay(_trades(), _features())), AS_OF)[0]
    assert set(schemas.PATTERN_CARDS.names) - {"built_at"} <= set(wh_rows.columns)
    ctx = context_card_rows(pl.DataFrame([one_card(as_of=AS_OF)], schema=CONTEXT_CARD_SCHEMA))
    assert set(schemas.CONTEXT_CARDS.names) - {"built_at"} <= set(ctx.columns)
    assert set(pattern_cards_for_render(schemas.empty(schemas.PATTERN_CARDS),
                                        schemas.empty(schemas.PATTERN_CARD_ADJUSTMENTS)).columns) >= \
        {"adjustments", "no_effect"}
