"""The project's one HTTP client: retries, rate-limit discipline, bans, clear errors.

Every request to an exchange (Binance's REST API and public archive, Bybit, OKX) goes through
`HttpClient`, so the rules live in one place. What differs between the APIs is a `VenueRules`
value (its name for messages, how its error bodies look, which body codes mean "slow down" or "a
passing fault", what a ban looks like); `BINANCE` is the default. The shared rules:

- Weight: each response's `X-MBX-USED-WEIGHT-1M` (the IP's weight used in the current wall-clock
  minute) is remembered. When the next request would push it past `weight_headroom *
  weight_limit_per_minute`, the client sleeps until the next minute boundary, when Binance resets
  the counter. Binance counts weight per UTC minute, so `clock` must tell wall time in seconds
  (default `time.time`), not an arbitrary monotonic origin.
- Per-endpoint request limits (e.g. `/futures/data/*`: 1000 requests per 5 minutes) are a sliding
  window per group of paths: `set_path_limit`.
- 429 (rate limited) and 418 (IP banned after ignoring 429s): wait `Retry-After` (seconds, or an
  HTTP date read by urllib3's parser; else `default_retry_after_s`), at most `max_retries` times, never longer than `max_retry_after_s` at
  once: a longer ban raises `RateLimitedError` at once rather than blocking a run for hours.
- 5xx, timeouts, connection errors: exponential backoff with full jitter
  (`uniform(0, min(cap, base * 2**attempt))`), at most `max_retries` retries, then `HttpError`.
- 451: `GeoBlockedError` (no retry). An error body (Binance `{"code": -1121, "msg": ...}`, Bybit
  `{"retCode": 10001, "retMsg": ...}`, OKX `{"code": "51001", "msg": ...}`) on a 4xx or a 200:
  `VenueApiError` (`BinanceApiError` for Binance; no retry), unless the venue's rules say the code
  means "rate limited" (wait, then retry, as for a 429) or "a passing fault" (back off, retry).
- A venue's own ban signal (Bybit: HTTP 403 "access too frequent", at least 10 minutes) is handled
  like a 418.
- A 200 whose body is not JSON is retried `malformed_json_retries` times (2 by default: a truncated
  body from a proxy is usually transient), then raises `BadResponseError` with the URL and the first
  200 characters of the body.

Every retry above (transport, 5xx, 429/418/bans, a venue's body codes, malformed JSON) takes one path,
`_Retries.again`: count, wait through the injectable `sleep`, or raise the error that names the URL and
the attempts. urllib3's `Retry` is not mounted on the session: it sleeps with `time.sleep` (tests inject
`sleep`), knows no 418 or venue ban, and has no ceiling that turns a long ban into an error.

Other APIs (e.g. Coinglass) use the same client: `get_json(..., headers=...)` sends per-request
headers (never stored, so a secret header stays out of the client's state), `last_headers` holds
the last response's headers for API-specific rate-limit signals, and `pause` waits through the
injectable `sleep`.

Tests inject `sleep`, `clock` and `rng` so that no test actually waits.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
# Seconds added after a minute boundary before resuming, for clock skew against Binance's servers.
MINUTE_BOUNDARY_MARGIN_S = 0.5
# parses an HTTP-date Retry-After; the waits themselves go through the client's injectable sleep
_RETRY_AFTER = Retry(retry_after_max=math.inf)
_SECRET_PARAMS = re.compile(r"^(signature|api_?key|apikey|key|token|secret|password)$", re.I)


class HttpError(Exception):
    """A request failed for good (after any retries). `url` has secrets redacted; `body` is the
    start of the last response body, when there was one."""

    def __init__(self, message: str, *, url: str = "", status: int | None = None, body: str = ""):
        self.url = url
        self.status = status
        self.body = body
        super().__init__(message)


class RateLimitedError(HttpError):
    """429/418 persisted through every retry, or the ban is longer than the client will wait."""

    def __init__(self, message: str, *, url: str, status: int, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message, url=url, status=status)


class VenueApiError(HttpError):
    """An exchange answered with an error body (its code and message kept as served)."""

    def __init__(self, code: int | str, msg: str, url: str, status: int | None = None, venue: str = ""):
        self.venue = venue
        self.code = code
        self.msg = msg
        super().__init__(f"{venue} API error {code}: {msg} (HTTP {status}, {url})", url=url, status=status)


class BinanceApiError(VenueApiError):
    """Binance answered with an error body `{"code": <negative int>, "msg": ...}`."""

    def __init__(self, code: int | str, msg: str, url: str, status: int | None = None, venue: str = "Binance"):
        super().__init__(code, msg, url, status, venue)


class GeoBlockedError(HttpError):
    """HTTP 451: the exchange refuses requests from the caller's location."""


