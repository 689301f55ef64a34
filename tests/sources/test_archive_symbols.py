"""BinanceArchive refuses a symbol that could leave the archive's prefix or the cache directory, before
any URL or path is built (the library guard; Dagster's settings refuse such symbols earlier)."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

import pytest

from qml_pipeline.errors import InputError
from qml_pipeline.sources.binance_archive import (BinanceArchive, funding_path, klines_daily_path,
                                                  klines_monthly_path, metrics_path)
from qml_pipeline.sources.http_client import HttpClient

UTC = timezone.utc
T0 = datetime(2024, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize("symbol", ["../../etc", "BTC/USDT", "..", "btcusdt", "BTC USDT", "BTC\"USDT", "B", ""])
def test_every_path_builder_refuses_a_bad_symbol(symbol):
    for build in (lambda: metrics_path(symbol, date(2024, 1, 10)), lambda: funding_path(symbol, T0),
                  lambda: klines_daily_path(symbol, "1h", date(2024, 1, 10)),
                  lambda: klines_monthly_path(symbol, "1h", T0)):
        with pytest.raises(InputError, match=r"is not a symbol: expected 2 to 30 capital letters or digits"):
            build()


def test_a_traversing_interval_is_refused():
    with pytest.raises(ValueError, match="unknown interval"):
        klines_daily_path("BTCUSDT", "../1h", date(2024, 1, 10))


def test_archive_makes_no_request_and_writes_no_file_for_a_traversing_symbol(fake_archive, fake_time, tmp_path):
    cache = tmp_path / "cache"
    client = HttpClient(fake_archive.url, sleep=fake_time.sleep, clock=fake_time.clock, rng=random.Random(1),
                        timeout_s=(2, 5))
    arch = BinanceArchive(client, cache, now=lambda: datetime(2024, 6, 1, tzinfo=UTC))
    for fetch in (lambda s: arch.open_interest(s, "5m", T0, T0 + timedelta(days=1)),
                  lambda s: arch.funding_rates(s, T0, T0 + timedelta(days=40)),
                  lambda s: arch.klines(s, "1h", T0, T0 + timedelta(days=1))):
        with pytest.raises(InputError, match=r"'\.\./\.\./x' is not a symbol"):
            fetch("../../x")
    assert client.stats.requests == 0
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
