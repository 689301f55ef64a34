"""Binance's public archive (data.binance.vision): bulk USD-M history as zipped CSV files.

Files read (each beside a `<file>.CHECKSUM` holding `<sha256 hex>  <file name>`):

    data/futures/um/daily/metrics/{SYMBOL}/{SYMBOL}-metrics-{YYYY-MM-DD}.zip          5m open interest
    data/futures/um/monthly/fundingRate/{SYMBOL}/{SYMBOL}-fundingRate-{YYYY-MM}.zip   settlements
    data/futures/um/daily/klines/{SYMBOL}/{interval}/{SYMBOL}-{interval}-{YYYY-MM-DD}.zip
    data/futures/um/monthly/klines/{SYMBOL}/{interval}/{SYMBOL}-{interval}-{YYYY-MM}.zip

Every zip is verified against its CHECKSUM before it is parsed; a mismatch raises `ChecksumError`
and nothing of that fetch is returned. A file the archive does not have (404) is a gap recorded in
the fetch's `ArchiveReport`, not an error.

Cache: a verified zip is kept under `cache_dir` at its URL path, with its sha256 in a `.sha256`
sidecar (the cache is keyed by path, not host, so a mirror serves the same cache; the checksum
guards the content). A cached file whose period (day or month) ended more than `recheck_after`
(default 7 days) before now is trusted without any request: the archive's closed files do not
change in practice, and Binance's rare re-publications happen within days. A younger cached file
costs one small CHECKSUM request, and is downloaded again only when the checksum changed.
`revalidate=True` re-checks every cached file. Cached bytes are re-hashed on every read, so a
corrupted cache entry is downloaded again rather than used.

A local mirror (`file:///path`, the archive's layout on disk, e.g. synced from the public bucket) is read in
place by `LocalMirror`: every zip is still verified against its CHECKSUM, nothing is copied into the cache,
and no HTTP request is made.

Parsing: the CSVs of one fetch are parsed by polars in one call per run of files sharing a header (a
month of daily metrics is one parse, not 30); when that fails, each file is parsed alone so the error names it.

Rows come out in the same shapes as the REST source (`schemas.conform`), with source
'binance_archive'. Known archive defects are handled and counted in `ArchiveReport`, never trusted:
exact duplicate rows (whole days duplicated 2020-09..2021-05) are dropped, partial days (fewer than
288 five-minute rows) and missing days are listed, zero open-interest rows are kept (downstream
treats them as missing) and counted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.sources.http_client import HttpClient, RequestStats
from qml_pipeline.sources.venues import BINANCE_OI_PERIODS
from qml_pipeline.store.schemas import TS, check_symbol
from qml_pipeline.sources.funding import snap_funding_times
from qml_pipeline.timeutil import UTC, interval_ms, month_starts, next_month, to_ms, utc_now

log = logging.getLogger(__name__)

SOURCE = "binance_archive"
METRICS_PERIOD_MINUTES = 5
ROWS_PER_FULL_DAY = 24 * 60 // METRICS_PERIOD_MINUTES
DAY = timedelta(days=1)
# Binance stamps klines in microseconds in its spot archive from 2025; futures use milliseconds.
# A stamp above this is microseconds (1e14 ms is the year 5138; 1e14 us is 1973).
MICROSECOND_STAMP_ABOVE = 10 ** 14

METRICS_COLUMNS = {
    "create_time": pl.Utf8, "symbol": pl.Utf8, "sum_open_interest": pl.Float64,
    "sum_open_interest_value": pl.Float64, "count_toptrader_long_short_ratio": pl.Float64,
    "sum_toptrader_long_short_ratio": pl.Float64, "count_long_short_ratio": pl.Float64,
    "sum_taker_long_short_vol_ratio": pl.Float64,
}
FUNDING_COLUMNS = {"calc_time": pl.Int64, "funding_interval_hours": pl.Int16, "last_funding_rate": pl.Float64}
KLINES_COLUMNS = {
    "open_time": pl.Int64, "open": pl.Float64, "high": pl.Float64, "low": pl.Float64, "close": pl.Float64,
    "volume": pl.Float64, "close_time": pl.Int64, "quote_volume": pl.Float64, "count": pl.Int64,
    "taker_buy_volume": pl.Float64, "taker_buy_quote_volume": pl.Float64, "ignore": pl.Utf8,
}


class ChecksumError(ValueError):
    """A downloaded archive file does not match its published sha256, or its CHECKSUM is unreadable."""


class ArchiveFileError(ValueError):
    """An archive file could not be used (no CHECKSUM beside an existing zip, a broken zip, bad CSV)."""


# a CHECKSUM answering 404 beside an existing zip is asked again this many times before the fetch fails
CHECKSUM_RETRIES = 2
CHECKSUM_RETRY_PAUSE_S = 2.0


@dataclass
class ArchiveFile:
    """One archive file: its path under the base URL and the [start, end) its rows cover."""

    path: str
    start: datetime
    end: datetime

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class ArchiveReport:
    """What one archive fetch read, skipped and corrected.

    files_*: how each needed file was obtained. missing: files the archive answered 404 for (a gap
    in the data over [start, end)). duplicate_rows: exact repeats of a (symbol, stamp) row, dropped;
    conflicting_duplicates: repeats with different values (the first is kept). partial_days:
    (day, rows) for metrics days with fewer than 288 five-minute rows. zero_oi_rows: rows kept with
    open interest or its value equal to 0 (missing data, not zero OI); zero_oi_times their stamps.
    """

    table: str
    symbol: str
    start: datetime
    end: datetime
    files_needed: int = 0
    files_downloaded: int = 0
    files_from_cache: int = 0
    checksum_requests: int = 0
    headered_files: int = 0
    headerless_files: int = 0
    missing: list[ArchiveFile] = field(default_factory=list)
    checksum_failures: list[str] = field(default_factory=list)
    duplicate_rows: int = 0
    conflicting_duplicates: int = 0
    partial_days: list[tuple[date, int]] = field(default_factory=list)
    zero_oi_rows: int = 0
    zero_oi_times: list[datetime] = field(default_factory=list)
    rows: int = 0

    def missing_ranges(self) -> list[tuple[datetime, datetime]]:
        """The [start, end) ranges of missing files, clipped to the fetch and merged when adjacent."""
        ranges: list[tuple[datetime, datetime]] = []
        for f in sorted(self.missing, key=lambda f: f.start):
            lo, hi = max(f.start, self.start), min(f.end, self.end)
            if lo >= hi:
                continue
            if ranges and ranges[-1][1] >= lo:
                ranges[-1] = (ranges[-1][0], max(ranges[-1][1], hi))
            else:
                ranges.append((lo, hi))
        return ranges

    def as_dict(self) -> dict[str, object]:
        return {
            "table": self.table, "symbol": self.symbol, "start": self.start.isoformat(),
            "end": self.end.isoformat(), "rows": self.rows, "files_needed": self.files_needed,
            "files_downloaded": self.files_downloaded, "files_from_cache": self.files_from_cache,
            "checksum_requests": self.checksum_requests, "headered_files": self.headered_files,
            "headerless_files": self.headerless_files, "missing_files": [f.name for f in self.missing],
            "checksum_failures": list(self.checksum_failures), "duplicate_rows": self.duplicate_rows,
            "conflicting_duplicates": self.conflicting_duplicates,
            "partial_days": [(d.isoformat(), n) for d, n in self.partial_days],
            "zero_oi_rows": self.zero_oi_rows,
        }


# ---------------------------------------------------------------------------- file layout

# Every path and URL is built from a checked symbol (schemas.check_symbol) and interval: a '../' or a
# '/' in either would leave the archive's prefix and the cache directory.

def metrics_path(symbol: str, day: date) -> str:
    symbol = check_symbol(symbol)
    return f"data/futures/um/daily/metrics/{symbol}/{symbol}-metrics-{day:%Y-%m-%d}.zip"


def funding_path(symbol: str, month: datetime) -> str:
    symbol = check_symbol(symbol)
    return f"data/futures/um/monthly/fundingRate/{symbol}/{symbol}-fundingRate-{month:%Y-%m}.zip"


def klines_daily_path(symbol: str, interval: str, day: date) -> str:
    symbol, _ = check_symbol(symbol), interval_ms(interval)
    return f"data/futures/um/daily/klines/{symbol}/{interval}/{symbol}-{interval}-{day:%Y-%m-%d}.zip"


def klines_monthly_path(symbol: str, interval: str, month: datetime) -> str:
    symbol, _ = check_symbol(symbol), interval_ms(interval)
    return f"data/futures/um/monthly/klines/{symbol}/{interval}/{symbol}-{interval}-{month:%Y-%m}.zip"


def _day_floor(dt: datetime) -> datetime:
    return datetime(dt.year, dt.month, dt.day, tzinfo=UTC)


def days_touched(start: datetime, end: datetime) -> list[datetime]:
    """Starts of the UTC days that [start, end) touches."""
    days, d = [], _day_floor(start)
    while d < end:
        days.append(d)
        d += DAY
    return days


def parse_checksum(text: str, file_name: str) -> str:
    """The sha256 hex in a `.CHECKSUM` body (`<hex>  <file name>`); raises on anything else."""
    parts = text.strip().split()
    if not parts or len(parts[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in parts[0]):
        raise ChecksumError(f"{file_name}.CHECKSUM is not '<sha256 hex>  <file name>': {text[:120]!r}")
    return parts[0].lower()


def has_header(csv_bytes: bytes) -> bool:
    """True when the CSV's first line is a header: data lines start with a digit (a stamp)."""
    first = csv_bytes.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return bool(first) and not first.isdigit()


