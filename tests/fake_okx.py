"""A fake OKX v5 public API on pytest-httpserver, built from OKX's documented responses.

Served like OKX (docs/venues.md): `{"code": "0", "msg": "", "data": [...]}` bodies, newest first.
Open-interest history: rows `[ts, oi, oiCcy, oiUsd]` as strings, `begin`/`end` exclusive, limit
<= 100, only the latest 1,440 entries of each period kept (what the test stored beyond is
dropped, as OKX drops it). Funding history: `after` (older than) / `before` (newer than)
exclusive, limit <= 400, only settlements at or after `funding_oldest` served. Errors: an unknown
instId answers code 51001 in an HTTP 200, a bad parameter 51000 in an HTTP 400.

Faults are queued with `inject(...)`: "429" (code 50011, optional Retry-After), "50011" (the
same code in an HTTP 200), "50026" (HTTP 500 system error), "malformed".
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

INSTRUMENTS_PATH = "/api/v5/public/instruments"
OI_PATH = "/api/v5/rubik/stat/contracts/open-interest-history"
FUNDING_PATH = "/api/v5/public/funding-rate-history"
PERIODS_MS = {"5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1H": HOUR_MS, "2H": 2 * HOUR_MS,
              "4H": 4 * HOUR_MS, "6Hutc": 6 * HOUR_MS, "12Hutc": 12 * HOUR_MS, "1Dutc": 24 * HOUR_MS,
              "1D": 24 * HOUR_MS}
OI_ENTRIES = 1440


class OkxError(Exception):
    def __init__(self, status: int, code: str, msg: str):
        self.status, self.code, self.msg = status, code, msg


class FakeOkx(RecordingServer):
    """In-memory OKX v5 public endpoints served from `httpserver`."""

    def __init__(self, httpserver: HTTPServer):
        super().__init__(httpserver, {path: self._serving(handler) for path, handler in (
            (INSTRUMENTS_PATH, self._instruments), (OI_PATH, self._oi), (FUNDING_PATH, self._funding))})
        self.swaps: dict[str, dict[str, Any]] = {}
        self.oi: dict[tuple[str, str], list[list[str]]] = {}
        self.funding: dict[str, list[dict[str, Any]]] = {}
        self.funding_oldest: datetime | None = None

    # ------------------------------------------------------------------ dataset

    def add_swap(self, inst_id: str, ct_val: str, listed: datetime, ct_mult: str = "1",
                 ct_type: str = "linear") -> None:
        base, quote, _ = inst_id.split("-")
        self.swaps[inst_id] = {
            "instType": "SWAP", "instId": inst_id, "uly": f"{base}-{quote}", "instFamily": f"{base}-{quote}",
            "baseCcy": "", "quoteCcy": "", "settleCcy": quote, "ctVal": ct_val, "ctMult": ct_mult,
            "ctValCcy": base if ct_type == "linear" else "USD", "ctType": ct_type, "listTime": str(ms(listed)),
            "expTime": "", "lever": "100", "tickSz": "0.1", "lotSz": "0.01", "minSz": "0.01", "state": "live",
            "ruleType": "normal"}

    def add_oi(self, inst_id: str, period: str, start: datetime, count: int,
               contracts: Callable[[int], float] = lambda i: 2_000_000.0 + 100 * i,
               price: Callable[[int], float] = lambda i: 60_000.0 + i,
               with_ccy: bool = True, with_usd: bool = True) -> list[int]:
        """`count` stamps from `start`; coins = contracts x ctVal of the swap, USD = coins x price."""
        step = PERIODS_MS[period]
        size = float(self.swaps[inst_id]["ctVal"]) * float(self.swaps[inst_id]["ctMult"])
        stamps = [ms(start) + i * step for i in range(count)]
        self.oi.setdefault((inst_id, period), []).extend(
            [str(t), f"{contracts(i):.2f}", f"{contracts(i) * size:.4f}" if with_ccy else "",
             f"{contracts(i) * size * price(i):.2f}" if with_usd else ""]
            for i, t in enumerate(stamps))
        return stamps

    def add_funding(self, inst_id: str, start: datetime, count: int, interval_hours: int = 8,
                    rate: Callable[[int], float] = lambda i: 0.0001 + i * 1e-8, realized: bool = True) -> list[int]:
        grid = [ms(start) + i * interval_hours * HOUR_MS for i in range(count)]
        self.funding.setdefault(inst_id, []).extend(
            {"formulaType": "withRate", "fundingRate": f"{rate(i) + 0.00005:.10f}", "fundingTime": str(t),
             "instId": inst_id, "instType": "SWAP", "method": "current_period",
             "realizedRate": f"{rate(i):.10f}" if realized else ""}
            for i, t in enumerate(grid))
        return grid

    # ------------------------------------------------------------------ faults and inspection

    def inject(self, kind: str, times: int = 1, path: str | None = None, **kw: Any) -> None:
        for _ in range(times):
            if kind == "429":
                ra = kw.get("retry_after")
                self.faults.append(CannedFault(429, self._body([], "50011", "Too Many Requests"), path,
                                         {} if ra is None else {"Retry-After": str(ra)}))
            elif kind == "50011":
                self.faults.append(CannedFault(200, self._body([], "50011", "Rate limit reached. Please refer to API "
                                                                     "documentation and throttle requests accordingly."),
                                         path))
            elif kind == "50026":
                self.faults.append(CannedFault(500, self._body([], "50026", "System error. Try again later"), path))
            elif kind == "malformed":
                self.faults.append(CannedFault(200, '{"code":"0","msg":"","data":[["1701417600000","7313', path))
            else:
                raise ValueError(f"unknown fault {kind!r}")

    # ------------------------------------------------------------------ serving

    @staticmethod
    def _body(data: Any, code: str = "0", msg: str = "") -> str:
        return json.dumps({"code": code, "msg": msg, "data": data})

    def _serving(self, handler: Callable[[dict[str, str]], Any]) -> Callable[[dict[str, str]], Response]:
        def respond(args: dict[str, str]) -> Response:
            try:
                return Response(self._body(handler(args)), status=200, content_type="application/json")
            except OkxError as exc:
                return Response(self._body([], exc.code, exc.msg), status=exc.status,
                                content_type="application/json")
        return respond

    def _inst(self, args: dict[str, str]) -> str:
        inst_id = args.get("instId", "")
        if not inst_id:
            raise OkxError(400, "50014", "Parameter instId can not be empty.")
        if inst_id not in self.swaps:
            raise OkxError(200, "51001", "Instrument ID, Instrument ID code or Spread ID doesn't exist.")
        return inst_id

    @staticmethod
    def _limit(args: dict[str, str], maximum: int) -> int:
        limit = int(args.get("limit", maximum))
        if not 1 <= limit <= maximum:
            raise OkxError(400, "51000", "Parameter limit error")
        return limit

    def _instruments(self, args: dict[str, str]) -> Any:
        if args.get("instType") != "SWAP":
            raise OkxError(400, "51000", "Parameter instType error")
        return [r for i, r in self.swaps.items() if args.get("instId") in (None, i)]

    def _oi(self, args: dict[str, str]) -> Any:
        inst_id = self._inst(args)
        period = args.get("period", "5m")
        if period not in PERIODS_MS:
            raise OkxError(400, "51000", "Parameter period error")
        limit = self._limit(args, 100)
        lo, hi = int(args.get("begin", -1)), int(args.get("end", 2 ** 62))
        kept = sorted(self.oi.get((inst_id, period), []), key=lambda r: int(r[0]))[-OI_ENTRIES:]
        rows = [r for r in reversed(kept) if lo < int(r[0]) < hi]
        return rows[:limit]

    def _funding(self, args: dict[str, str]) -> Any:
        inst_id = self._inst(args)
        limit = self._limit(args, 400)
        before, after = int(args.get("before", -1)), int(args.get("after", 2 ** 62))
        oldest = ms(self.funding_oldest) if self.funding_oldest else 0
        rows = sorted((r for r in self.funding.get(inst_id, [])
                       if before < int(r["fundingTime"]) < after and int(r["fundingTime"]) >= oldest),
                      key=lambda r: -int(r["fundingTime"]))
        return rows[:limit]


@pytest.fixture
def fake_okx(httpserver: HTTPServer) -> Iterable[FakeOkx]:
    fake = FakeOkx(httpserver)
    yield fake
    httpserver.clear()
