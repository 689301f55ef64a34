"""HttpClient against the fake Binance server: retries, rate limits, errors. No test really waits."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from qml_pipeline.sources.http_client import (
    BadResponseError,
    BinanceApiError,
    GeoBlockedError,
    HttpClient,
    HttpError,
    RateLimitedError,
    redact_url,
)

INFO = "/fapi/v1/fundingInfo"


def make_client(fake_binance, fake_time, **kw) -> HttpClient:
    kw.setdefault("timeout_s", (2, 2))
    return HttpClient(fake_binance.url, sleep=fake_time.sleep, clock=fake_time.clock,
                      rng=random.Random(7), **kw)


@pytest.fixture
def served(fake_binance):
    fake_binance.set_funding_info({"BTCUSDT": 8, "XUSDT": 4})
    return fake_binance


def test_get_json_and_stats(served, fake_time):
    client = make_client(served, fake_time)
    rows = client.get_json(INFO, weight=3)
    assert {r["symbol"]: r["fundingIntervalHours"] for r in rows} == {"BTCUSDT": 8, "XUSDT": 4}
    assert client.stats.requests == 1 and client.stats.retries == 0
    assert client.stats.weight_declared == 3
    assert client.stats.bytes_received > 50
    assert fake_time.sleeps == []
    old = client.reset_stats()
    assert old.requests == 1 and client.stats.requests == 0 and client.stats.bytes_received == 0


def test_429_waits_retry_after_then_succeeds(served, fake_time):
    served.inject("429", times=2, retry_after=7)
    client = make_client(served, fake_time)
    assert len(client.get_json(INFO)) == 2
    assert fake_time.sleeps == [7.0, 7.0]
    assert served.count(INFO) == 3
    assert client.stats.retries == 2 and client.stats.waited_s == pytest.approx(14.0)


def test_429_retry_after_as_http_date_and_garbage(served, fake_time):
    # RFC 9110 allows Retry-After as an HTTP date (read against the real clock); garbage: the default
    served.inject("429", retry_after=email.utils.formatdate(time.time() + 120, usegmt=True))
    served.inject("429", retry_after="soon")
    client = make_client(served, fake_time, default_retry_after_s=9)
    assert len(client.get_json(INFO)) == 2
    assert fake_time.sleeps[0] == pytest.approx(120, abs=3) and fake_time.sleeps[1] == 9.0


def test_429_without_retry_after_uses_default(served, fake_time):
    served.inject("429")
    client = make_client(served, fake_time, default_retry_after_s=42)
    client.get_json(INFO)
    assert fake_time.sleeps == [42.0]


def test_418_waits_retry_after_and_is_bounded(served, fake_time):
    served.inject("418", retry_after=120)
    client = make_client(served, fake_time)
    client.get_json(INFO)
    assert fake_time.sleeps == [120.0]

    served.inject("418", times=5, retry_after=120)
    client = make_client(served, fake_time, max_retries=2)
    fake_time.sleeps.clear()
    with pytest.raises(RateLimitedError, match="418") as exc:
        client.get_json(INFO)
    assert exc.value.retry_after_s == 120
    assert fake_time.sleeps == [120.0, 120.0]  # waited before every retry: no hammering
    assert served.count(INFO) == 2 + 3  # 2 from the first call, then 1 + max_retries


def test_ban_longer_than_max_wait_raises_at_once(served, fake_time):
    served.inject("418", retry_after=86_400)
    client = make_client(served, fake_time, max_retry_after_s=900)
    with pytest.raises(RateLimitedError, match="86400"):
        client.get_json(INFO)
    assert fake_time.sleeps == [] and served.count(INFO) == 1


def test_5xx_burst_then_success_with_jittered_backoff(served, fake_time):
    served.inject("5xx", times=3)
    client = make_client(served, fake_time, backoff_base_s=0.5, backoff_cap_s=30)
    assert len(client.get_json(INFO)) == 2
    assert served.count(INFO) == 4
    assert len(fake_time.sleeps) == 3
    for attempt, slept in enumerate(fake_time.sleeps):
        assert 0 <= slept <= 0.5 * 2 ** attempt


def test_5xx_exhaustion_raises_clear_error(served, fake_time):
    served.inject("5xx", times=10, status=502)
    client = make_client(served, fake_time, max_retries=3)
    with pytest.raises(HttpError, match=r"HTTP 502 on all 4 attempts") as exc:
        client.get_json(INFO)
    assert exc.value.status == 502 and "/fapi/v1/fundingInfo" in str(exc.value)
    assert served.count(INFO) == 4 and client.stats.retries == 3


def test_backoff_is_capped(served, fake_time):
    served.inject("5xx", times=6)
    client = make_client(served, fake_time, backoff_base_s=1, backoff_cap_s=2, max_retries=6)
    client.get_json(INFO)
    assert len(fake_time.sleeps) == 6 and max(fake_time.sleeps) <= 2


def test_timeout_then_success(served, fake_time):
    # The fake server is single-threaded: the retry is answered once the slow response is done.
    served.inject("slow", delay_s=0.5)
    client = make_client(served, fake_time, timeout_s=(1, 0.35))
    assert len(client.get_json(INFO)) == 2
    assert client.stats.retries == 1 and len(fake_time.sleeps) == 1


def test_timeouts_exhausted(served, fake_time):
    served.inject("slow", times=2, delay_s=0.5)
    client = make_client(served, fake_time, timeout_s=(1, 0.15), max_retries=1)
    with pytest.raises(HttpError, match="timed out on all 2 attempts"):
        client.get_json(INFO)
    # the single-threaded fake is still sleeping through the slow answers: let it finish, or the late
    # answer lands in the next test run on this server
    deadline = time.monotonic() + 5
    while served.count(INFO) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.6)


def test_connection_refused_is_retried_then_raised(fake_time):
    client = HttpClient("http://127.0.0.1:9", sleep=fake_time.sleep, clock=fake_time.clock, max_retries=2,
                        timeout_s=(0.5, 0.5))
    with pytest.raises(HttpError, match="could not connect on all 3 attempts"):
        client.get_json("/x")
    assert len(fake_time.sleeps) == 2


def test_malformed_json_retried_then_clear_error(served, fake_time):
    served.inject("malformed")
    client = make_client(served, fake_time)
    assert len(client.get_json(INFO)) == 2  # one bad body is treated as transient

    served.inject("malformed", times=3)
    with pytest.raises(BadResponseError) as exc:
        client.get_json(INFO)
    msg = str(exc.value)
    assert "not JSON" in msg and "/fapi/v1/fundingInfo" in msg and '[{"symbol": "BTCUSDT", "fundingTi' in msg


def test_binance_error_body_on_4xx(served, fake_time):
    served.inject("error", code=-1121, msg="Invalid symbol.")
    client = make_client(served, fake_time)
    with pytest.raises(BinanceApiError) as exc:
        client.get_json(INFO, {"symbol": "NOPE"})
    assert exc.value.code == -1121 and exc.value.msg == "Invalid symbol."
    assert "-1121" in str(exc.value) and "Invalid symbol." in str(exc.value) and "symbol=NOPE" in str(exc.value)
    assert served.count(INFO) == 1  # a 4xx is not retried


def test_binance_error_body_in_a_200(served, fake_time):
    served.inject("error", status=200, code=-1130, msg="Data sent for parameter 'startTime' is not valid.")
    client = make_client(served, fake_time)
    with pytest.raises(BinanceApiError, match="-1130"):
        client.get_json(INFO)


def test_451_geo_block_message(served, fake_time):
    served.inject("451")
    client = make_client(served, fake_time)
    with pytest.raises(GeoBlockedError) as exc:
        client.get_json(INFO)
    msg = str(exc.value)
    assert "451" in msg and "location" in msg and "VPN" in msg and "data.binance.vision" in msg
    assert served.count(INFO) == 1


def test_weight_header_sleeps_until_next_minute_boundary(served, fake_time):
    fake_time.now = 1_700_000_010.0  # 50 s before a minute boundary (1_700_000_040 is divisible by 60)
    served.weight_header = 1900  # above 0.8 * 2400 = 1920 once the next request's weight is added
    client = make_client(served, fake_time)
    client.get_json(INFO, weight=1)
    assert fake_time.sleeps == [] and client.stats.weight_used == 1900
    served.weight_header = 26  # what Binance reports in the new minute
    client.get_json(INFO, weight=25)
    assert fake_time.sleeps == [pytest.approx(1_700_000_040.0 - 1_700_000_010.0 + 0.5)]
    assert fake_time.now % 60 == pytest.approx(0.5)
    client.get_json(INFO, weight=25)
    assert len(fake_time.sleeps) == 1  # the counter reset at the boundary: no second wait


def test_weight_below_headroom_never_waits(served, fake_time):
    served.weight_header = 1500
    client = make_client(served, fake_time)
    for _ in range(3):
        client.get_json(INFO, weight=10)
    assert fake_time.sleeps == []


def test_weight_forgotten_after_minute_passes(served, fake_time):
    served.weight_header = 2000
    client = make_client(served, fake_time)
    client.get_json(INFO)
    fake_time.now += 61  # a new minute: Binance has reset the counter
    served.weight_header = 5
    client.get_json(INFO)
    assert fake_time.sleeps == []


def test_path_limit_spaces_requests(served, fake_time):
    client = make_client(served, fake_time)
    client.set_path_limit("/fapi/v1/fundingInfo", max_requests=3, window_s=300)
    for _ in range(4):
        client.get_json(INFO)
    assert fake_time.sleeps == [pytest.approx(300.0)]
    client.get_json("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1h"})  # other paths unaffected
    assert len(fake_time.sleeps) == 1


def test_get_bytes_absolute_url_and_404(served, fake_time, httpserver):
    httpserver.expect_request("/data/file.zip").respond_with_data(b"PK\x03\x04zip", status=200)
    httpserver.expect_request("/data/missing.zip").respond_with_data(b"<Error>NoSuchKey</Error>", status=404)
    client = make_client(served, fake_time)
    assert client.get_bytes(httpserver.url_for("/data/file.zip")) == b"PK\x03\x04zip"
    assert client.get_bytes_or_none_on_404("/data/missing.zip") is None
    with pytest.raises(HttpError, match="404"):
        client.get_bytes("/data/missing.zip")


def test_progress_callback_reports_long_waits(served, fake_time):
    messages: list[str] = []
    served.inject("429", retry_after=30)
    client = make_client(served, fake_time, on_progress=messages.append)
    client.get_json(INFO)
    assert any("Retry-After 30" in m for m in messages)


def test_redact_url_hides_secrets():
    url = redact_url("https://x/api?symbol=BTCUSDT&signature=abc123&apiKey=k")
    assert "abc123" not in url and "=k" not in url and "symbol=BTCUSDT" in url
