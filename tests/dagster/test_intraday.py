"""The intraday refresh: what the schedule asks for, and a day's first ticks end to end against the fake Binance
(only new stamps fetched, one run for every symbol, cards as of the tick with exact ages, the export rewritten)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from dagster_project.defs.raw_market_data import OVERLAP_TAG, run_overlap
from dagster_project.defs.schedules import (INTRADAY_TAG, intraday_cron, intraday_job, intraday_refresh,
                                            intraday_requests, liq_map_due)
from dagster_project.partitions import symbol_blocks, sync_symbols
from dagster_project.resources import MarketDataResource, RefreshResource
from qml_pipeline.config import Settings, SettingsError
from qml_pipeline.sources.ingest import DEFAULT_OVERLAP
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from qml_pipeline.view.export import EXPORT_FILE
from tests.fake_binance import EXCHANGE_INFO_PATH, KLINES_PATH, OI_PATH, ms
from tests.intraday_runs import Clock, feed, listed, live_edge, run_intraday

UTC = timezone.utc
MONTH = datetime(2024, 3, 1, tzinfo=UTC)
NOW = datetime(2024, 3, 15, 12, 0, tzinfo=UTC)
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


# ---------------------------------------------------------------- what the schedule asks for

def test_one_run_covers_every_symbol_when_they_are_consecutive_partitions():
    known = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "OLDUSDT", "XRPUSDT"]
    assert symbol_blocks(["ETHUSDT", "BTCUSDT", "SOLUSDT"], known) == [("BTCUSDT", "SOLUSDT")]
    # a symbol no longer configured sits between two configured ones: two runs, so it is not refreshed
    assert symbol_blocks(["BTCUSDT", "XRPUSDT"], known) == [("BTCUSDT", "BTCUSDT"), ("XRPUSDT", "XRPUSDT")]
    with pytest.raises(ValueError, match=r"\['DOGEUSDT'\] are not among the 'symbols' partitions"):
        symbol_blocks(["DOGEUSDT"], known)
    [request] = intraday_requests(NOW + timedelta(minutes=30), ["BTCUSDT", "ETHUSDT", "SOLUSDT"], known, 15, 60)
    assert request.tags[RANGE_START] == "BTCUSDT|2024" and request.tags[RANGE_END] == "SOLUSDT|2024"
    assert request.tags[OVERLAP_TAG] == "60" and request.tags[INTRADAY_TAG] == "2024-03-15T12:30"
    assert request.job_name == intraday_job.name and request.run_key == "intraday-20240315T1230-BTCUSDT-SOLUSDT"
    assert {k.to_user_string() for k in request.asset_selection} == {
        "funding_rates", "open_interest", "klines", "context_cards", "pattern_cards"}


def test_just_after_midnight_on_new_years_day_the_previous_year_is_completed_too():
    [request] = intraday_requests(datetime(2025, 1, 1, 0, 15, tzinfo=UTC), SYMBOLS, SYMBOLS, 15, 60)
    assert request.tags[RANGE_START] == "BTCUSDT|2024" and request.tags[RANGE_END] == "ETHUSDT|2025"
    [request] = intraday_requests(datetime(2024, 4, 1, 0, 15, tzinfo=UTC), SYMBOLS, SYMBOLS, 15, 60)
    assert request.tags[RANGE_START] == "BTCUSDT|2024" and request.tags[RANGE_END] == "ETHUSDT|2024"


@pytest.mark.parametrize("hhmm,refresh,due", [
    ("12:00", 15, False), ("12:15", 15, True), ("12:30", 15, False), ("13:15", 15, False), ("16:15", 15, True),
    ("00:15", 15, True), ("12:30", 30, True), ("13:00", 60, True), ("12:00", 60, False), ("12:05", 5, True),
])
def test_the_liquidation_map_is_rebuilt_on_the_tick_after_each_snapshot_boundary(hhmm, refresh, due):
    h, m = map(int, hhmm.split(":"))
    assert liq_map_due(datetime(2024, 3, 15, h, m, tzinfo=UTC), refresh) is due
    [request] = intraday_requests(datetime(2024, 3, 15, h, m, tzinfo=UTC), SYMBOLS, SYMBOLS, refresh, 60)
    assert (dg.AssetKey("liquidation_map") in request.asset_selection) is due


def test_refresh_interval_and_overlap_settings():
    assert Settings().cards_refresh_minutes == 15 and Settings().intraday_overlap_minutes == 60
    assert intraday_cron(15) == "*/15 * * * *" and intraday_cron(60) == "0 * * * *"
    assert Settings.from_env({"QML_CARDS_REFRESH_MINUTES": "5"}).cards_refresh_minutes == 5
    with pytest.raises(SettingsError, match=r"QML_CARDS_REFRESH_MINUTES=7: expected minutes that divide an hour"):
        Settings.from_env({"QML_CARDS_REFRESH_MINUTES": "7"})
    with pytest.raises(SettingsError, match=r"QML_INTRADAY_OVERLAP_MINUTES=-1: expected minutes, 0 or more"):
        Settings.from_env({"QML_INTRADAY_OVERLAP_MINUTES": "-1"})
    assert run_overlap({}) == DEFAULT_OVERLAP and run_overlap({OVERLAP_TAG: "45"}) == timedelta(minutes=45)
    with pytest.raises(dg.Failure, match=r"run tag qml/overlap_minutes='an hour': expected whole minutes"):
        run_overlap({OVERLAP_TAG: "an hour"})


def _tick(instance: dg.DagsterInstance, scheduled: datetime, source: str = "binance",
          **refresh: int) -> list[dg.RunRequest] | dg.SkipReason:
    """One evaluation of the intraday schedule; the context is closed after it (it opens the instance from its ref,
    which must not outlive the test's instance)."""
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=scheduled,
                                   resources={"market": MarketDataResource(source=source),
                                              "refresh": RefreshResource(**refresh)}) as context:
        return intraday_refresh(context)


