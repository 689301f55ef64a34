"""The raw assets end to end on the live source path (QML_SOURCE=binance) against the local fakes:
what a UI backfill of one symbol does, with the clock fixed so the 30-day REST window is stable."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

import qml_pipeline.sources.binance as binance_source
from dagster_project.resources import MarketDataResource
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from qml_pipeline.timeutil import interval_ms
from tests.dagster_runs import materialize_raw, partition_metadata
from tests.fake_archive import day_range
from tests.fake_binance import EXCHANGE_INFO_PATH, FUNDING_INFO_PATH, FUNDING_PATH, KLINES_PATH, OI_PATH

UTC = timezone.utc
SYMBOL = "BTCUSDT"
NOW = datetime(2024, 3, 15, 12, 0, tzinfo=UTC)
FIRST_DAY = date(2024, 1, 31)  # 45 days ending on NOW's day
DAYS = day_range(FIRST_DAY, 45)
START = datetime(2024, 1, 31, tzinfo=UTC)
BOUNDARY = datetime(2024, 2, 15, tzinfo=UTC)  # first day start inside NOW - 30 days (+ 10 min margin)
FIVE_MIN = timedelta(minutes=5)
TABLES = (schemas.FUNDING_RATES, schemas.OPEN_INTEREST, schemas.KLINES)


class FixedClockBinanceSource(binance_source.BinanceSource):
    """The real source with the fake clock; everything else as the resource passes it."""

    def __init__(self, *args, **kwargs):
        kwargs["now"] = lambda: NOW
        super().__init__(*args, **kwargs)


@pytest.fixture
def live(monkeypatch, tmp_path, fake_binance, fake_archive):
    """Both fakes hold the same rows; the archive cache is the warehouse's (<root>/cache), in tmp."""
    root = tmp_path / "wh"
    monkeypatch.setattr(binance_source, "BinanceSource", FixedClockBinanceSource)
    assert fake_binance.url == fake_archive.url  # one local server, told apart by path

    fake_binance.set_funding_info({SYMBOL: 8})
    fake_binance.add_symbol(SYMBOL, START)  # listed at START: nothing is expected before it
    fake_binance.add_funding(SYMBOL, START, (NOW - START) // timedelta(hours=8) + 1, mark_price="50000.0")
    fake_binance.add_oi(SYMBOL, "5m", START, (NOW - START) // FIVE_MIN)
    for interval in MarketDataResource().kline_intervals:
        step = timedelta(milliseconds=interval_ms(interval))
        # one day beyond NOW: the fake serves still-forming bars, the client must drop them
        fake_binance.add_klines(SYMBOL, interval, START, (NOW + timedelta(days=1) - START) // step)
    fake_archive.metrics_from_rest(fake_binance, SYMBOL, day_range(FIRST_DAY, (BOUNDARY.date() - FIRST_DAY).days))
    return root


def _materialize(root: Path, url: str, first: date = DAYS[0], last: date = DAYS[-1]) -> dg.ExecuteInProcessResult:
    market = MarketDataResource(source="binance", binance_fapi_url=url, binance_archive_url=url, oi_period="5m")
    return materialize_raw(root, SYMBOL, first.isoformat(), last.isoformat(), market=market)


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, object]]:
    """Per asset, the run's metadata (on every partition's materialisation, beside the partition's own)."""
    out: dict[str, dict[str, object]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        out[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    return out


def _stored(root: Path) -> dict[str, pl.DataFrame]:
    wh = Warehouse(root)
    return {t.name: wh.read(t).sort(list(t.key)) for t in TABLES}


def test_backfill_straddling_the_rest_window_reads_archive_then_rest(live, fake_binance, fake_archive):
    root, url = live, fake_binance.url
    result = _materialize(root, url)
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    keys = {f"{SYMBOL}|2024"}
    for name in ("funding_rates", "open_interest", "klines"):
        assert {e.partition for e in result.get_asset_materialization_events()
                if e.asset_key.to_user_string() == name} == keys, name

    stored = _stored(root)
    days = set(DAYS)

    # Open interest: archive before the boundary, REST from it, one unbroken 5-minute grid.
    oi = stored["open_interest"]
    n_oi = (NOW - START) // FIVE_MIN
    assert oi.height == n_oi
    assert oi["event_time"].to_list() == [START + i * FIVE_MIN for i in range(n_oi)]
    assert oi["open_interest"].to_list() == [80000.0 + i for i in range(n_oi)]  # the fakes' rows, in order
    old, recent = oi.filter(pl.col("event_time") < BOUNDARY), oi.filter(pl.col("event_time") >= BOUNDARY)
    assert old["source"].unique().to_list() == ["binance_archive"]
    assert recent["source"].unique().to_list() == ["binance_rest"]
    assert old["event_time"].max() == BOUNDARY - FIVE_MIN and recent["event_time"].min() == BOUNDARY
    assert old.height == 15 * 288
    assert old.schema == recent.schema
    for part in (old, recent):
        assert part.null_count().sum_horizontal().item() == 0
        assert (part["available_at"] == part["event_time"] + FIVE_MIN).all()
        assert part["period_minutes"].unique().to_list() == [5]
    assert (old["open_interest_value"] == old["open_interest"] * 60000.0).all()
    assert (recent["open_interest_value"] == recent["open_interest"] * 60000.0).all()
    rest_starts = [int(p["startTime"]) for p in fake_binance.params(OI_PATH)]
    assert min(rest_starts) == int(BOUNDARY.timestamp() * 1000)  # REST never asked for the archive part

    # Funding: REST is one page against two monthly files to download, so REST throughout.
    funding = stored["funding_rates"]
    assert set(funding["event_time"].dt.date().to_list()) == days
    assert funding.height == 44 * 3 + 2  # 00:00 and 08:00 settled on NOW's day
    assert funding["source"].unique().to_list() == ["binance_rest"]
    assert funding["event_time"].is_unique().all() and funding["event_time"].max() < NOW

    # Klines: every day of every configured interval, the bar still forming at NOW dropped.
    klines = stored["klines"]
    for interval in MarketDataResource().kline_intervals:
        k = klines.filter(pl.col("interval") == interval)
        step = timedelta(milliseconds=interval_ms(interval))
        assert set(k["event_time"].dt.date().to_list()) == days, interval
        assert k["event_time"].to_list() == [START + i * step for i in range(k.height)], interval
        assert k["close_time"].max() <= NOW < k["close_time"].max() + step, interval
        assert k["source"].unique().to_list() == ["binance_rest"]

    # Materialisation metadata: per year partition, what it holds after the run; per run, the requests.
    for name in ("funding_rates", "open_interest", "klines"):
        parts = partition_metadata(result, name)
        assert sum(p["dagster/row_count"] for p in parts.values()) == stored[name].height, name
        assert sum(p["rows_fetched"] for p in parts.values()) == stored[name].height, name
        assert datetime.fromisoformat(parts[f"{SYMBOL}|2024"]["first_time"]) == START, name
        assert datetime.fromisoformat(parts[f"{SYMBOL}|2024"]["last_time"]) == stored[name]["event_time"].max()
        assert all(p["missing_stamps"] == 0 for p in parts.values()), name
    meta = _metadata(result)
    for name in ("funding_rates", "open_interest", "klines"):
        assert meta[name]["source"] == "binance"
        assert meta[name]["requests"] > 0, name
    listing = fake_binance.count(EXCHANGE_INFO_PATH)
    assert listing == 3  # the listing (coverage) is asked once per asset
    assert meta["open_interest"]["requests"] == fake_archive.count() + fake_binance.count(OI_PATH) + 1
    assert meta["funding_rates"]["requests"] == (fake_binance.count(FUNDING_PATH) + fake_binance.count(FUNDING_INFO_PATH)
                                                 + 1)
    assert meta["klines"]["requests"] == fake_binance.count(KLINES_PATH) + 1
    assert meta["funding_rates"]["archive_files"] == meta["klines"]["archive_files"] == "no archive files used"
    assert "files_downloaded" in meta["open_interest"]["archive_files"]
    assert fake_archive.count("zip") == 15 and fake_archive.count("checksum") == 15
    assert (root / "cache" / "binance_archive" / "data" / "futures" / "um" / "daily" / "metrics" / SYMBOL).is_dir()

    # The same backfill again: every partition is already complete, so nothing is fetched at all.
    archive_requests, rest_requests = fake_archive.count(), fake_binance.count()
    again = _materialize(root, url)
    assert again.success
    assert fake_archive.count() == archive_requests
    assert fake_binance.count() - rest_requests == 3  # only the listing, once per asset
    restored = _stored(root)
    for name, df in stored.items():
        assert restored[name].drop("ingested_at").equals(df.drop("ingested_at")), name


def test_rest_geo_block_fails_the_run_naming_the_location_block(live, fake_binance):
    root = live
    fake_binance.inject("451", times=10)
    result = _materialize(root, fake_binance.url, DAYS[-2], DAYS[-1])
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert {e.step_key for e in failures} == {"funding_rates", "open_interest", "klines"}
    assert fake_binance.count() == 3  # one request per asset (the listing): a 451 is not retried
    for failure in failures:
        text = str(failure.step_failure_data.error)
        assert "GeoBlockedError" in text
        assert "refuses requests from this location (HTTP 451" in text
    wh = Warehouse(root)
    assert all(wh.read(t).is_empty() for t in TABLES)
