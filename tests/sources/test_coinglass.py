"""Coinglass liquidation client against the fake Coinglass server. No test really waits."""

from __future__ import annotations

import logging
import random
import traceback
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from qml_pipeline.errors import InputError
from qml_pipeline.store import schemas
from qml_pipeline.sources.http_client import HttpClient
from qml_pipeline.sources.coinglass import (
    LIQUIDATIONS,
    SKIP_REASON,
    CoinglassApiError,
    CoinglassAuthError,
    CoinglassClient,
    CoinglassError,
    CoinglassKeyError,
    CoinglassPlanError,
    CoinglassRateLimitError,
    CoinglassResponseError,
    coinglass_from_env,
)

from tests.fake_coinglass import AGG_PATH, FAKE_KEY, PAIR_PATH, FakeCoinglass

T0 = datetime(2024, 1, 1, tzinfo=UTC)
H4 = timedelta(hours=4)


def make(fake: FakeCoinglass, fake_time, key: str = FAKE_KEY, **kw) -> CoinglassClient:
    http = HttpClient(fake.url, timeout_s=(2, 2), sleep=fake_time.sleep, clock=fake_time.clock,
                      rng=random.Random(3), max_retries=kw.pop("max_retries", 6))
    return CoinglassClient(key, client=http, **kw)


def pair(client: CoinglassClient, start: datetime = T0, end: datetime = T0 + 10 * H4,
         interval: str = "4h") -> pl.DataFrame:
    return client.pair_history("Binance", "BTCUSDT", interval, start, end)


def test_pair_history_frame_contract(fake_coinglass, fake_time):
    stamps = fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 12)
    df = pair(make(fake_coinglass, fake_time), T0, T0 + 10 * H4)
    schemas.validate(LIQUIDATIONS, df)
    assert df.columns == LIQUIDATIONS.names and df.schema == LIQUIDATIONS.polars_schema
    assert df.height == 10  # [start, end): the 11th and 12th buckets are outside
    assert df["event_time"].dt.epoch("ms").to_list() == stamps[:10]
    assert (df["available_at"] - df["event_time"]).unique().to_list() == [H4]
    assert df["long_liquidation_usd"].to_list() == [FakeCoinglass.long_usd(i) for i in range(10)]
    assert df["short_liquidation_usd"].to_list() == [FakeCoinglass.short_usd(i) for i in range(10)]
    assert set(df["exchange"]) == {"Binance"} and set(df["symbol"]) == {"BTCUSDT"}
    assert set(df["interval"]) == {"4h"} and set(df["source"]) == {"coinglass"}
    sent = fake_coinglass.requests[0]
    assert sent[1]["exchange"] == "Binance" and sent[1]["symbol"] == "BTCUSDT" and sent[1]["interval"] == "4h"
    assert sent[2]["Cg-Api-Key"] == FAKE_KEY  # the key travels in the header, not the URL
    assert all(FAKE_KEY not in str(args) for _, args, _ in fake_coinglass.requests)


def test_aggregated_history_uses_exchange_list_and_all(fake_coinglass, fake_time):
    fake_coinglass.add_aggregated("BTC", "1d", T0, 5)
    client = make(fake_coinglass, fake_time)
    df = client.aggregated_history("BTC", "1d", T0, T0 + timedelta(days=5), exchange_list=["Binance", "OKX"])
    assert df.height == 5 and set(df["exchange"]) == {"ALL"} and set(df["symbol"]) == {"BTC"}
    assert df["long_liquidation_usd"][0] == FakeCoinglass.long_usd(0)
    assert fake_coinglass.params(AGG_PATH)[0]["exchange_list"] == "Binance,OKX"
    assert (df["available_at"] - df["event_time"]).unique().to_list() == [timedelta(days=1)]


def test_windows_cover_a_long_range_in_pages(fake_coinglass, fake_time):
    stamps = fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 250)
    client = make(fake_coinglass, fake_time, limit=100)
    df = pair(client, T0, T0 + 300 * H4)
    assert df["event_time"].dt.epoch("ms").to_list() == stamps
    params = fake_coinglass.params(PAIR_PATH)
    assert [int(p["start_time"]) for p in params] == [stamps[0] + k * 100 * 4 * 3_600_000 for k in range(3)]
    assert all(int(p["end_time"]) - int(p["start_time"]) < 100 * 4 * 3_600_000 for p in params)
    assert all(p["limit"] == "100" for p in params)


