"""A fake data.binance.vision on pytest-httpserver: zipped CSV files in the archive's layout, each with
a `.CHECKSUM` sibling, 404 for anything not added. Files can be headered or headerless, carry
duplicated days or zero open interest, and have a wrong published checksum.

Rows can be built from the REST fake's dataset (`FakeBinance`) so both fakes serve the same data.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

UTC = timezone.utc
METRICS_HEADER = ("create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
                  "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio")
FUNDING_HEADER = "calc_time,funding_interval_hours,last_funding_rate"
KLINES_HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
                 "taker_buy_quote_volume,ignore")
FIVE_MIN_MS = 300_000


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def zip_csv(name: str, text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name.replace(".zip", ".csv"), text)
    return buf.getvalue()


class FakeArchive:
    def __init__(self, httpserver: HTTPServer):
        self.server = httpserver
        self.files: dict[str, bytes] = {}
        self.checksums: dict[str, str] = {}
        self.requests: list[str] = []
        httpserver.expect_request(re.compile(r"^/data/.*")).respond_with_handler(self._serve)

    @property
    def url(self) -> str:
        return self.server.url_for("/").rstrip("/")

    # ------------------------------------------------------------------ files

    def add_file(self, path: str, csv_text: str, bad_checksum: bool = False, no_checksum: bool = False) -> bytes:
        data = zip_csv(path.rsplit("/", 1)[-1], csv_text)
        self.files[path] = data
        sha = hashlib.sha256(data).hexdigest()
        if bad_checksum:
            sha = hashlib.sha256(data + b"x").hexdigest()
        if no_checksum:
            self.checksums.pop(path, None)
        else:
            self.checksums[path] = sha
        return data

    def remove(self, path: str) -> None:
        self.files.pop(path, None)
        self.checksums.pop(path, None)

    # ------------------------------------------------------------------ datasets

    def add_metrics_day(self, symbol: str, day: date, rows: Sequence[tuple[int, str, str]] | None = None, *,
                        header: bool = True, duplicate_day: bool = False, zero_oi_at: Iterable[int] = (),
                        drop_last: int = 0, bad_checksum: bool = False) -> str:
        """A daily metrics file. `rows`: (create_time ms, sum_open_interest, value) as strings;
        default 288 five-minute rows. `zero_oi_at`: row indexes whose OI and value are 0."""
        if rows is None:
            t0 = _ms(datetime(day.year, day.month, day.day, tzinfo=UTC))
            rows = [(t0 + i * FIVE_MIN_MS, f"{80000 + i:.8f}", f"{(80000 + i) * 60000.0:.8f}") for i in range(288)]
        zeros = set(zero_oi_at)
        rows = [(t, "0.0", "0.0") if i in zeros else (t, oi, v) for i, (t, oi, v) in enumerate(rows)]
        if drop_last:
            rows = rows[:-drop_last]
        lines = [f"{_stamp(t)},{symbol},{oi},{v},1.5,1.25,1.1,0.95" for t, oi, v in rows]
        if duplicate_day:
            lines = lines + lines
        path = f"data/futures/um/daily/metrics/{symbol}/{symbol}-metrics-{day:%Y-%m-%d}.zip"
        self.add_file(path, "\n".join(([METRICS_HEADER] if header else []) + lines) + "\n", bad_checksum)
        return path

    def add_funding_month(self, symbol: str, month: date, rows: Sequence[tuple[int, int, str]], *,
                          header: bool = True) -> str:
        """A monthly fundingRate file; `rows`: (calc_time ms, funding_interval_hours, rate string)."""
        lines = [f"{t},{h},{r}" for t, h, r in rows]
        path = f"data/futures/um/monthly/fundingRate/{symbol}/{symbol}-fundingRate-{month:%Y-%m}.zip"
        self.add_file(path, "\n".join(([FUNDING_HEADER] if header else []) + lines) + "\n")
        return path

    def add_klines_file(self, symbol: str, interval: str, period: str, when: date, rows: Sequence[Sequence[Any]],
                        *, header: bool = True, microseconds: bool = False) -> str:
        """A daily (`when` = the day) or monthly (`when` = any day of the month) klines file;
        `rows` as Binance's REST serves them (12 fields, open time in ms)."""
        stamp = f"{when:%Y-%m-%d}" if period == "daily" else f"{when:%Y-%m}"
        scale = 1000 if microseconds else 1
        lines = [",".join(str(v) for v in (r[0] * scale, *r[1:6], r[6] * scale + (999 if microseconds else 0),
                                             *r[7:12])) for r in rows]
        path = f"data/futures/um/{period}/klines/{symbol}/{interval}/{symbol}-{interval}-{stamp}.zip"
        self.add_file(path, "\n".join(([KLINES_HEADER] if header else []) + lines) + "\n")
        return path

    # ------------------------------------------------------------------ from the REST fake

    def metrics_from_rest(self, fake_binance: Any, symbol: str, days: Iterable[date], **kw: Any) -> None:
        rows = fake_binance.oi.get((symbol, "5m"), [])
        for day in days:
            lo = _ms(datetime(day.year, day.month, day.day, tzinfo=UTC))
            picked = [(r["timestamp"], r["sumOpenInterest"], r["sumOpenInterestValue"]) for r in rows
                      if lo <= r["timestamp"] < lo + 86_400_000]
            self.add_metrics_day(symbol, day, picked, **kw)

    def klines_daily_from_rest(self, fake_binance: Any, symbol: str, interval: str, days: Iterable[date],
                               **kw: Any) -> None:
        rows = fake_binance.klines.get((symbol, interval), [])
        for day in days:
            lo = _ms(datetime(day.year, day.month, day.day, tzinfo=UTC))
            self.add_klines_file(symbol, interval, "daily", day,
                                 [r for r in rows if lo <= r[0] < lo + 86_400_000], **kw)

    def funding_from_rest(self, fake_binance: Any, symbol: str, month: date, interval_hours: int = 8,
                          **kw: Any) -> None:
        lo = datetime(month.year, month.month, 1, tzinfo=UTC)
        hi = datetime(month.year + (month.month == 12), month.month % 12 + 1, 1, tzinfo=UTC)
        rows = [(r["fundingTime"], interval_hours, r["fundingRate"]) for r in fake_binance.funding.get(symbol, [])
                if _ms(lo) <= r["fundingTime"] < _ms(hi)]
        self.add_funding_month(symbol, month, rows, **kw)

    # ------------------------------------------------------------------ inspection

    def count(self, kind: str = "all") -> int:
        """Requests served: kind 'zip', 'checksum' or 'all'."""
        if kind == "zip":
            return sum(1 for p in self.requests if p.endswith(".zip"))
        if kind == "checksum":
            return sum(1 for p in self.requests if p.endswith(".CHECKSUM"))
        return len(self.requests)

    # ------------------------------------------------------------------ serving

    def _serve(self, request: Request) -> Response:
        path = request.path.lstrip("/")
        self.requests.append(path)
        if path.endswith(".CHECKSUM"):
            target = path[: -len(".CHECKSUM")]
            if target in self.checksums:
                name = target.rsplit("/", 1)[-1]
                return Response(f"{self.checksums[target]}  {name}\n", status=200, content_type="text/plain")
        elif path in self.files:
            return Response(self.files[path], status=200, content_type="application/zip")
        return Response("<Error><Code>NoSuchKey</Code></Error>", status=404, content_type="application/xml")


def day_range(first: date, days: int) -> list[date]:
    return [first + timedelta(days=i) for i in range(days)]


@pytest.fixture
def fake_archive(httpserver: HTTPServer) -> Iterable[FakeArchive]:
    fake = FakeArchive(httpserver)
    yield fake
    httpserver.clear()