def read_archive_csv(csv_bytes: bytes, columns: dict[str, pl.DataType]) -> tuple[pl.DataFrame, bool]:
    """Parse one archive CSV, with or without a header line, into `columns` (by name when headered).

    Returns (frame, had_header). Extra columns in a headered file are ignored.
    """
    schema, skip, header = _csv_layout(csv_bytes, columns)
    try:
        df = pl.read_csv(csv_bytes, has_header=False, skip_rows=skip, schema=schema)
    except pl.exceptions.PolarsError as exc:
        raise ValueError(_first_bad_value(csv_bytes, schema, skip) or f"unreadable CSV: {exc}") from None
    return df.select(list(columns)), header


def _csv_layout(csv_bytes: bytes, columns: dict[str, pl.DataType]) -> tuple[pl.Schema, int, bool]:
    """(schema, lines to skip, had_header) of one archive CSV; raises ValueError as `read_archive_csv` does."""
    header = has_header(csv_bytes)
    if header:
        first_line = csv_bytes.lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0].decode().strip()
        names = [n.strip() for n in first_line.split(",")]
        absent = [c for c in columns if c not in names]
        if absent:
            raise ValueError(f"archive CSV header {names} lacks columns {absent}")
        return pl.Schema({n: columns.get(n, pl.Utf8) for n in names}), 1, True
    width = csv_bytes.split(b"\n", 1)[0].count(b",") + 1
    if width != len(columns):
        raise ValueError(f"headerless archive CSV has {width} columns; expected {len(columns)} "
                         f"({list(columns)})")
    return pl.Schema(columns), 0, False


