"""BinanceArchive against the fake archive: checksums, cache, headers, defects, gaps, and equality
with the REST source on the same underlying rows; BinanceSource's choice between the two."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

import hashlib

import polars as pl
import pytest

from qml_pipeline.store import schemas
from qml_pipeline.sources.http_client import HttpClient
from qml_pipeline.sources.binance import BinanceSource
from qml_pipeline.sources.binance_archive import (
    BinanceArchive,
    ArchiveFileError,
    ChecksumError,
    has_header,
    metrics_path,
    read_archive_csv,
)
from qml_pipeline.sources.binance_rest import BinanceRest
from qml_pipeline.store.warehouse import Warehouse
from tests.fake_archive import METRICS_HEADER, day_range

UTC = timezone.utc
D0 = date(2024, 1, 10)
T0 = datetime(2024, 1, 10, tzinfo=UTC)
DAY = timedelta(days=1)
LATER = datetime(2024, 6, 1, tzinfo=UTC)  # long after the files closed


def client_for(fake, fake_time) -> HttpClient:
    return HttpClient(fake.url, sleep=fake_time.sleep, clock=fake_time.clock, rng=random.Random(1),
                      timeout_s=(2, 5))


def make_archive(fake_archive, fake_time, cache_dir, now: datetime = LATER, **kw) -> BinanceArchive:
    return BinanceArchive(client_for(fake_archive, fake_time), cache_dir, now=lambda: now, **kw)


# ------------------------------------------------------------------------------------ checksums

def test_good_checksum_loads_five_minute_rows(fake_archive, fake_time, tmp_path):
    fake_archive.add_metrics_day("BTCUSDT", D0)
    arch = make_archive(fake_archive, fake_time, tmp_path)
    df = arch.open_interest("BTCUSDT", "5m", T0, T0 + DAY)
    assert df.height == 288
    assert df["event_time"][0] == T0 and df["event_time"][-1] == T0 + DAY - timedelta(minutes=5)
    assert (df["available_at"] == df["event_time"] + timedelta(minutes=5)).all()
    assert df["period_minutes"].unique().to_list() == [5]
    assert df["source"].unique().to_list() == ["binance_archive"]
    assert df["open_interest"][3] == 80003.0 and df["open_interest_value"][3] == 80003 * 60000.0
    schemas.validate(schemas.OPEN_INTEREST, df)
    assert arch.last_report.files_downloaded == 1 and arch.last_report.checksum_failures == []


def test_bad_checksum_raises_naming_file_and_hashes_and_loads_nothing(fake_archive, fake_time, tmp_path):
    fake_archive.add_metrics_day("BTCUSDT", D0)
    bad = fake_archive.add_metrics_day("BTCUSDT", D0 + DAY, bad_checksum=True)
    arch = make_archive(fake_archive, fake_time, tmp_path)
    wh = Warehouse(tmp_path / "wh")
    with pytest.raises(ChecksumError) as exc:
        wh.merge(schemas.OPEN_INTEREST, arch.open_interest("BTCUSDT", "5m", T0, T0 + 2 * DAY))
    msg = str(exc.value)
    name = bad.rsplit("/", 1)[-1]
    assert name in msg and "does not match the published" in msg
    assert fake_archive.checksums[bad] in msg  # expected
    import hashlib
    assert hashlib.sha256(fake_archive.files[bad]).hexdigest() in msg  # got
    assert arch.last_report.checksum_failures == [name]
    assert wh.read(schemas.OPEN_INTEREST).is_empty()
    assert not (tmp_path / "binance_archive" / bad).exists()  # a bad file is never cached


def test_malformed_checksum_file_is_a_clear_error_and_is_counted(fake_archive, fake_time, tmp_path):
    path = fake_archive.add_metrics_day("BTCUSDT", D0)
    fake_archive.checksums[path] = "<html><body>Service Unavailable</body></html>"
    arch = make_archive(fake_archive, fake_time, tmp_path)
    with pytest.raises(ChecksumError, match="CHECKSUM is not") as exc:
        arch.open_interest("BTCUSDT", "5m", T0, T0 + DAY)
    assert fake_archive.url + "/" + path + ".CHECKSUM" in str(exc.value)
    assert arch.last_report.checksum_failures == [f"{path.rsplit('/', 1)[-1]}: unreadable CHECKSUM"]


def test_checksum_404_beside_an_existing_zip_is_retried_then_fails_naming_the_url(fake_archive, fake_time,
                                                                                tmp_path):
    """Not a missing day: the zip is there, only its CHECKSUM is not (yet). Nothing unverified is used,
    and the caller fails (never reading it as a gap whose rows could be dropped)."""
    fake_archive.add_metrics_day("BTCUSDT", D0)
    path = fake_archive.add_metrics_day("BTCUSDT", D0 + DAY)
    fake_archive.checksums.pop(path)
    arch = make_archive(fake_archive, fake_time, tmp_path)
    with pytest.raises(ArchiveFileError) as exc:
        arch.open_interest("BTCUSDT", "5m", T0, T0 + 2 * DAY)
    msg = str(exc.value)
    assert f"{fake_archive.url}/{path}.CHECKSUM answered 404 3 times although {fake_archive.url}/{path} exists" in msg
    assert fake_archive.requests.count(path + ".CHECKSUM") == 3
    assert fake_time.sleeps.count(2.0) == 2  # two pauses between the three attempts
    assert arch.last_report.missing == []
    assert arch.last_report.checksum_failures == [f"{path.rsplit('/', 1)[-1]}: CHECKSUM missing"]


def test_checksum_that_appears_on_the_retry_is_used(fake_archive, fake_time, tmp_path):
    path = fake_archive.add_metrics_day("BTCUSDT", D0)
    published = fake_archive.checksums.pop(path)
    original_sleep = fake_time.sleep

    def publish_then_sleep(seconds: float) -> None:
        fake_archive.checksums[path] = published
        original_sleep(seconds)

    fake_time.sleep = publish_then_sleep
    df = make_archive(fake_archive, fake_time, tmp_path).open_interest("BTCUSDT", "5m", T0, T0 + DAY)
    assert df.height == 288


def test_broken_zip_with_a_matching_checksum_is_evicted_refetched_once_then_named(fake_archive, fake_time,
                                                                                tmp_path):
    path = fake_archive.add_metrics_day("BTCUSDT", D0)
    broken = fake_archive.files[path][:40]  # a truncated zip, published with its own (matching) checksum
    fake_archive.files[path] = broken
    fake_archive.checksums[path] = hashlib.sha256(broken).hexdigest()
    arch = make_archive(fake_archive, fake_time, tmp_path)
    with pytest.raises(ArchiveFileError) as exc:
        arch.open_interest("BTCUSDT", "5m", T0, T0 + DAY)
    msg = str(exc.value)
    name = path.rsplit("/", 1)[-1]
    assert name in msg and f"{fake_archive.url}/{path}" in msg and "not a readable zip, twice" in msg
    assert fake_archive.requests.count(path) == 2  # downloaded once more before giving up
    cached = tmp_path / "binance_archive" / path
    assert not cached.exists() and not cached.with_name(cached.name + ".sha256").exists()  # evicted
    # the archive fixes the file: the next run downloads it (nothing poisoned stays in the cache)
    fake_archive.add_metrics_day("BTCUSDT", D0)
    assert make_archive(fake_archive, fake_time, tmp_path).open_interest("BTCUSDT", "5m", T0, T0 + DAY).height == 288


def test_bad_csv_names_file_line_and_column(fake_archive, fake_time, tmp_path):
    path = "data/futures/um/daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-01-10.zip"
    fake_archive.add_file(path, METRICS_HEADER + "\n2024-01-10 00:00:00,BTCUSDT,80000,4.8e9,1,1,1,1\n"
                                                 "2024-01-10 00:05:00,BTCUSDT,n/a,4.8e9,1,1,1,1\n")
    with pytest.raises(ArchiveFileError) as exc:
        make_archive(fake_archive, fake_time, tmp_path).open_interest("BTCUSDT", "5m", T0, T0 + DAY)
    assert "BTCUSDT-metrics-2024-01-10.zip" in str(exc.value)
    assert "line 3, column 'sum_open_interest': 'n/a' is not a Float64 value" in str(exc.value)


# ------------------------------------------------------------------------------------ cache

def test_second_fetch_downloads_no_zip_and_closed_files_need_no_request(fake_archive, fake_time, tmp_path):
    for d in day_range(D0, 3):
        fake_archive.add_metrics_day("BTCUSDT", d)
    first = make_archive(fake_archive, fake_time, tmp_path).open_interest("BTCUSDT", "5m", T0, T0 + 3 * DAY)
    assert fake_archive.count("zip") == 3 and fake_archive.count("checksum") == 3

    # Recently closed files: one CHECKSUM request each, no zip.
    recent = make_archive(fake_archive, fake_time, tmp_path, now=T0 + 4 * DAY)
    again = recent.open_interest("BTCUSDT", "5m", T0, T0 + 3 * DAY)
    assert fake_archive.count("zip") == 3 and fake_archive.count("checksum") == 6
    assert recent.last_report.files_from_cache == 3 and recent.last_report.files_downloaded == 0

    # Files closed more than a week ago: served from the cache without any request.
    old = make_archive(fake_archive, fake_time, tmp_path)
    third = old.open_interest("BTCUSDT", "5m", T0, T0 + 3 * DAY)
    assert fake_archive.count() == 9
    assert old.requests_needed([]) == 0
    for df in (again, third):
        assert df.drop("ingested_at").equals(first.drop("ingested_at"))


def test_changed_checksum_or_corrupt_cache_downloads_again(fake_archive, fake_time, tmp_path):
    path = fake_archive.add_metrics_day("BTCUSDT", D0)
    make_archive(fake_archive, fake_time, tmp_path).open_interest("BTCUSDT", "5m", T0, T0 + DAY)
    # Binance republishes the day with corrected rows: the new checksum triggers a download.
    fake_archive.add_metrics_day("BTCUSDT", D0, drop_last=1)
    arch = make_archive(fake_archive, fake_time, tmp_path, now=T0 + 2 * DAY)
    assert arch.open_interest("BTCUSDT", "5m", T0, T0 + DAY).height == 287
    assert fake_archive.count("zip") == 2
    # A cached zip damaged on disk is not trusted, even for a long-closed file.
    cached = tmp_path / "binance_archive" / path
    cached.write_bytes(cached.read_bytes()[:-10])
    assert make_archive(fake_archive, fake_time, tmp_path).open_interest("BTCUSDT", "5m", T0, T0 + DAY).height == 287
    assert fake_archive.count("zip") == 3


# ------------------------------------------------------------------------------------ parsing

def test_header_detected_per_file(fake_archive, fake_time, tmp_path):
    fake_archive.add_metrics_day("BTCUSDT", D0, header=True)
    fake_archive.add_metrics_day("BTCUSDT", D0 + DAY, header=False)
    arch = make_archive(fake_archive, fake_time, tmp_path)
    df = arch.open_interest("BTCUSDT", "5m", T0, T0 + 2 * DAY)
    assert df.height == 576 and df["event_time"].is_unique().all()
    assert (arch.last_report.headered_files, arch.last_report.headerless_files) == (1, 1)
    # both days parse to the same values
    assert df["open_interest"][:288].to_list() == df["open_interest"][288:].to_list()


def test_read_archive_csv_header_by_name_and_width_check():
    cols = {"calc_time": pl.Int64, "funding_interval_hours": pl.Int16, "last_funding_rate": pl.Float64}
    assert has_header(b"calc_time,funding_interval_hours,last_funding_rate\n1,8,0.1\n")
    assert not has_header(b"1704067200000,8,0.0001\n")
    reordered = b"last_funding_rate,calc_time,funding_interval_hours\n0.0001,1704067200000,8\n"
    df, header = read_archive_csv(reordered, cols)
    assert header and df.row(0) == (1704067200000, 8, 0.0001)
    with pytest.raises(ValueError, match="expected 3"):
        read_archive_csv(b"1,2\n", cols)
    with pytest.raises(ValueError, match="lacks columns"):
        read_archive_csv(METRICS_HEADER.encode() + b"\n", cols)


# ------------------------------------------------------------------------------------ defects

def test_defects_counted_duplicates_dropped_zeros_kept(fake_archive, fake_time, tmp_path):
    fake_archive.add_metrics_day("BTCUSDT", D0, duplicate_day=True)
    fake_archive.add_metrics_day("BTCUSDT", D0 + DAY, drop_last=12)
    fake_archive.add_metrics_day("BTCUSDT", D0 + 2 * DAY, zero_oi_at=[100, 101, 102])
    arch = make_archive(fake_archive, fake_time, tmp_path)
    df = arch.open_interest("BTCUSDT", "5m", T0, T0 + 3 * DAY)
    rep = arch.last_report
    assert rep.duplicate_rows == 288 and rep.conflicting_duplicates == 0
    assert rep.partial_days == [(D0 + DAY, 276)]
    assert rep.zero_oi_rows == 3
    assert rep.zero_oi_times[0] == T0 + 2 * DAY + 100 * timedelta(minutes=5)
    assert df.height == 288 + 276 + 288 and df["event_time"].is_unique().all()
    assert df.filter(pl.col("open_interest") == 0).height == 3  # kept as rows
    schemas.validate(schemas.OPEN_INTEREST, df)
    assert rep.as_dict()["partial_days"] == [("2024-01-11", 276)]


def test_missing_day_is_a_recorded_gap(fake_archive, fake_time, tmp_path):
    fake_archive.add_metrics_day("BTCUSDT", D0)
    fake_archive.add_metrics_day("BTCUSDT", D0 + 2 * DAY)
    arch = make_archive(fake_archive, fake_time, tmp_path)
    df = arch.open_interest("BTCUSDT", "5m", T0, T0 + 3 * DAY)
    assert df.height == 576
    rep = arch.last_report
    assert [f.path for f in rep.missing] == [metrics_path("BTCUSDT", D0 + DAY)]
    assert rep.missing_ranges() == [(T0 + DAY, T0 + 2 * DAY)]
    assert fake_archive.count("zip") == 3  # a CHECKSUM 404 costs one zip request: is the zip there (then retried)?


def test_coarser_period_takes_each_buckets_last_row(fake_archive, fake_time, tmp_path):
    fake_archive.add_metrics_day("BTCUSDT", D0)
    df = make_archive(fake_archive, fake_time, tmp_path).open_interest("BTCUSDT", "1h", T0, T0 + DAY)
    assert df.height == 24
    assert df["event_time"].to_list() == [T0 + timedelta(hours=h, minutes=55) for h in range(24)]
    assert df["open_interest"][0] == 80011.0
    assert (df["available_at"] == df["event_time"] + timedelta(minutes=5)).all()
    with pytest.raises(ValueError, match="period"):
        make_archive(fake_archive, fake_time, tmp_path).open_interest("BTCUSDT", "7m", T0, T0 + DAY)


def test_publication_lag_added(fake_archive, fake_time, tmp_path):
    fake_archive.add_metrics_day("BTCUSDT", D0)
    df = make_archive(fake_archive, fake_time, tmp_path, oi_publication_lag_s=30).open_interest(
        "BTCUSDT", "5m", T0, T0 + DAY)
    assert (df["available_at"] == df["event_time"] + timedelta(minutes=5, seconds=30)).all()


# ------------------------------------------------------------------------------------ funding, klines

def test_funding_monthly_snapped_interval_from_file(fake_archive, fake_time, tmp_path):
    h = 3_600_000
    t = int(T0.replace(day=1).timestamp() * 1000)
    rows = [(t + 3, 8, "0.00010000"), (t + 8 * h - 2, 8, "0.00012000"), (t + 12 * h + 5, 4, "-0.00003000")]
    fake_archive.add_funding_month("BTCUSDT", date(2024, 1, 1), rows, header=False)
    arch = make_archive(fake_archive, fake_time, tmp_path, now=datetime(2024, 2, 15, tzinfo=UTC))
    df = arch.funding_rates("BTCUSDT", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 10, tzinfo=UTC))
    assert df["event_time"].to_list() == [datetime(2024, 1, 1, hh, tzinfo=UTC) for hh in (0, 8, 12)]
    assert df["funding_interval_hours"].to_list() == [8, 8, 4]
    assert df["funding_rate"].to_list() == [0.0001, 0.00012, -0.00003]
    assert df["mark_price"].null_count() == 3
    assert (df["available_at"] == df["event_time"]).all()
    schemas.validate(schemas.FUNDING_RATES, df)
    # February is not over: its monthly file is not requested
    assert not any("2024-02" in p for p in fake_archive.requests)


def test_klines_monthly_for_closed_months_daily_for_rest_and_microseconds(fake_binance, fake_archive, fake_time,
                                                                          tmp_path):
    jan = datetime(2024, 1, 1, tzinfo=UTC)
    fake_binance.add_klines("BTCUSDT", "1h", jan, 24 * 31 + 24 * 3)
    rows = fake_binance.klines[("BTCUSDT", "1h")]
    fake_archive.add_klines_file("BTCUSDT", "1h", "monthly", date(2024, 1, 1), rows[:744], header=False)
    fake_archive.klines_daily_from_rest(fake_binance, "BTCUSDT", "1h", day_range(date(2024, 2, 1), 2),
                                        microseconds=True)
    arch = make_archive(fake_archive, fake_time, tmp_path, now=datetime(2024, 2, 3, 12, tzinfo=UTC))
    df = arch.klines("BTCUSDT", "1h", jan, datetime(2024, 2, 4, tzinfo=UTC))
    assert fake_archive.count("zip") == 3  # one monthly, two daily (Feb 3 is not over)
    assert df.height == 744 + 48
    assert df["event_time"].to_list() == [jan + timedelta(hours=i) for i in range(792)]
    assert (df["close_time"] == df["event_time"] + timedelta(hours=1)).all()
    assert (df["available_at"] == df["close_time"]).all()
    schemas.validate(schemas.KLINES, df)


def test_klines_monthly_404_falls_back_to_daily(fake_binance, fake_archive, fake_time, tmp_path):
    jan = datetime(2024, 1, 1, tzinfo=UTC)
    fake_binance.add_klines("BTCUSDT", "1h", jan, 24 * 31)
    fake_archive.klines_daily_from_rest(fake_binance, "BTCUSDT", "1h", day_range(date(2024, 1, 1), 31))
    fake_archive.remove("data/futures/um/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2024-01-05.zip")
    arch = make_archive(fake_archive, fake_time, tmp_path, now=datetime(2024, 2, 1, 12, tzinfo=UTC))
    df = arch.klines("BTCUSDT", "1h", jan, datetime(2024, 2, 1, tzinfo=UTC))
    assert df.height == 30 * 24
    assert arch.last_report.missing_ranges() == [(datetime(2024, 1, 5, tzinfo=UTC), datetime(2024, 1, 6, tzinfo=UTC))]


# ------------------------------------------------------------------------------------ REST == archive

def _stored(wh: Warehouse, table: schemas.Table) -> pl.DataFrame:
    """The table's rows as stored (every revision)."""
    df = wh.read(table, revisions=True)
    return df.sort(list(table.stored_key)).drop("ingested_at", "source")


