"""The Freqtrade data-directory importer and the bundled open-interest sample."""

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from qml_pipeline.store import schemas
from qml_pipeline.sources.funding import snap_funding_times, with_funding_intervals
from qml_pipeline.sources.freqtrade import FreqtradeDataDir
from qml_pipeline.sources.sample import SampleSource

UTC = timezone.utc
SAMPLE = Path(__file__).parents[2] / "sample_data"
ALL = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))


def test_freqtrade_funding_is_snapped_and_valid() -> None:
    ft = FreqtradeDataDir(SAMPLE / "freqtrade")
    assert ft.symbols() == ["BTCUSDT", "ETHUSDT"]
    f = ft.funding_rates("ETHUSDT", *ALL)
    assert f.height == 999 and f["event_time"].min() == datetime(2024, 1, 6, 8, tzinfo=UTC)
    jittered = f.filter(pl.col("exchange_time") != pl.col("event_time"))
    assert jittered.height > 50  # the sample's real jitter
    assert (f["event_time"].dt.minute() == 0).all() and (f["event_time"].dt.millisecond() == 0).all()
    assert (f["funding_interval_hours"] == 8).all()
    assert f["mark_price"].null_count() == 0
    schemas.validate(schemas.FUNDING_RATES, f)


def test_freqtrade_4h_klines_are_aggregated_from_complete_1h_groups() -> None:
    ft = FreqtradeDataDir(SAMPLE / "freqtrade")
    h1 = ft.klines("BTCUSDT", "1h", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
    h4 = ft.klines("BTCUSDT", "4h", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
    assert h1.height == 24 and h4.height == 6
    first = h1.head(4)
    assert h4["open"][0] == first["open"][0] and h4["close"][0] == first["close"][3]
    assert h4["high"][0] == first["high"].max() and h4["low"][0] == first["low"].min()
    assert h4["volume"][0] == pytest.approx(first["volume"].sum())
    assert h4["close_time"][0] == datetime(2024, 1, 1, 4, tzinfo=UTC) == h4["available_at"][0]
    assert h4["source"][0] == "freqtrade:resampled_from_1h"


def test_newer_freqtrade_naming_is_read(tmp_path: Path) -> None:
    futures = tmp_path / "binance" / "futures"
    futures.mkdir(parents=True)
    src = SAMPLE / "freqtrade" / "binance" / "futures"
    shutil.copy(src / "ETH_USDT_USDT-1h-futures.feather", futures)
    shutil.copy(src / "ETH_USDT_USDT-8h-funding_rate.feather", futures / "ETH_USDT_USDT-1h-funding_rate.feather")
    f = FreqtradeDataDir(tmp_path).funding_rates("ETHUSDT", *ALL)
    assert f.height == 999 and f["mark_price"].null_count() == 999


def test_missing_directory_message_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="QML_SAMPLE_DIR"):
        FreqtradeDataDir(tmp_path)


def test_funding_interval_follows_a_change_from_8h_to_4h() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    times = [t0 + timedelta(hours=h) for h in (0, 8, 16, 24, 28, 32, 36)]
    df = with_funding_intervals(pl.DataFrame({"event_time": times}))
    assert df["funding_interval_hours"].to_list() == [8, 8, 8, 8, 4, 4, 4]


def test_funding_far_from_the_grid_is_refused() -> None:
    t = datetime(2024, 1, 1, 8, 20, tzinfo=UTC)
    with pytest.raises(ValueError, match="not millisecond jitter"):
        snap_funding_times(pl.DataFrame({"exchange_time": [t]}))


def test_sample_open_interest_is_knowable_at_hour_end() -> None:
    oi = SampleSource(SAMPLE).open_interest("BTCUSDT", "5m", *ALL)
    assert oi.height == 26413
    first = oi.row(0, named=True)
    assert first["event_time"] == datetime(2021, 12, 1, 0, 55, tzinfo=UTC)
    assert first["available_at"] == datetime(2021, 12, 1, 1, tzinfo=UTC)
    assert oi.filter(pl.col("open_interest") == 0).height == 39  # Binance's own defect, kept
    schemas.validate(schemas.OPEN_INTEREST, oi)
    assert SampleSource(SAMPLE).symbols_without_open_interest(["BTCUSDT", "ETHUSDT"]) == ["ETHUSDT"]


def test_schema_rejects_bad_klines_with_row_numbers() -> None:
    k = FreqtradeDataDir(SAMPLE / "freqtrade").klines("BTCUSDT", "1h", datetime(2024, 1, 1, tzinfo=UTC),
                                                      datetime(2024, 1, 2, tzinfo=UTC))
    bad = k.with_columns(
        high=pl.when(pl.int_range(pl.len()) == 3).then(1.0).otherwise(pl.col("high")),
        open=pl.when(pl.int_range(pl.len()) == 5).then(-1.0).otherwise(pl.col("open")))
    bad = pl.concat([bad, bad.tail(1)])
    with pytest.raises(schemas.ValidationError) as exc:
        schemas.validate(schemas.KLINES, bad)
    msg = str(exc.value)
    assert ("BTCUSDT 1h event_time 2024-01-01 03:00:00+00:00: fails 'high >= max(open, close)' "
            "(value: open=42620.5, high=1.0, close=42369.8)") in msg
    assert "BTCUSDT 1h event_time 2024-01-01 05:00:00+00:00 column open: fails 'greater_than(0)' (value: -1.0)" in msg
    assert ("BTCUSDT 1h event_time 2024-01-01 23:00:00+00:00: fails 'one row per key (symbol, interval, event_time)' "
            "(value: symbol=BTCUSDT, interval=1h, event_time=2024-01-01T23:00:00+00:00)") in msg


def test_schema_rejects_funding_beyond_the_cap_and_off_grid() -> None:
    f = FreqtradeDataDir(SAMPLE / "freqtrade").funding_rates("BTCUSDT", *ALL).head(3)
    bad = f.with_columns(funding_rate=pl.Series([0.0001, 1.0, 0.0001]),
                         event_time=pl.Series([f["event_time"][0], f["event_time"][1],
                                               f["event_time"][2] + timedelta(minutes=1)]))
    failures = schemas.validation_failures(schemas.FUNDING_RATES, bad)
    checks = set(failures["check"].to_list())
    assert any("in_range" in c for c in checks) and "event_time on the hourly grid" in checks