def test_server_serving_the_latest_rows_of_a_range_loses_nothing(fake_coinglass, fake_time):
    stamps = fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 250)
    fake_coinglass.page_from_end = True
    df = pair(make(fake_coinglass, fake_time, limit=100), T0, T0 + 250 * H4)
    assert df["event_time"].dt.epoch("ms").to_list() == stamps


def test_full_page_advances_after_last_time_and_dedupes(fake_coinglass, fake_time):
    # Every bucket served twice: a page of `limit` rows covers half a window, so the client must
    # continue from just after the page's last bucket.
    stamps = fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 10, duplicate=True)
    df = pair(make(fake_coinglass, fake_time, limit=10), T0, T0 + 10 * H4)
    assert df["event_time"].dt.epoch("ms").to_list() == stamps
    starts = [int(p["start_time"]) for p in fake_coinglass.params(PAIR_PATH)]
    assert starts[0] == stamps[0] and starts[1] == stamps[4] + 1


def test_short_page_stops_paging(fake_coinglass, fake_time):
    fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 3)
    df = pair(make(fake_coinglass, fake_time), T0, T0 + 10 * H4)
    assert df.height == 3 and fake_coinglass.count() == 1


def test_seconds_and_milliseconds_give_the_same_frame(fake_coinglass, fake_time):
    fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 6, time_unit="ms")
    fake_coinglass.add_pair("OKX", "BTCUSDT", "4h", T0, 6, time_unit="s")
    client = make(fake_coinglass, fake_time)
    in_ms = client.pair_history("Binance", "BTCUSDT", "4h", T0, T0 + 6 * H4)
    in_s = client.pair_history("OKX", "BTCUSDT", "4h", T0, T0 + 6 * H4)
    cols = ["event_time", "available_at", "long_liquidation_usd", "short_liquidation_usd"]
    assert in_s.height == 6 and in_s.select(cols).equals(in_ms.select(cols))
    assert in_s["event_time"][0] == T0


def test_start_and_end_accept_epoch_seconds_and_ms(fake_coinglass, fake_time):
    fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 6)
    client = make(fake_coinglass, fake_time)
    start_s, end_ms = int(T0.timestamp()), int((T0 + 3 * H4).timestamp() * 1000)
    assert client.pair_history("Binance", "BTCUSDT", "4h", start_s, end_ms).height == 3


@pytest.mark.parametrize("numbers", ["str", "num", "mixed"])
def test_numbers_as_strings_or_numbers(fake_coinglass, fake_time, numbers):
    fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 4, numbers=numbers)
    df = pair(make(fake_coinglass, fake_time), T0, T0 + 4 * H4)
    assert df["long_liquidation_usd"].to_list() == [FakeCoinglass.long_usd(i) for i in range(4)]
    assert df["short_liquidation_usd"].to_list() == [FakeCoinglass.short_usd(i) for i in range(4)]


def test_null_value_kept_as_null(fake_coinglass, fake_time):
    fake_coinglass.inject("body", body={"code": 0, "msg": "success", "data": [
        {"time": T0.timestamp() * 1000, "long_liquidation_usd": None, "short_liquidation_usd": "5"}]})
    df = pair(make(fake_coinglass, fake_time), T0, T0 + H4)
    assert df["long_liquidation_usd"].to_list() == [None] and df["short_liquidation_usd"].to_list() == [5.0]


def test_interval_finer_than_plan_raises_before_any_request(fake_coinglass, fake_time):
    client = make(fake_coinglass, fake_time, plan_min_interval="4h")
    with pytest.raises(CoinglassPlanError) as exc:
        pair(client, interval="1h")
    msg = str(exc.value)
    assert "'1h'" in msg and "'4h'" in msg and "4h, 6h, 8h, 12h, 1d, 1w" in msg
    assert "COINGLASS_PLAN_MIN_INTERVAL" in msg
    assert exc.value.allowed[0] == "4h" and "1h" not in exc.value.allowed
    assert fake_coinglass.count() == 0


def test_server_refusing_the_interval_for_the_plan_is_a_plan_error(fake_coinglass, fake_time):
    fake_coinglass.server_min_interval = "30m"
    client = make(fake_coinglass, fake_time, plan_min_interval="1m")
    with pytest.raises(CoinglassPlanError, match="refused interval '5m'") as exc:
        pair(client, interval="5m")
    assert "not allowed for your plan" in str(exc.value)


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_message_names_the_setting_not_the_key(fake_coinglass, fake_time, status):
    fake_coinglass.echo_key_in_errors = True
    wrong = "cg-wrong-key-do-not-print-42"
    if status == 401:
        client = make(fake_coinglass, fake_time, key=wrong)
    else:
        fake_coinglass.inject("status", status=403, body='{"code": "403", "msg": "forbidden for key {key}"}')
        client = make(fake_coinglass, fake_time)
    with pytest.raises(CoinglassAuthError) as exc:
        pair(client)
    msg = str(exc.value)
    assert f"HTTP {status}" in msg and "API key" in msg and "COINGLASS_API_KEY" in msg
    assert wrong not in msg and FAKE_KEY not in msg
    assert exc.value.__cause__ is None and exc.value.__context__ is None
    assert fake_coinglass.count() == 1  # not retried


