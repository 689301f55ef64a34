"""Coinglass API v4 liquidation history (optional source: needs a paid-plan API key).

Two endpoints, both bucketed long/short liquidation totals in USD:

- pair history, one exchange and pair: `/api/futures/liquidation/history`
  (exchange, symbol, interval, start_time, end_time, limit);
- coin history aggregated over exchanges: `/api/futures/liquidation/aggregated-history`
  (exchange_list, symbol = coin, interval, start_time, end_time, limit); stored with exchange 'ALL'.

Rules this module keeps:

- The API key travels only in the `CG-API-KEY` request header of each request. It is never put in
  a URL, a log line, an exception message, a repr or a frame: every message built here passes
  through `redact`, and the key is held in a `_Secret` whose repr is '***'.
- Plans limit the interval (Hobbyist >= 4h, Startup >= 30m, Standard and above: no limit, per
  Coinglass's docs in 2025). An interval finer than `plan_min_interval` raises `CoinglassPlanError`
  before any request; a server reply that refuses the interval for the plan raises the same error.
- Pages: [start, end) is cut into windows of `limit` buckets, so a window always fits one page
  whichever end of an oversized range the server would serve; within a window a full page is
  followed by a request starting just after its last bucket, and a short page ends the window.
- Rate limits: 429 + Retry-After is handled by `HttpClient`. Coinglass also reports
  `API-KEY-MAX-LIMIT` (requests per minute of the plan) and `API-KEY-USE-LIMIT` (used in the current
  period); when the use reaches `rate_limit_headroom` of the maximum the client pauses one period.
- Bucket times may come in seconds or milliseconds (told apart by magnitude); numbers may come as
  JSON strings or numbers.
- A bucket is known once it has closed: `available_at` = bucket start + interval.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import polars as pl

from qml_pipeline.errors import InputError
from qml_pipeline.store import schemas
from qml_pipeline import timeutil
from qml_pipeline.timeutil import to_ms, utc_now
from qml_pipeline.sources.http_client import (
    BadResponseError,
    HttpClient,
    HttpError,
    RateLimitedError,
)
from qml_pipeline.store.schemas import LIQUIDATIONS, TS

SOURCE = "coinglass"
AGGREGATED_EXCHANGE = "ALL"
DEFAULT_BASE_URL = "https://open-api-v4.coinglass.com"
PAIR_HISTORY_PATH = "/api/futures/liquidation/history"
AGGREGATED_HISTORY_PATH = "/api/futures/liquidation/aggregated-history"
API_KEY_HEADER = "CG-API-KEY"
MAX_LIMIT_HEADER = "API-KEY-MAX-LIMIT"
USE_LIMIT_HEADER = "API-KEY-USE-LIMIT"
ENV_API_KEY = "COINGLASS_API_KEY"
ENV_PLAN_MIN_INTERVAL = "COINGLASS_PLAN_MIN_INTERVAL"
ENV_BASE_URL = "COINGLASS_BASE_URL"
SKIP_REASON = f"{ENV_API_KEY} is not set: Coinglass liquidation history is skipped (an optional, paid source)"
DEFAULT_EXCHANGES = ("Binance", "OKX", "Bybit")
DEFAULT_LIMIT = 1000

# Coinglass's intervals are Binance's notation without 3d.
INTERVAL_MS = {k: v for k, v in timeutil.INTERVAL_MS.items() if k != "3d"}
# The interval floor of each plan, for messages (Coinglass docs, liquidation endpoints, 2025).
PLAN_FLOORS = {"Hobbyist": "4h", "Startup": "30m", "Standard": "1m", "Professional": "1m", "Enterprise": "1m"}
# Below this a stamp is read as seconds: 1e11 ms is March 1973, 1e11 s is the year 5138.
SECONDS_BELOW = 100_000_000_000
_PLAN_REFUSAL = re.compile(r"plan|upgrade|level|permission|not allowed|not support|unsupported|limit", re.IGNORECASE)


class CoinglassError(Exception):
    """Base of every Coinglass failure; messages never contain the API key."""


class CoinglassAuthError(CoinglassError):
    """HTTP 401/403: the API key is missing, wrong, expired, or its plan lacks the endpoint."""

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)


class CoinglassPlanError(CoinglassError, ValueError):
    """The interval is finer than the plan allows."""

    def __init__(self, message: str, interval: str, plan_min_interval: str):
        self.interval = interval
        self.plan_min_interval = plan_min_interval
        self.allowed = allowed_intervals(plan_min_interval)
        super().__init__(message)


class CoinglassApiError(CoinglassError):
    """Coinglass answered with a business code other than "0"."""

    def __init__(self, code: str | int, msg: str, url: str = ""):
        self.code = str(code)
        self.msg = msg
        self.url = url
        where = f" for GET {url}" if url else ""
        super().__init__(f"Coinglass API error code {self.code}: {msg}{where}")


class CoinglassResponseError(CoinglassError):
    """A reply that is not the documented shape (not JSON, no data list, a row without a time)."""


class CoinglassRateLimitError(CoinglassError):
    """429s persisted through every retry, or Retry-After asked for a longer wait than allowed."""


class _Secret:
    """A string that shows as '***' in every repr, str and format."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def interval_ms(interval: str) -> int:
    return timeutil.interval_ms(interval, INTERVAL_MS, "Coinglass")


