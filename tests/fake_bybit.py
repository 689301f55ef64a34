"""A fake Bybit v5 public API on pytest-httpserver, built from Bybit's documented responses.

Served like Bybit (docs/venues.md): `{"retCode": 0, "retMsg": "OK", "result": {...}, "retExtInfo": {},
"time": ...}` bodies; lists newest first; startTime/endTime inclusive; open interest pages by an
opaque `nextPageCursor`; funding history without a cursor (startTime alone is an error); bad
parameters and unknown symbols answer retCode 10001 in an HTTP 200; instruments-info answers an
unknown symbol with an empty list. History starts at what the test adds (the symbol's launch).

Faults are queued with `inject(...)` and consumed by the next matching requests, in order:
"403" (IP ban: "access too frequent"), "403geo" (a CDN country block), "10006" (too many visits,
with X-Bapi-Limit-* headers), "10016" (internal error), "5xx", "malformed".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from qml_pipeline.timeutil import HOUR_MS

try:
    from tests.fake_server import CannedFault, RecordingServer, ms
except ImportError:
    from fake_server import CannedFault, RecordingServer, ms

INSTRUMENTS_PATH = "/v5/market/instruments-info"
OI_PATH = "/v5/market/open-interest"
MARK_KLINE_PATH = "/v5/market/mark-price-kline"
FUNDING_PATH = "/v5/market/funding/history"
OI_INTERVALS_MS = {"5min": 300_000, "15min": 900_000, "30min": 1_800_000, "1h": HOUR_MS, "4h": 4 * HOUR_MS,
                   "1d": 24 * HOUR_MS}
KLINE_INTERVALS_MS = {"1": 60_000, "5": 300_000, "15": 900_000, "30": 1_800_000, "60": HOUR_MS,
                      "240": 4 * HOUR_MS, "D": 24 * HOUR_MS}
SERVER_TIME_MS = 1_700_000_000_000


class ParamsError(Exception):
    """A request Bybit would refuse with retCode 10001."""


class FakeBybit(RecordingServer):
    """In-memory Bybit v5 market endpoints served from `httpserver`."""

    def __init__(self, httpserver: HTTPServer):
        super().__init__(httpserver, {path: self._serving(handler) for path, handler in (
            (INSTRUMENTS_PATH, self._instruments), (OI_PATH, self._oi), (MARK_KLINE_PATH, self._mark_kline),
            (FUNDING_PATH, self._funding))})
        self.instruments: dict[str, dict[str, Any]] = {}
        self.oi: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.marks: dict[tuple[str, str], list[list[str]]] = {}
        self.funding: dict[str, list[dict[str, Any]]] = {}
        # Bybit may hand out a cursor on the last page too; the reader must not need it.
        self.cursor_on_last_page = True

    # ------------------------------------------------------------------ dataset

    def add_instrument(self, symbol: str, launch: datetime, funding_interval_minutes: int = 480,
                       contract_type: str = "LinearPerpetual") -> None:
        base = symbol[:-4]
        self.instruments[symbol] = {
            "symbol": symbol, "contractType": contract_type, "status": "Trading", "baseCoin": base,
            "quoteCoin": "USDT", "launchTime": str(ms(launch)), "deliveryTime": "0", "deliveryFeeRate": "",
            "priceScale": "2", "fundingInterval": funding_interval_minutes, "settleCoin": "USDT",
            "copyTrading": "both", "upperFundingRate": "0.00375", "lowerFundingRate": "-0.00375",
            "isPreListing": False, "preListingInfo": None}

    def add_oi(self, symbol: str, interval_time: str, start: datetime, count: int,
               coins: Callable[[int], float] = lambda i: 50_000.0 + i, single_side: bool = True) -> list[int]:
        """`count` stamps from `start`; `coins(i)` the single-side open interest in base coin."""
        step = OI_INTERVALS_MS[interval_time]
        stamps = [ms(start) + i * step for i in range(count)]
        rows = self.oi.setdefault((symbol, interval_time), [])
        for i, t in enumerate(stamps):
            row: dict[str, Any] = {"openInterest": f"{2 * coins(i):.8f}", "timestamp": str(t)}
            if single_side:
                row["singleOpenInterest"] = f"{coins(i):.8f}"
            rows.append(row)
        return stamps

    def add_marks(self, symbol: str, interval: str, start: datetime, count: int,
                  close: Callable[[int], float] = lambda i: 60_000.0 + i) -> list[int]:
        step = KLINE_INTERVALS_MS[interval]
        opens = [ms(start) + i * step for i in range(count)]
        self.marks.setdefault((symbol, interval), []).extend(
            [str(t), f"{close(i) - 5:.2f}", f"{close(i) + 10:.2f}", f"{close(i) - 10:.2f}", f"{close(i):.2f}"]
            for i, t in enumerate(opens))
        return opens

    def add_funding(self, symbol: str, start: datetime, count: int, interval_hours: int = 8,
                    rate: Callable[[int], float] = lambda i: 0.0001 + i * 1e-8) -> list[int]:
        grid = [ms(start) + i * interval_hours * HOUR_MS for i in range(count)]
        self.funding.setdefault(symbol, []).extend(
            {"symbol": symbol, "fundingRate": f"{rate(i):.8f}", "fundingRateTimestamp": str(t)}
            for i, t in enumerate(grid))
        return grid

    # ------------------------------------------------------------------ faults and inspection

    def inject(self, kind: str, times: int = 1, path: str | None = None, **kw: Any) -> None:
        for _ in range(times):
            if kind == "403":
                self.faults.append(CannedFault(403, "access too frequent", path, content_type="text/plain"))
            elif kind == "403geo":
                self.faults.append(CannedFault(403, "<html><h1>403 ERROR</h1>The Amazon CloudFront distribution "
                                                    "is configured to block access from your country.</html>",
                                               path, content_type="text/html"))
            elif kind == "10006":
                headers = {"X-Bapi-Limit": "10", "X-Bapi-Limit-Status": "0",
                           "X-Bapi-Limit-Reset-Timestamp": str(kw["reset_ms"])}
                self.faults.append(CannedFault(200, self._body(None, 10006, "Too many visits!"), path, headers))
            elif kind == "10016":
                self.faults.append(CannedFault(200, self._body(None, 10016, "Internal System Error."), path))
            elif kind == "5xx":
                self.faults.append(CannedFault(kw.get("status", 502), "<html>502 Bad Gateway</html>", path,
                                               content_type="text/html"))
            elif kind == "malformed":
                self.faults.append(CannedFault(200, '{"retCode":0,"retMsg":"OK","result":{"list":[{"openIn', path))
            else:
                raise ValueError(f"unknown fault {kind!r}")

    # ------------------------------------------------------------------ serving

    @staticmethod
    def _body(result: Any, code: int = 0, msg: str = "OK") -> str:
        return json.dumps({"retCode": code, "retMsg": msg, "result": result if result is not None else {},
                           "retExtInfo": {}, "time": SERVER_TIME_MS})

    def _serving(self, handler: Callable[[dict[str, str]], Any]) -> Callable[[dict[str, str]], Response]:
        def respond(args: dict[str, str]) -> Response:
            try:
                body = self._body(handler(args))
            except ParamsError as exc:
                body = self._body(None, 10001, f"params error: {exc}")
            return Response(body, status=200, content_type="application/json")
        return respond

    def _require(self, args: dict[str, str], names: Iterable[str]) -> None:
        for name in names:
            if not args.get(name):
                raise ParamsError(f"{name} is required")
        if args.get("category") not in ("linear", "inverse"):
            raise ParamsError(f"category invalid: {args.get('category')!r}")

    def _symbol(self, args: dict[str, str]) -> str:
        symbol = args["symbol"]
        if symbol not in self.instruments:
            raise ParamsError(f"Symbol Is Invalid: {symbol}")
        return symbol

    @staticmethod
    def _limit(args: dict[str, str], default: int, maximum: int) -> int:
        limit = int(args.get("limit", default))
        if not 1 <= limit <= maximum:
            raise ParamsError(f"limit {limit} out of range [1, {maximum}]")
        return limit

    def _instruments(self, args: dict[str, str]) -> Any:
        if args.get("category") not in ("linear", "inverse", "spot", "option"):
            raise ParamsError(f"category invalid: {args.get('category')!r}")
        rows = [r for s, r in self.instruments.items() if args.get("symbol") in (None, s)]
        return {"category": args["category"], "list": rows, "nextPageCursor": ""}

    def _oi(self, args: dict[str, str]) -> Any:
        self._require(args, ("category", "symbol", "intervalTime"))
        symbol = self._symbol(args)
        if args["intervalTime"] not in OI_INTERVALS_MS:
            raise ParamsError(f"intervalTime invalid: {args['intervalTime']!r}")
        limit = self._limit(args, 50, 200)
        lo, hi = int(args.get("startTime", 0)), int(args.get("endTime", 2 ** 62))
        rows = sorted((r for r in self.oi.get((symbol, args["intervalTime"]), [])
                       if lo <= int(r["timestamp"]) <= hi), key=lambda r: -int(r["timestamp"]))
        offset = int(args["cursor"].split("=")[1]) if args.get("cursor") else 0
        page = rows[offset: offset + limit]
        more = offset + limit < len(rows)
        cursor = f"lastid={offset + limit}" if more or (self.cursor_on_last_page and page) else ""
        return {"symbol": symbol, "category": args["category"], "list": page, "nextPageCursor": cursor}

    def _mark_kline(self, args: dict[str, str]) -> Any:
        self._require(args, ("symbol", "interval"))
        symbol = self._symbol(args)
        if args["interval"] not in KLINE_INTERVALS_MS:
            raise ParamsError(f"interval invalid: {args['interval']!r}")
        limit = self._limit(args, 200, 1000)
        lo, hi = int(args.get("start", 0)), int(args.get("end", 2 ** 62))
        bars = sorted((b for b in self.marks.get((symbol, args["interval"]), []) if lo <= int(b[0]) <= hi),
                      key=lambda b: -int(b[0]))
        return {"symbol": symbol, "category": args["category"], "list": bars[:limit]}

    def _funding(self, args: dict[str, str]) -> Any:
        self._require(args, ("category", "symbol"))
        symbol = self._symbol(args)
        if "startTime" in args and "endTime" not in args:
            raise ParamsError("endTime is required when startTime is passed")
        limit = self._limit(args, 200, 200)
        lo, hi = int(args.get("startTime", 0)), int(args.get("endTime", 2 ** 62))
        rows = sorted((r for r in self.funding.get(symbol, []) if lo <= int(r["fundingRateTimestamp"]) <= hi),
                      key=lambda r: -int(r["fundingRateTimestamp"]))
        return {"category": args["category"], "list": rows[:limit]}


@pytest.fixture
def fake_bybit(httpserver: HTTPServer) -> Iterable[FakeBybit]:
    fake = FakeBybit(httpserver)
    yield fake
    httpserver.clear()