def test_same_day_from_rest_and_archive_gives_identical_warehouse_rows(fake_binance, fake_archive, fake_time,
                                                                       tmp_path):
    day, now = T0, T0 + 2 * DAY
    fake_binance.add_oi("BTCUSDT", "5m", day - DAY, 3 * 288)
    fake_binance.add_klines("BTCUSDT", "1h", day - DAY, 72)
    fake_binance.set_funding_info({"BTCUSDT": 8})
    fake_binance.add_funding("BTCUSDT", datetime(2023, 12, 1, tzinfo=UTC), 3 * 31 * 2, mark_price=None,
                             jitter_ms=lambda i: (i % 5) - 2)
    fake_archive.metrics_from_rest(fake_binance, "BTCUSDT", [D0], header=False)
    fake_archive.klines_daily_from_rest(fake_binance, "BTCUSDT", "1h", [D0])
    for month in (date(2023, 12, 1), date(2024, 1, 1)):
        fake_archive.funding_from_rest(fake_binance, "BTCUSDT", month)

    rest = BinanceRest(client_for(fake_binance, fake_time), now=lambda: now)
    arch = make_archive(fake_archive, fake_time, tmp_path / "cache", now=datetime(2024, 3, 1, tzinfo=UTC))
    jan, feb = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)
    stores = {}
    for name, src in (("rest", rest), ("archive", arch)):
        wh = Warehouse(tmp_path / name)
        for table, frame in ((schemas.OPEN_INTEREST, src.open_interest("BTCUSDT", "5m", day, day + DAY)),
                             (schemas.KLINES, src.klines("BTCUSDT", "1h", day, day + DAY)),
                             (schemas.FUNDING_RATES, src.funding_rates("BTCUSDT", jan, feb))):
            schemas.validate(table, schemas.conform(table, frame))
            wh.merge(table, frame)
        stores[name] = wh
    for table in (schemas.OPEN_INTEREST, schemas.KLINES, schemas.FUNDING_RATES):
        a, b = _stored(stores["rest"], table), _stored(stores["archive"], table)
        assert a.height > 0 and a.schema == b.schema
        assert a.equals(b), table.name
    assert _stored(stores["archive"], schemas.OPEN_INTEREST).height == 288
    assert _stored(stores["archive"], schemas.FUNDING_RATES).height == 93


