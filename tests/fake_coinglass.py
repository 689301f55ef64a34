"""A fake Coinglass API v4 (liquidation history endpoints) on pytest-httpserver.

`FakeCoinglass` serves in-memory buckets like Coinglass: `{"code": "0", "msg": "success", "data": [...]}`,
start_time and end_time inclusive, `limit` capped at `max_limit`, ascending order (or the latest
`limit` rows of an oversized range when `page_from_end`), the `CG-API-KEY` header checked on every
request, and `API-KEY-MAX-LIMIT` / `API-KEY-USE-LIMIT` headers when `rate_limit` is set. Bucket times
can be served in seconds or ms and numbers as strings or JSON numbers. Faults are queued with
`inject(...)` and consumed by the next requests, in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

try:
    from tests.fake_server import ms
except ImportError:
    from fake_server import ms

PAIR_PATH = "/api/futures/liquidation/history"
AGG_PATH = "/api/futures/liquidation/aggregated-history"
FAKE_KEY = "cg-test-0123456789abcdef-SECRET"
INTERVAL_MS = {"1m": 60_000, "5m": 300_000, "30m": 1_800_000, "1h": 3_600_000, "4h": 14_400_000,
               "1d": 86_400_000}


@dataclass
class Fault:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeCoinglass:
    """In-memory Coinglass liquidation endpoints served from `httpserver`."""

    def __init__(self, httpserver: HTTPServer, api_key: str = FAKE_KEY):
        self.server = httpserver
        self.api_key = api_key
        # (path, symbol, exchange or None, interval) -> [(time_ms, served row)]
        self.rows: dict[tuple[str, str, str | None, str], list[tuple[int, dict[str, Any]]]] = {}
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.faults: list[Fault] = []
        self.max_limit = 1000
        self.page_from_end = False
        self.echo_key_in_errors = False  # a careless server that repeats the key in its error text
        self.server_min_interval: str | None = None  # refuse finer intervals, like a plan would
        self.rate_limit: int | None = None  # API-KEY-MAX-LIMIT; None sends no rate headers
        self.used = 0  # API-KEY-USE-LIMIT before the next request
        for path in (PAIR_PATH, AGG_PATH):
            httpserver.expect_request(path).respond_with_handler(self._handler(path))

    @property
    def url(self) -> str:
        return self.server.url_for("/").rstrip("/")

    # ------------------------------------------------------------------ dataset

    def add_pair(self, exchange: str, symbol: str, interval: str, start: datetime, count: int,
                 time_unit: str = "ms", numbers: str = "str", duplicate: bool = False) -> list[int]:
        """Append `count` buckets from `start`; return their start times (ms)."""
        return self._add(PAIR_PATH, symbol, exchange, interval, start, count, time_unit, numbers,
                         ("long_liquidation_usd", "short_liquidation_usd"), duplicate)

    def add_aggregated(self, coin: str, interval: str, start: datetime, count: int,
                       time_unit: str = "ms", numbers: str = "str") -> list[int]:
        return self._add(AGG_PATH, coin, None, interval, start, count, time_unit, numbers,
                         ("aggregated_long_liquidation_usd", "aggregated_short_liquidation_usd"), False)

    @staticmethod
    def long_usd(i: int) -> float:
        return 1000.25 + i

    @staticmethod
    def short_usd(i: int) -> float:
        return 2000.5 + 2 * i

    def _add(self, path: str, symbol: str, exchange: str | None, interval: str, start: datetime, count: int,
             time_unit: str, numbers: str, fields: tuple[str, str], duplicate: bool) -> list[int]:
        step = INTERVAL_MS[interval]
        stamps = [ms(start) + i * step for i in range(count)]
        rows = self.rows.setdefault((path, symbol, exchange, interval), [])
        for i, t in enumerate(stamps):
            values = (self.long_usd(i), self.short_usd(i))
            row: dict[str, Any] = {"time": t // 1000 if time_unit == "s" else t}
            for name, v in zip(fields, values, strict=True):
                as_str = numbers == "str" or (numbers == "mixed" and i % 2 == 0)
                row[name] = f"{v:.2f}" if as_str else v
            rows.append((t, row))
            if duplicate:
                rows.append((t, dict(row)))
        rows.sort(key=lambda r: r[0])
        return stamps

    # ------------------------------------------------------------------ faults and inspection

    def inject(self, kind: str, times: int = 1, **kw: Any) -> None:
        """Queue faults: "429" (retry_after), "status" (status, body), "code" (code, msg; a 200),
        "malformed" (a 200 that is not JSON), "body" (body: any JSON value, in a 200)."""
        for _ in range(times):
            if kind == "429":
                ra = kw.get("retry_after")
                self.faults.append(Fault(429, json.dumps({"code": "429", "msg": "Too Many Requests"}),
                                         {} if ra is None else {"Retry-After": str(ra)}))
            elif kind == "status":
                self.faults.append(Fault(kw["status"], kw.get("body", "")))
            elif kind == "code":
                self.faults.append(Fault(200, json.dumps({"code": kw["code"], "msg": kw["msg"]})))
            elif kind == "malformed":
                self.faults.append(Fault(200, '{"code": "0", "msg": "success", "data": [{"ti'))
            elif kind == "body":
                self.faults.append(Fault(200, json.dumps(kw["body"])))
            else:
                raise ValueError(f"unknown fault {kind!r}")

    def count(self, path: str | None = None) -> int:
        return sum(1 for p, _, _ in self.requests if path is None or p == path)

    def params(self, path: str) -> list[dict[str, str]]:
        return [a for p, a, _ in self.requests if p == path]

    # ------------------------------------------------------------------ serving

    def _handler(self, path: str):
        def respond(request: Request) -> Response:
            args = dict(request.args)
            headers = dict(request.headers)
            self.requests.append((path, args, headers))
            self.used += 1
            if request.headers.get("CG-API-KEY") != self.api_key:
                sent = request.headers.get("CG-API-KEY", "")
                msg = f"API key {sent} is invalid" if self.echo_key_in_errors else "API key missing or invalid"
                return self._response(json.dumps({"code": "401", "msg": msg}), 401)
            if self.faults:
                fault = self.faults.pop(0)
                body = fault.body.replace("{key}", self.api_key) if self.echo_key_in_errors else fault.body
                return self._response(body, fault.status, fault.headers)
            interval = args["interval"]
            if self.server_min_interval and INTERVAL_MS[interval] < INTERVAL_MS[self.server_min_interval]:
                return self._response(json.dumps(
                    {"code": "400", "msg": f"interval {interval} is not allowed for your plan, please upgrade"}), 200)
            exchange = None if path == AGG_PATH else args["exchange"]
            rows = self.rows.get((path, args["symbol"], exchange, interval), [])
            start, end = int(args.get("start_time", 0)), int(args.get("end_time", 2 ** 62))
            limit = min(int(args.get("limit", 100)), self.max_limit)
            hits = [r for t, r in rows if start <= t <= end]
            page = hits[-limit:] if self.page_from_end else hits[:limit]
            return self._response(json.dumps({"code": "0", "msg": "success", "data": page}), 200)
        return respond

    def _response(self, body: str, status: int, headers: dict[str, str] | None = None) -> Response:
        h = {"Content-Type": "application/json"}
        if self.rate_limit is not None:
            h.update({"API-KEY-MAX-LIMIT": str(self.rate_limit), "API-KEY-USE-LIMIT": str(self.used)})
        h.update(headers or {})
        return Response(body, status=status, headers=h)


@pytest.fixture
def fake_coinglass(httpserver: HTTPServer) -> Iterable[FakeCoinglass]:
    fake = FakeCoinglass(httpserver)
    yield fake
    httpserver.clear()
