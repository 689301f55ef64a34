"""The Bybit and OKX raw assets end to end through Dagster in process, against the local fakes: the same
factory, partitions and checks as Binance's, rows written to the same tables with their venue, OKX's
history depth reported as coverage (not as holes), a missing settlement failing the completeness check
without deleting anything, and a second run fetching nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

import dagster_project.defs.context as context_defs
import dagster_project.defs.quality as quality_defs
from dagster_project.resources import MarketDataResource, WarehouseResource
from qml_pipeline.config import Settings
from qml_pipeline.sources import bybit, okx
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from tests.dagster_runs import materialize_raw, partition_metadata
from tests.fake_bybit import FUNDING_PATH as BYBIT_FUNDING, OI_PATH as BYBIT_OI
from tests.fake_okx import OI_PATH as OKX_OI

UTC = timezone.utc
ROOT = Path(__file__).parents[2]
SYMBOL = "BTCUSDT"
NOW = datetime(2024, 3, 15, 12, 0, tzinfo=UTC)
LAUNCH = datetime(2024, 2, 26, tzinfo=UTC)  # Bybit's listing: nothing is expected before it
M5, H8 = timedelta(minutes=5), timedelta(hours=8)
YEAR = f"{SYMBOL}|2024"  # the year partition: its months January .. the live edge
VENUE_ASSETS = ("bybit_funding_rates", "bybit_open_interest", "okx_funding_rates", "okx_open_interest")


class FixedClockBybit(bybit.BybitSource):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, now=lambda: NOW, **kwargs)


class FixedClockOkx(okx.OkxSource):
    path_limits = ()  # OKX's 10 requests / 2 s throttle: tests/sources/test_okx.py

    def __init__(self, *args, **kwargs):
        super().__init__(*args, now=lambda: NOW, **kwargs)


@pytest.fixture
def venues(monkeypatch, fake_bybit, fake_okx):
    """Bybit from its launch, OKX as deep as it serves; one local server for both, told apart by path."""
    monkeypatch.setattr(bybit, "BybitSource", FixedClockBybit)
    monkeypatch.setattr(okx, "OkxSource", FixedClockOkx)
    assert fake_bybit.url == fake_okx.url
    fake_bybit.add_instrument(SYMBOL, LAUNCH)
    n_oi = (NOW - LAUNCH) // M5
    fake_bybit.add_oi(SYMBOL, "5min", LAUNCH, n_oi)
    fake_bybit.add_marks(SYMBOL, "5", LAUNCH, n_oi)
    fake_bybit.add_funding(SYMBOL, LAUNCH, (NOW - LAUNCH) // H8 + 1)
    fake_okx.add_swap("BTC-USDT-SWAP", "0.01", datetime(2019, 12, 10, tzinfo=UTC))
    fake_okx.add_oi("BTC-USDT-SWAP", "5m", NOW - 2000 * M5, 2000)  # OKX keeps the newest 1,440
    return fake_bybit, fake_okx


def _okx_funding(fake_okx, skip: datetime | None = None) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    times = [start + i * H8 for i in range((NOW - start) // H8 + 1)]
    for t in times:
        if t != skip:
            fake_okx.add_funding("BTC-USDT-SWAP", t, 1)


def _materialize(root: Path, url: str) -> dg.ExecuteInProcessResult:
    market = MarketDataResource(source="sample", bybit_url=url, okx_url=url, oi_period="5m")
    return materialize_raw(root, SYMBOL, "2024-02-01", "2024-03-15", market=market, venues=("bybit", "okx"))


def _stored(root: Path, table: schemas.Table, venue: str) -> pl.DataFrame:
    return Warehouse(root).read(table, venue=venue)


def test_venue_assets_write_their_venue_with_the_binance_checks(tmp_path, venues):
    fake_bybit, fake_okx = venues
    _okx_funding(fake_okx)
    result = _materialize(tmp_path, fake_bybit.url)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert all(e.passed for e in evaluations)
    by_check = {(e.asset_key.to_user_string(), e.check_name) for e in evaluations}
    assert {(a, c) for a in VENUE_ASSETS for c in ("contract", "complete", "stored_rows_valid")} <= by_check
    for asset in VENUE_ASSETS:
        assert {e.partition for e in result.get_asset_materialization_events()
                if e.asset_key.to_user_string() == asset} == {YEAR}, asset

    # Bybit: every 5-minute stamp from the launch to the live edge, in coins and USD, known at stamp + 5 min
    oi = _stored(tmp_path, schemas.OPEN_INTEREST, "bybit")
    assert oi["event_time"].to_list() == [LAUNCH + i * M5 for i in range((NOW - LAUNCH) // M5)]
    assert (oi["available_at"] == oi["event_time"] + M5).all() and oi["source"].unique().to_list() == ["bybit_rest"]
    assert oi["open_interest_value"].null_count() == 0
    funding = _stored(tmp_path, schemas.FUNDING_RATES, "bybit")
    assert funding["event_time"].min() == LAUNCH and funding["event_time"].max() == NOW - 4 * timedelta(hours=1)
    # OKX: only the newest 1,440 open-interest rows exist; funding three months back (the fake's from January)
    okx_oi = _stored(tmp_path, schemas.OPEN_INTEREST, "okx")
    assert okx_oi.height == 1439 and okx_oi["event_time"].min() == NOW - 1439 * M5
    assert _stored(tmp_path, schemas.FUNDING_RATES, "okx")["event_time"].min() == datetime(2024, 1, 1, tzinfo=UTC)
    # the venues' rows never touch Binance's
    assert _stored(tmp_path, schemas.OPEN_INTEREST, "binance").is_empty()

    # per partition: what is stored, and where the source serves data (so the empty months are not holes)
    okx_parts = partition_metadata(result, "okx_open_interest")
    assert okx_parts[YEAR]["dagster/row_count"] == 1439 and okx_parts[YEAR]["missing_stamps"] == 0
    assert okx_parts[YEAR]["source_serves"] == "5m [2024-03-10 12:05, 2024-03-15 11:53)"
    bybit_parts = partition_metadata(result, "bybit_open_interest")
    assert bybit_parts[YEAR]["first_time"] == str(LAUNCH)
    assert sum(p["dagster/row_count"] for p in bybit_parts.values()) == oi.height
    meta = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
            for e in result.get_asset_materialization_events()}
    assert meta["bybit_open_interest"]["venue"].value == "bybit"
    assert meta["bybit_open_interest"]["requests"].value == fake_bybit.count() - fake_bybit.count(BYBIT_FUNDING) - 1

    # again: every partition is complete where the venue serves data, so nothing is fetched
    before = fake_bybit.count(BYBIT_OI), fake_okx.count(OKX_OI), fake_bybit.count(BYBIT_FUNDING)
    again = _materialize(tmp_path, fake_bybit.url)
    assert again.success
    assert (fake_bybit.count(BYBIT_OI), fake_okx.count(OKX_OI), fake_bybit.count(BYBIT_FUNDING)) == before
    for asset in VENUE_ASSETS:
        assert all(p["rows_fetched"] == 0 for p in partition_metadata(again, asset).values()), asset


def test_aggregate_and_divergence_assets_over_the_venues_rows(tmp_path, venues):
    fake_bybit, fake_okx = venues
    _okx_funding(fake_okx)
    assert _materialize(tmp_path, fake_bybit.url).success
    # the venues (and thresholds) the resource is given reach the assets: the definitions loaded with Binance only
    every_venue = MarketDataResource(venues=["binance", "bybit", "okx"], venue_divergence_24h_points=12.5)
    result = dg.materialize([context_defs.open_interest_aggregate, quality_defs.venue_divergence],
                            resources={"warehouse": WarehouseResource(root=str(tmp_path)), "market": every_venue},
                            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
    assert result.success
    agg = Warehouse(tmp_path).read(schemas.OPEN_INTEREST_AGGREGATE)
    okx_from = NOW - 1439 * M5 + M5  # OKX's oldest row served, known one period later
    before, after = agg.filter(pl.col("event_time") < okx_from), agg.filter(pl.col("event_time") >= okx_from)
    # before OKX's depth its absence is visible, never a zero in the total; Binance holds no rows here at all
    assert set(before["venues_present"]) == {"bybit"} and set(before["venues_missing"]) == {"binance,okx"}
    assert (before["oi_usd_total"] == before["bybit_oi_usd"]).all() and before["okx_share"].null_count() == before.height
    assert set(after["venues_present"]) == {"bybit,okx"}
    assert (after["bybit_share"] + after["okx_share"] - 1).abs().max() < 1e-12
    divergence = next(e for e in result.get_asset_check_evaluations() if e.check_name == "venues_agree")
    assert divergence.passed and divergence.metadata["comparisons"].value > 0  # the fakes' OI grows alike
    assert divergence.metadata["threshold_points"].value == "1h: 3, 24h: 12.5"
    [aggregate] = [m for m in result.get_asset_materialization_events()
                   if m.asset_key == dg.AssetKey("open_interest_aggregate")]
    assert aggregate.materialization.metadata["venues_configured"].value == "binance, bybit, okx"


def test_missing_settlement_fails_the_complete_check_and_deletes_nothing(tmp_path, venues):
    fake_bybit, fake_okx = venues
    hole = datetime(2024, 3, 5, 8, tzinfo=UTC)
    _okx_funding(fake_okx, skip=hole)
    result = _materialize(tmp_path, fake_bybit.url)
    assert not result.success
    complete = {e.partition: e for e in result.get_asset_check_evaluations()
                if e.asset_key.to_user_string() == "okx_funding_rates" and e.check_name == "complete"
                and e.partition}
    assert set(complete) == {YEAR} and not complete[YEAR].passed
    missing = complete[YEAR].metadata["missing"].value
    assert missing.startswith("funding_rates BTCUSDT [2024-03-01, ") and "2024-03-05T08:00Z" in missing
    assert "2024-02-01" not in missing  # the complete months are counted, not listed
    assert complete[YEAR].metadata["missing_stamps"].value == 1
    stored = _stored(tmp_path, schemas.FUNDING_RATES, "okx")
    assert hole not in stored["event_time"].to_list() and stored.height == (NOW - datetime(2024, 1, 1, tzinfo=UTC)) // H8
    # the other venue's assets are unaffected
    assert all(e.passed for e in result.get_asset_check_evaluations()
               if e.asset_key.to_user_string().startswith("bybit_"))


def test_qml_venues_is_parsed_and_checked():
    assert Settings.from_env({}).venues == ("binance",)
    assert Settings.from_env({"QML_VENUES": "binance, bybit,okx"}).venues == ("binance", "bybit", "okx")
    for bad in ("bybit,okx", "binance,kraken", "binance,binance"):
        with pytest.raises(ValueError, match="QML_VENUES=.*binance included"):
            Settings.from_env({"QML_VENUES": bad})


def test_venue_assets_exist_only_for_configured_venues_and_join_the_refresh():
    """The definitions as Dagster loads them with QML_VENUES set (a fresh process: settings are read at import)."""
    script = ("import json; from dagster_project.definitions import defs; r = defs.get_repository_def(); "
              "g = r.asset_graph; job = r.get_job('raw_refresh').asset_layer.executable_asset_keys; "
              "print(json.dumps({'job': sorted(k.to_user_string() for k in job), "
              "'features': sorted(k.to_user_string() for k in g.get(dg.AssetKey('trade_context_features')).parent_keys), "
              "'aggregate': sorted(k.to_user_string() for k in g.get(dg.AssetKey('open_interest_aggregate')).parent_keys), "
              "'partitions': [str(g.get(dg.AssetKey(k)).partitions_def) for k in ('okx_open_interest', 'open_interest')]}))")
    env = {**os.environ, "QML_VENUES": "binance,okx", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", "import dagster as dg; " + script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["job"] == ["funding_rates", "klines", "okx_funding_rates", "okx_open_interest", "open_interest"]
    assert {"okx_funding_rates", "open_interest_aggregate", "funding_rates"} <= set(got["features"])
    assert got["aggregate"] == ["okx_open_interest", "open_interest"]
    okx_partitions, binance_partitions = got["partitions"]
    assert okx_partitions == binance_partitions and "symbols" in okx_partitions  # the same symbol x month