def test_the_schedule_refreshes_every_symbol_partition_and_skips_while_a_run_is_in_flight():
    with dg.instance_for_test() as instance:
        skipped = _tick(instance, NOW + timedelta(minutes=15), source="sample")
        assert isinstance(skipped, dg.SkipReason) and "QML_SOURCE=sample" in skipped.skip_message
        _schedule_ticks(instance)


def test_the_schedule_takes_its_interval_and_overlap_from_the_refresh_resource():
    with dg.instance_for_test() as instance:
        sync_symbols(instance, ["BTCUSDT"])
        at = NOW.replace(hour=4, minute=5)  # 5 minutes after a liquidation-map snapshot boundary
        [every_5] = _tick(instance, at, cards_refresh_minutes=5, intraday_overlap_minutes=7)
        [every_15] = _tick(instance, at)
    assert every_5.tags[OVERLAP_TAG] == "7" and every_15.tags[OVERLAP_TAG] == "60"
    assert dg.AssetKey("liquidation_map") in every_5.asset_selection  # due one 5-minute tick after the boundary
    assert dg.AssetKey("liquidation_map") not in every_15.asset_selection


def _schedule_ticks(instance: dg.DagsterInstance) -> None:
    skipped = _tick(instance, NOW + timedelta(minutes=15))  # the symbol_universe sensor has not added any symbol yet
    assert isinstance(skipped, dg.SkipReason) and "symbol_universe sensor" in skipped.skip_message
    sync_symbols(instance, ["BTCUSDT", "ETHUSDT", "DELISTEDUSDT"])
    [request] = _tick(instance, NOW + timedelta(minutes=15))  # every partition, a delisted symbol's too (its edge is then empty)
    assert request.tags[RANGE_START] == "BTCUSDT|2024" and request.tags[RANGE_END] == "DELISTEDUSDT|2024"
    instance.add_run(dg.DagsterRun(job_name=intraday_job.name, run_id="r1", status=dg.DagsterRunStatus.STARTED))
    skipped = _tick(instance, NOW + timedelta(minutes=30))
    assert isinstance(skipped, dg.SkipReason) and "intraday run r1 is still started" in skipped.skip_message


# ---------------------------------------------------------------- a morning of ticks against the fake Binance

def _stored(root, table: schemas.Table) -> pl.DataFrame:
    return Warehouse(root).read(table)


