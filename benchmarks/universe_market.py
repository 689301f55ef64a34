"""A synthetic Binance USD-M universe for bench_universe.py: archive-shaped files on disk and a REST server.

Every value is a pure function of (symbol, stamp), so the public archive's files and the REST answers agree
wherever they overlap (no revisions appear unless a test asks for them), and a mirror generated on one day
is extended, not rebuilt, on the next.

- `Market`: the universe (symbols, listing dates) and its series: prices (klines), open interest (5-minute
  metrics), funding settlements (8 h).
- `build_mirror(root, market, last_day)`: the public archive's layout under `root`, each zip beside its
  `.CHECKSUM` (`<sha256>  <file name>`): daily metrics zips, monthly fundingRate zips, monthly klines zips for
  closed months and daily klines zips for the last `daily_klines_days` days. Files already present are kept.
- `serve(root, market, port, lag)`: one HTTP server (a child process, so it has its own core) for the mirror
  (`/data/...`) and the REST endpoints the pipeline calls (`/fapi/v1/exchangeInfo`, `fundingInfo`,
  `fundingRate`, `klines`, `/futures/data/openInterestHist`), answering as of real time minus `lag` seconds.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import socket
import zipfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import polars as pl

UTC = timezone.utc
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
FIVE_MIN_MS = 300_000
INTERVALS = {"1h": HOUR_MS, "4h": 4 * HOUR_MS}
FUNDING_HOURS = 8
OI_REST_DAYS = 30
METRICS_HEADER = ("create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
                  "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio")
FUNDING_HEADER = "calc_time,funding_interval_hours,last_funding_rate"
KLINES_HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
                 "taker_buy_quote_volume,ignore")
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def day_ms(d: date) -> int:
    return ms(datetime(d.year, d.month, d.day, tzinfo=UTC))


def symbol_names(n: int) -> list[str]:
    """SYN001USDT, SYN002USDT, ... (valid symbols: capitals and digits)."""
    return [f"SYN{i:03d}USDT" if n < 1000 else f"SYN{i:04d}USDT" for i in range(1, n + 1)]


def _unit(seed: int, t: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) noise from (seed, stamp): splitmix64 of the stamp xor the seed."""
    with np.errstate(over="ignore"):
        x = t.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64((seed * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF)
        x ^= x >> np.uint64(31)
        x = (x * np.uint64(0x94D049BB133111EB)) & _MASK
        x ^= x >> np.uint64(29)
    return (x >> np.uint64(11)).astype(np.float64) / float(2 ** 53)


@dataclass(frozen=True)
class Market:
    """`symbols` listed from `history_start` (every 7th one 200 days later, so coverage starts mid-range)."""

    symbols: tuple[str, ...]
    history_start: datetime

    def index(self, symbol: str) -> int:
        return self.symbols.index(symbol) + 1

    def onboard_ms(self, symbol: str) -> int:
        i = self.index(symbol)
        return ms(self.history_start) + (200 * DAY_MS if i % 7 == 0 else 0)

    # ------------------------------------------------------------------ series (vectorised over stamps, ms)

    def price(self, i: int, t: np.ndarray) -> np.ndarray:
        tf = t.astype(np.float64)
        phase = i * 0.7
        log_p = (0.25 * np.sin(2 * np.pi * tf / (29 * DAY_MS) + phase)
                 + 0.08 * np.sin(2 * np.pi * tf / (3.1 * DAY_MS) + 2 * phase)
                 + 0.03 * np.sin(2 * np.pi * tf / (0.37 * DAY_MS) + 3 * phase)
                 + 0.004 * (_unit(i, t) - 0.5))
        base = 10.0 ** (i % 5 - 1) * (1 + (i % 13) / 13)
        return np.round(base * np.exp(log_p), 6)

    def klines(self, i: int, interval: str, opens: np.ndarray) -> dict[str, np.ndarray]:
        step = INTERVALS[interval]
        o, c = self.price(i, opens), self.price(i, opens + step)
        u = [_unit(i * 31 + k, opens) for k in range(1, 5)]
        hi = np.round(np.maximum(o, c) * (1 + 0.003 * u[0]), 6)
        lo = np.round(np.minimum(o, c) * (1 - 0.003 * u[1]), 6)
        vol = np.round(1000 * (1 + u[2]), 3)
        return {"open_time": opens, "open": o, "high": hi, "low": lo, "close": c, "volume": vol,
                "close_time": opens + step - 1, "quote_volume": np.round(vol * c, 4),
                "count": (100 + 1000 * u[3]).astype(np.int64), "taker_buy_volume": np.round(vol / 2, 3),
                "taker_buy_quote_volume": np.round(vol / 2 * c, 4)}

    def open_interest(self, i: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tf = t.astype(np.float64)
        oi = np.round(1e6 * (1 + 0.3 * np.sin(2 * np.pi * tf / (11 * DAY_MS) + i)) * (1 + 0.002 * (_unit(-i, t) - 0.5)), 3)
        return oi, np.round(oi * self.price(i, t), 2)

    def funding_rate(self, i: int, t: np.ndarray) -> np.ndarray:
        return np.round(0.0001 + 0.0003 * np.sin(2 * np.pi * t.astype(np.float64) / (17 * DAY_MS) + i), 8)

    # ------------------------------------------------------------------ grids

    def stamps(self, symbol: str, step: int, lo: int, hi: int) -> np.ndarray:
        """Grid stamps (every `step` ms from the listing) in [lo, hi)."""
        first = max(lo, self.onboard_ms(symbol))
        first += (-first) % step
        return np.arange(first, hi, step, dtype=np.int64) if first < hi else np.empty(0, np.int64)

    def exchange_info(self) -> dict:
        rows = [{"symbol": s, "pair": s, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
                 "onboardDate": self.onboard_ms(s), "status": "TRADING", "baseAsset": s.removesuffix("USDT"),
                 "quoteAsset": "USDT", "marginAsset": "USDT", "pricePrecision": 6, "quantityPrecision": 3,
                 "underlyingType": "COIN"} for s in self.symbols]
        return {"timezone": "UTC", "serverTime": 0, "futuresType": "U_MARGINED", "rateLimits": [], "assets": [],
                "symbols": rows}


# ---------------------------------------------------------------------------------------------- the mirror

def _write_zip(path: Path, csv_name: str, text: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(csv_name, text)
    data = tmp.read_bytes()
    (path.parent / (path.name + ".CHECKSUM")).write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    os.replace(tmp, path)


def _csv_lines(df: pl.DataFrame) -> list[bytes]:
    return df.write_csv(include_header=False).encode().splitlines()


def _months(first_ms: int, end_ms: int) -> list[date]:
    d = datetime.fromtimestamp(first_ms / 1000, UTC).date().replace(day=1)
    out = []
    while day_ms(d) < end_ms:
        out.append(d)
        d = date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return out


def _month_end_ms(m: date) -> int:
    return day_ms(date(m.year + (m.month == 12), m.month % 12 + 1, 1))


def build_symbol(root: Path, market: Market, symbol: str, last_day: date, daily_klines_days: int = 62) -> int:
    """Write `symbol`'s archive files up to `last_day` (inclusive) that are not there yet; returns how many."""
    i = market.index(symbol)
    um = root / "data" / "futures" / "um"
    end_ms = day_ms(last_day) + DAY_MS
    written = 0

    # daily metrics (5-minute open interest), one file per day from the listing
    days = [d for d in (datetime.fromtimestamp(t / 1000, UTC).date()
                        for t in market.stamps(symbol, DAY_MS, ms(market.history_start), end_ms))]
    todo = [d for d in days if not (um / "daily" / "metrics" / symbol / f"{symbol}-metrics-{d:%Y-%m-%d}.zip").exists()]
    if todo:
        t = np.concatenate([np.arange(day_ms(d), day_ms(d) + DAY_MS, FIVE_MIN_MS, dtype=np.int64) for d in todo])
        oi, value = market.open_interest(i, t)
        df = pl.DataFrame({"t": t, "oi": oi, "value": value}).select(
            pl.from_epoch("t", "ms").dt.strftime("%Y-%m-%d %H:%M:%S"), pl.lit(symbol).alias("symbol"), "oi", "value",
            *(pl.lit(v).alias(f"ratio{k}") for k, v in enumerate((1.5, 1.25, 1.1, 0.95))))
        lines = _csv_lines(df)
        per_day = DAY_MS // FIVE_MIN_MS
        for k, d in enumerate(todo):
            name = f"{symbol}-metrics-{d:%Y-%m-%d}"
            body = b"\n".join([METRICS_HEADER.encode(), *lines[k * per_day:(k + 1) * per_day]]) + b"\n"
            _write_zip(um / "daily" / "metrics" / symbol / f"{name}.zip", f"{name}.csv", body)
        written += len(todo)

    # monthly funding and klines for closed months; daily klines for the last days
    closed = [m for m in _months(market.onboard_ms(symbol), end_ms) if _month_end_ms(m) <= end_ms]
    for m in closed:
        path = um / "monthly" / "fundingRate" / symbol / f"{symbol}-fundingRate-{m:%Y-%m}.zip"
        if path.exists():
            continue
        t = market.stamps(symbol, FUNDING_HOURS * HOUR_MS, day_ms(m), _month_end_ms(m))
        df = pl.DataFrame({"calc_time": t, "h": np.full(len(t), FUNDING_HOURS), "rate": market.funding_rate(i, t)})
        _write_zip(path, path.name.replace(".zip", ".csv"),
                   b"\n".join([FUNDING_HEADER.encode(), *_csv_lines(df)]) + b"\n")
        written += 1
    for interval, step in INTERVALS.items():
        for m in closed:
            path = um / "monthly" / "klines" / symbol / interval / f"{symbol}-{interval}-{m:%Y-%m}.zip"
            if not path.exists():
                written += _klines_file(path, market, i, interval, market.stamps(symbol, step, day_ms(m), _month_end_ms(m)))
        for d in days[-daily_klines_days:]:
            path = um / "daily" / "klines" / symbol / interval / f"{symbol}-{interval}-{d:%Y-%m-%d}.zip"
            if not path.exists():
                written += _klines_file(path, market, i, interval,
                                        market.stamps(symbol, step, day_ms(d), day_ms(d) + DAY_MS))
    return written


def _klines_file(path: Path, market: Market, i: int, interval: str, opens: np.ndarray) -> int:
    df = pl.DataFrame(market.klines(i, interval, opens)).with_columns(pl.lit(0).alias("ignore"))
    _write_zip(path, path.name.replace(".zip", ".csv"), b"\n".join([KLINES_HEADER.encode(), *_csv_lines(df)]) + b"\n")
    return 1


def _build_one(args: tuple[Path, Market, str, date]) -> int:
    return build_symbol(*args)


def build_mirror(root: Path, market: Market, last_day: date, processes: int = 2) -> int:
    """The mirror under `root` up to `last_day`, for every symbol (a process pool); files written."""
    jobs = [(root, market, s, last_day) for s in market.symbols]
    if processes <= 1:
        return sum(map(_build_one, jobs))
    with mp.get_context("fork").Pool(processes) as pool:
        return sum(pool.imap_unordered(_build_one, jobs))


# ---------------------------------------------------------------------------------------------- the server

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    root: Path
    market: Market
    lag: mp.Value  # seconds the server's clock runs behind real time

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-MBX-USED-WEIGHT-1M", "1")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        url = urlsplit(self.path)
        if url.path.startswith("/data/"):
            target = (self.root / url.path.lstrip("/")).resolve()
            if self.root in target.parents and target.is_file():
                self._send(200, target.read_bytes(), "application/zip")
            else:
                self._send(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            return
        args = {k: v[0] for k, v in parse_qs(url.query).items()}
        now = ms(datetime.now(UTC)) - int(self.lag.value * 1000)
        routes = {"/fapi/v1/exchangeInfo": lambda a, n: self.market.exchange_info(),
                  "/fapi/v1/fundingInfo": lambda a, n: [],
                  "/fapi/v1/fundingRate": self._funding, "/fapi/v1/klines": self._klines,
                  "/futures/data/openInterestHist": self._oi}
        handler = routes.get(url.path)
        if handler is None:
            self._send(404, b'{"code": -5000, "msg": "no such path"}', "application/json")
            return
        self._send(200, json.dumps(handler(args, now)).encode(), "application/json")

    def _window(self, a: dict[str, str], limit: int, default: int) -> tuple[int, int, int]:
        return int(a.get("startTime", 0)), int(a.get("endTime", 2 ** 62)), min(int(a.get("limit", default)), limit)

    def _funding(self, a: dict[str, str], now: int) -> list[dict]:
        lo, hi, limit = self._window(a, 1000, 100)
        s = a["symbol"]
        t = self.market.stamps(s, FUNDING_HOURS * HOUR_MS, lo, min(hi, now) + 1)[:limit]
        i = self.market.index(s)
        rate, mark = self.market.funding_rate(i, t), self.market.price(i, t)
        return [{"symbol": s, "fundingTime": int(x), "fundingRate": repr(float(r)), "markPrice": repr(float(p))}
                for x, r, p in zip(t, rate, mark)]

    def _oi(self, a: dict[str, str], now: int) -> list[dict]:
        lo, hi, limit = self._window(a, 500, 30)
        s = a["symbol"]
        lo = max(lo, now - OI_REST_DAYS * DAY_MS)
        t = self.market.stamps(s, FIVE_MIN_MS, lo, min(hi, now - FIVE_MIN_MS) + 1)[:limit]
        oi, value = self.market.open_interest(self.market.index(s), t)
        return [{"symbol": s, "sumOpenInterest": repr(float(o)), "sumOpenInterestValue": repr(float(v)),
                 "timestamp": int(x)} for x, o, v in zip(t, oi, value)]

    def _klines(self, a: dict[str, str], now: int) -> list[list]:
        lo, hi, limit = self._window(a, 1500, 500)
        s, interval = a["symbol"], a["interval"]
        t = self.market.stamps(s, INTERVALS[interval], lo, min(hi, now) + 1)[:limit]
        k = self.market.klines(self.market.index(s), interval, t)
        cols = ("open", "high", "low", "close", "volume")
        return [[int(k["open_time"][j]), *(repr(float(k[c][j])) for c in cols), int(k["close_time"][j]),
                 repr(float(k["quote_volume"][j])), int(k["count"][j]), repr(float(k["taker_buy_volume"][j])),
                 repr(float(k["taker_buy_quote_volume"][j])), "0"] for j in range(len(t))]


def _serve_forever(root: Path, market: Market, sock: socket.socket, lag: mp.Value) -> None:
    handler = type("Handler", (_Handler,), {"root": root.resolve(), "market": market, "lag": lag})
    server = ThreadingHTTPServer(sock.getsockname(), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True
    server.serve_forever(poll_interval=0.2)


@dataclass
class Server:
    url: str
    process: mp.Process
    lag: mp.Value

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)


def serve(root: Path, market: Market, lag_seconds: float = 0.0) -> Server:
    """Start the mirror + REST server in a child process on a free local port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    lag = mp.get_context("fork").Value("d", lag_seconds)
    proc = mp.get_context("fork").Process(target=_serve_forever, args=(root, market, sock, lag), daemon=True)
    proc.start()
    sock.close()
    return Server(f"http://127.0.0.1:{port}", proc, lag)