# ------------------------------------------------------------------------------------ BinanceSource

def _source(fake_binance, tmp_path, now: datetime) -> BinanceSource:
    return BinanceSource(fake_binance.url, fake_binance.url, cache_dir=tmp_path, now=lambda: now)


def test_source_splits_open_interest_at_the_rest_window(fake_binance, fake_archive, tmp_path):
    now = datetime(2024, 3, 1, 12, tzinfo=UTC)
    src = _source(fake_binance, tmp_path, now)
    boundary = src.oi_boundary()
    assert boundary == datetime(2024, 2, 1, tzinfo=UTC)  # first day start >= now - 30 days (+ margin)
    start = boundary - 2 * DAY
    fake_binance.add_oi("BTCUSDT", "5m", start, 4 * 288)
    fake_archive.metrics_from_rest(fake_binance, "BTCUSDT", day_range(start.date(), 2))
    df = src.open_interest("BTCUSDT", "5m", start, boundary + 2 * DAY)
    assert df.height == 4 * 288 and df["event_time"].is_unique().all()
    assert df.filter(pl.col("event_time") < boundary)["source"].unique().to_list() == ["binance_archive"]
    assert df.filter(pl.col("event_time") >= boundary)["source"].unique().to_list() == ["binance_rest"]
    rest_calls = fake_binance.params("/futures/data/openInterestHist")
    assert min(int(p["startTime"]) for p in rest_calls) == int(boundary.timestamp() * 1000)
    stats = src.request_stats()
    assert stats["requests"] == fake_archive.count() + fake_binance.count()
    assert len(src.archive_reports) == 1 and src.archive_reports[0].rows == 576