def test_ticks_fetch_only_the_new_edge_and_cards_say_how_fresh_each_value_is(tmp_path, fake_binance):
    root, url = tmp_path / "wh", fake_binance.url
    listed(fake_binance, SYMBOLS, MONTH, NOW + timedelta(days=1))
    feed(fake_binance, SYMBOLS, MONTH, NOW)
    clock, instance = Clock(NOW), dg.DagsterInstance.ephemeral()
    sync_symbols(instance, SYMBOLS)
    with live_edge(clock):
        fill = run_intraday(root, url, instance, NOW, SYMBOLS)
        assert [r.success for r in fill] == [True]
        oi_rows = _stored(root, schemas.OPEN_INTEREST).height
        ticks = {}
        for minutes in (15, 30):
            clock.now = NOW + timedelta(minutes=minutes)
            feed(fake_binance, SYMBOLS, clock.now - timedelta(minutes=15), clock.now)
            before = len(fake_binance.requests)
            [result] = run_intraday(root, url, instance, clock.now, SYMBOLS)
            assert result.success
            ticks[minutes] = (result, fake_binance.requests[before:])

    # one run per tick for both symbols; only open interest had new stamps (the next 1h bar closes at 13:00,
    # the next funding settles at 16:00), asked from 60 minutes before the first missing stamp, never past now
    for minutes, (result, requests) in ticks.items():
        paths = [p for p, _ in requests]
        assert sorted(paths) == sorted([EXCHANGE_INFO_PATH] * 3 + [OI_PATH] * 2), minutes
        # the previous run stored every stamp the fake served before its clock (the last: 11:55, 12:10)
        first_missing = {15: NOW, 30: NOW + timedelta(minutes=15)}[minutes]
        starts = {a["symbol"]: int(a["startTime"]) for p, a in requests if p == OI_PATH}
        assert starts == {s: ms(first_missing - timedelta(minutes=60)) for s in SYMBOLS}
        ends = [int(a["endTime"]) for p, a in requests if p == OI_PATH]
        assert max(ends) < ms(NOW + timedelta(minutes=minutes))
        parts = {e.partition for e in result.get_asset_materialization_events()
                 if e.asset_key.to_user_string() == "open_interest"}
        assert parts == {f"{s}|2024" for s in SYMBOLS}
        meta = [e.materialization.metadata for e in result.get_asset_materialization_events()
                if e.asset_key.to_user_string() == "open_interest"]
        assert {m["overlap_minutes"].value for m in meta} == {60}
        assert {m["rows_inserted"].value for m in meta} == {3}  # three new 5-minute stamps per symbol
    materialized = {m: {e.asset_key.to_user_string() for e in r.get_asset_materialization_events()}
                    for m, (r, _) in ticks.items()}
    assert "liquidation_map" in materialized[15] and "liquidation_map" not in materialized[30]
    assert {"context_cards", "pattern_cards"} <= materialized[30]
    assert not any(p == KLINES_PATH for _, rq in ticks.values() for p, _ in rq)
    assert _stored(root, schemas.OPEN_INTEREST).height == oi_rows + 2 * 2 * 3

    # the command bar as of each tick, kept per as_of; ages measured from when each value became available
    cards = _stored(root, schemas.CONTEXT_CARDS)
    assert cards.group_by("as_of").len().sort("as_of")["as_of"].to_list() == \
        [NOW, NOW + timedelta(minutes=15), NOW + timedelta(minutes=30)]
    last = cards.filter((pl.col("as_of") == NOW + timedelta(minutes=30)) & (pl.col("symbol") == "BTCUSDT")
                        ).row(0, named=True)
    assert last["built_at"] == NOW + timedelta(minutes=30)
    assert last["funding_event_time"] == datetime(2024, 3, 15, 8, 0, tzinfo=UTC)
    assert last["funding_age_minutes"] == 270  # 08:00 settlement, known at 08:00
    assert last["oi_event_time"] == NOW + timedelta(minutes=25)  # available at 12:30 (stamp + 5 min)
    assert last["oi_age_minutes"] == 0
    earlier = cards.filter((pl.col("as_of") == NOW + timedelta(minutes=15)) & (pl.col("symbol") == "BTCUSDT")
                           ).row(0, named=True)
    assert (earlier["oi_event_time"], earlier["oi_age_minutes"]) == (NOW + timedelta(minutes=10), 0)
    assert earlier["funding_age_minutes"] == 255 and earlier["price_age_minutes"] == 15
    assert last["price_time"] == NOW and last["price_age_minutes"] == 30  # the 11:00 bar, closed at 12:00
    assert last["funding_status"] == "Neutral" and last["oi_status"] in ("Rising", "Flat", "Falling")
    assert last["liq_snapshot_time"] == NOW and last["liq_age_minutes"] == 30

    # the export follows the newest build
    doc = json.loads((root / EXPORT_FILE).read_text())
    assert {c["as_of"] for c in doc["context_cards"]} == {"2024-03-15T12:30:00.000Z"}
    assert doc["context_cards"][0]["oi"]["age_minutes"] == 0
    assert doc["context_cards"][0]["funding"]["age_minutes"] == 270