def test_429_then_success_waits_retry_after(fake_coinglass, fake_time):
    fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 3)
    fake_coinglass.inject("429", retry_after=7)
    df = pair(make(fake_coinglass, fake_time), T0, T0 + 3 * H4)
    assert df.height == 3 and fake_time.sleeps == [7.0] and fake_coinglass.count() == 2


def test_persistent_429_is_a_clear_error(fake_coinglass, fake_time):
    fake_coinglass.inject("429", times=3, retry_after=2)
    with pytest.raises(CoinglassRateLimitError, match="Coinglass rate limit"):
        pair(make(fake_coinglass, fake_time, max_retries=2))
    assert fake_time.sleeps == [2.0, 2.0]


def test_usage_near_the_key_limit_pauses_one_period(fake_coinglass, fake_time):
    fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 3)
    fake_coinglass.rate_limit, fake_coinglass.used = 30, 20
    client = make(fake_coinglass, fake_time)
    pair(client, T0, T0 + 3 * H4)
    assert fake_time.sleeps == [] and client.last_rate_limit == (21, 30)
    fake_coinglass.used = 26  # the next response reports 27 of 30 = 90%
    pair(client, T0, T0 + 3 * H4)
    assert fake_time.sleeps == [60.0]
    assert client.metadata()["rate_limit_max_per_minute"] == 30


@pytest.mark.parametrize("code", ["50001", 50001])
def test_nonzero_code_is_an_api_error(fake_coinglass, fake_time, code):
    fake_coinglass.inject("code", code=code, msg="symbol not supported")
    with pytest.raises(CoinglassApiError) as exc:
        pair(make(fake_coinglass, fake_time))
    assert exc.value.code == "50001" and exc.value.msg == "symbol not supported"
    assert "50001" in str(exc.value) and "symbol not supported" in str(exc.value)


def test_code_zero_as_int_is_success(fake_coinglass, fake_time):
    fake_coinglass.inject("body", body={"code": 0, "msg": "success", "data": []})
    assert pair(make(fake_coinglass, fake_time)).height == 0


@pytest.mark.parametrize("body, match", [
    ([1, 2, 3], "unexpected body"),
    ({"msg": "success", "data": []}, "unexpected body"),
    ({"code": "0", "msg": "success", "data": {"time": 1}}, "'data' is not a list"),
    ({"code": "0", "msg": "success", "data": [{"long_liquidation_usd": "1"}]}, "without a 'time'"),
    ({"code": "0", "msg": "success", "data": [{"time": "soon", "long_liquidation_usd": "1",
                                               "short_liquidation_usd": "2"}]}, "'time' is not a number"),
    ({"code": "0", "msg": "success", "data": [{"time": 1704067200000, "short_liquidation_usd": "2"}]},
     "lacks"),
    ({"code": "0", "msg": "success", "data": [{"time": 1704067200000, "long_liquidation_usd": "lots",
                                               "short_liquidation_usd": "2"}]}, "non-numeric"),
])
def test_malformed_bodies_are_clear_errors(fake_coinglass, fake_time, body, match):
    fake_coinglass.inject("body", body=body)
    with pytest.raises(CoinglassResponseError, match=match):
        pair(make(fake_coinglass, fake_time))


def test_body_that_is_not_json_is_retried_then_an_error(fake_coinglass, fake_time):
    fake_coinglass.inject("malformed", times=3)
    with pytest.raises(CoinglassResponseError, match="not JSON"):
        pair(make(fake_coinglass, fake_time))
    assert fake_coinglass.count() == 3


def _chain_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args) + repr(vars(exc))


