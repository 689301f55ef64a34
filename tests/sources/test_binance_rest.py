"""BinanceRest against the fake Binance server: pagination, snapping, intervals, windows, forming bars."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import polars as pl
import pytest

from qml_pipeline.errors import InputError
from qml_pipeline.sources.funding import FundingTimeError

from qml_pipeline.store import schemas
from qml_pipeline.sources.http_client import BinanceApiError, HttpClient
from qml_pipeline.sources.binance_rest import (
    FUTURES_DATA_PATH_LIMIT,
    BinanceRest,
    OutOfRestWindowError,
    ServedValueError,
)
from qml_pipeline.timeutil import UTC, to_ms

FUNDING = "/fapi/v1/fundingRate"
INFO = "/fapi/v1/fundingInfo"
OI = "/futures/data/openInterestHist"
KLINES = "/fapi/v1/klines"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)


def make_rest(fake_binance, fake_time, now: datetime = datetime(2026, 1, 1, tzinfo=UTC),
              oi_lag_s: int = 0) -> BinanceRest:
    client = HttpClient(fake_binance.url, sleep=fake_time.sleep, clock=fake_time.clock,
                        rng=random.Random(1), timeout_s=(2, 5))
    return BinanceRest(client, oi_publication_lag_s=oi_lag_s, now=lambda: now)


def grid(df: pl.DataFrame, col: str = "event_time") -> list[int]:
    return [to_ms(t) for t in df[col].to_list()]


# ---------------------------------------------------------------------------------- funding

@pytest.mark.parametrize("count, requests", [(1000, 1), (1001, 2)])
def test_funding_page_boundaries(fake_binance, fake_time, count, requests):
    fake_binance.set_funding_info({"HUSDT": 1})
    expected = fake_binance.add_funding("HUSDT", T0, count, interval_hours=1)
    rest = make_rest(fake_binance, fake_time)
    df = rest.funding_rates("HUSDT", T0, T0 + count * H)
    assert grid(df) == expected  # every settlement once, in order, none missing
    assert fake_binance.count(FUNDING) == requests
    assert all(p["limit"] == "1000" for p in fake_binance.params(FUNDING))
    assert df["funding_interval_hours"].unique().to_list() == [1]
    schemas.validate(schemas.FUNDING_RATES, df)


def test_funding_8h_multi_page_with_history_before_start(fake_binance, fake_time):
    fake_binance.set_funding_info({"BTCUSDT": 8})
    everything = fake_binance.add_funding("BTCUSDT", T0 - 10 * 8 * H, 2510)
    start, end = T0, T0 + 2500 * 8 * H
    rest = make_rest(fake_binance, fake_time)
    df = rest.funding_rates("BTCUSDT", start, end)
    assert grid(df) == everything[10:]
    # 2501 rows fetched (one lookback settlement): three full-size pages, no empty confirmation page
    assert fake_binance.count(FUNDING) == 3
    starts = [int(p["startTime"]) for p in fake_binance.params(FUNDING)]
    assert starts[0] == to_ms(start) - 8 * 3_600_000 - 5 * 60_000
    assert all(int(p["endTime"]) == to_ms(end) - 1 for p in fake_binance.params(FUNDING))
    assert fake_binance.count(INFO) == 0  # the first row's interval came from its predecessor
    assert df["funding_interval_hours"].unique().to_list() == [8]
    assert df["funding_rate"][0] == pytest.approx(0.0001 + 10 * 1e-8)
    assert (df["available_at"] == df["event_time"]).all()
    assert df["source"].unique().to_list() == ["binance_rest"]


def test_funding_jitter_snapped_and_window_edges(fake_binance, fake_time):
    jitter = [5, -2, 0, 3, -1, 7, 0, -2]  # ms, as Binance serves them
    fake_binance.add_funding("BTCUSDT", T0, 8, jitter_ms=lambda i: jitter[i])
    rest = make_rest(fake_binance, fake_time)
    # [T0 + 8h, T0 + 56h): the settlement at 8h is served at 07:59:59.998 and must be kept; the
    # one at 56h is served at 55:59:59.998 and belongs to the next window.
    df = rest.funding_rates("BTCUSDT", T0 + 8 * H, T0 + 56 * H)
    assert df["event_time"].to_list() == [T0 + 8 * H * i for i in range(1, 7)]
    assert grid(df, "exchange_time") == [to_ms(T0 + 8 * H * i) + jitter[i] for i in range(1, 7)]
    assert df["funding_interval_hours"].to_list() == [8] * 6
    schemas.validate(schemas.FUNDING_RATES, df)


def test_funding_jitter_beyond_five_minutes_raises(fake_binance, fake_time):
    fake_binance.add_funding("BTCUSDT", T0, 3, jitter_ms=lambda i: 6 * 60_000 if i == 1 else 0)
    rest = make_rest(fake_binance, fake_time)
    with pytest.raises(FundingTimeError, match="more than 5 minutes"):
        rest.funding_rates("BTCUSDT", T0, T0 + 24 * H)


def test_funding_4h_first_row_uses_funding_info_once(fake_binance, fake_time):
    fake_binance.set_funding_info({"FOURUSDT": 4, "BTCUSDT": 8})
    fake_binance.add_funding("FOURUSDT", T0, 12, interval_hours=4)
    fake_binance.add_funding("NEWUSDT", T0, 3, interval_hours=8)
    rest = make_rest(fake_binance, fake_time)
    df = rest.funding_rates("FOURUSDT", T0, T0 + 48 * H)
    assert df.height == 12 and df["funding_interval_hours"].to_list() == [4] * 12
    new = rest.funding_rates("NEWUSDT", T0, T0 + 24 * H)
    assert new["funding_interval_hours"].to_list() == [8, 8, 8]  # not listed: Binance's 8 h default
    assert rest.funding_info() == {"FOURUSDT": 4, "BTCUSDT": 8}
    assert fake_binance.count(INFO) == 1  # fetched once per instance


def test_funding_1h_symbol_unlisted_first_row_defaults_to_8(fake_binance, fake_time):
    fake_binance.set_funding_info({})
    fake_binance.add_funding("ONEUSDT", T0, 5, interval_hours=1)
    df = make_rest(fake_binance, fake_time).funding_rates("ONEUSDT", T0, T0 + 5 * H)
    # the first settlement has no predecessor and fundingInfo does not list the symbol
    assert df["funding_interval_hours"].to_list() == [8, 1, 1, 1, 1]


def test_funding_interval_change_8h_to_4h(fake_binance, fake_time):
    fake_binance.set_funding_info({"BTCUSDT": 4})  # what Binance lists today, after the change
    fake_binance.add_funding("BTCUSDT", T0, 6, interval_hours=8)  # .. T0 + 40h
    fake_binance.add_funding("BTCUSDT", T0 + 44 * H, 6, interval_hours=4)  # T0 + 44h ..
    rest = make_rest(fake_binance, fake_time)
    df = rest.funding_rates("BTCUSDT", T0 + 8 * H, T0 + 72 * H)
    assert df["event_time"].to_list()[:5] == [T0 + 8 * H * i for i in range(1, 6)]
    assert df["funding_interval_hours"].to_list() == [8] * 5 + [4] * 6
    assert fake_binance.count(INFO) == 0


def test_funding_missing_settlements_keep_the_interval_in_force(fake_binance, fake_time):
    fake_binance.add_funding("BTCUSDT", T0, 2)
    fake_binance.add_funding("BTCUSDT", T0 + 40 * H, 2)  # 24 h without a settlement
    df = make_rest(fake_binance, fake_time).funding_rates("BTCUSDT", T0, T0 + 72 * H)
    # the missing settlements are a data-quality finding (data_quality.missing_rows), not a crash
    assert df["event_time"].to_list() == [T0, T0 + 8 * H, T0 + 40 * H, T0 + 48 * H]
    assert df["funding_interval_hours"].to_list() == [8, 8, 8, 8]


def test_funding_mark_price_empty_or_missing_is_null(fake_binance, fake_time):
    fake_binance.add_funding("AUSDT", T0, 2, mark_price="")
    fake_binance.add_funding("BUSDT", T0, 2, mark_price=None)
    rest = make_rest(fake_binance, fake_time)
    assert rest.funding_rates("AUSDT", T0, T0 + 16 * H)["mark_price"].null_count() == 2
    b = rest.funding_rates("BUSDT", T0, T0 + 16 * H)
    assert b["mark_price"].null_count() == 2 and b.schema == schemas.FUNDING_RATES.polars_schema


def test_funding_empty_range(fake_binance, fake_time):
    df = make_rest(fake_binance, fake_time).funding_rates("BTCUSDT", T0, T0 + 24 * H)
    assert df.height == 0 and df.schema == schemas.FUNDING_RATES.polars_schema


def test_invalid_symbol_error_reaches_caller(fake_binance, fake_time):
    fake_binance.inject("error", code=-1121, msg="Invalid symbol.")
    with pytest.raises(BinanceApiError, match=r"-1121: Invalid symbol\."):
        make_rest(fake_binance, fake_time).funding_rates("NOPE", T0, T0 + 24 * H)


def test_funding_survives_429_mid_pagination(fake_binance, fake_time):
    fake_binance.add_funding("HUSDT", T0, 1500, interval_hours=1)
    fake_binance.set_funding_info({"HUSDT": 1})
    rest = make_rest(fake_binance, fake_time)
    fake_binance.inject("429", retry_after=3, path=FUNDING)
    df = rest.funding_rates("HUSDT", T0, T0 + 1500 * H)
    assert df.height == 1500 and df["event_time"].is_unique().all()
    assert fake_time.sleeps == [3.0]


# ---------------------------------------------------------------------------------- open interest

NOW = datetime(2024, 3, 31, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("from_end", [False, True])
@pytest.mark.parametrize("count, requests", [(1000, 2), (1001, 3)])
def test_oi_pages(fake_binance, fake_time, count, requests, from_end):
    fake_binance.oi_page_from_end = from_end
    start = datetime(2024, 3, 25, tzinfo=UTC)
    stamps = fake_binance.add_oi("BTCUSDT", "5m", start - timedelta(minutes=50), count + 20)[10:-10]
    rest = make_rest(fake_binance, fake_time, now=NOW, oi_lag_s=30)
    df = rest.open_interest("BTCUSDT", "5m", start, start + timedelta(minutes=5 * count))
    assert grid(df) == stamps
    assert fake_binance.count(OI) == requests
    assert all(p["limit"] == "500" for p in fake_binance.params(OI))
    assert df["period_minutes"].unique().to_list() == [5]
    lag = [e + timedelta(minutes=5, seconds=30) for e in df["event_time"].to_list()]
    assert df["available_at"].to_list() == lag
    assert df["open_interest"][0] == pytest.approx(80010.0)
    assert df["open_interest_value"][0] == pytest.approx(80010.0 * 60000.0)
    schemas.validate(schemas.OPEN_INTEREST, df)


@pytest.mark.parametrize("start, end, phrase", [
    (datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 2, tzinfo=UTC), "the whole range is older"),
    (datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC), "the range starts older"),
])
def test_oi_older_than_30_days_refused(fake_binance, fake_time, start, end, phrase):
    rest = make_rest(fake_binance, fake_time, now=NOW)
    with pytest.raises(OutOfRestWindowError) as exc:
        rest.open_interest("BTCUSDT", "5m", start, end)
    msg = str(exc.value)
    assert phrase in msg and start.isoformat() in msg and end.isoformat() in msg
    assert "data.binance.vision" in msg and "metrics" in msg and "BTCUSDT" in msg
    assert fake_binance.count() == 0


def test_oi_inside_window_accepted_at_the_edge(fake_binance, fake_time):
    rest = make_rest(fake_binance, fake_time, now=NOW)
    start = rest.oi_rest_window_start()
    assert start == NOW - timedelta(days=30)
    assert rest.open_interest("BTCUSDT", "1h", start, start + H).height == 0
    assert fake_binance.count(OI) == 1


def test_oi_endpoint_throttle(fake_binance, fake_time):
    assert FUTURES_DATA_PATH_LIMIT == (("/futures/data/",), 1000, 300.0)
    start = datetime(2024, 3, 25, tzinfo=UTC)
    fake_binance.add_oi("BTCUSDT", "5m", start, 1500)
    rest = make_rest(fake_binance, fake_time, now=NOW)
    rest.client.set_path_limit("/futures/data/", 2, 300.0)  # same group, tightened for the test
    df = rest.open_interest("BTCUSDT", "5m", start, start + timedelta(minutes=5 * 1500))
    assert df.height == 1500 and fake_binance.count(OI) == 3
    assert fake_time.sleeps == [pytest.approx(300.0)]


# ---------------------------------------------------------------------------------- klines

@pytest.mark.parametrize("count, requests", [(1500, 1), (1501, 2), (3000, 2)])
def test_klines_page_boundaries(fake_binance, fake_time, count, requests):
    opens = fake_binance.add_klines("BTCUSDT", "1h", T0, count + 5)[:count]
    rest = make_rest(fake_binance, fake_time)
    df = rest.klines("BTCUSDT", "1h", T0, T0 + count * H)
    assert grid(df) == opens
    assert fake_binance.count(KLINES) == requests
    assert all(p["limit"] == "1500" for p in fake_binance.params(KLINES))
    assert rest.client.stats.weight_declared == 10 * requests
    assert (df["close_time"] == df["event_time"] + H).all()
    assert (df["available_at"] == df["close_time"]).all()
    assert df["trade_count"][3] == 103 and df["taker_buy_volume"][0] == pytest.approx(5.25)
    assert df["quote_volume"][1] == pytest.approx(1100.0) and df["volume"][0] == pytest.approx(10.5)
    schemas.validate(schemas.KLINES, df)


def test_klines_still_forming_bar_dropped(fake_binance, fake_time):
    fake_binance.add_klines("BTCUSDT", "4h", T0, 6)
    now = T0 + 5 * 4 * H + timedelta(minutes=10)  # inside the 6th bar
    rest = make_rest(fake_binance, fake_time, now=now)
    df = rest.klines("BTCUSDT", "4h", T0, T0 + 48 * H)
    assert df.height == 5
    assert df["close_time"].max() == T0 + 20 * H and df["close_time"].max() <= now
    assert df["interval"].unique().to_list() == ["4h"] and df["source"].unique().to_list() == ["binance_rest"]


def test_klines_bar_closing_exactly_now_is_kept(fake_binance, fake_time):
    fake_binance.add_klines("BTCUSDT", "1h", T0, 3)
    df = make_rest(fake_binance, fake_time, now=T0 + 3 * H).klines("BTCUSDT", "1h", T0, T0 + 3 * H)
    assert df.height == 3


def test_progress_reported_during_long_pagination(fake_binance, fake_time):
    messages: list[str] = []
    fake_binance.add_klines("BTCUSDT", "1m", T0, 3001)
    rest = make_rest(fake_binance, fake_time)
    rest.client.on_progress = messages.append
    rest.klines("BTCUSDT", "1m", T0, T0 + timedelta(minutes=3001))
    assert len(messages) == 2 and all("klines BTCUSDT 1m" in m for m in messages)


# ---------------------------------------------------------------------------------- bad served values

def test_a_non_numeric_price_names_endpoint_field_and_time(fake_binance, fake_time):
    fake_binance.add_klines("BTCUSDT", "1h", T0, 5)
    fake_binance.klines[("BTCUSDT", "1h")][2][2] = "12a.5"
    rest = make_rest(fake_binance, fake_time)
    with pytest.raises(ServedValueError) as exc:
        rest.klines("BTCUSDT", "1h", T0, T0 + 5 * H)
    assert str(exc.value) == (
        "GET /fapi/v1/klines BTCUSDT 1h: field 'high (index 2)' is not a number in 1 row(s) "
        "(2024-01-01T02:00:00Z: '12a.5'); expected a decimal number as a JSON string, e.g. '43250.10'. "
        "Nothing of this fetch was used.")
    assert isinstance(exc.value, InputError)


def test_non_numeric_funding_and_open_interest_are_named(fake_binance, fake_time):
    fake_binance.add_funding("BTCUSDT", T0, 3)
    fake_binance.funding["BTCUSDT"][1]["fundingRate"] = "n/a"
    start = datetime(2024, 3, 25, tzinfo=UTC)
    fake_binance.add_oi("BTCUSDT", "5m", start, 3)
    fake_binance.oi[("BTCUSDT", "5m")][0]["sumOpenInterest"] = "--"
    rest = make_rest(fake_binance, fake_time, now=NOW)
    with pytest.raises(ServedValueError, match=r"GET /fapi/v1/fundingRate BTCUSDT: field 'fundingRate' is not a "
                                               r"number in 1 row\(s\) \(2024-01-01T08:00:00Z: 'n/a'\)"):
        rest.funding_rates("BTCUSDT", T0, T0 + 24 * H)
    with pytest.raises(ServedValueError, match=r"GET /futures/data/openInterestHist BTCUSDT 5m: field "
                                               r"'sumOpenInterest' is not a number"):
        rest.open_interest("BTCUSDT", "5m", start, start + timedelta(minutes=15))


def test_two_different_candles_for_one_time_are_refused(fake_binance, fake_time):
    fake_binance.add_klines("BTCUSDT", "1h", T0, 5)
    rows = fake_binance.klines[("BTCUSDT", "1h")]
    twin = list(rows[3])
    twin[4] = "999.0"
    rows.insert(4, twin)
    with pytest.raises(ServedValueError) as exc:
        make_rest(fake_binance, fake_time).klines("BTCUSDT", "1h", T0, T0 + 5 * H)
    assert "GET /fapi/v1/klines BTCUSDT 1h: 1 key(s) appear twice with different values" in str(exc.value)
    assert "rows 4 and 5 (open_ms 1704078000000): close 104.0 vs 999.0" in str(exc.value)


def test_funding_off_the_grid_names_the_symbol(fake_binance, fake_time):
    fake_binance.add_funding("BTCUSDT", T0, 3, jitter_ms=lambda i: 17 * 60_000 if i == 1 else 0)
    with pytest.raises(FundingTimeError) as exc:
        make_rest(fake_binance, fake_time).funding_rates("BTCUSDT", T0, T0 + 24 * H)
    assert str(exc.value).startswith("GET /fapi/v1/fundingRate BTCUSDT: 1 settlement time(s) lie more than 5 "
                                     "minutes from the hourly settlement grid: 2024-01-01T08:17:00+00:00.")
