"""Bybit v5 public market data for USDT linear perpetuals: open interest and funding settlements, behind
the MarketSource protocol (`BybitSource`; what it shares with OKX: `venue_source.VenueSource`).

Endpoints (docs/venues.md has the sources):

- `/v5/market/instruments-info` (category=linear, symbol): whether Bybit lists the symbol, its
  launch time (history starts there) and today's funding interval. One request per symbol, cached.
- `/v5/market/open-interest` (intervalTime 5min..1d, startTime/endTime ms, limit <= 200, newest
  first, `nextPageCursor`): served back to the symbol's launch, which is where the coverage starts.
  `singleOpenInterest` (one side, in base coin for linear contracts) is the open interest; a row
  without it falls back to `openInterest`, which the current docs call the sum of both sides and
  older docs single-sided: those rows are counted in the source's notes.
- `/v5/market/mark-price-kline` (limit <= 1000): the USD value is coins x the close of the mark
  price bar [stamp, stamp + period), a price known when the bucket closes.
- `/v5/market/funding/history` (startTime with endTime, limit <= 200, newest first, no cursor):
  pages walk back by moving endTime below the oldest row served.

`available_at`: Bybit does not say whether an open-interest stamp opens or closes its bucket, and
warns of delays under volatility, so a row is known at stamp + period + `oi_publication_lag_s`
(the project's safe reading). A funding rate is known at its settlement.

Limits: 600 requests per 5 s per IP (all endpoints: a sliding window here); over it Bybit answers
HTTP 403 "access too frequent" and bans the IP for at least 10 minutes (waited once, then
reported). Body code 10006 (too many visits, with X-Bapi-Limit-Reset-Timestamp) and 10018 (IP
limit) wait, then retry; 10016 (internal error) backs off and retries; any other retCode raises
`VenueApiError` naming the endpoint and parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import polars as pl
import requests

from qml_pipeline.sources.funding import FUNDING_LOOKBACK_MS
from qml_pipeline.sources.http_client import HttpClient, VenueRules
from qml_pipeline.sources.venue_frames import funding_frame, open_interest_frame
from qml_pipeline.sources.venue_source import VenueSource
from qml_pipeline.sources.venues import Instrument, UnknownSymbolError, split_symbol, venue_period
from qml_pipeline.timeutil import HOUR_MS, from_ms, interval_ms, to_ms

VENUE = "bybit"
SOURCE = "bybit_rest"
DEFAULT_BASE_URL = "https://api.bybit.com"
CATEGORY = "linear"
INSTRUMENTS_PATH = "/v5/market/instruments-info"
OI_PATH = "/v5/market/open-interest"
MARK_KLINE_PATH = "/v5/market/mark-price-kline"
FUNDING_PATH = "/v5/market/funding/history"
OI_LIMIT = 200
FUNDING_LIMIT = 200
KLINE_LIMIT = 1000
# The mark-price kline interval of each open-interest period (Bybit's kline notation).
KLINE_INTERVALS = {"5m": "5", "15m": "15", "30m": "30", "1h": "60", "4h": "240", "1d": "D"}
IP_LIMIT = (("/",), 600, 5.0)
BAN_WAIT_S = 600.0  # "wait for at least 10 minutes" after a 403 "access too frequent"


def bybit_error(payload: Any) -> tuple[int, str] | None:
    """(retCode, retMsg) when a body reports an error (retCode other than 0), else None."""
    if isinstance(payload, dict) and "retCode" in payload:
        code = payload["retCode"]
        if code != 0 and str(code) != "0":
            return code, str(payload.get("retMsg", ""))
    return None


def _limit_reset(headers: Mapping[str, str], now_s: float) -> float | None:
    try:
        return int(headers["X-Bapi-Limit-Reset-Timestamp"]) / 1000 - now_s
    except (KeyError, TypeError, ValueError):
        return None


def _ban(resp: requests.Response) -> float | None:
    return BAN_WAIT_S if resp.status_code == 403 and "too frequent" in resp.text.lower() else None


RULES = VenueRules(
    name="Bybit",
    error_in_body=bybit_error,
    rate_limit_codes=frozenset({"10006", "10018"}),
    transient_codes=frozenset({"10016"}),
    body_rate_limit_wait=_limit_reset,
    default_body_rate_limit_wait_s=1.0,
    ban_wait=_ban,
    forbidden_hint=" (Bybit refuses this IP without saying 'access too frequent': its CDN blocks some "
                   "countries; run from a location Bybit serves)",
    geo_block_hint=" Run from a location Bybit serves (another host or a VPN).",
)


def make_client(base_url: str = DEFAULT_BASE_URL, **kw: Any) -> HttpClient:
    """An `HttpClient` with Bybit's rules (tests pass a fake server's URL, sleep and clock)."""
    return HttpClient(base_url, rules=RULES, **kw)


def _ceil_ms(t: datetime, step_ms: int) -> int:
    """The first multiple of `step_ms` (epoch milliseconds) at or after `t`."""
    return -(-to_ms(t) // step_ms) * step_ms


class BybitSource(VenueSource):
    """Bybit v5 behind the MarketSource protocol. `now` is injectable so that published stamps and forming
    buckets are testable."""

    name = VENUE
    venue = VENUE
    rules = RULES
    path_limits = (IP_LIMIT,)

    # ------------------------------------------------------------------ instruments

    def instrument(self, symbol: str) -> Instrument:
        """Bybit's linear perpetual for a project symbol (fetched once per symbol)."""
        if symbol not in self._instruments:
            base, quote = split_symbol(VENUE, symbol)
            body = self.client.get_json(INSTRUMENTS_PATH, {"category": CATEGORY, "symbol": symbol})
            rows = [r for r in body["result"]["list"] if r.get("symbol") == symbol]
            if not rows:
                raise UnknownSymbolError(VENUE, symbol, f"{INSTRUMENTS_PATH}?category={CATEGORY} lists no "
                                                        f"such contract (or it is not trading)")
            row = rows[0]
            if row.get("contractType") != "LinearPerpetual":
                raise UnknownSymbolError(VENUE, symbol, f"{symbol} is a {row.get('contractType')}, not a "
                                                        f"LinearPerpetual")
            minutes = int(row.get("fundingInterval") or 0)
            self._instruments[symbol] = Instrument(
                VENUE, symbol, symbol, base, quote, contract_size=1.0,
                listed_at=from_ms(int(row["launchTime"])) if row.get("launchTime") else None,
                funding_interval_hours=minutes // 60 if minutes and minutes % 60 == 0 else None)
        return self._instruments[symbol]

    def history_start(self, table: str, symbol: str, variant: str) -> datetime | None:
        """Bybit serves history back to the symbol's launch."""
        return self.instrument(symbol).listed_at

    def _served_from(self, symbol: str, start: datetime) -> datetime:
        listed = self.instrument(symbol).listed_at
        return max(start, listed) if listed else start

    # ------------------------------------------------------------------ open interest

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Open interest stamped in [start, end) (from the launch): coins and USD per stamp."""
        api_period = venue_period(VENUE, period)
        step = interval_ms(period)
        now = self.now()
        served_from = self._served_from(symbol, start)
        notes: list[str] = []
        stamps: list[int] = []
        coins: list[float] = []
        two_sided = 0
        first_ms, end_ms = _ceil_ms(served_from, step), to_ms(end)
        if first_ms < end_ms:
            params: dict[str, Any] = {"category": CATEGORY, "symbol": symbol, "intervalTime": api_period,
                                      "startTime": first_ms, "endTime": end_ms - 1, "limit": OI_LIMIT}
            pages = 0
            while True:
                result = self.client.get_json(OI_PATH, params)["result"]
                page = result.get("list") or []
                pages += 1
                for r in page:
                    single = r.get("singleOpenInterest")
                    two_sided += single in (None, "")
                    stamps.append(int(r["timestamp"]))
                    coins.append(float(single if single not in (None, "") else r["openInterest"]))
                cursor = result.get("nextPageCursor") or ""
                # Newest first: once the oldest stamp has no grid slot before it in range, stop
                # (a cursor on the last page would only buy an empty page).
                if not page or not cursor or min(int(r["timestamp"]) for r in page) - step < first_ms:
                    break
                params["cursor"] = cursor
                self.client.progress(f"bybit open interest {symbol} {period}: page {pages}, {len(stamps)} rows")
        if two_sided:
            notes.append(f"{two_sided} row(s) without singleOpenInterest: openInterest taken as is "
                         f"(documented as the sum of both sides; check the level against other venues)")
        prices = self.mark_closes(symbol, period, from_ms(first_ms), end) if stamps else {}
        usd = [c * prices[t] if t in prices else None for t, c in zip(stamps, coins)]
        frame = open_interest_frame(VENUE, SOURCE, symbol, step, stamps, coins, usd, start, end, now,
                                    self.oi_publication_lag_s)
        if frame["open_interest_value"].null_count():
            notes.append(f"{frame['open_interest_value'].null_count()} row(s) without a mark price bar: "
                         f"open_interest_value is NULL")
        self._note(f"open_interest {period}", symbol, start, end, notes)
        return frame

    def mark_closes(self, symbol: str, period: str, start: datetime, end: datetime) -> dict[int, float]:
        """Bar open time (ms) -> mark price close, for bars of `period` opening in [start, end)."""
        interval = KLINE_INTERVALS[period]
        step = interval_ms(period)
        closes: dict[int, float] = {}
        # Each window holds at most KLINE_LIMIT bars, so a capped page cannot drop bars whichever
        # end of the window Bybit fills it from.
        cursor, end_ms = _ceil_ms(start, step), to_ms(end)
        while cursor < end_ms:
            window_last = min(cursor + KLINE_LIMIT * step, end_ms) - 1
            result = self.client.get_json(MARK_KLINE_PATH, {
                "category": CATEGORY, "symbol": symbol, "interval": interval, "start": cursor,
                "end": window_last, "limit": KLINE_LIMIT})["result"]
            for bar in result.get("list") or []:
                closes.setdefault(int(bar[0]), float(bar[4]))
            cursor = window_last + 1
        return closes

    # ------------------------------------------------------------------ funding

    def funding_rates(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Funding settlements in [start, end) (from the launch)."""
        inst = self.instrument(symbol)
        now = self.now()
        served_from = self._served_from(symbol, start)
        fetch_from, last = to_ms(served_from) - FUNDING_LOOKBACK_MS, to_ms(end) - 1
        times: list[int] = []
        rates: list[float] = []
        pages = 0
        while fetch_from <= last:
            result = self.client.get_json(FUNDING_PATH, {
                "category": CATEGORY, "symbol": symbol, "startTime": fetch_from, "endTime": last,
                "limit": FUNDING_LIMIT})["result"]
            page = result.get("list") or []
            pages += 1
            times.extend(int(r["fundingRateTimestamp"]) for r in page)
            rates.extend(float(r["fundingRate"]) for r in page)
            if len(page) < FUNDING_LIMIT:
                break
            oldest = round(min(int(r["fundingRateTimestamp"]) for r in page) / HOUR_MS) * HOUR_MS
            # Stop once the first settlement in range has its predecessor, or when no hourly grid
            # slot is left after `fetch_from`.
            if oldest < to_ms(served_from) or oldest - HOUR_MS < fetch_from:
                break
            last = min(times) - 1
            self.client.progress(f"bybit funding {symbol}: page {pages}, {len(times)} rows from {from_ms(oldest)}")
        # Only a settlement without a predecessor in the answer (the symbol's first) takes the
        # interval Bybit lists today.
        first_in_range = bool(times) and round(min(times) / HOUR_MS) * HOUR_MS >= to_ms(served_from)
        return funding_frame(VENUE, SOURCE, symbol, times, rates, start, end, now,
                             inst.funding_interval_hours if first_in_range else None)