def test_the_key_appears_nowhere(fake_coinglass, fake_time, caplog):
    caplog.set_level(logging.DEBUG)
    fake_coinglass.echo_key_in_errors = True
    fake_coinglass.rate_limit, fake_coinglass.used = 10, 8
    fake_coinglass.add_pair("Binance", "BTCUSDT", "4h", T0, 5)
    fake_coinglass.add_aggregated("BTC", "4h", T0, 5)
    client = make(fake_coinglass, fake_time)

    fake_coinglass.inject("429", retry_after=30)  # a long wait is logged at INFO
    frames = [pair(client, T0, T0 + 5 * H4),
              client.aggregated_history("BTC", "4h", T0, T0 + 5 * H4)]
    assert fake_time.sleeps == [30.0, 60.0, 60.0]  # Retry-After, then the key-limit pauses
    seen: list[str] = [repr(client), str(client), repr(vars(client)), str(client.metadata())]
    for df in frames:
        assert df.height == 5
        seen += [str(df), df.write_json(), df.write_csv()]

    failures: list[BaseException] = []
    for kind, kw in [("code", {"code": "40001", "msg": "bad key {key}"}),
                     ("status", {"status": 403, "body": '{"code": "403", "msg": "key {key} forbidden"}'}),
                     ("status", {"status": 400, "body": "bad request for {key}"}),
                     ("code", {"code": "400", "msg": "interval not allowed for plan of {key}"}),
                     ("body", {"body": {"code": "0", "data": [{"no_time": "{key}"}]}}),
                     ("body", {"body": {"code": "0", "data": [{"time": 1704067200000,
                                                               "long_liquidation_usd": "{key}",
                                                               "short_liquidation_usd": "1"}]}})]:
        fake_coinglass.inject(kind, **kw)
        with pytest.raises(CoinglassError) as exc:
            pair(client)
        failures.append(exc.value)
    with pytest.raises(CoinglassPlanError) as exc:
        pair(client, interval="1m")
    failures.append(exc.value)
    fake_coinglass.inject("429", times=7, retry_after=1)
    with pytest.raises(CoinglassRateLimitError) as exc:
        pair(client)
    failures.append(exc.value)
    with pytest.raises(CoinglassAuthError) as exc:
        pair(make(fake_coinglass, fake_time, key=FAKE_KEY + "-typo"))
    failures.append(exc.value)
    seen += [_chain_text(e) for e in failures]

    seen.append(caplog.text)
    seen += [str(r.args) for r in caplog.records]
    assert any("waiting 30.0 s" in r.getMessage() for r in caplog.records)  # logs were captured
    for text in seen:
        assert FAKE_KEY not in text
    assert len(failures) == 9


def test_from_env():
    assert coinglass_from_env({}) is None
    assert coinglass_from_env({"COINGLASS_API_KEY": "   "}) is None
    client = coinglass_from_env({"COINGLASS_API_KEY": FAKE_KEY, "COINGLASS_PLAN_MIN_INTERVAL": "30m"})
    assert isinstance(client, CoinglassClient) and client.plan_min_interval == "30m"
    assert client.http.base_url == "https://open-api-v4.coinglass.com/"
    assert FAKE_KEY not in repr(client)
    with pytest.raises(ValueError, match="COINGLASS_PLAN_MIN_INTERVAL") as exc:
        coinglass_from_env({"COINGLASS_API_KEY": FAKE_KEY, "COINGLASS_PLAN_MIN_INTERVAL": "7m"})
    assert FAKE_KEY not in str(exc.value)
    assert "COINGLASS_API_KEY" in SKIP_REASON


def test_empty_key_refused():
    with pytest.raises(ValueError, match="COINGLASS_API_KEY"):
        CoinglassClient("  ")


@pytest.mark.parametrize("bad, kind", [("\n", "a control character (U+000A)"), ("\t", "a control character (U+0009)"),
                                       ("\x7f", "a control character (U+007F)"), (" ", "a space (U+0020)"),
                                       ("\u00e9", "a non-ASCII character (U+00E9)")])
def test_a_key_with_a_control_character_is_refused_before_use_and_not_echoed(fake_coinglass, fake_time, bad, kind):
    key = FAKE_KEY[:10] + bad + FAKE_KEY[10:]
    with pytest.raises(CoinglassKeyError) as exc:
        make(fake_coinglass, fake_time, key=key)
    text = _chain_text(exc.value)
    assert f"COINGLASS_API_KEY holds {kind} at position 11 of {len(key)}" in str(exc.value)
    assert FAKE_KEY[:10] not in text and FAKE_KEY[10:] not in text
    assert isinstance(exc.value, InputError)
    with pytest.raises(CoinglassKeyError):
        coinglass_from_env({"COINGLASS_API_KEY": key})
    assert fake_coinglass.server.log == []  # refused before any request


def test_a_trailing_newline_is_stripped_not_refused():
    assert isinstance(coinglass_from_env({"COINGLASS_API_KEY": FAKE_KEY + "\n"}), CoinglassClient)
