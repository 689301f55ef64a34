"""A fake Binance USD-M REST server on pytest-httpserver, plus a fake clock for the HTTP client.

`FakeBinance` holds an in-memory dataset (funding settlements, funding info, open interest,
klines) and serves it like Binance: startTime and endTime inclusive, `limit` capped at the
endpoint's maximum, ascending order, `X-MBX-USED-WEIGHT-1M` on every response. Faults are queued
with `inject(...)` and consumed by the next matching requests, in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from qml_pipeline.timeutil import HOUR_MS, INTERVAL_MS, from_ms

try:
    from tests.fake_server import RequestLog, ms
except ImportError:
    from fake_server import RequestLog, ms

FUNDING_PATH = "/fapi/v1/fundingRate"
FUNDING_INFO_PATH = "/fapi/v1/fundingInfo"
OI_PATH = "/futures/data/openInterestHist"
KLINES_PATH = "/fapi/v1/klines"
EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"


@dataclass
class Fault:
    kind: str  # status | slow | malformed | body200
    path: str | None = None
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    delay_s: float = 0.0


class FakeBinance(RequestLog):
    """In-memory Binance USD-M REST endpoints served from `httpserver`."""

    def __init__(self, httpserver: HTTPServer):
        super().__init__()
        self.server = httpserver
        self.funding: dict[str, list[dict[str, Any]]] = {}
        self.funding_info_rows: list[dict[str, Any]] = []
        self.oi: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.klines: dict[tuple[str, str], list[list[Any]]] = {}
        self.used_weight = 0
        self.weight_header: int | None = None  # overrides the computed header when set
        # When a window holds more OI rows than `limit`, serve the latest ones (True) or the
        # earliest (False): the client must get the same rows either way.
        self.oi_page_from_end = False
        # symbol -> exchangeInfo row; symbols not added are listed from their earliest row in the dataset
        self.symbols: dict[str, dict[str, Any]] = {}
        for path, handler in ((FUNDING_PATH, self._funding), (FUNDING_INFO_PATH, self._funding_info),
                              (OI_PATH, self._oi), (KLINES_PATH, self._klines),
                              (EXCHANGE_INFO_PATH, self._exchange_info)):
            httpserver.expect_request(path).respond_with_handler(self._wrap(path, handler))

    @property
    def url(self) -> str:
        return self.server.url_for("/").rstrip("/")

    # ------------------------------------------------------------------ dataset

    def add_funding(self, symbol: str, start: datetime, count: int, interval_hours: int = 8,
                    jitter_ms: Callable[[int], int] | None = None, mark_price: str | None = "50000.0",
                    rate: Callable[[int], float] | None = None) -> list[int]:
        """Append `count` settlements from `start` every `interval_hours`; return their grid times (ms)."""
        rows = self.funding.setdefault(symbol, [])
        grid = [ms(start) + i * interval_hours * HOUR_MS for i in range(count)]
        for i, t in enumerate(grid):
            row: dict[str, Any] = {
                "symbol": symbol,
                "fundingTime": t + (jitter_ms(i) if jitter_ms else 0),
                "fundingRate": f"{(rate(i) if rate else 0.0001 + i * 1e-8):.8f}",
            }
            if mark_price is not None:
                row["markPrice"] = mark_price
            rows.append(row)
        rows.sort(key=lambda r: r["fundingTime"])
        return grid

    def add_symbol(self, symbol: str, onboard: datetime, status: str = "TRADING",
                   delivery: datetime | None = None) -> None:
        """List `symbol` in exchangeInfo (a delisted one: status SETTLING or CLOSE and its delivery date)."""
        base = symbol.removesuffix("USDT")
        self.symbols[symbol] = {
            "symbol": symbol, "pair": symbol, "contractType": "PERPETUAL",
            "deliveryDate": ms(delivery) if delivery else 4133404800000, "onboardDate": ms(onboard),
            "status": status, "baseAsset": base, "quoteAsset": "USDT", "marginAsset": "USDT",
            "pricePrecision": 2, "quantityPrecision": 3, "underlyingType": "COIN"}

    def set_funding_info(self, intervals: dict[str, int]) -> None:
        self.funding_info_rows = [
            {"symbol": s, "adjustedFundingRateCap": "0.02500000", "adjustedFundingRateFloor": "-0.02500000",
             "fundingIntervalHours": h, "disclaimer": False} for s, h in intervals.items()]

    def add_oi(self, symbol: str, period: str, start: datetime, count: int) -> list[int]:
        step = INTERVAL_MS[period]
        stamps = [ms(start) + i * step for i in range(count)]
        self.oi.setdefault((symbol, period), []).extend(
            {"symbol": symbol, "sumOpenInterest": f"{80000 + i:.8f}",
             "sumOpenInterestValue": f"{(80000 + i) * 60000.0:.8f}", "timestamp": t}
            for i, t in enumerate(stamps))
        return stamps

    def add_klines(self, symbol: str, interval: str, start: datetime, count: int) -> list[int]:
        step = INTERVAL_MS[interval]
        opens = [ms(start) + i * step for i in range(count)]
        self.klines.setdefault((symbol, interval), []).extend(
            [t, f"{100 + i % 7}.0", f"{110 + i % 7}.0", f"{90 + i % 7}.0", f"{101 + i % 7}.0",
             f"{10 + i}.5", t + step - 1, f"{(10 + i) * 100}.0", 100 + i, f"{5 + i}.25", "1.0", "0"]
            for i, t in enumerate(opens))
        return opens

    # ------------------------------------------------------------------ faults and inspection

    def inject(self, kind: str, times: int = 1, path: str | None = None, **kw: Any) -> None:
        """Queue `times` faults for the next requests (to `path`, if given).

        kind: "429" / "418" (retry_after=seconds or None), "5xx" (status=503), "slow" (delay_s),
        "malformed" (a 200 with a truncated body), "error" (code, msg, status=400; status=200 puts
        the error dict in a 200), "451".
        """
        for _ in range(times):
            if kind in ("429", "418"):
                ra = kw.get("retry_after")
                headers = {} if ra is None else {"Retry-After": str(ra)}
                self.faults.append(Fault("status", path, int(kind), headers,
                                         json.dumps({"code": -1003, "msg": "Too many requests."})))
            elif kind == "5xx":
                self.faults.append(Fault("status", path, kw.get("status", 503), {},
                                         json.dumps({"code": -1001, "msg": "Internal error; unable to process your request."})))
            elif kind == "slow":
                self.faults.append(Fault("slow", path, delay_s=kw["delay_s"]))
            elif kind == "malformed":
                self.faults.append(Fault("malformed", path, 200, body='[{"symbol": "BTCUSDT", "fundingTi'))
            elif kind == "error":
                self.faults.append(Fault("status", path, kw.get("status", 400), {},
                                         json.dumps({"code": kw["code"], "msg": kw["msg"]})))
            elif kind == "451":
                self.faults.append(Fault("status", path, 451, {}, json.dumps(
                    {"code": 0, "msg": "Service unavailable from a restricted location according to "
                                       "'b. Eligibility' in https://www.binance.com/en/terms."})))
            else:
                raise ValueError(f"unknown fault {kind!r}")

    # ------------------------------------------------------------------ serving

    def _wrap(self, path: str, handler: Callable[[dict[str, str]], tuple[Any, int]]) -> Callable[[Request], Response]:
        def respond(request: Request) -> Response:
            args, fault = self._record(path, request)
            if fault is not None:
                if fault.kind == "slow":
                    time.sleep(fault.delay_s)
                elif fault.kind == "malformed":
                    return self._response(fault.body, 200)
                else:
                    return self._response(fault.body, fault.status, fault.headers)
            payload, weight = handler(args)
            self.used_weight += weight
            return self._response(json.dumps(payload), 200)
        return respond

    def _response(self, body: str, status: int, headers: dict[str, str] | None = None) -> Response:
        h = {"Content-Type": "application/json",
             "X-MBX-USED-WEIGHT-1M": str(self.weight_header if self.weight_header is not None else self.used_weight)}
        h.update(headers or {})
        return Response(body, status=status, headers=h)

    @staticmethod
    def _window(args: dict[str, str], max_limit: int, default_limit: int) -> tuple[int, int, int]:
        start = int(args.get("startTime", 0))
        end = int(args.get("endTime", 2 ** 62))
        limit = min(int(args.get("limit", default_limit)), max_limit)
        return start, end, limit

    def _funding(self, args: dict[str, str]) -> tuple[Any, int]:
        start, end, limit = self._window(args, 1000, 100)
        rows = [r for r in self.funding.get(args["symbol"], []) if start <= r["fundingTime"] <= end]
        return rows[:limit], 0

    def _funding_info(self, args: dict[str, str]) -> tuple[Any, int]:
        return self.funding_info_rows, 0

    def _oi(self, args: dict[str, str]) -> tuple[Any, int]:
        start, end, limit = self._window(args, 500, 30)
        rows = [r for r in self.oi.get((args["symbol"], args["period"]), []) if start <= r["timestamp"] <= end]
        return (rows[-limit:] if self.oi_page_from_end else rows[:limit]), 0

    def _exchange_info(self, args: dict[str, str]) -> tuple[Any, int]:
        listed = dict(self.symbols)
        firsts: dict[str, int] = {}
        for symbol, rows in self.funding.items():
            firsts[symbol] = min([r["fundingTime"] for r in rows] + [firsts.get(symbol, 2 ** 62)])
        for (symbol, _), rows in self.oi.items():
            firsts[symbol] = min([r["timestamp"] for r in rows] + [firsts.get(symbol, 2 ** 62)])
        for (symbol, _), rows in self.klines.items():
            firsts[symbol] = min([k[0] for k in rows] + [firsts.get(symbol, 2 ** 62)])
        for symbol, first in firsts.items():
            if symbol not in listed:
                self.add_symbol(symbol, from_ms(first))
                listed[symbol] = self.symbols.pop(symbol)
        return {"timezone": "UTC", "serverTime": 0, "futuresType": "U_MARGINED", "rateLimits": [],
                "assets": [], "symbols": list(listed.values())}, 1

    def _klines(self, args: dict[str, str]) -> tuple[Any, int]:
        start, end, limit = self._window(args, 1500, 500)
        rows = [k for k in self.klines.get((args["symbol"], args["interval"]), []) if start <= k[0] <= end]
        weight = 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
        return rows[:limit], weight


class FakeTime:
    """Wall clock (epoch seconds) that only moves when the client sleeps."""

    def __init__(self, start: float = 1_700_000_010.0):
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_binance(httpserver: HTTPServer) -> Iterable[FakeBinance]:
    fake = FakeBinance(httpserver)
    yield fake
    httpserver.clear()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()