class BadResponseError(HttpError):
    """A 200 whose body is not what the endpoint promises (e.g. not JSON)."""


@dataclass
class RequestStats:
    """Counters since the client was made or since `HttpClient.reset_stats()`.

    requests: HTTP attempts sent, retries included.
    retries: attempts that were repeats of a failed one.
    weight_used: the highest `X-MBX-USED-WEIGHT-1M` the server reported (the IP's real usage,
        which other processes on the same IP also add to).
    weight_declared: the sum of the weights this client declared for its own requests.
    bytes_received: response body bytes, error responses included.
    waited_s: seconds slept for rate limits, Retry-After and backoff.
    """

    requests: int = 0
    retries: int = 0
    weight_used: int = 0
    weight_declared: int = 0
    bytes_received: int = 0
    waited_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def redact_url(url: str) -> str:
    """`url` with the values of secret-looking query parameters replaced by '***'."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, "***" if _SECRET_PARAMS.match(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe=",:")))


def binance_error(payload: Any) -> tuple[int, str] | None:
    """(code, msg) when `payload` is a Binance error body, else None."""
    if isinstance(payload, dict) and "code" in payload and "msg" in payload:
        code = payload["code"]
        if isinstance(code, int) and not isinstance(code, bool) and code < 0:
            return code, str(payload["msg"])
    return None


def _no_error(payload: Any) -> None:
    return None


def _no_ban(resp: requests.Response) -> None:
    return None


def _no_reset(headers: Mapping[str, str], now_s: float) -> None:
    return None


@dataclass(frozen=True)
class VenueRules:
    """What one API does differently; `HttpClient` applies the rest of its rules to every venue.

    error_in_body: (code, message) when a parsed body is an error, else None.
    rate_limit_codes / transient_codes: body codes (compared as strings) meaning "too many
        requests" (wait, then retry) or a passing server fault (back off, then retry).
    body_rate_limit_wait: seconds until a body rate limit resets, read from the headers
        (None: unknown, wait `default_body_rate_limit_wait_s`).
    ban_wait: seconds to wait when a response is the venue's own ban signal besides HTTP 418
        (a Retry-After header wins), None when it is not one.
    forbidden_hint / geo_block_hint: added to the messages of other 403s and of 451s.
    api_error: the exception raised for any other error body.
    """

    name: str
    error_in_body: Callable[[Any], tuple[int | str, str] | None] = _no_error
    rate_limit_codes: frozenset[str] = frozenset()
    transient_codes: frozenset[str] = frozenset()
    body_rate_limit_wait: Callable[[Mapping[str, str], float], float | None] = _no_reset
    default_body_rate_limit_wait_s: float = 1.0
    ban_wait: Callable[[requests.Response], float | None] = _no_ban
    forbidden_hint: str = ""
    geo_block_hint: str = ""
    api_error: type[VenueApiError] = VenueApiError


BINANCE = VenueRules(
    name="Binance",
    error_in_body=binance_error,
    forbidden_hint=" (Binance's WAF rejected the request)",
    geo_block_hint=" Run from a location Binance serves (another host or a VPN), or use the public "
                   "archive (data.binance.vision) or QML_SOURCE=sample.",
    api_error=BinanceApiError,
)


class _PathLimit:
    """A sliding window of request times shared by every path starting with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...], max_requests: int, window_s: float):
        self.prefixes = prefixes
        self.max_requests = max_requests
        self.window_s = window_s
        self.sent: deque[float] = deque()

    def matches(self, path: str) -> bool:
        return any(path.startswith(p) for p in self.prefixes)

    def wait_needed(self, now: float) -> float:
        while self.sent and self.sent[0] <= now - self.window_s:
            self.sent.popleft()
        if len(self.sent) < self.max_requests:
            return 0.0
        return self.sent[0] + self.window_s - now


