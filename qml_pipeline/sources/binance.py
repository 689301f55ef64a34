"""Live Binance market data behind the MarketSource protocol: the REST API and the public archive,
one chosen per request so the user never has to.

Rules (each request is split at most once, at a day or month boundary):

- Open interest: REST serves only the last 30 days. The part of [start, end) before the first
  day boundary inside the REST window (`BinanceRest.oi_rest_window_start()`, plus a 10-minute
  margin so the window cannot slide past it mid-request) comes from the archive's daily metrics
  files, the rest from REST.
- Funding and klines: the archive part is the closed months (funding: only monthly files exist) or
  the past days (klines) of the range; that part is read from the archive when it costs fewer HTTP
  requests than REST would (cached files count 0 or 1 request, a downloaded one 2: CHECKSUM and zip;
  REST costs ceil(rows / page size) pages, funding rows estimated at 8-hour settlements, the
  smallest count a symbol can have), and from REST on a tie (REST also serves funding's mark
  price). The rest of the range always comes from REST.
- A funding or klines file the archive lacks (404) is filled from REST; an open-interest day the
  archive lacks is older than the REST window and stays a gap. Every archive fetch's
  `ArchiveReport` (gaps, duplicates, partial days, zero rows) is appended to `archive_reports`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.config import PROJECT_ROOT
from qml_pipeline.sources.http_client import HttpClient
from qml_pipeline.sources.binance_archive import ArchiveReport, BinanceArchive, archive_client
from qml_pipeline.sources.binance_rest import FUNDING_LIMIT, KLINES_LIMIT, BinanceRest
from qml_pipeline.sources.grid import Coverage, Gap, Grid, KnownGap, gaps_for, missing_on_grid, read_known_gaps
from qml_pipeline.timeutil import UTC, interval_ms, month_floor, utc_now

DEFAULT_CACHE_DIR = PROJECT_ROOT / "warehouse" / "cache"
OI_WINDOW_MARGIN = timedelta(minutes=10)
FUNDING_ESTIMATE_HOURS = 8
# The archive's daily metrics (5-minute open interest) start here, whatever the listing date.
ARCHIVE_METRICS_START = datetime(2020, 9, 1, tzinfo=UTC)
# Rows at the live edge are expected only this long after they could first exist (publication delay).
LIVE_EDGE_GRACE = timedelta(minutes=2)


def _day_ceil(dt: datetime) -> datetime:
    floor = datetime(dt.year, dt.month, dt.day, tzinfo=UTC)
    return floor if floor == dt else floor + timedelta(days=1)


def _day_floor(dt: datetime) -> datetime:
    return datetime(dt.year, dt.month, dt.day, tzinfo=UTC)


class BinanceSource:
    name = "binance"
    venue = "binance"

    def __init__(self, fapi_url: str, archive_url: str, oi_publication_lag_s: int = 0,
                 on_progress: Callable[[str], None] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None,
                 now: Callable[[], datetime] = utc_now, known_gaps_file: str | os.PathLike[str] | None = None):
        self.client = HttpClient(fapi_url, on_progress=on_progress)
        self.archive_client = archive_client(archive_url, on_progress)
        self.rest = BinanceRest(self.client, oi_publication_lag_s, now=now)
        self.archive = BinanceArchive(self.archive_client, Path(cache_dir or DEFAULT_CACHE_DIR),
                                      oi_publication_lag_s, now=now)
        self.archive_url = archive_url
        self.now = now
        self.archive_reports: list[ArchiveReport] = []
        self._known: list[KnownGap] = read_known_gaps(known_gaps_file) if known_gaps_file else []

    # ------------------------------------------------------------------ what the source should fill

    def grid(self, table: str, variant: str) -> Grid | None:
        if table in ("klines", "open_interest"):
            return Grid(timedelta(milliseconds=interval_ms(variant)))
        return None

    def coverage(self, table: str, symbol: str, variant: str) -> Coverage:
        """From the listing (open interest: not before the archive's first metrics day) to now less a grace
        for publication, or to the delivery of a delisted symbol."""
        onboard, delivery = self.rest.listing(symbol)
        first = max(onboard, ARCHIVE_METRICS_START) if table == "open_interest" else onboard
        end = self.now() - LIVE_EDGE_GRACE
        if table == "open_interest":
            end -= timedelta(milliseconds=interval_ms(variant))
        return Coverage(first, min(end, delivery) if delivery else end)

    def known_gaps(self, table: str, symbol: str, variant: str) -> list[Gap]:
        return gaps_for(self._known, self.venue, table, symbol, variant)

    def request_stats(self) -> dict[str, float]:
        """Both clients' counters summed (weight_used: the higher of the two servers' reports)."""
        rest, arch = self.client.stats.as_dict(), self.archive_client.stats.as_dict()
        out = {k: rest[k] + arch[k] for k in rest}
        out["weight_used"] = max(rest["weight_used"], arch["weight_used"])
        return out

    # ------------------------------------------------------------------ helpers

    def _from_archive(self, fetch: Callable[[], pl.DataFrame]) -> tuple[pl.DataFrame, ArchiveReport]:
        df = fetch()
        report = self.archive.last_report
        assert report is not None
        self.archive_reports.append(report)
        return df, report

    @staticmethod
    def _concat(table: schemas.Table, frames: list[pl.DataFrame]) -> pl.DataFrame:
        frames = [f for f in frames if f.height]
        if not frames:
            return schemas.empty(table)
        key = list(table.key)
        return pl.concat([schemas.conform(table, f) for f in frames]).unique(key, keep="first").sort(key)

    def _closed_day_gaps(self, rows: pl.DataFrame, table: str, symbol: str, variant: str, start: datetime,
                         end: datetime) -> list[tuple[datetime, datetime]]:
        """The whole UTC days in [start, min(end, today)) where `rows` lack grid stamps (REST served a
        partial page, e.g. during maintenance): the archive may hold them."""
        today = datetime(*self.now().timetuple()[:3], tzinfo=UTC)
        hi = min(end, today)
        if hi <= start:
            return []
        step = timedelta(milliseconds=interval_ms(variant))
        lo_c, hi_c = self.coverage(table, symbol, variant).clip(start, hi)
        missing = missing_on_grid(rows["event_time"], Grid(step), start, hi, Coverage(lo_c, hi_c - step + timedelta(milliseconds=1))
                                  if table == "klines" else Coverage(lo_c, hi_c))
        days = sorted({_day_floor(t) for t in missing})
        ranges: list[tuple[datetime, datetime]] = []
        for d in days:
            if ranges and ranges[-1][1] == d:
                ranges[-1] = (ranges[-1][0], d + timedelta(days=1))
            else:
                ranges.append((d, d + timedelta(days=1)))
        return [(max(a, start), min(b, hi)) for a, b in ranges]

    # ------------------------------------------------------------------ open interest

    def oi_boundary(self) -> datetime:
        """The first day start the REST API still serves: older open interest comes from the archive."""
        return _day_ceil(self.rest.oi_rest_window_start() + OI_WINDOW_MARGIN)

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame:
        boundary = self.oi_boundary()
        frames = []
        if start < boundary:
            df, _ = self._from_archive(
                lambda: self.archive.open_interest(symbol, period, start, min(end, boundary)))
            frames.append(df)
        # REST pages cover 500 stamps each: never page through the future (a live month's window ends there)
        rest_end = min(end, self.now())
        if rest_end > max(start, boundary):
            rest = self.rest.open_interest(symbol, period, max(start, boundary), rest_end)
            frames.append(rest)
            for lo, hi in self._closed_day_gaps(rest, "open_interest", symbol, period, max(start, boundary), rest_end):
                frames.append(self._from_archive(lambda: self.archive.open_interest(symbol, period, lo, hi))[0])
        return self._concat(schemas.OPEN_INTEREST, frames)

    # ------------------------------------------------------------------ funding

    def funding_rest_requests(self, start: datetime, end: datetime) -> int:
        hours = max(0.0, (end - start).total_seconds() / 3600)
        return max(1, math.ceil((hours / FUNDING_ESTIMATE_HOURS + 1) / FUNDING_LIMIT))

    def funding_rates(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        split = min(max(month_floor(self.now()), start), end)  # closed months end here
        frames = []
        rest_from = start
        if split > start:
            files = self.archive.funding_files(symbol, start, split)
            if self.archive.requests_needed(files) < self.funding_rest_requests(start, split):
                df, report = self._from_archive(lambda: self.archive.funding_rates(symbol, start, split))
                frames.append(df)
                frames += [self.rest.funding_rates(symbol, lo, hi) for lo, hi in report.missing_ranges()]
                rest_from = split
        if end > rest_from:
            frames.append(self.rest.funding_rates(symbol, rest_from, end))
        return self._concat(schemas.FUNDING_RATES, frames)

    # ------------------------------------------------------------------ klines

    def klines_rest_requests(self, interval: str, start: datetime, end: datetime) -> int:
        bars = max(0, math.ceil((end - start).total_seconds() * 1000 / interval_ms(interval)))
        return max(1, math.ceil(bars / KLINES_LIMIT))

    def klines(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        today = datetime(*self.now().timetuple()[:3], tzinfo=UTC)
        split = min(max(today, start), end)  # whole past days end here
        frames = []
        rest_from = start
        if split > start:
            files = self.archive.kline_files(symbol, interval, start, split)
            if self.archive.requests_needed(files) < self.klines_rest_requests(interval, start, split):
                df, report = self._from_archive(lambda: self.archive.klines(symbol, interval, start, split))
                frames.append(df)
                frames += [self.rest.klines(symbol, interval, lo, hi) for lo, hi in report.missing_ranges()]
                rest_from = split
        if end > rest_from:
            rest = self.rest.klines(symbol, interval, rest_from, end)
            frames.append(rest)
            for lo, hi in self._closed_day_gaps(rest, "klines", symbol, interval, rest_from, end):
                frames.append(self._from_archive(lambda: self.archive.klines(symbol, interval, lo, hi))[0])
        return self._concat(schemas.KLINES, frames)