def test_source_picks_fewer_requests_for_klines(fake_binance, fake_archive, tmp_path):
    now = datetime(2024, 2, 10, tzinfo=UTC)
    jan = datetime(2024, 1, 1, tzinfo=UTC)
    fake_binance.add_klines("BTCUSDT", "1m", jan, 31 * 1440)
    fake_binance.add_klines("BTCUSDT", "1h", jan, 31 * 24)
    fake_archive.add_klines_file("BTCUSDT", "1m", "monthly", date(2024, 1, 1), fake_binance.klines[("BTCUSDT", "1m")])
    src = _source(fake_binance, tmp_path, now)
    feb = datetime(2024, 2, 1, tzinfo=UTC)
    # 1m for January: one monthly file (2 requests) against 30 REST pages -> archive
    assert src.klines_rest_requests("1m", jan, feb) == 30
    df = src.klines("BTCUSDT", "1m", jan, feb)
    assert df.height == 31 * 1440 and df["source"].unique().to_list() == ["binance_archive"]
    assert fake_binance.count("/fapi/v1/klines") == 0 and fake_archive.count() == 2
    # 1h for two January days: one REST page against the monthly file (2 requests) -> REST
    df = src.klines("BTCUSDT", "1h", jan, jan + 2 * DAY)
    assert df.height == 48 and df["source"].unique().to_list() == ["binance_rest"]
    assert fake_archive.count() == 2