def read_archive_csvs(csvs: list[bytes], columns: dict[str, pl.DataType]) -> tuple[pl.DataFrame | None, list[bool]]:
    """Several archive CSVs as one frame in `columns`, in order: one polars parse per run of consecutive files
    with the same layout. Returns (frame, or None when no file has a row; had_header per file). Raises
    ValueError (a layout) or polars' error (a value) without naming the file: parse that file alone for that."""
    frames: list[pl.DataFrame] = []
    headers: list[bool] = []
    run: list[bytes] = []
    run_schema: pl.Schema | None = None

    def flush() -> None:
        if run:
            buf = b"".join(run)
            if buf.strip():
                frames.append(pl.read_csv(buf, has_header=False, schema=run_schema).select(list(columns)))
            run.clear()

    for csv in csvs:
        schema, skip, header = _csv_layout(csv, columns)
        headers.append(header)
        body = csv.split(b"\n", 1)[1] if skip and b"\n" in csv else (b"" if skip else csv)
        if schema != run_schema:
            flush()
            run_schema = schema
        if body and not body.endswith(b"\n"):
            body += b"\n"
        run.append(body)
    flush()
    return (pl.concat(frames) if frames else None), headers


def _first_bad_value(csv_bytes: bytes, schema: pl.Schema, skip: int) -> str | None:
    """'line N, column c: ...' for the first value that does not parse as its column's type."""
    try:
        text = pl.read_csv(csv_bytes, has_header=False, skip_rows=skip, new_columns=list(schema.names()),
                           schema_overrides={n: pl.Utf8 for n in schema.names()}, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        return f"unreadable CSV (rows of different widths?): {exc}"
    for name, dtype in schema.items():
        if dtype == pl.Utf8:
            continue
        bad = text.with_row_index("_i").filter(
            pl.col(name).is_not_null() & pl.col(name).str.strip_chars().cast(dtype, strict=False).is_null())
        if bad.height:
            line = int(bad["_i"][0]) + skip + 1
            return (f"line {line}, column {name!r}: {bad[name][0]!r} is not a {dtype} value "
                    f"({bad.height} such row(s))")
    return None


def _csv_from_zip(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [m for m in zf.namelist() if m.lower().endswith(".csv")]
        if not members:
            raise ValueError(f"{name} holds no CSV file (members: {zf.namelist()})")
        return zf.read(members[0])


def _ms_or_us(col: str) -> pl.Expr:
    c = pl.col(col)
    return pl.when(c > MICROSECOND_STAMP_ABOVE).then(c // 1000).otherwise(c)


# ---------------------------------------------------------------------------- the source

class LocalMirror:
    """The archive's layout in a local directory (`file:///path`), read in place with the HttpClient calls
    BinanceArchive makes: a file the mirror lacks is None (as a 404 is), counted in `stats` like requests."""

    def __init__(self, url: str, on_progress: Callable[[str], None] | None = None):
        path = url.removeprefix("file://")
        if not path.startswith("/"):
            raise ValueError(f"archive mirror {url!r}: expected an absolute file URL, e.g. file:///data/binance")
        self.root = Path(path)
        if not self.root.is_dir():
            raise FileNotFoundError(f"archive mirror {url!r}: {self.root} is not a directory (QML_BINANCE_ARCHIVE_URL)")
        self.base_url = self.root.as_uri() + "/"
        self.on_progress = on_progress
        self.stats = RequestStats()

    def url_for(self, path: str) -> str:
        return (self.root / path.lstrip("/")).as_uri()

    def get_bytes_or_none_on_404(self, path: str) -> bytes | None:
        self.stats.requests += 1
        try:
            data = (self.root / path.lstrip("/")).read_bytes()
        except FileNotFoundError:
            return None
        self.stats.bytes_received += len(data)
        return data

    def reset_stats(self) -> RequestStats:
        old, self.stats = self.stats, RequestStats()
        return old

    def pause(self, seconds: float, why: str) -> None:
        log.info("waiting %.1f s: %s", seconds, why)
        self.stats.waited_s += seconds
        time.sleep(seconds)

    def progress(self, message: str) -> None:
        log.info(message)
        if self.on_progress is not None:
            self.on_progress(message)


def archive_client(url: str, on_progress: Callable[[str], None] | None = None) -> HttpClient | LocalMirror:
    """The client for QML_BINANCE_ARCHIVE_URL: a local mirror for file:// URLs, else the HTTP client."""
    return LocalMirror(url, on_progress) if url.startswith("file://") else HttpClient(url, on_progress=on_progress)


class BinanceArchive:
    """Reader of data.binance.vision through the project's HttpClient (base URL = the archive URL), or of a
    local mirror of it (`LocalMirror`: read in place, never copied into the cache)."""

    name = SOURCE

    def __init__(self, client: HttpClient | LocalMirror, cache_dir: str | os.PathLike[str], oi_publication_lag_s: int = 0,
                 *, now: Callable[[], datetime] = utc_now, recheck_after: timedelta = timedelta(days=7),
                 revalidate: bool = False, monthly_min_days: int = 2):
        self.client = client
        self.caches = not isinstance(client, LocalMirror)  # a local mirror is read in place
        self.cache_dir = Path(cache_dir)
        self.oi_publication_lag_s = oi_publication_lag_s
        self.now = now
        self.recheck_after = recheck_after
        self.revalidate = revalidate
        # A closed month is read from its monthly file when the range needs at least this many of
        # its days (2: one download instead of two or more; raise it to save bytes on 1m klines).
        self.monthly_min_days = monthly_min_days
        self.last_report: ArchiveReport | None = None

    # ------------------------------------------------------------------ downloads and cache

    def _cache_path(self, path: str) -> Path:
        return self.cache_dir / "binance_archive" / path

    def _cached(self, path: str) -> tuple[bytes, str] | None:
        """(bytes, sha256) of a cached file whose bytes still match its recorded checksum."""
        zpath = self._cache_path(path)
        side = zpath.with_name(zpath.name + ".sha256")
        if not (zpath.exists() and side.exists()):
            return None
        data, recorded = zpath.read_bytes(), side.read_text().strip()
        if hashlib.sha256(data).hexdigest() != recorded:
            return None
        return data, recorded

    def _store(self, path: str, data: bytes, sha: str) -> None:
        zpath = self._cache_path(path)
        zpath.parent.mkdir(parents=True, exist_ok=True)
        for target, content in ((zpath, data), (zpath.with_name(zpath.name + ".sha256"), sha.encode())):
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, target)

    def _evict(self, path: str) -> None:
        zpath = self._cache_path(path)
        for p in (zpath, zpath.with_name(zpath.name + ".sha256")):
            p.unlink(missing_ok=True)

    def _checksum(self, f: ArchiveFile, report: ArchiveReport) -> str | None:
        """The published sha256 of `f`; None when neither the CHECKSUM nor the zip exists (a gap). A zip
        without a CHECKSUM is asked again, then refused: an unverified file is never used."""
        url = self.client.url_for(f.path)
        for attempt in range(CHECKSUM_RETRIES + 1):
            report.checksum_requests += 1
            body = self.client.get_bytes_or_none_on_404(f.path + ".CHECKSUM")
            if body is not None:
                try:
                    return parse_checksum(body.decode("utf-8", "replace"), f.name)
                except ChecksumError as exc:
                    report.checksum_failures.append(f"{f.name}: unreadable CHECKSUM")
                    self.last_report = report
                    raise ChecksumError(f"{exc} (from {url}.CHECKSUM); the archive or a proxy answered something "
                                        "else than a checksum. Nothing of this fetch was loaded.") from None
            if attempt == 0 and self.client.get_bytes_or_none_on_404(f.path) is None:
                return None  # neither file: the archive does not have this period
            if attempt < CHECKSUM_RETRIES:
                self.client.pause(CHECKSUM_RETRY_PAUSE_S, f"{f.name}.CHECKSUM answered 404 although the zip exists")
        report.checksum_failures.append(f"{f.name}: CHECKSUM missing")
        self.last_report = report
        raise ArchiveFileError(
            f"{url}.CHECKSUM answered 404 {CHECKSUM_RETRIES + 1} times although {url} exists: the file cannot be "
            "verified, so it is not used and stored rows are left as they are. Run the partition again later "
            "(Binance publishes the two files separately).")

    def _download(self, f: ArchiveFile, report: ArchiveReport) -> bytes | None:
        """The verified zip bytes of `f`, from the cache when allowed; None when the archive lacks it."""
        cached = self._cached(f.path) if self.caches else None
        closed_long_ago = f.end + self.recheck_after <= self.now()
        if cached is not None and closed_long_ago and not self.revalidate:
            report.files_from_cache += 1
            return cached[0]
        expected = self._checksum(f, report)
        if expected is None:
            report.missing.append(f)
            return None
        if cached is not None and cached[1] == expected:
            report.files_from_cache += 1
            return cached[0]
        data = self.client.get_bytes_or_none_on_404(f.path)
        if data is None:
            report.checksum_failures.append(f"{f.name}: zip missing beside its CHECKSUM")
            self.last_report = report
            raise ArchiveFileError(f"{self.client.url_for(f.path)} answered 404 although its CHECKSUM exists; "
                                   "stored rows are left as they are. Run the partition again later.")
        got = hashlib.sha256(data).hexdigest()
        if got != expected:
            report.checksum_failures.append(f.name)
            self.last_report = report
            raise ChecksumError(
                f"{f.name}: sha256 {got} does not match the published {expected} "
                f"({self.client.url_for(f.path)}.CHECKSUM); the file is corrupt or was replaced "
                f"mid-download. Nothing of this fetch was loaded; run it again, and if it persists "
                f"report it to Binance.")
        if self.caches:
            self._store(f.path, data, got)
        report.files_downloaded += 1
        return data

    def _csv_of(self, f: ArchiveFile, data: bytes, report: ArchiveReport) -> bytes:
        """The CSV inside `f`'s zip. A zip that does not open is evicted from the cache and downloaded once
        more; if it still does not open, the error names the file, its URL and the cache path."""
        try:
            return _csv_from_zip(data, f.name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as first:
            self._evict(f.path)
            again = self.client.get_bytes_or_none_on_404(f.path)
            report.files_downloaded += again is not None
            try:
                if again is None:
                    raise zipfile.BadZipFile("the file is gone (404) on the second download")
                csv = _csv_from_zip(again, f.name)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                self.last_report = report
                raise ArchiveFileError(
                    f"{f.name} ({self.client.url_for(f.path)}) is not a readable zip, twice ({first}; then {exc}), "
                    f"although its sha256 matches the published CHECKSUM: the archive serves a broken file. It was "
                    f"removed from the cache ({self._cache_path(f.path)}); nothing of this fetch was loaded.") from None
            if self.caches:
                self._store(f.path, again, hashlib.sha256(again).hexdigest())
            return csv

    def _read_files(self, files: Iterable[ArchiveFile], columns: dict[str, pl.DataType],
                    report: ArchiveReport, what: str) -> pl.DataFrame | None:
        read: list[tuple[ArchiveFile, bytes]] = []
        files = list(files)
        report.files_needed += len(files)
        for i, f in enumerate(files, 1):
            data = self._download(f, report)
            if data is None:
                continue
            csv = self._csv_of(f, data, report)
            try:
                _csv_layout(csv, columns)
            except ValueError as exc:
                self.last_report = report
                raise ArchiveFileError(f"{f.name} ({self.client.url_for(f.path)}): {exc}") from None
            read.append((f, csv))
            if i % 30 == 0:
                self.client.progress(f"archive {what}: {i}/{len(files)} files")
        try:
            df, headers = read_archive_csvs([csv for _, csv in read], columns)
        except (ValueError, pl.exceptions.PolarsError):
            for f, csv in read:  # parse each file alone: the error names the one that cannot be read
                try:
                    read_archive_csv(csv, columns)
                except (ValueError, pl.exceptions.PolarsError) as exc:
                    self.last_report = report
                    raise ArchiveFileError(f"{f.name} ({self.client.url_for(f.path)}): {exc}") from None
            raise
        report.headered_files += sum(headers)
        report.headerless_files += len(headers) - sum(headers)
        return df

    # ------------------------------------------------------------------ open interest

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Open interest stamped in [start, end) from the daily metrics files (5-minute rows).

        A coarser `period` keeps the last 5-minute row of each period bucket, with its own stamp,
        `period_minutes` 5 and knowable time: it is still a 5-minute snapshot, as in the sample's
        hourly file, so nothing claims more than the row holds.
        """
        if period not in BINANCE_OI_PERIODS:
            raise ValueError(f"open-interest period {period!r}: expected one of {BINANCE_OI_PERIODS} "
                             f"(the archive holds 5-minute rows; coarser periods take each bucket's last)")
        report = self.last_report = ArchiveReport("open_interest", symbol, start, end)
        if end <= start:
            return schemas.empty(schemas.OPEN_INTEREST)
        files = [ArchiveFile(metrics_path(symbol, d.date()), d, d + DAY) for d in days_touched(start, end)]
        raw = self._read_files(files, METRICS_COLUMNS, report, f"metrics {symbol}")
        if raw is None:
            return schemas.empty(schemas.OPEN_INTEREST)
        df = raw.with_columns(
            pl.col("create_time").str.strptime(pl.Datetime("ms"), "%Y-%m-%d %H:%M:%S")
            .dt.replace_time_zone("UTC").alias("event_time"),
            pl.col("symbol").fill_null(symbol),
        )
        key = ["symbol", "event_time"]
        exact = df.unique(keep="first", maintain_order=True)
        deduped = exact.unique(subset=key, keep="first", maintain_order=True)
        report.duplicate_rows = df.height - exact.height
        report.conflicting_duplicates = exact.height - deduped.height
        per_day = (deduped.group_by(pl.col("event_time").dt.truncate("1d").alias("day")).len()
                   .filter(pl.col("len") < ROWS_PER_FULL_DAY).sort("day"))
        report.partial_days = [(d.date(), n) for d, n in per_day.iter_rows()]
        step = interval_ms(period)
        out = deduped.filter((pl.col("event_time") >= start) & (pl.col("event_time") < end)).sort("event_time")
        if step > METRICS_PERIOD_MINUTES * 60_000:
            out = (out.with_columns(pl.col("event_time").dt.truncate(period).alias("_bucket"))
                   .group_by("_bucket", maintain_order=True).last())
        zero = out.filter((pl.col("sum_open_interest") == 0) | (pl.col("sum_open_interest_value") == 0))
        report.zero_oi_rows = zero.height
        report.zero_oi_times = zero["event_time"].to_list()
        lag = pl.duration(milliseconds=METRICS_PERIOD_MINUTES * 60_000 + self.oi_publication_lag_s * 1000)
        result = schemas.conform(schemas.OPEN_INTEREST, out.select(
            pl.lit(symbol).alias("symbol"),
            pl.col("event_time"),
            pl.lit(METRICS_PERIOD_MINUTES).alias("period_minutes"),
            pl.col("sum_open_interest").alias("open_interest"),
            pl.col("sum_open_interest_value").alias("open_interest_value"),
            (pl.col("event_time") + lag).alias("available_at"),
            pl.lit(SOURCE).alias("source"),
            pl.lit(self.now()).cast(TS).alias("ingested_at"),
        ))
        report.rows = result.height
        return result

    # ------------------------------------------------------------------ funding

    def funding_rates(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Settlements with event_time in [start, end) from monthly files; mark_price is not archived.

        Only monthly files exist, published after the month ends: the current month is a gap.
        """
        report = self.last_report = ArchiveReport("funding_rates", symbol, start, end)
        if end <= start:
            return schemas.empty(schemas.FUNDING_RATES)
        # A settlement at the window's start may be stamped a few ms before it, in the previous month.
        files = self.funding_files(symbol, start, end)
        raw = self._read_files(files, FUNDING_COLUMNS, report, f"fundingRate {symbol}")
        if raw is None:
            return schemas.empty(schemas.FUNDING_RATES)
        exact = raw.unique(keep="first", maintain_order=True)
        report.duplicate_rows = raw.height - exact.height
        df = snap_funding_times(exact.with_columns(
            _ms_or_us("calc_time").cast(TS).alias("exchange_time")))
        report.conflicting_duplicates = exact.height - df.height
        out = df.filter((pl.col("event_time") >= start) & (pl.col("event_time") < end)).select(
            pl.lit(symbol).alias("symbol"),
            pl.col("event_time"),
            pl.col("last_funding_rate").alias("funding_rate"),
            pl.col("funding_interval_hours"),
            pl.lit(None, dtype=pl.Float64).alias("mark_price"),
            pl.col("exchange_time"),
            pl.col("event_time").alias("available_at"),
            pl.lit(SOURCE).alias("source"),
            pl.lit(self.now()).cast(TS).alias("ingested_at"),
        )
        result = schemas.conform(schemas.FUNDING_RATES, out)
        report.rows = result.height
        return result

    # ------------------------------------------------------------------ klines

    def kline_files(self, symbol: str, interval: str, start: datetime, end: datetime) -> list[ArchiveFile]:
        """The fewest files covering [start, end): a closed month's monthly file when the range needs
        at least `monthly_min_days` of its days, daily files otherwise; days not yet over are skipped."""
        now = self.now()
        files: list[ArchiveFile] = []
        for m in month_starts(start, end):
            m_end = next_month(m)
            days = [d for d in days_touched(max(start, m), min(end, m_end)) if d + DAY <= now]
            if m_end <= _day_floor(now) and len(days) >= self.monthly_min_days:
                files.append(ArchiveFile(klines_monthly_path(symbol, interval, m), m, m_end))
            else:
                files += [ArchiveFile(klines_daily_path(symbol, interval, d.date()), d, d + DAY) for d in days]
        return files

    def klines(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Closed candles opening in [start, end). A monthly file the archive lacks (404, e.g. not yet
        published) is replaced by that month's daily files."""
        step = interval_ms(interval)
        report = self.last_report = ArchiveReport("klines", symbol, start, end)
        if end <= start:
            return schemas.empty(schemas.KLINES)
        files = self.kline_files(symbol, interval, start, end)
        raw = self._read_files(files, KLINES_COLUMNS, report, f"klines {symbol} {interval}")
        monthly_missing = [f for f in report.missing if "/monthly/" in f.path]
        if monthly_missing:
            report.missing = [f for f in report.missing if "/monthly/" not in f.path]
            now = self.now()
            daily = [ArchiveFile(klines_daily_path(symbol, interval, d.date()), d, d + DAY)
                     for f in monthly_missing
                     for d in days_touched(max(start, f.start), min(end, f.end)) if d + DAY <= now]
            extra = self._read_files(daily, KLINES_COLUMNS, report, f"klines {symbol} {interval} (daily)")
            raw = pl.concat([x for x in (raw, extra) if x is not None]) if extra is not None else raw
        if raw is None:
            return schemas.empty(schemas.KLINES)
        now_ms = to_ms(self.now())
        df = raw.with_columns(_ms_or_us("open_time").alias("open_ms"))
        exact = df.unique(keep="first", maintain_order=True)
        deduped = exact.unique(subset=["open_ms"], keep="first", maintain_order=True)
        report.duplicate_rows = df.height - exact.height
        report.conflicting_duplicates = exact.height - deduped.height
        out = (deduped
               .filter(pl.col("open_ms").is_between(to_ms(start), to_ms(end), closed="left")
                       & (pl.col("open_ms") + step <= now_ms))
               .sort("open_ms")
               .select(
                   pl.lit(symbol).alias("symbol"),
                   pl.lit(interval).alias("interval"),
                   pl.col("open_ms").cast(TS).alias("event_time"),
                   (pl.col("open_ms") + step).cast(TS).alias("close_time"),
                   "open", "high", "low", "close", "volume", "quote_volume",
                   pl.col("count").alias("trade_count"),
                   "taker_buy_volume",
                   (pl.col("open_ms") + step).cast(TS).alias("available_at"),
                   pl.lit(SOURCE).alias("source"),
                   pl.lit(self.now()).cast(TS).alias("ingested_at"),
               ))
        result = schemas.conform(schemas.KLINES, out)
        report.rows = result.height
        return result

    # ------------------------------------------------------------------ planning

    def requests_needed(self, files: Iterable[ArchiveFile]) -> int:
        """HTTP requests fetching `files` would cost now, given the cache (0, 1 or 2 per file; 0 from a local
        mirror)."""
        if not self.caches:
            return 0
        n, now = 0, self.now()
        for f in files:
            cached = self._cache_path(f.path).exists()
            if cached and f.end + self.recheck_after <= now and not self.revalidate:
                continue
            n += 1 if cached else 2
        return n

    def funding_files(self, symbol: str, start: datetime, end: datetime) -> list[ArchiveFile]:
        """Monthly funding files for [start, end), closed months only (a settlement at `start` may be
        stamped a few ms earlier, in the previous month)."""
        return [ArchiveFile(funding_path(symbol, m), m, next_month(m))
                for m in month_starts(start - timedelta(minutes=5), end) if next_month(m) <= self.now()]
