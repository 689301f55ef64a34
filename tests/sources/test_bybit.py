"""BybitSource against the fake Bybit server: pagination, units, available_at, rate limits, errors,
and short answers measured against the grid and coverage of the MarketSource protocol."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from qml_pipeline.sources import bybit
from qml_pipeline.sources.bybit import BybitSource
from qml_pipeline.sources.http_client import HttpClient, HttpError, RateLimitedError, VenueApiError
from qml_pipeline.sources.venue_source import LIVE_EDGE_GRACE, NotServedError
from qml_pipeline.sources.venues import UnknownSymbolError
from qml_pipeline.store import schemas
from qml_pipeline.timeutil import UTC, to_ms
from tests.venue_helpers import expected_stamps, make_venue_reader, missing

OI = "/v5/market/open-interest"
MARK = "/v5/market/mark-price-kline"
FUNDING = "/v5/market/funding/history"
INSTRUMENTS = "/v5/market/instruments-info"
LAUNCH = datetime(2020, 3, 25, tzinfo=UTC)
T0 = datetime(2024, 3, 1, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)
H = timedelta(hours=1)
M5 = timedelta(minutes=5)


def make_reader(fake, fake_time, now: datetime = NOW, lag_s: int = 0, **kw) -> BybitSource:
    return make_venue_reader(bybit, BybitSource, fake, fake_time, now, lag_s, 3, **kw)


@pytest.fixture
def btc(fake_bybit):
    fake_bybit.add_instrument("BTCUSDT", LAUNCH)
    return fake_bybit


def stamps_of(df) -> list[int]:
    return [to_ms(t) for t in df["event_time"].to_list()]


# ---------------------------------------------------------------------------------- open interest

@pytest.mark.parametrize("count, pages", [(200, 1), (201, 2), (1000, 5)])
def test_oi_cursor_pages_no_gaps_no_duplicates_fewest_requests(btc, fake_time, count, pages):
    stamps = btc.add_oi("BTCUSDT", "5min", T0 - 10 * M5, count + 20)[10:-10]
    btc.add_marks("BTCUSDT", "5", T0 - 10 * M5, count + 20)
    reader = make_reader(btc, fake_time)
    df = reader.open_interest("BTCUSDT", "5m", T0, T0 + count * M5)
    assert stamps_of(df) == stamps  # every stamp once, in order
    # the cursor on the last page is not followed: the oldest stamp already reached `start`
    assert btc.count(OI) == pages
    assert btc.count(MARK) == -(-count // 1000)
    first = btc.params(OI)[0]
    assert first["limit"] == "200" and first["intervalTime"] == "5min" and first["category"] == "linear"
    assert int(first["startTime"]) == to_ms(T0) and int(first["endTime"]) == to_ms(T0 + count * M5) - 1
    assert [p.get("cursor") for p in btc.params(OI)][1:] == [f"lastid={200 * i}" for i in range(1, pages)]
    assert missing(reader, df, "open_interest", "BTCUSDT", T0, T0 + count * M5, "5m") == []
    assert expected_stamps(reader, "open_interest", "BTCUSDT", T0, T0 + count * M5, "5m") == count
    schemas.validate(schemas.OPEN_INTEREST, df)


def test_oi_units_single_side_coins_and_usd_from_the_mark_close(btc, fake_time):
    btc.add_oi("BTCUSDT", "1h", T0, 3, coins=lambda i: [50_000.5, 51_000.0, 49_999.25][i])
    btc.add_marks("BTCUSDT", "60", T0, 3, close=lambda i: [60_000.0, 61_000.0, 59_500.0][i])
    df = make_reader(btc, fake_time).open_interest("BTCUSDT", "1h", T0, T0 + 3 * H)
    # singleOpenInterest (one side, BTC) is the open interest, not openInterest (both sides)
    assert df["open_interest"].to_list() == [50_000.5, 51_000.0, 49_999.25]
    # USD = coins x the close of the mark price bar [stamp, stamp + 1h)
    assert df["open_interest_value"].to_list() == pytest.approx([50_000.5 * 60_000, 51_000.0 * 61_000,
                                                                 49_999.25 * 59_500])
    assert df["venue"].unique().to_list() == ["bybit"] and df["source"].unique().to_list() == ["bybit_rest"]
    assert df["period_minutes"].unique().to_list() == [60]


def test_oi_rows_without_single_side_are_noted(btc, fake_time):
    btc.add_oi("BTCUSDT", "1h", T0, 2, coins=lambda i: 100.0, single_side=False)
    btc.add_marks("BTCUSDT", "60", T0, 1)
    reader = make_reader(btc, fake_time)
    df = reader.open_interest("BTCUSDT", "1h", T0, T0 + 2 * H)
    assert df["open_interest"].to_list() == [200.0, 200.0]  # openInterest as served
    assert any("2 row(s) without singleOpenInterest" in n for n in reader.notes)
    assert any("1 row(s) without a mark price bar" in n for n in reader.notes)
    assert all(n.startswith("bybit open_interest 1h BTCUSDT [2024-03-01 00:00, 2024-03-01 02:00)") for n in reader.notes)
    assert df["open_interest_value"].null_count() == 1


@pytest.mark.parametrize("lag_s", [0, 45])
def test_oi_available_at_is_stamp_plus_period_plus_lag(btc, fake_time, lag_s):
    btc.add_oi("BTCUSDT", "15min", T0, 4)
    btc.add_marks("BTCUSDT", "15", T0, 4)
    df = make_reader(btc, fake_time, lag_s=lag_s).open_interest("BTCUSDT", "15m", T0, T0 + 4 * 3 * M5)
    assert df["available_at"].to_list() == [t + 3 * M5 + timedelta(seconds=lag_s) for t in df["event_time"]]
    schemas.validate(schemas.OPEN_INTEREST, df)


def test_oi_forming_bucket_dropped_and_unpublished_stamps_not_expected(btc, fake_time):
    btc.add_oi("BTCUSDT", "5min", T0, 12)
    btc.add_marks("BTCUSDT", "5", T0, 12)
    now = T0 + 11 * M5 + timedelta(minutes=2)  # inside the 12th bucket
    reader = make_reader(btc, fake_time, now=now, lag_s=60)
    df = reader.open_interest("BTCUSDT", "5m", T0, T0 + H)
    assert df.height == 11  # the open bucket (stamp T0 + 55 min) is not a row
    # expected once stamp + 5 min + 60 s + the live-edge grace (2 min) has passed: up to T0 + 45 min (the
    # row stamped T0 + 50 min is served, not yet expected)
    assert reader.coverage("open_interest", "BTCUSDT", "5m").end == now - M5 - timedelta(seconds=60) - LIVE_EDGE_GRACE
    assert expected_stamps(reader, "open_interest", "BTCUSDT", T0, T0 + H, "5m") == 10
    assert missing(reader, df, "open_interest", "BTCUSDT", T0, T0 + H, "5m") == []


def test_oi_short_answer_reports_missing_stamps_never_pads(btc, fake_time):
    btc.add_oi("BTCUSDT", "1h", T0, 3)
    btc.add_oi("BTCUSDT", "1h", T0 + 6 * H, 2)  # T0+3h .. T0+5h absent, and T0+8h .. absent
    btc.add_marks("BTCUSDT", "60", T0, 10)
    reader = make_reader(btc, fake_time)
    df = reader.open_interest("BTCUSDT", "1h", T0, T0 + 10 * H)
    assert df.height == 5
    assert missing(reader, df, "open_interest", "BTCUSDT", T0, T0 + 10 * H, "1h") == [T0 + h * H for h in (3, 4, 5, 8, 9)]
    assert expected_stamps(reader, "open_interest", "BTCUSDT", T0, T0 + 10 * H, "1h") == 10


def test_oi_empty_answer_is_all_missing(btc, fake_time):
    reader = make_reader(btc, fake_time)
    df = reader.open_interest("BTCUSDT", "4h", T0, T0 + 24 * H)
    assert df.height == 0 and df.columns == schemas.OPEN_INTEREST.names
    assert len(missing(reader, df, "open_interest", "BTCUSDT", T0, T0 + 24 * H, "4h")) == 6
    assert btc.count(MARK) == 0  # nothing to price


def test_oi_history_starts_at_launch(fake_bybit, fake_time):
    launch = T0 + 2 * H
    fake_bybit.add_instrument("NEWUSDT", launch)
    fake_bybit.add_oi("NEWUSDT", "1h", launch, 4)
    fake_bybit.add_marks("NEWUSDT", "60", launch, 4)
    reader = make_reader(fake_bybit, fake_time)
    df = reader.open_interest("NEWUSDT", "1h", T0, T0 + 6 * H)
    assert reader.coverage("open_interest", "NEWUSDT", "1h").first == launch
    assert reader.coverage("funding_rates", "NEWUSDT", "").first == launch
    assert expected_stamps(reader, "open_interest", "NEWUSDT", T0, T0 + 6 * H, "1h") == 4
    assert missing(reader, df, "open_interest", "NEWUSDT", T0, T0 + 6 * H, "1h") == []
    assert int(fake_bybit.params(OI)[0]["startTime"]) == to_ms(launch)


def test_oi_period_not_served_by_bybit(btc, fake_time):
    with pytest.raises(ValueError, match=r"bybit serves open interest for periods .*'2h'"):
        make_reader(btc, fake_time).open_interest("BTCUSDT", "2h", T0, T0 + H)
    assert btc.count() == 0


# ---------------------------------------------------------------------------------- funding

@pytest.mark.parametrize("count, pages", [(198, 1), (199, 1), (200, 2), (450, 3)])
def test_funding_pages_walk_back_by_end_time(btc, fake_time, count, pages):
    # count settlements in range plus one before it (the interval of the first): a full page of
    # 200 that reaches back to the lookback needs no confirming request
    everything = btc.add_funding("BTCUSDT", T0 - 8 * H, count + 1)
    end = T0 + count * 8 * H
    reader = make_reader(btc, fake_time, now=end + H)
    df = reader.funding_rates("BTCUSDT", T0, end)
    assert stamps_of(df) == everything[1:]
    assert btc.count(FUNDING) == pages
    params = btc.params(FUNDING)
    assert all(int(p["startTime"]) == to_ms(T0) - 8 * 3_600_000 - 5 * 60_000 for p in params)
    assert int(params[0]["endTime"]) == to_ms(end) - 1
    # each further page ends just below the oldest settlement of the previous one
    for prev, nxt in zip(params, params[1:]):
        assert int(nxt["endTime"]) < int(prev["endTime"])
    assert df["funding_interval_hours"].unique().to_list() == [8]
    assert (df["available_at"] == df["event_time"]).all()
    assert df["mark_price"].null_count() == df.height  # Bybit's history has no mark price
    assert missing(reader, df, "funding_rates", "BTCUSDT", T0, end) == []
    schemas.validate(schemas.FUNDING_RATES, df)


def test_funding_first_settlement_takes_the_listed_interval(fake_bybit, fake_time):
    fake_bybit.add_instrument("ONEUSDT", T0, funding_interval_minutes=60)
    fake_bybit.add_funding("ONEUSDT", T0, 5, interval_hours=1)
    reader = make_reader(fake_bybit, fake_time)
    df = reader.funding_rates("ONEUSDT", T0 - 24 * H, T0 + 5 * H)
    assert df["funding_interval_hours"].to_list() == [1] * 5
    assert reader.coverage("funding_rates", "ONEUSDT", "").first == T0
    assert missing(reader, df, "funding_rates", "ONEUSDT", T0 - 24 * H, T0 + 5 * H) == []


def test_funding_interval_change_and_missing_settlements(btc, fake_time):
    btc.add_funding("BTCUSDT", T0, 3)  # T0, 8h, 16h
    btc.add_funding("BTCUSDT", T0 + 40 * H, 2)  # 24h and 32h missing; 40h, 48h
    btc.add_funding("BTCUSDT", T0 + 52 * H, 3, interval_hours=4)  # 52h, 56h, 60h: interval 4 h
    reader = make_reader(btc, fake_time)
    df = reader.funding_rates("BTCUSDT", T0, T0 + 72 * H)
    assert df["funding_interval_hours"].to_list() == [8, 8, 8, 8, 8, 4, 4, 4]
    assert missing(reader, df, "funding_rates", "BTCUSDT", T0, T0 + 72 * H) == [T0 + 24 * H, T0 + 32 * H,
                                                                                T0 + 64 * H, T0 + 68 * H]


def test_funding_rate_values_and_rows_in_range_only(btc, fake_time):
    btc.add_funding("BTCUSDT", T0, 4, rate=lambda i: [0.0001, -0.00025, 0.0003, 0.0][i])
    df = make_reader(btc, fake_time).funding_rates("BTCUSDT", T0 + 8 * H, T0 + 24 * H)
    assert df["funding_rate"].to_list() == [-0.00025, 0.0003]
    assert df["event_time"].to_list() == [T0 + 8 * H, T0 + 16 * H]


def test_funding_empty_answer_is_all_missing_on_the_8h_grid(btc, fake_time):
    reader = make_reader(btc, fake_time)
    df = reader.funding_rates("BTCUSDT", T0, T0 + 24 * H)
    assert df.height == 0
    assert missing(reader, df, "funding_rates", "BTCUSDT", T0, T0 + 24 * H) == [T0, T0 + 8 * H, T0 + 16 * H]


def test_klines_are_not_served_and_say_why(btc, fake_time):
    reader = make_reader(btc, fake_time)
    with pytest.raises(NotServedError, match="klines BTCUSDT 1h are not read from bybit.*from Binance"):
        reader.klines("BTCUSDT", "1h", T0, T0 + H)
    assert reader.grid("klines", "1h") is None and reader.grid("funding_rates", "") is None
    assert reader.grid("open_interest", "15m").step == 3 * M5
    assert btc.count() == 0


# ---------------------------------------------------------------------------------- symbols and errors

def test_unknown_symbol_names_venue_and_symbol(btc, fake_time):
    with pytest.raises(UnknownSymbolError, match=r"bybit: unknown symbol 'NOPEUSDT'.*instruments-info"):
        make_reader(btc, fake_time).open_interest("NOPEUSDT", "5m", T0, T0 + H)
    assert btc.count(OI) == 0


def test_instrument_fetched_once_per_symbol(btc, fake_time):
    btc.add_funding("BTCUSDT", T0, 3)
    reader = make_reader(btc, fake_time)
    reader.funding_rates("BTCUSDT", T0, T0 + 24 * H)
    reader.open_interest("BTCUSDT", "1h", T0, T0 + H)
    assert btc.count(INSTRUMENTS) == 1
    inst = reader.instrument("BTCUSDT")
    assert inst.contract_size == 1.0 and inst.listed_at == LAUNCH and inst.funding_interval_hours == 8


def test_inverse_or_dated_contract_refused(fake_bybit, fake_time):
    fake_bybit.add_instrument("BTCUSDT", LAUNCH, contract_type="LinearFutures")
    with pytest.raises(UnknownSymbolError, match="LinearFutures, not a LinearPerpetual"):
        make_reader(fake_bybit, fake_time).instrument("BTCUSDT")


def test_error_body_names_venue_endpoint_and_parameter(btc, fake_time):
    reader = make_reader(btc, fake_time)
    with pytest.raises(VenueApiError) as exc:
        reader.client.get_json(OI, {"category": "linear", "symbol": "BTCUSDT", "intervalTime": "2h"})
    msg = str(exc.value)
    assert exc.value.venue == "Bybit" and exc.value.code == 10001
    assert "Bybit API error 10001" in msg and "intervalTime invalid" in msg
    assert OI in msg and "intervalTime=2h" in msg
    assert btc.count(OI) == 1  # not retried


# ---------------------------------------------------------------------------------- rate limits

def test_403_access_too_frequent_waits_the_ban_then_succeeds(btc, fake_time):
    btc.add_funding("BTCUSDT", T0, 3)
    btc.inject("403", path=FUNDING)
    df = make_reader(btc, fake_time).funding_rates("BTCUSDT", T0, T0 + 24 * H)
    assert df.height == 3
    assert fake_time.sleeps == [600.0]  # Bybit: "wait for at least 10 minutes"
    assert btc.count(FUNDING) == 2


def test_403_ban_that_persists_is_reported(btc, fake_time):
    btc.inject("403", times=3, path=FUNDING)
    reader = make_reader(btc, fake_time, max_retries=1)
    with pytest.raises(RateLimitedError) as exc:
        reader.funding_rates("BTCUSDT", T0, T0 + 24 * H)
    msg = str(exc.value)
    assert "Bybit IP banned" in msg and "HTTP 403" in msg and FUNDING in msg and "lower the request rate" in msg
    assert exc.value.retry_after_s == 600 and fake_time.sleeps == [600.0]


def test_403_without_ban_text_is_a_country_block_not_retried(btc, fake_time):
    btc.inject("403geo")
    with pytest.raises(HttpError, match="Bybit refuses this IP") as exc:
        make_reader(btc, fake_time).instrument("BTCUSDT")
    assert not isinstance(exc.value, RateLimitedError) and fake_time.sleeps == []


def test_10006_waits_until_the_limit_resets(btc, fake_time):
    btc.add_oi("BTCUSDT", "1h", T0, 2)
    btc.add_marks("BTCUSDT", "60", T0, 2)
    btc.inject("10006", path=OI, reset_ms=int((fake_time.now + 3.5) * 1000))
    df = make_reader(btc, fake_time).open_interest("BTCUSDT", "1h", T0, T0 + 2 * H)
    assert df.height == 2 and fake_time.sleeps == [pytest.approx(3.5)]


def test_10016_internal_error_backs_off_and_retries(btc, fake_time):
    btc.add_funding("BTCUSDT", T0, 1)
    btc.inject("10016", times=2, path=FUNDING)
    reader = make_reader(btc, fake_time)
    assert reader.funding_rates("BTCUSDT", T0, T0 + 8 * H).height == 1
    assert btc.count(FUNDING) == 3 and reader.client.stats.retries == 2


def test_ip_limit_spaces_requests(btc, fake_time):
    assert bybit.IP_LIMIT == (("/",), 600, 5.0)
    btc.add_oi("BTCUSDT", "5min", T0, 600)
    btc.add_marks("BTCUSDT", "5", T0, 600)
    reader = make_reader(btc, fake_time)
    reader.client.set_path_limit("/", 2, 5.0)  # the same group, tightened for the test
    assert reader.open_interest("BTCUSDT", "5m", T0, T0 + 600 * M5).height == 600
    # instruments + 3 OI pages + 1 mark page = 5 requests, at most 2 per 5 s
    assert btc.count() == 5 and sum(fake_time.sleeps) == pytest.approx(10.0)


def test_reader_refuses_a_client_without_bybit_rules(btc, fake_time):
    with pytest.raises(ValueError, match="bybit.make_client"):
        BybitSource(HttpClient(btc.url))
