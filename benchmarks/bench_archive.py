"""Requests, bytes and parse speed of the REST and archive sources, on fakes served from localhost.

For N days of history (open interest 5m, funding 8h, klines 1h and 1m) the REST fake and the archive
fake serve the same rows; the script prints each source's requests and bytes against the minimum
the API allows (ceil(rows / page size) per endpoint) and the archive allows (one file per day or
month), the archive's cost on a second backfill (cache), and rows/s parsed by the archive parser
against pyarrow.csv alone on the same CSV bytes.

    .venv/bin/python benchmarks/bench_archive.py             # 90 days
    .venv/bin/python benchmarks/bench_archive.py --days 30

Open interest over REST is measured with a clock that puts the whole range inside REST's 30-day
window: the real API cannot serve older OI at all.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_httpserver import HTTPServer

from qml_pipeline.sources.http_client import HttpClient
from qml_pipeline.sources.binance_archive import (
    KLINES_COLUMNS,
    METRICS_COLUMNS,
    BinanceArchive,
    read_archive_csv,
)
from qml_pipeline.sources.binance_rest import FUNDING_LIMIT, KLINES_LIMIT, OI_LIMIT, BinanceRest
from qml_pipeline.timeutil import UTC, month_starts
from tests.fake_archive import FakeArchive, day_range
from tests.fake_binance import FakeBinance

START = datetime(2024, 1, 1, tzinfo=UTC)


def build(server: HTTPServer, days: int) -> tuple[FakeBinance, FakeArchive]:
    rest, arch = FakeBinance(server), FakeArchive(server)
    rest.set_funding_info({"BTCUSDT": 8})
    rest.add_oi("BTCUSDT", "5m", START, days * 288)
    rest.add_funding("BTCUSDT", START - timedelta(days=31), 3 * (days + 62), mark_price=None)
    rest.add_klines("BTCUSDT", "1h", START, days * 24)
    rest.add_klines("BTCUSDT", "1m", START, days * 1440)
    all_days = day_range(START.date(), days)
    arch.metrics_from_rest(rest, "BTCUSDT", all_days)
    for m in month_starts(START - timedelta(days=31), START + timedelta(days=days + 31)):
        arch.funding_from_rest(rest, "BTCUSDT", m.date())
    for interval in ("1h", "1m"):
        rows = rest.klines[("BTCUSDT", interval)]
        for m in month_starts(START, START + timedelta(days=days)):
            lo, hi = int(m.timestamp() * 1000), int((m + timedelta(days=32)).replace(day=1).timestamp() * 1000)
            arch.add_klines_file("BTCUSDT", interval, "monthly", m.date(), [r for r in rows if lo <= r[0] < hi])
        # daily files for every day (the planner uses them only for months not yet closed)
        by_day: dict[int, list] = {}
        for r in rows:
            by_day.setdefault(r[0] // 86_400_000, []).append(r)
        for d in all_days:
            key = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000) // 86_400_000
            arch.add_klines_file("BTCUSDT", interval, "daily", d, by_day.get(key, []))
    return rest, arch


def client(url: str) -> HttpClient:
    return HttpClient(url, timeout_s=(5, 60))


def measure(fn, c: HttpClient) -> tuple[int, int, int, float]:
    c.reset_stats()
    t = time.perf_counter()
    df = fn()
    return df.height, c.stats.requests, c.stats.bytes_received, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--repeat", type=int, default=3, help="parse timing repetitions (best kept)")
    args = ap.parse_args()
    days = args.days
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    end = START + timedelta(days=days)
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        t = time.perf_counter()
        fake_rest, fake_arch = build(server, days)
        print(f"{days} days from {START:%Y-%m-%d}; fakes built in {time.perf_counter() - t:.1f} s on {server.url_for('/')}")
        now_after = end + timedelta(days=2)
        rest_client, arch_client = client(fake_rest.url), client(fake_arch.url)
        rest = BinanceRest(rest_client, now=lambda: now_after)
        with tempfile.TemporaryDirectory() as cache:
            arch = BinanceArchive(arch_client, cache, now=lambda: now_after)
            arch_later = BinanceArchive(arch_client, cache, now=lambda: now_after + timedelta(days=30))
            jobs = {
                "open_interest 5m": (
                    lambda: _oi_rest_chunks(rest_client, START, end),
                    lambda: arch.open_interest("BTCUSDT", "5m", START, end),
                    lambda: arch_later.open_interest("BTCUSDT", "5m", START, end),
                    math.ceil(days * 288 / OI_LIMIT), days, days),
                "funding 8h": (
                    lambda: rest.funding_rates("BTCUSDT", START, end),
                    lambda: arch.funding_rates("BTCUSDT", START, end),
                    lambda: arch_later.funding_rates("BTCUSDT", START, end),
                    math.ceil((days * 3 + 1) / FUNDING_LIMIT), len(arch.funding_files("BTCUSDT", START, end)), None),
                "klines 1h": (
                    lambda: rest.klines("BTCUSDT", "1h", START, end),
                    lambda: arch.klines("BTCUSDT", "1h", START, end),
                    lambda: arch_later.klines("BTCUSDT", "1h", START, end),
                    math.ceil(days * 24 / KLINES_LIMIT), len(arch.kline_files("BTCUSDT", "1h", START, end)), None),
                "klines 1m": (
                    lambda: rest.klines("BTCUSDT", "1m", START, end),
                    lambda: arch.klines("BTCUSDT", "1m", START, end),
                    lambda: arch_later.klines("BTCUSDT", "1m", START, end),
                    math.ceil(days * 1440 / KLINES_LIMIT), len(arch.kline_files("BTCUSDT", "1m", START, end)), None),
            }
            print()
            print("| data | rows | REST requests (min) | REST MB | archive files (min) | archive requests "
                  "| archive MB | archive 2nd run requests | archive 2nd run, file closed > 7 d |")
            print("|---|---|---|---|---|---|---|---|---|")
            for name, (f_rest, f_arch, f_later, rest_min, files_min, _) in jobs.items():
                rows_r, req_r, bytes_r, _t = measure(f_rest, rest_client)
                rows_a, req_a, bytes_a, _t = measure(f_arch, arch_client)
                files = arch.last_report.files_needed
                _, req_2, _, _ = measure(f_arch, arch_client)
                _, req_3, _, _ = measure(f_later, arch_client)
                assert rows_r == rows_a, (name, rows_r, rows_a)
                print(f"| {name} | {rows_a:,} | {req_r} ({rest_min}) | {bytes_r / 1e6:.2f} | {files} ({files_min}) "
                      f"| {req_a} | {bytes_a / 1e6:.2f} | {req_2} | {req_3} |")

            print()
            print(f"Parse speed (best of {args.repeat}), same CSV bytes:")
            print("| data | rows | archive parser (read_archive_csv) rows/s | pyarrow.csv alone rows/s "
                  "| full fetch from cache (unzip + sha256 + parse + conform) rows/s |")
            print("|---|---|---|---|---|")
            for name, kind, cols, full in (
                    ("metrics 5m", "metrics", METRICS_COLUMNS, lambda: arch_later.open_interest("BTCUSDT", "5m", START, end)),
                    ("klines 1m", "klines/BTCUSDT/1m/BTCUSDT-1m-", KLINES_COLUMNS,
                     lambda: arch_later.klines("BTCUSDT", "1m", START, end))):
                csvs = [_csv(b) for p, b in fake_arch.files.items() if kind in p and "/daily/" in p]
                rows, ours, arrow = _parse_speeds(csvs, cols, args.repeat)
                full_rows = full().height
                full_t = _best(full, args.repeat)
                print(f"| {name} ({len(csvs)} daily files) | {rows:,} | {rows / ours:,.0f} | {rows / arrow:,.0f} "
                      f"| {full_rows / full_t:,.0f} |")
    finally:
        server.clear()
        server.stop()


def _oi_rest_chunks(c: HttpClient, start: datetime, end: datetime):
    """REST open interest over [start, end) in 30-day chunks, each with a clock that puts it inside
    the REST window (the real API serves only the last 30 days)."""
    import polars as pl

    frames, lo = [], start
    while lo < end:
        hi = min(end, lo + timedelta(days=30))
        frames.append(BinanceRest(c, now=lambda lo=lo: lo + timedelta(days=30)).open_interest("BTCUSDT", "5m", lo, hi))
        lo = hi
    return pl.concat(frames)


def _parse_speeds(csvs: list[bytes], cols: dict, repeat: int) -> tuple[int, float, float]:
    """(rows, best seconds of read_archive_csv, best seconds of pyarrow.csv) over the same CSV bytes."""
    rows = sum(read_archive_csv(c, cols)[0].height for c in csvs)
    ours = _best(lambda: [read_archive_csv(c, cols) for c in csvs], repeat)
    names = list(cols)
    with_header = pacsv.ReadOptions(skip_rows=1, column_names=names)
    no_header = pacsv.ReadOptions(column_names=names)
    arrow = _best(lambda: [pacsv.read_csv(io.BytesIO(c), read_options=no_header if c[:1].isdigit() else with_header)
                           for c in csvs], repeat)
    return rows, ours, arrow


def _csv(zip_bytes: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        return zf.read(zf.namelist()[0])


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


if __name__ == "__main__":
    main()
