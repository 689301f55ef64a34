"""OKX v5 public data for USDT-margined perpetual swaps: open interest and funding settlements, behind
the MarketSource protocol (`OkxSource`; what it shares with Bybit: `venue_source.VenueSource`).

Endpoints (docs/venues.md has the sources):

- `/api/v5/public/instruments?instType=SWAP`: every swap's contract size (`ctVal` x `ctMult`
  base coins per contract for a linear swap) and listing time. One request, cached per reader.
- `/api/v5/rubik/stat/contracts/open-interest-history` (instId, period, begin/end exclusive,
  limit <= 100, newest first; rows `[ts, oi (contracts), oiCcy (coin), oiUsd (USD)]`): only the
  latest 1,440 entries of each period, and nothing before 2024-01-01 (1D) or early February 2024
  (other periods): the coverage starts there. Coins: `oiCcy`, else contracts x contract size; USD:
  `oiUsd` (a row without it keeps a NULL value, counted in the source's notes). Daily bars are asked
  for as `1Dutc` (OKX's `1D` opens at 16:00 UTC).
- `/api/v5/public/funding-rate-history` (instId, after = older than, limit <= 400, newest first):
  the last three months only (the coverage starts there). `realizedRate` is the rate settled
  (`fundingRate` is OKX's prediction, used only when `realizedRate` is empty, counted in the
  notes). OKX settles every 8 h, or 6, 4, 2 or 1 h for volatile swaps.

Older ranges: a range wholly older than OKX serves raises `OutOfHistoryError`; one that starts
older is fetched from the oldest time served (`coverage(...).first`), so nothing older is expected.

`available_at`: OKX does not say whether an open-interest stamp opens or closes its period, so a
row is known at stamp + period + `oi_publication_lag_s` (the project's safe reading). A funding
rate is known at its settlement.

Limits: 10 requests per 2 s per IP and instrument on both history endpoints, 20 per 2 s on
instruments (sliding windows here, per path). Over them OKX answers HTTP 429 (or a 200) with code
50011: the client waits 2 s (Retry-After when sent) and retries. Codes 50001, 50013 and 50026 are
passing faults (back off, retry); any other non-zero code raises `VenueApiError` naming the
endpoint and parameters (51001: the instrument does not exist).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl

from qml_pipeline.sources.funding import FUNDING_LOOKBACK_MS
from qml_pipeline.sources.http_client import HttpClient, VenueRules
from qml_pipeline.sources.venue_frames import funding_frame, open_interest_frame
from qml_pipeline.sources.venue_source import VenueSource
from qml_pipeline.sources.venues import (
    Instrument,
    OutOfHistoryError,
    UnknownSymbolError,
    split_symbol,
    venue_period,
    venue_symbol,
)
from qml_pipeline.timeutil import HOUR_MS, UTC, from_ms, interval_ms, to_ms

VENUE = "okx"
SOURCE = "okx_rest"
DEFAULT_BASE_URL = "https://www.okx.com"
INSTRUMENTS_PATH = "/api/v5/public/instruments"
OI_PATH = "/api/v5/rubik/stat/contracts/open-interest-history"
FUNDING_PATH = "/api/v5/public/funding-rate-history"
OI_LIMIT = 100
FUNDING_LIMIT = 400
OI_HISTORY_ENTRIES = 1440
# "For period=1D, the data time range is up to January 1, 2024; for other periods, ... up to early
# February 2024": the later end of "early" is taken, so no stamp OKX never had counts as missing.
OI_HISTORY_FLOOR_DAILY = datetime(2024, 1, 1, tzinfo=UTC)
OI_HISTORY_FLOOR = datetime(2024, 2, 10, tzinfo=UTC)
# "up to three months": the shortest three calendar months (February to April) are 89 days.
FUNDING_HISTORY = timedelta(days=89)
PATH_LIMITS = (((OI_PATH,), 10, 2.0), ((FUNDING_PATH,), 10, 2.0), ((INSTRUMENTS_PATH,), 20, 2.0))


def okx_error(payload: Any) -> tuple[str, str] | None:
    """(code, msg) when a body reports an error (code other than "0"), else None."""
    if isinstance(payload, dict) and "code" in payload and str(payload["code"]) != "0":
        return str(payload["code"]), str(payload.get("msg", ""))
    return None


RULES = VenueRules(
    name="OKX",
    error_in_body=okx_error,
    rate_limit_codes=frozenset({"50011"}),
    transient_codes=frozenset({"50001", "50013", "50026"}),
    default_body_rate_limit_wait_s=2.0,
    geo_block_hint=" Run from a location OKX serves (another host or a VPN).",
)


def make_client(base_url: str = DEFAULT_BASE_URL, **kw: Any) -> HttpClient:
    """An `HttpClient` with OKX's rules; a 429 without Retry-After waits OKX's 2 s window."""
    kw.setdefault("default_retry_after_s", 2.0)
    return HttpClient(base_url, rules=RULES, **kw)


class OkxSource(VenueSource):
    """OKX v5 behind the MarketSource protocol. `now` is injectable so the history depth and published
    stamps are testable."""

    name = VENUE
    venue = VENUE
    rules = RULES
    path_limits = PATH_LIMITS
    _swaps: dict[str, dict[str, Any]] | None = None  # every swap by instId, fetched once

    # ------------------------------------------------------------------ instruments

    def swaps(self) -> dict[str, dict[str, Any]]:
        """instId -> OKX's instrument row, for every perpetual swap (fetched once)."""
        if self._swaps is None:
            rows = self.client.get_json(INSTRUMENTS_PATH, {"instType": "SWAP"})["data"]
            self._swaps = {r["instId"]: r for r in rows}
        return self._swaps

    def instrument(self, symbol: str) -> Instrument:
        """OKX's linear swap for a project symbol, with its contract size in base coins."""
        base, quote = split_symbol(VENUE, symbol)
        inst_id = venue_symbol(VENUE, symbol)
        row = self.swaps().get(inst_id)
        if row is None:
            raise UnknownSymbolError(VENUE, symbol, f"{INSTRUMENTS_PATH}?instType=SWAP lists no {inst_id} "
                                                    f"({len(self.swaps())} swaps listed)")
        if row.get("ctType") != "linear" or row.get("ctValCcy") != base:
            raise UnknownSymbolError(VENUE, symbol, f"{inst_id} is ctType={row.get('ctType')!r} with "
                                                    f"ctValCcy={row.get('ctValCcy')!r}: not a linear swap "
                                                    f"counted in {base}")
        size = float(row["ctVal"]) * float(row.get("ctMult") or 1)
        if size <= 0:
            raise ValueError(f"okx: {inst_id} has contract size {size} (ctVal={row['ctVal']!r}, "
                             f"ctMult={row.get('ctMult')!r}): expected a positive number of {base}")
        listed = from_ms(int(row["listTime"])) if row.get("listTime") else None
        return Instrument(VENUE, symbol, inst_id, base, quote, size, listed_at=listed)

    # ------------------------------------------------------------------ history depth

    def oi_history_start(self, period: str) -> datetime:
        """The oldest stamp OKX still serves for `period`: the latest 1,440 entries, not before its floor."""
        step = interval_ms(period)
        latest = to_ms(self.now()) // step * step
        floor = OI_HISTORY_FLOOR_DAILY if period == "1d" else OI_HISTORY_FLOOR
        return max(from_ms(latest - (OI_HISTORY_ENTRIES - 1) * step), floor)

    def funding_history_start(self) -> datetime:
        """The oldest settlement OKX still serves (three months back)."""
        return self.now() - FUNDING_HISTORY

    def history_start(self, table: str, symbol: str, variant: str) -> datetime | None:
        """The oldest time OKX serves: its depth (open interest per period, funding), not before the listing."""
        oldest = self.oi_history_start(variant) if table == "open_interest" else self.funding_history_start()
        listed = self.instrument(symbol).listed_at
        return max(oldest, listed) if listed else oldest

    def _served_from(self, path: str, symbol: str, start: datetime, end: datetime, oldest: datetime,
                     inst: Instrument) -> datetime:
        if end <= oldest:
            raise OutOfHistoryError(
                f"okx {path} {inst.venue_symbol} ({symbol}) {start.isoformat()} .. {end.isoformat()}: the whole "
                f"range is older than OKX serves (oldest {oldest.isoformat()}); no other public source holds it")
        listed = inst.listed_at or oldest
        return max(start, oldest, listed)

    # ------------------------------------------------------------------ open interest

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Open interest stamped in [start, end) (from the oldest OKX serves): coins and USD per stamp."""
        api_period = venue_period(VENUE, period)
        inst = self.instrument(symbol)
        step = interval_ms(period)
        now = self.now()
        served_from = self._served_from(OI_PATH, symbol, start, end, self.oi_history_start(period), inst)
        start_ms, end_ms = to_ms(served_from), to_ms(end)
        stamps: list[int] = []
        coins: list[float] = []
        usd: list[float | None] = []
        from_contracts = 0
        params: dict[str, Any] = {"instId": inst.venue_symbol, "period": api_period, "begin": start_ms - 1,
                                  "end": end_ms, "limit": OI_LIMIT}
        pages = 0
        while True:
            page = self.client.get_json(OI_PATH, params)["data"]
            pages += 1
            for row in page:
                ts, contracts, ccy, value = (list(row) + [""] * 4)[:4]
                from_contracts += ccy in (None, "")
                stamps.append(int(ts))
                coins.append(float(ccy) if ccy not in (None, "") else float(contracts) * inst.contract_size)
                usd.append(float(value) if value not in (None, "") else None)
            # Newest first, bounds exclusive: the next page ends at the oldest stamp served.
            if len(page) < OI_LIMIT:
                break
            oldest = min(int(r[0]) for r in page)
            if oldest - step < start_ms:
                break
            params["end"] = oldest
            self.client.progress(f"okx open interest {symbol} {period}: page {pages}, {len(stamps)} rows")
        frame = open_interest_frame(VENUE, SOURCE, symbol, step, stamps, coins, usd, start, end, now,
                                    self.oi_publication_lag_s)
        notes = []
        if from_contracts:
            notes.append(f"{from_contracts} row(s) without oiCcy: coins = contracts x {inst.contract_size:g}")
        if frame["open_interest_value"].null_count():
            notes.append(f"{frame['open_interest_value'].null_count()} row(s) without oiUsd: "
                         f"open_interest_value is NULL")
        self._note(f"open_interest {period}", symbol, start, end, notes)
        return frame

    # ------------------------------------------------------------------ funding

    def funding_rates(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Funding settlements in [start, end) (from the oldest OKX serves)."""
        inst = self.instrument(symbol)
        now = self.now()
        served_from = self._served_from(FUNDING_PATH, symbol, start, end, self.funding_history_start(), inst)
        fetch_from = to_ms(served_from) - FUNDING_LOOKBACK_MS
        times: list[int] = []
        rates: list[float] = []
        predicted = 0
        cursor = to_ms(end)  # `after` returns settlements strictly older than it
        pages = 0
        while True:
            page = self.client.get_json(FUNDING_PATH, {"instId": inst.venue_symbol, "after": cursor,
                                                       "limit": FUNDING_LIMIT})["data"]
            pages += 1
            for r in page:
                realized = r.get("realizedRate")
                predicted += realized in (None, "")
                times.append(int(r["fundingTime"]))
                rates.append(float(realized if realized not in (None, "") else r["fundingRate"]))
            if len(page) < FUNDING_LIMIT:
                break
            cursor = min(int(r["fundingTime"]) for r in page)
            oldest = round(cursor / HOUR_MS) * HOUR_MS
            # Stop once the first settlement in range has its predecessor, or when no hourly grid
            # slot is left after `fetch_from`.
            if oldest < to_ms(served_from) or oldest - HOUR_MS < fetch_from:
                break
            self.client.progress(f"okx funding {symbol}: page {pages}, {len(times)} rows from {from_ms(oldest)}")
        kept = [(t, r) for t, r in zip(times, rates) if t >= fetch_from]
        frame = funding_frame(VENUE, SOURCE, symbol, [t for t, _ in kept], [r for _, r in kept], start, end,
                              now, None)
        if predicted:
            self._note("funding_rates", symbol, start, end,
                       [f"{predicted} row(s) without realizedRate: fundingRate (OKX's prediction) used"])
        return frame