def allowed_intervals(plan_min_interval: str) -> list[str]:
    """The intervals at least as coarse as `plan_min_interval`, finest first."""
    floor = interval_ms(plan_min_interval)
    return [i for i, ms in INTERVAL_MS.items() if ms >= floor]


def _plans_allowing(interval: str) -> list[str]:
    return [plan for plan, floor in PLAN_FLOORS.items() if interval_ms(interval) >= interval_ms(floor)]


class CoinglassKeyError(CoinglassError, InputError):
    """The API key cannot be sent as a header value; the message never quotes the key."""


def check_api_key(key: str) -> None:
    """Refuse a key holding a control character (a newline, a tab, ...), a space or a non-ASCII
    character before it is used: such a key would end up quoted in an HTTP library's error. The
    message gives the position and the kind of character, never the key."""
    for position, char in enumerate(key, 1):
        if not ("!" <= char <= "~"):
            kind = ("a control character" if ord(char) < 32 or 127 <= ord(char) < 160
                    else "a space" if char.isspace() else "a non-ASCII character")
            raise CoinglassKeyError(
                f"{ENV_API_KEY} holds {kind} (U+{ord(char):04X}) at position {position} of {len(key)}: a "
                f"Coinglass API key is printable ASCII without spaces. Set the variable again from the "
                f"key as Coinglass shows it (e.g. without a line break pasted inside it); the key itself "
                f"is not shown here.")


def _as_ms(t: datetime | float) -> int:
    """A time as epoch milliseconds: a timezone-aware datetime, or a number in seconds or ms."""
    if isinstance(t, datetime):
        return to_ms(t)
    value = int(t)
    return value * 1000 if abs(value) < SECONDS_BELOW else value


