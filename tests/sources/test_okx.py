"""OkxSource against the fake OKX server: pagination, contract sizes and units, history depth as
coverage, available_at, rate limits, errors, and short answers measured against the grid."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from qml_pipeline.sources import okx
from qml_pipeline.sources.http_client import BadResponseError, RateLimitedError, VenueApiError
from qml_pipeline.sources.okx import OkxSource
from qml_pipeline.sources.venue_source import LIVE_EDGE_GRACE
from qml_pipeline.sources.venues import OutOfHistoryError, UnknownSymbolError
from qml_pipeline.store import schemas
from qml_pipeline.timeutil import UTC, to_ms
from tests.venue_helpers import expected_stamps, make_venue_reader, missing

OI = "/api/v5/rubik/stat/contracts/open-interest-history"
FUNDING = "/api/v5/public/funding-rate-history"
INSTRUMENTS = "/api/v5/public/instruments"
LISTED = datetime(2019, 12, 10, tzinfo=UTC)
T0 = datetime(2024, 5, 20, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)
H = timedelta(hours=1)
M5 = timedelta(minutes=5)


def make_reader(fake, fake_time, now: datetime = NOW, lag_s: int = 0, **kw) -> OkxSource:
    return make_venue_reader(okx, OkxSource, fake, fake_time, now, lag_s, 5, **kw)


@pytest.fixture
def swaps(fake_okx):
    fake_okx.add_swap("BTC-USDT-SWAP", "0.01", LISTED)
    fake_okx.add_swap("ETH-USDT-SWAP", "0.1", LISTED)
    fake_okx.add_swap("DOGE-USDT-SWAP", "1000", LISTED)
    fake_okx.add_swap("BTC-USD-SWAP", "100", LISTED, ct_type="inverse")
    return fake_okx


def stamps_of(df) -> list[int]:
    return [to_ms(t) for t in df["event_time"].to_list()]


# ---------------------------------------------------------------------------------- open interest

@pytest.mark.parametrize("count, pages", [(100, 1), (101, 2), (350, 4)])
def test_oi_pages_no_gaps_no_duplicates_fewest_requests(swaps, fake_time, count, pages):
    stamps = swaps.add_oi("BTC-USDT-SWAP", "5m", T0 - 10 * M5, count + 20)[10:-10]
    reader = make_reader(swaps, fake_time, now=T0 + (count + 10) * M5)  # 5m history: the last 5 days
    df = reader.open_interest("BTCUSDT", "5m", T0, T0 + count * M5)
    assert stamps_of(df) == stamps
    assert swaps.count(OI) == pages and swaps.count(INSTRUMENTS) == 1
    params = swaps.params(OI)
    assert params[0]["instId"] == "BTC-USDT-SWAP" and params[0]["period"] == "5m" and params[0]["limit"] == "100"
    assert int(params[0]["begin"]) == to_ms(T0) - 1 and int(params[0]["end"]) == to_ms(T0 + count * M5)
    # each further page ends (exclusively) at the oldest stamp of the previous one
    for page, nxt in zip(range(1, pages), params[1:]):
        assert int(nxt["end"]) == to_ms(T0 + (count - 100 * page) * M5)
    assert missing(reader, df, "open_interest", "BTCUSDT", T0, T0 + count * M5, "5m") == []
    assert expected_stamps(reader, "open_interest", "BTCUSDT", T0, T0 + count * M5, "5m") == count
    schemas.validate(schemas.OPEN_INTEREST, df)


@pytest.mark.parametrize("inst, symbol, size", [("BTC-USDT-SWAP", "BTCUSDT", 0.01), ("ETH-USDT-SWAP", "ETHUSDT", 0.1),
                                                ("DOGE-USDT-SWAP", "DOGEUSDT", 1000.0)])
def test_oi_coins_from_oiccy_or_contracts_times_contract_size(swaps, fake_time, inst, symbol, size):
    contracts = [2_000_000.0, 2_000_100.0, 1_999_900.0]
    swaps.add_oi(inst, "1H", T0, 3, contracts=lambda i: contracts[i], with_ccy=False)
    reader = make_reader(swaps, fake_time)
    df = reader.open_interest(symbol, "1h", T0, T0 + 3 * H)
    assert df["open_interest"].to_list() == pytest.approx([c * size for c in contracts])
    assert any(f"3 row(s) without oiCcy: coins = contracts x {size:g}" in n for n in reader.notes)


def test_oi_served_coins_and_usd_taken_as_served(swaps, fake_time):
    swaps.add_oi("BTC-USDT-SWAP", "1H", T0, 2, contracts=lambda i: 3_000_000.0, price=lambda i: [65_000.0, 66_000.0][i])
    df = make_reader(swaps, fake_time).open_interest("BTCUSDT", "1h", T0, T0 + 2 * H)
    assert df["open_interest"].to_list() == pytest.approx([30_000.0, 30_000.0])  # oiCcy: 3e6 contracts x 0.01 BTC
    assert df["open_interest_value"].to_list() == pytest.approx([30_000.0 * 65_000, 30_000.0 * 66_000])
    assert df["venue"].unique().to_list() == ["okx"] and df["source"].unique().to_list() == ["okx_rest"]


def test_oi_without_usd_stays_null_and_is_noted(swaps, fake_time):
    swaps.add_oi("BTC-USDT-SWAP", "1H", T0, 2, with_usd=False)
    reader = make_reader(swaps, fake_time)
    df = reader.open_interest("BTCUSDT", "1h", T0, T0 + 2 * H)
    assert df["open_interest_value"].null_count() == 2
    assert any("2 row(s) without oiUsd" in n for n in reader.notes)


def test_oi_daily_period_is_asked_for_on_utc_days(swaps, fake_time):
    swaps.add_oi("BTC-USDT-SWAP", "1Dutc", T0 - 5 * 24 * H, 5)
    df = make_reader(swaps, fake_time).open_interest("BTCUSDT", "1d", T0 - 5 * 24 * H, T0)
    assert swaps.params(OI)[0]["period"] == "1Dutc"
    assert df.height == 5 and df["period_minutes"].unique().to_list() == [1440]


@pytest.mark.parametrize("lag_s", [0, 120])
def test_oi_available_at_is_stamp_plus_period_plus_lag(swaps, fake_time, lag_s):
    swaps.add_oi("BTC-USDT-SWAP", "5m", T0, 6)
    reader = make_reader(swaps, fake_time, now=T0 + H, lag_s=lag_s)
    df = reader.open_interest("BTCUSDT", "5m", T0, T0 + 30 * M5)
    assert df.height == 6
    assert df["available_at"].to_list() == [t + M5 + timedelta(seconds=lag_s) for t in df["event_time"]]


def test_oi_history_depth_latest_1440_entries_is_the_coverage(swaps, fake_time):
    now = T0 + 2000 * M5
    stamps = swaps.add_oi("BTC-USDT-SWAP", "5m", T0, 2000)  # OKX keeps only the newest 1440
    reader = make_reader(swaps, fake_time, now=now)
    oldest = reader.oi_history_start("5m")
    assert oldest == now - 1439 * M5
    coverage = reader.coverage("open_interest", "BTCUSDT", "5m")
    assert coverage.first == oldest and coverage.end == now - M5 - LIVE_EDGE_GRACE
    df = reader.open_interest("BTCUSDT", "5m", T0, now)
    assert stamps_of(df) == stamps[-1439:]
    # nothing older than OKX serves is expected, so the short history is not a hole
    assert missing(reader, df, "open_interest", "BTCUSDT", T0, now, "5m") == []
    assert expected_stamps(reader, "open_interest", "BTCUSDT", T0, now, "5m") == 1439 - 1  # the last: grace
    assert int(swaps.params(OI)[0]["begin"]) == to_ms(oldest) - 1
    assert swaps.count(OI) == 15  # ceil(1439 / 100): nothing older is asked for


def test_oi_range_wholly_older_than_served_is_refused(swaps, fake_time):
    reader = make_reader(swaps, fake_time)
    with pytest.raises(OutOfHistoryError) as exc:
        reader.open_interest("BTCUSDT", "1h", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))
    msg = str(exc.value)
    assert "okx" in msg and OI in msg and "BTC-USDT-SWAP" in msg and "older than OKX serves" in msg
    assert swaps.count(OI) == 0


def test_oi_daily_floor_is_2024_01_01(swaps, fake_time):
    reader = make_reader(swaps, fake_time, now=datetime(2026, 6, 1, tzinfo=UTC))
    assert reader.oi_history_start("1d") == datetime(2024, 1, 1, tzinfo=UTC)
    assert reader.oi_history_start("4h") == datetime(2026, 6, 1, tzinfo=UTC) - 1439 * 4 * H


def test_oi_short_answer_reports_missing_stamps(swaps, fake_time):
    swaps.add_oi("BTC-USDT-SWAP", "1H", T0, 2)
    swaps.add_oi("BTC-USDT-SWAP", "1H", T0 + 4 * H, 1)
    reader = make_reader(swaps, fake_time)
    df = reader.open_interest("BTCUSDT", "1h", T0, T0 + 6 * H)
    assert missing(reader, df, "open_interest", "BTCUSDT", T0, T0 + 6 * H, "1h") == [T0 + 2 * H, T0 + 3 * H,
                                                                                    T0 + 5 * H]
    assert df.height == 3  # never padded


# ---------------------------------------------------------------------------------- funding

@pytest.mark.parametrize("count, pages", [(398, 1), (399, 1), (400, 2), (850, 3)])
def test_funding_pages_walk_back_with_after(swaps, fake_time, count, pages):
    start = NOW - 80 * 24 * H
    everything = swaps.add_funding("BTC-USDT-SWAP", start - 2 * H, count + 1, interval_hours=2)
    end = start + count * 2 * H
    reader = make_reader(swaps, fake_time, now=max(NOW, end))
    df = reader.funding_rates("BTCUSDT", start, end)
    assert stamps_of(df) == everything[1:]
    assert swaps.count(FUNDING) == pages
    params = swaps.params(FUNDING)
    assert int(params[0]["after"]) == to_ms(end) and params[0]["limit"] == "400"
    assert all("before" not in p for p in params)
    assert df["funding_interval_hours"].unique().to_list() == [2]
    assert missing(reader, df, "funding_rates", "BTCUSDT", start, end) == []
    schemas.validate(schemas.FUNDING_RATES, df)


def test_funding_realized_rate_and_six_hour_interval(swaps, fake_time):
    start = NOW - 10 * 24 * H
    swaps.add_funding("BTC-USDT-SWAP", start, 4, interval_hours=6, rate=lambda i: [0.0001, 0.0002, -0.0001, 0.0][i])
    df = make_reader(swaps, fake_time).funding_rates("BTCUSDT", start, start + 24 * H)
    assert df["funding_rate"].to_list() == [0.0001, 0.0002, -0.0001, 0.0]  # realizedRate, not the prediction
    assert df["funding_interval_hours"].to_list() == [6] * 4
    assert (df["available_at"] == df["event_time"]).all()
    schemas.validate(schemas.FUNDING_RATES, df)


def test_funding_without_realized_rate_uses_the_prediction_and_says_so(swaps, fake_time):
    start = NOW - 10 * 24 * H
    swaps.add_funding("BTC-USDT-SWAP", start, 2, realized=False)
    reader = make_reader(swaps, fake_time)
    df = reader.funding_rates("BTCUSDT", start, start + 16 * H)
    assert df["funding_rate"].to_list() == pytest.approx([0.00015, 0.00015001])
    assert any("2 row(s) without realizedRate" in n for n in reader.notes)


def test_funding_history_depth_three_months_is_the_coverage(swaps, fake_time):
    start = NOW - 120 * 24 * H
    swaps.add_funding("BTC-USDT-SWAP", start, 360)  # 120 days of 8 h settlements
    swaps.funding_oldest = NOW - 90 * 24 * H  # what OKX still serves
    reader = make_reader(swaps, fake_time)
    df = reader.funding_rates("BTCUSDT", start, NOW)
    coverage = reader.coverage("funding_rates", "BTCUSDT", "")
    assert coverage.first == NOW - 89 * 24 * H == reader.funding_history_start()
    assert coverage.end == NOW - LIVE_EDGE_GRACE
    # the settlement before the coverage fetched for the first one's interval is real data: kept
    assert df["event_time"].min() == NOW - 89 * 24 * H - 8 * H
    assert missing(reader, df, "funding_rates", "BTCUSDT", start, NOW) == []
    assert df.filter(pl.col("event_time") >= coverage.first).height == 89 * 3
    assert swaps.count(FUNDING) == 1  # 273 settlements back to the lookback fit one page


def test_funding_missing_settlements_reported(swaps, fake_time):
    start = NOW - 10 * 24 * H
    swaps.add_funding("BTC-USDT-SWAP", start, 2)
    swaps.add_funding("BTC-USDT-SWAP", start + 32 * H, 2)
    reader = make_reader(swaps, fake_time)
    df = reader.funding_rates("BTCUSDT", start, start + 56 * H)
    assert missing(reader, df, "funding_rates", "BTCUSDT", start, start + 56 * H) == [start + 16 * H, start + 24 * H,
                                                                                     start + 48 * H]


def test_funding_range_older_than_three_months_refused(swaps, fake_time):
    with pytest.raises(OutOfHistoryError, match=r"okx /api/v5/public/funding-rate-history BTC-USDT-SWAP"):
        make_reader(swaps, fake_time).funding_rates("BTCUSDT", NOW - 200 * 24 * H, NOW - 100 * 24 * H)


# ---------------------------------------------------------------------------------- symbols and errors

def test_unknown_symbol_names_venue_and_symbol(swaps, fake_time):
    with pytest.raises(UnknownSymbolError, match=r"okx: unknown symbol 'SOLUSDT'.*lists no SOL-USDT-SWAP"):
        make_reader(swaps, fake_time).open_interest("SOLUSDT", "5m", T0, T0 + H)
    assert swaps.count(OI) == 0


def test_inverse_or_coin_quoted_swap_refused(swaps, fake_time):
    swaps.add_swap("XRP-USDT-SWAP", "100", LISTED, ct_type="inverse")
    reader = make_reader(swaps, fake_time)
    with pytest.raises(UnknownSymbolError, match="XRP-USDT-SWAP is ctType='inverse'.*not a linear swap"):
        reader.instrument("XRPUSDT")
    with pytest.raises(UnknownSymbolError, match=r"okx: unknown symbol 'BTCUSD'.*QUOTE in \('USDT', 'USDC'\)"):
        reader.instrument("BTCUSD")


def test_instruments_fetched_once(swaps, fake_time):
    reader = make_reader(swaps, fake_time)
    assert reader.instrument("BTCUSDT").contract_size == 0.01
    assert reader.instrument("ETHUSDT").contract_size == 0.1
    assert swaps.count(INSTRUMENTS) == 1


def test_error_body_names_venue_endpoint_and_parameter(swaps, fake_time):
    reader = make_reader(swaps, fake_time)
    with pytest.raises(VenueApiError) as exc:
        reader.client.get_json(OI, {"instId": "BTC-USDT-SWAP", "period": "7m"})
    msg = str(exc.value)
    assert exc.value.venue == "OKX" and exc.value.code == "51000" and exc.value.status == 400
    assert "OKX API error 51000: Parameter period error" in msg and OI in msg and "period=7m" in msg
    with pytest.raises(VenueApiError, match=r"51001.*instId=NOPE-USDT-SWAP"):
        reader.client.get_json(OI, {"instId": "NOPE-USDT-SWAP"})


# ---------------------------------------------------------------------------------- rate limits

def test_429_waits_then_succeeds(swaps, fake_time):
    swaps.add_oi("BTC-USDT-SWAP", "1H", T0, 2)
    swaps.inject("429", times=2, path=OI)
    df = make_reader(swaps, fake_time).open_interest("BTCUSDT", "1h", T0, T0 + 2 * H)
    assert df.height == 2
    assert fake_time.sleeps == [2.0, 2.0]  # OKX's 2 s window when no Retry-After is sent


def test_429_with_retry_after_and_persistent_limit_reported(swaps, fake_time):
    swaps.inject("429", times=5, path=INSTRUMENTS, retry_after=3)
    reader = make_reader(swaps, fake_time, max_retries=2)
    with pytest.raises(RateLimitedError) as exc:
        reader.instrument("BTCUSDT")
    assert "OKX rate limited (429)" in str(exc.value) and INSTRUMENTS in str(exc.value)
    assert fake_time.sleeps == [3.0, 3.0]


def test_50011_in_a_200_waits_then_succeeds(swaps, fake_time):
    start = NOW - 10 * 24 * H
    swaps.add_funding("BTC-USDT-SWAP", start, 3)
    swaps.inject("50011", path=FUNDING)
    reader = make_reader(swaps, fake_time)
    assert reader.funding_rates("BTCUSDT", start, start + 24 * H).height == 3
    assert fake_time.sleeps == [2.0] and swaps.count(FUNDING) == 2


def test_50011_persisting_in_200s_is_reported(swaps, fake_time):
    swaps.inject("50011", times=4, path=INSTRUMENTS)
    with pytest.raises(RateLimitedError, match=r"OKX rate limited \(code 50011"):
        make_reader(swaps, fake_time, max_retries=2).instrument("BTCUSDT")


def test_system_error_and_malformed_body_are_retried(swaps, fake_time):
    swaps.inject("50026", path=INSTRUMENTS)
    swaps.inject("malformed", path=INSTRUMENTS)
    reader = make_reader(swaps, fake_time)
    assert reader.instrument("BTCUSDT").venue_symbol == "BTC-USDT-SWAP"
    assert swaps.count(INSTRUMENTS) == 3
    swaps.inject("malformed", times=3, path=OI)
    with pytest.raises(BadResponseError, match="not JSON"):
        reader.open_interest("BTCUSDT", "1h", T0, T0 + H)


def test_history_path_limits_space_requests(swaps, fake_time):
    assert okx.PATH_LIMITS[0] == ((OI,), 10, 2.0)
    swaps.add_oi("BTC-USDT-SWAP", "5m", T0, 1000)
    reader = make_reader(swaps, fake_time, now=T0 + 1000 * M5)
    reader.open_interest("BTCUSDT", "5m", T0, T0 + 1000 * M5)
    assert swaps.count(OI) == 10 and fake_time.sleeps == []  # 10 requests fit one 2 s window
    reader.open_interest("BTCUSDT", "5m", T0, T0 + 100 * M5)
    assert fake_time.sleeps == [pytest.approx(2.0)]  # the 11th waits for the window to pass