def test_source_funding_fills_archive_gap_from_rest(fake_binance, fake_archive, tmp_path):
    fake_binance.set_funding_info({"BTCUSDT": 8})
    jan = datetime(2024, 1, 1, tzinfo=UTC)
    fake_binance.add_funding("BTCUSDT", datetime(2023, 12, 1, tzinfo=UTC), 3 * (31 + 91), mark_price=None)
    # Cached months make the archive cheaper than REST: prime the cache for Dec (a settlement of
    # Jan 1 00:00 may be stamped in December) and Jan only.
    for month in (date(2023, 12, 1), date(2024, 1, 1)):
        fake_archive.funding_from_rest(fake_binance, "BTCUSDT", month)
    src = _source(fake_binance, tmp_path, datetime(2024, 4, 15, tzinfo=UTC))
    src.archive.funding_rates("BTCUSDT", jan, datetime(2024, 2, 1, tzinfo=UTC))
    cached_only = src.archive.funding_files("BTCUSDT", jan, datetime(2024, 2, 1, tzinfo=UTC))
    assert src.archive.requests_needed(cached_only) == 0
    df = src.funding_rates("BTCUSDT", jan, datetime(2024, 2, 1, tzinfo=UTC))
    assert df.height == 93 and df["source"].unique().to_list() == ["binance_archive"]
    # Jan..Mar: 2 Feb+Mar files to download (4 requests) against 1 REST page -> REST throughout
    df = src.funding_rates("BTCUSDT", jan, datetime(2024, 4, 1, tzinfo=UTC))
    assert df.height == 91 * 3 and df["source"].unique().to_list() == ["binance_rest"]