class CoinglassClient:
    """Coinglass API v4 liquidation history over the project's `HttpClient`.

    `client`, when given, is used as is (its base URL wins over `base_url`); tests pass one with
    a fake sleep and clock. `plan_min_interval` is the finest interval the key's plan serves.
    """

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, client: HttpClient | None = None,
                 plan_min_interval: str = "4h", *, limit: int = DEFAULT_LIMIT,
                 rate_limit_headroom: float = 0.9, rate_limit_period_s: float = 60.0):
        if not api_key or not api_key.strip():
            raise ValueError(f"empty Coinglass API key: set {ENV_API_KEY}, or skip Coinglass")
        check_api_key(api_key.strip())
        interval_ms(plan_min_interval)
        if limit < 1:
            raise ValueError(f"limit={limit}: expected a positive number of buckets per request")
        if not 0 < rate_limit_headroom <= 1:
            raise ValueError(f"rate_limit_headroom={rate_limit_headroom}: expected a fraction in (0, 1]")
        self._key = _Secret(api_key.strip())
        self.http = client or HttpClient(base_url)
        self.plan_min_interval = plan_min_interval
        self.limit = limit
        self.rate_limit_headroom = rate_limit_headroom
        self.rate_limit_period_s = rate_limit_period_s
        self.last_rate_limit: tuple[int, int] | None = None  # (used, max) as the server last reported

    def __repr__(self) -> str:
        return (f"CoinglassClient(base_url={self.http.base_url!r}, api_key='***', "
                f"plan_min_interval={self.plan_min_interval!r})")

    # ------------------------------------------------------------------ public API

    def pair_history(self, exchange: str, symbol: str, interval: str,
                     start: datetime | int, end: datetime | int) -> pl.DataFrame:
        """Liquidations of one pair on one exchange, buckets starting in [start, end)."""
        rows = self._fetch(PAIR_HISTORY_PATH, {"exchange": exchange, "symbol": symbol}, interval, start, end)
        return self._frame(rows, symbol, exchange, interval, "long_liquidation_usd", "short_liquidation_usd")

    def aggregated_history(self, coin: str, interval: str, start: datetime | int, end: datetime | int,
                           exchange_list: Sequence[str] = DEFAULT_EXCHANGES) -> pl.DataFrame:
        """Liquidations of one coin summed over `exchange_list` (stored as exchange 'ALL')."""
        if not exchange_list:
            raise ValueError("exchange_list is empty: name at least one exchange (e.g. Binance)")
        rows = self._fetch(AGGREGATED_HISTORY_PATH, {"exchange_list": ",".join(exchange_list), "symbol": coin},
                           interval, start, end)
        return self._frame(rows, coin, AGGREGATED_EXCHANGE, interval,
                           "aggregated_long_liquidation_usd", "aggregated_short_liquidation_usd")

    def check_interval(self, interval: str) -> None:
        """Raise CoinglassPlanError when `interval` is finer than the plan serves."""
        step = interval_ms(interval)
        if step < interval_ms(self.plan_min_interval):
            raise CoinglassPlanError(
                f"interval {interval!r} is finer than this Coinglass plan's floor of "
                f"{self.plan_min_interval!r} (plan_min_interval); allowed intervals: "
                f"{', '.join(allowed_intervals(self.plan_min_interval))}. Use one of those, or, if the "
                f"key's plan serves {interval!r} ({' / '.join(_plans_allowing(interval))}), set "
                f"{ENV_PLAN_MIN_INTERVAL}={interval}.",
                interval, self.plan_min_interval)

    def metadata(self) -> dict[str, Any]:
        """Facts for run metadata (requests, waits, the last rate-limit reading); no secrets."""
        used, limit = self.last_rate_limit or (None, None)
        return {"base_url": self.http.base_url, "plan_min_interval": self.plan_min_interval,
                "rate_limit_used": used, "rate_limit_max_per_minute": limit, **self.http.stats.as_dict()}

    def redact(self, text: str) -> str:
        """`text` with the API key replaced by '***'."""
        return text.replace(self._key.reveal(), "***")

    # ------------------------------------------------------------------ paging

    def _fetch(self, path: str, fixed: Mapping[str, str], interval: str,
               start: datetime | int, end: datetime | int) -> list[tuple[int, Mapping[str, Any]]]:
        self.check_interval(interval)
        step = interval_ms(interval)
        start_ms, end_ms = _as_ms(start), _as_ms(end)
        if end_ms <= start_ms:
            return []
        out: list[tuple[int, Mapping[str, Any]]] = []
        for window_start in range(start_ms, end_ms, self.limit * step):
            window_end = min(window_start + self.limit * step, end_ms)
            cursor = window_start
            while cursor < window_end:
                params = {**fixed, "interval": interval, "start_time": cursor,
                          "end_time": window_end - 1, "limit": self.limit}
                data = self._get(path, params, interval)
                stamped = [(self._row_time(row, path), row) for row in data]
                out += [(t, row) for t, row in stamped if cursor <= t < window_end]
                if len(data) < self.limit or not stamped:
                    break
                last = max(t for t, _ in stamped)
                if last < cursor or last + step >= window_end:
                    break
                cursor = last + 1
        return out

    def _row_time(self, row: Any, path: str) -> int:
        if not isinstance(row, Mapping) or "time" not in row:
            raise CoinglassResponseError(self.redact(
                f"Coinglass {path} returned a row without a 'time' field: {str(row)[:200]}"))
        try:
            return _as_ms(float(row["time"]))
        except (TypeError, ValueError):
            raise CoinglassResponseError(self.redact(
                f"Coinglass {path} returned a row whose 'time' is not a number: {str(row)[:200]}")) from None

    # ------------------------------------------------------------------ one request

    def _get(self, path: str, params: Mapping[str, Any], interval: str) -> list[Any]:
        failure: CoinglassError | None = None
        try:
            payload = self.http.get_json(path, params, weight=0,
                                         headers={API_KEY_HEADER: self._key.reveal()})
        except HttpError as exc:
            failure = self._translate(exc, interval)
        if failure is not None:
            # Raised outside the except block so that no chained exception (whose text may quote a
            # body that echoed the key) travels with it.
            raise failure
        self._honour_rate_headers()
        url = self.http.url_for(path)
        if not isinstance(payload, Mapping) or "code" not in payload:
            raise CoinglassResponseError(self.redact(
                f"Coinglass {url} answered with an unexpected body (expected an object with 'code', "
                f"'msg' and 'data'): {json.dumps(payload)[:200]}"))
        code, msg = str(payload["code"]).strip(), str(payload.get("msg", ""))
        if code != "0":
            raise self._refusal(code, msg, url, interval)
        data = payload.get("data")
        if data is None:
            return []
        if not isinstance(data, list):
            raise CoinglassResponseError(self.redact(
                f"Coinglass {url} answered code 0 but 'data' is not a list: {json.dumps(data)[:200]}"))
        return data

    def _refusal(self, code: str, msg: str, url: str, interval: str, status: int | None = None) -> CoinglassError:
        msg = self.redact(msg)
        if "interval" in msg.lower() and _PLAN_REFUSAL.search(msg):
            return CoinglassPlanError(
                f"Coinglass refused interval {interval!r} for this key's plan (code {code}: {msg}). "
                f"Allowed intervals by plan floor: {PLAN_FLOORS}; set {ENV_PLAN_MIN_INTERVAL} to the "
                f"plan's floor (now {self.plan_min_interval!r}) so this is caught before any request.",
                interval, self.plan_min_interval)
        if code in ("401", "403") or status in (401, 403):
            return CoinglassAuthError(
                f"Coinglass rejected the API key (HTTP {status or code}) for GET {url}: check that "
                f"{ENV_API_KEY} holds a valid, active key and that its plan includes this endpoint. "
                f"Server said: {msg or '(no message)'}", status=status or int(code))
        return CoinglassApiError(code, msg, url)

    def _translate(self, exc: HttpError, interval: str) -> CoinglassError:
        if isinstance(exc, RateLimitedError):
            return CoinglassRateLimitError(self.redact(
                f"Coinglass rate limit (HTTP {exc.status}) for GET {exc.url}: Retry-After "
                f"{exc.retry_after_s:.0f} s. The plan's per-minute limit was "
                f"{self.last_rate_limit[1] if self.last_rate_limit else 'not reported'}; wait, or "
                f"lower the request rate."))
        if isinstance(exc, BadResponseError):
            return CoinglassResponseError(self.redact(f"Coinglass: {exc}"))
        if exc.status is not None and 400 <= exc.status < 500:
            code, msg = str(exc.status), exc.body[:300]
            try:
                body = json.loads(exc.body)
                if isinstance(body, Mapping):
                    code, msg = str(body.get("code", code)), str(body.get("msg", msg))
            except ValueError:
                pass
            return self._refusal(code, msg, exc.url, interval, status=exc.status)
        return CoinglassError(self.redact(f"Coinglass request failed: {exc}"))

    def _honour_rate_headers(self) -> None:
        headers = self.http.last_headers
        try:
            used, limit = int(headers[USE_LIMIT_HEADER]), int(headers[MAX_LIMIT_HEADER])
        except (KeyError, TypeError, ValueError):
            return
        self.last_rate_limit = (used, limit)
        if limit > 0 and used >= self.rate_limit_headroom * limit:
            self.http.pause(self.rate_limit_period_s,
                            f"Coinglass key used {used} of {limit} requests this minute")

    # ------------------------------------------------------------------ frame

    def _frame(self, rows: list[tuple[int, Mapping[str, Any]]], symbol: str, exchange: str,
               interval: str, long_field: str, short_field: str) -> pl.DataFrame:
        if not rows:
            return schemas.empty(LIQUIDATIONS)
        for _, row in rows:
            missing = [f for f in (long_field, short_field) if f not in row]
            if missing:
                raise CoinglassResponseError(self.redact(
                    f"Coinglass row for {symbol} {interval} lacks {missing}: {str(dict(row))[:200]}"))
        raw = pl.DataFrame({
            "event_time": [t for t, _ in rows],
            "long_raw": [None if r[long_field] is None else str(r[long_field]) for _, r in rows],
            "short_raw": [None if r[short_field] is None else str(r[short_field]) for _, r in rows],
        }, schema={"event_time": pl.Int64, "long_raw": pl.Utf8, "short_raw": pl.Utf8})
        df = raw.with_columns(
            pl.col("long_raw").str.strip_chars().cast(pl.Float64, strict=False).alias("long_liquidation_usd"),
            pl.col("short_raw").str.strip_chars().cast(pl.Float64, strict=False).alias("short_liquidation_usd"),
        )
        bad = df.filter((pl.col("long_raw").is_not_null() & pl.col("long_liquidation_usd").is_null())
                        | (pl.col("short_raw").is_not_null() & pl.col("short_liquidation_usd").is_null()))
        if bad.height:
            raise CoinglassResponseError(self.redact(
                f"Coinglass served {bad.height} non-numeric liquidation value(s) for {symbol} {interval}, "
                f"e.g. {bad.row(0, named=True)}"))
        step = interval_ms(interval)
        df = (df.unique("event_time", keep="last")
              .sort("event_time")
              .with_columns(
                  pl.lit(symbol).alias("symbol"),
                  pl.lit(exchange).alias("exchange"),
                  pl.lit(interval).alias("interval"),
                  pl.col("event_time").cast(TS),
                  (pl.col("event_time") + step).cast(TS).alias("available_at"),
                  pl.lit(SOURCE).alias("source"),
              )
              # a bucket still in progress is partial: it is served again once it has closed
              .filter(pl.col("available_at") <= utc_now()))
        return schemas.conform(LIQUIDATIONS, df)


def coinglass_from_env(env: Mapping[str, str] = os.environ) -> CoinglassClient | None:
    """A client from `COINGLASS_API_KEY` (and optional `COINGLASS_PLAN_MIN_INTERVAL`,
    `COINGLASS_BASE_URL`), or None when no key is set: callers skip Coinglass with `SKIP_REASON`."""
    key = (env.get(ENV_API_KEY) or "").strip()
    if not key:
        return None
    plan_min = (env.get(ENV_PLAN_MIN_INTERVAL) or "4h").strip()
    if plan_min not in INTERVAL_MS:
        raise ValueError(f"{ENV_PLAN_MIN_INTERVAL}={plan_min!r}: expected one of {list(INTERVAL_MS)}")
    base_url = (env.get(ENV_BASE_URL) or DEFAULT_BASE_URL).strip()
    return CoinglassClient(key, base_url=base_url, plan_min_interval=plan_min)