class _Retries:
    """The one retry path of a request: at most `limit` retries, each after a wait through the client
    (given, e.g. Retry-After, or else the client's jittered backoff), counted in its stats."""

    def __init__(self, client: HttpClient, limit: int):
        self.client = client
        self.limit = limit
        self.done = 0

    def again(self, wait_s: float | None, why: str, failure: Callable[[int], HttpError],
              longest_s: float = math.inf, cause: BaseException | None = None) -> None:
        """Wait, then return to try again; raise `failure(attempts made)` when the retries are used up
        or the wait is longer than `longest_s`."""
        wait = self.client._backoff(self.done) if wait_s is None else wait_s
        if self.done >= self.limit or wait > longest_s:
            raise failure(self.done + 1) from cause
        self.client._wait(wait, f"{why}; retry {self.done + 1}/{self.limit}")
        self.done += 1
        self.client.stats.retries += 1


class HttpClient:
    """GET JSON or bytes from one base URL (absolute URLs allowed for downloads), politely."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float | tuple[float, float] = (5, 30),
        max_retries: int = 6,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30,
        weight_limit_per_minute: int = 2400,
        weight_headroom: float = 0.8,
        default_retry_after_s: float = 60,
        max_retry_after_s: float = 900,
        malformed_json_retries: int = 2,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_progress: Callable[[str], None] | None = None,
        rules: VenueRules = BINANCE,
    ):
        if not 0 < weight_headroom <= 1:
            raise ValueError(f"weight_headroom={weight_headroom}: expected a fraction in (0, 1]")
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.weight_limit_per_minute = weight_limit_per_minute
        self.weight_headroom = weight_headroom
        self.default_retry_after_s = default_retry_after_s
        self.max_retry_after_s = max_retry_after_s
        self.malformed_json_retries = malformed_json_retries
        self.session = session or requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self.on_progress = on_progress
        self.rules = rules
        self.stats = RequestStats()
        self._last_weight = 0
        self._last_weight_at: float | None = None
        self._path_limits: list[_PathLimit] = []
        self.last_headers: Mapping[str, str] = {}

    # ------------------------------------------------------------------ public API

    def get_json(self, path: str, params: Mapping[str, Any] | None = None, weight: int = 1,
                 headers: Mapping[str, str] | None = None) -> Any:
        """GET `path` and return its parsed JSON; `weight` is the request's Binance IP weight;
        `headers` are sent with this request only."""
        malformed = _Retries(self, self.malformed_json_retries)
        body_faults = _Retries(self, self.max_retries)
        while True:
            resp, url = self._request(path, params, weight, allow_404=False, headers=headers)
            assert resp is not None
            try:
                payload = resp.json()
            except (ValueError, json.JSONDecodeError):
                status, snippet = resp.status_code, resp.text[:200]
                malformed.again(None, f"malformed JSON from {url}", lambda n: BadResponseError(
                    f"{url} answered HTTP {status} with a body that is not JSON (after {n} attempts); "
                    f"first 200 characters: {snippet!r}", url=url, status=status))
                continue
            err = self.rules.error_in_body(payload)
            if err is None:
                return payload
            code, msg = err
            status, name = resp.status_code, self.rules.name
            if str(code) in self.rules.rate_limit_codes:
                wait = self.rules.body_rate_limit_wait(resp.headers, self._clock())
                wait = self.rules.default_body_rate_limit_wait_s if wait is None or wait <= 0 else wait
                body_faults.again(wait, f"{name} code {code} ({msg}): rate limited", lambda n: RateLimitedError(
                    f"{name} rate limited (code {code}: {msg}) for GET {url} after {n} attempt(s); wait "
                    f"{wait:.0f} s before trying again, and lower the request rate", url=url, status=status,
                    retry_after_s=wait), longest_s=self.max_retry_after_s)
            elif str(code) in self.rules.transient_codes:
                body = resp.text[:1000]
                body_faults.again(None, f"{name} code {code} ({msg}): a passing fault", lambda n: HttpError(
                    f"GET {url} failed with {name} code {code} ({msg}) on all {n} attempts", url=url,
                    status=status, body=body))
            else:
                raise self.rules.api_error(code, msg, url, status, venue=name)

    def get_bytes(self, url_or_path: str, params: Mapping[str, Any] | None = None) -> bytes:
        """GET a path under the base URL, or an absolute URL, and return the body."""
        resp, _ = self._request(url_or_path, params, 0, allow_404=False)
        assert resp is not None
        return resp.content

    def get_bytes_or_none_on_404(self, url_or_path: str, params: Mapping[str, Any] | None = None) -> bytes | None:
        """As `get_bytes`, but None when the server answers 404 (e.g. an archive file not published)."""
        resp, _ = self._request(url_or_path, params, 0, allow_404=True)
        return None if resp is None else resp.content

    def set_path_limit(self, prefixes: str | Iterable[str], max_requests: int, window_s: float) -> None:
        """Allow at most `max_requests` per `window_s` seconds across paths starting with `prefixes`."""
        group = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
        self._path_limits = [pl for pl in self._path_limits if pl.prefixes != group]
        self._path_limits.append(_PathLimit(group, max_requests, window_s))

    def reset_stats(self) -> RequestStats:
        """Start fresh counters; return the previous ones."""
        old, self.stats = self.stats, RequestStats()
        return old

    def pause(self, seconds: float, why: str) -> None:
        """Wait `seconds` through the client's (injectable) sleep, counted in `stats.waited_s`."""
        self._wait(seconds, why)

    def progress(self, message: str) -> None:
        """Report progress of a long operation to `on_progress` (and the log)."""
        log.info(message)
        if self.on_progress is not None:
            self.on_progress(message)

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------ internals

    def url_for(self, url_or_path: str) -> str:
        if re.match(r"^https?://", url_or_path):
            return url_or_path
        return urljoin(self.base_url, url_or_path.lstrip("/"))

    def _wait(self, seconds: float, why: str) -> None:
        if seconds <= 0:
            return
        if seconds >= 5:
            self.progress(f"waiting {seconds:.1f} s: {why}")
        else:
            log.debug("waiting %.2f s: %s", seconds, why)
        self.stats.waited_s += seconds
        self._sleep(seconds)

    def _throttle(self, path: str, weight: int) -> None:
        now = self._clock()
        if self._last_weight_at is not None and math.floor(now / 60) != math.floor(self._last_weight_at / 60):
            self._last_weight = 0  # Binance resets the counter each minute
        if weight > 0 and self._last_weight + weight > self.weight_headroom * self.weight_limit_per_minute:
            boundary = (math.floor(now / 60) + 1) * 60
            self._wait(boundary - now + MINUTE_BOUNDARY_MARGIN_S,
                       f"used weight {self._last_weight} + {weight} would pass "
                       f"{self.weight_headroom:.0%} of {self.weight_limit_per_minute}/min")
            self._last_weight = 0
            self._last_weight_at = None
        for limit in self._path_limits:
            if limit.matches(path):
                self._wait(limit.wait_needed(self._clock()),
                           f"{limit.max_requests} requests per {limit.window_s:.0f} s limit of {limit.prefixes}")
                limit.sent.append(self._clock())

    def _note_weight(self, resp: requests.Response) -> None:
        raw = resp.headers.get(WEIGHT_HEADER)
        if raw is None:
            return
        try:
            used = int(raw)
        except ValueError:
            return
        self._last_weight = used
        self._last_weight_at = self._clock()
        self.stats.weight_used = max(self.stats.weight_used, used)

    def _retry_after(self, resp: requests.Response) -> float:
        """Retry-After in seconds (a number, or an HTTP date: urllib3's parser), else the default."""
        raw = resp.headers.get("Retry-After")
        if raw is None:
            return float(self.default_retry_after_s)
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
        try:
            return float(_RETRY_AFTER.parse_retry_after(raw))
        except InvalidHeader:
            return float(self.default_retry_after_s)

    def _rate_limit(self, resp: requests.Response) -> tuple[float, str] | None:
        """(seconds to wait, what happened) when `resp` says "too many requests", else None."""
        status = resp.status_code
        if status == 429:
            return self._retry_after(resp), "rate limited (429)"
        if status == 418:
            return self._retry_after(resp), "IP banned for ignoring rate limits (418)"
        ban = self.rules.ban_wait(resp)
        if ban is None:
            return None
        wait = self._retry_after(resp) if "Retry-After" in resp.headers else ban
        return wait, f"IP banned for exceeding its rate limit (HTTP {status})"

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** attempt))

    def _request(self, url_or_path: str, params: Mapping[str, Any] | None, weight: int,
                 allow_404: bool, headers: Mapping[str, str] | None = None
                 ) -> tuple[requests.Response | None, str]:
        url = self.url_for(url_or_path)
        path = urlsplit(url).path
        shown = redact_url(requests.Request("GET", url, params=dict(params or {})).prepare().url or url)
        retries = _Retries(self, self.max_retries)
        while True:
            self._throttle(path, weight)
            self.stats.requests += 1
            self.stats.weight_declared += weight
            try:
                resp = self.session.get(url, params=params, headers=headers, timeout=self.timeout_s)
            except (requests.Timeout, requests.ConnectionError) as exc:
                kind = "timed out" if isinstance(exc, requests.Timeout) else "could not connect"
                retries.again(None, f"GET {shown} {kind}",
                              lambda n: HttpError(f"GET {shown} {kind} on all {n} attempts: {exc}", url=shown),
                              cause=exc)
                continue

            self.stats.bytes_received += len(resp.content)
            self._note_weight(resp)
            self.last_headers = resp.headers
            status = resp.status_code

            limited = self._rate_limit(resp)
            if limited is not None:
                wait, what = limited
                retries.again(wait, f"{self.rules.name} {what}; Retry-After {wait:.0f} s", lambda n: RateLimitedError(
                    f"{self.rules.name} {what} for GET {shown}: Retry-After {wait:.0f} s after {n} attempt(s); "
                    f"wait that long before trying again, and lower the request rate", url=shown, status=status,
                    retry_after_s=wait), longest_s=self.max_retry_after_s)
                self._last_weight, self._last_weight_at = 0, None
                continue

            if status >= 500:
                body = resp.text[:1000]
                retries.again(None, f"HTTP {status}", lambda n: HttpError(
                    f"GET {shown} failed with HTTP {status} on all {n} attempts; last body: {body[:200]!r}",
                    url=shown, status=status, body=body))
                continue

            if status == 451:
                raise GeoBlockedError(
                    f"{self.rules.name} refuses requests from this location (HTTP 451, unavailable for "
                    f"legal reasons) for GET {shown}.{self.rules.geo_block_hint}", url=shown, status=status)

            if status == 404 and allow_404:
                return None, shown

            if status >= 400:
                try:
                    err = self.rules.error_in_body(resp.json())
                except ValueError:
                    err = None
                if err is not None:
                    raise self.rules.api_error(err[0], err[1], shown, status, venue=self.rules.name)
                hint = self.rules.forbidden_hint if status == 403 else ""
                raise HttpError(f"GET {shown} failed with HTTP {status}{hint}: {resp.text[:200]!r}",
                                url=shown, status=status, body=resp.text[:1000])

            return resp, shown
