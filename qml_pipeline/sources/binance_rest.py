"""Binance USD-M futures REST: funding settlements, open-interest history and klines.

Each method fetches [start, end) with the fewest requests (pages at Binance's maximum size) and
returns a frame conforming to its table in `qml_pipeline.store.schemas`.

Funding intervals: most symbols settle every 8 h, some every 4 h, 2 h or 1 h, and Binance changes
a symbol's interval from time to time. `funding_interval_hours` is therefore derived per row from
the gap to the previous settlement. The fetch starts 8 h (the longest interval) before `start` so
that the first row of the range has a predecessor; only a settlement without one (a symbol's first)
takes the interval `/fapi/v1/fundingInfo` lists today (8 h when the symbol is not listed there,
per Binance's docs).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.errors import InputError
from qml_pipeline.sources.funding import FUNDING_LOOKBACK_MS, snap_funding_times, with_funding_intervals
from qml_pipeline.sources.http_client import BadResponseError, HttpClient
from qml_pipeline.sources.venues import BINANCE_OI_PERIODS
from qml_pipeline.store.schemas import TS
from qml_pipeline.timeutil import HOUR_MS, UTC, interval_ms, to_ms, utc_now

SOURCE = "binance_rest"
DEFAULT_FUNDING_INTERVAL_HOURS = 8

FUNDING_PATH = "/fapi/v1/fundingRate"
FUNDING_INFO_PATH = "/fapi/v1/fundingInfo"
OI_PATH = "/futures/data/openInterestHist"
KLINES_PATH = "/fapi/v1/klines"
EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"

FUNDING_LIMIT = 1000
OI_LIMIT = 500
KLINES_LIMIT = 1500
OI_REST_WINDOW = timedelta(days=30)
ARCHIVE_METRICS_URL = "https://data.binance.vision/?prefix=data/futures/um/daily/metrics/{symbol}/"

# Binance's per-endpoint limits besides the IP weight (their docs, 2025-2026): fundingRate and
# fundingInfo share 500 requests per 5 minutes; /futures/data/* allows 1000 per 5 minutes.
FUNDING_PATH_LIMIT = ((FUNDING_PATH, FUNDING_INFO_PATH), 500, 300.0)
FUTURES_DATA_PATH_LIMIT = (("/futures/data/",), 1000, 300.0)


class OutOfRestWindowError(ValueError):
    """The requested open-interest range is older than the REST API serves (the last 30 days)."""


class ServedValueError(BadResponseError, InputError):
    """A served field that is not what the endpoint documents (a price that is not a number, two
    different rows for one time)."""


def _served_numbers(df: pl.DataFrame, fields: dict[str, str], where: str, time_ms: str) -> pl.DataFrame:
    """Cast the served text `fields` (column -> Binance field name) to Float64; a value that is not a
    number raises ServedValueError naming `where` (endpoint and symbol), the field, the row's time and
    the value served."""
    out = []
    for column, field_name in fields.items():
        text = df[column].cast(pl.Utf8).str.strip_chars()
        numbers = text.cast(pl.Float64, strict=False)
        bad = (text.is_not_null() & (text != "") & numbers.is_null()).arg_true().to_list()
        if bad:
            shown = ", ".join(f"{_iso(df[time_ms][i])}: {df[column][i]!r}" for i in bad[:5])
            raise ServedValueError(
                f"{where}: field {field_name!r} is not a number in {len(bad)} row(s) ({shown}); expected a "
                f"decimal number as a JSON string, e.g. '43250.10'. Nothing of this fetch was used.")
        out.append(pl.when(text != "").then(numbers).alias(column))
    return df.with_columns(out)


def _collapse(df: pl.DataFrame, key: str, where: str) -> pl.DataFrame:
    """Identical repeats of a served row dropped; two different rows for one time refused."""
    try:
        return schemas.collapse_duplicates(df, [key], what=where)[0]
    except schemas.ConflictingRowsError as exc:
        raise ServedValueError(str(exc)) from None


def klines_weight(limit: int) -> int:
    """IP weight of a /fapi/v1/klines request by its `limit` (Binance docs)."""
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


def _ms(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Int64).cast(TS)


class BinanceRest:
    """Binance USD-M REST reader. `now` is injectable so the 30-day window and forming bars are testable."""

    def __init__(self, client: HttpClient, oi_publication_lag_s: int = 0,
                 now: Callable[[], datetime] = utc_now):
        self.client = client
        self.oi_publication_lag_s = oi_publication_lag_s
        self.now = now
        self._funding_info: dict[str, int] | None = None
        self._exchange_info: dict[str, dict[str, Any]] | None = None
        client.set_path_limit(*FUNDING_PATH_LIMIT)
        client.set_path_limit(*FUTURES_DATA_PATH_LIMIT)

    # ------------------------------------------------------------------ the universe

    def exchange_info(self) -> dict[str, dict[str, Any]]:
        """Symbol -> its /fapi/v1/exchangeInfo row (listed and delisted perpetuals; fetched once)."""
        if self._exchange_info is None:
            payload = self.client.get_json(EXCHANGE_INFO_PATH, weight=1)
            self._exchange_info = {r["symbol"]: r for r in payload.get("symbols", [])}
        return self._exchange_info

    def listing(self, symbol: str) -> tuple[datetime, datetime | None]:
        """(onboard time, delivery time for a delisted symbol else None); raises naming unknown symbols."""
        info = self.exchange_info().get(symbol)
        if info is None:
            raise ValueError(f"{symbol} is not a Binance USD-M futures symbol (not in {EXCHANGE_INFO_PATH}); "
                             "check QML_SYMBOLS")
        onboard = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(info["onboardDate"])))
        delisted = info.get("status") not in ("TRADING", "PENDING_TRADING", None)
        delivery = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(info["deliveryDate"]))
                    if delisted else None)
        return onboard, delivery

    # ------------------------------------------------------------------ funding

    def funding_info(self) -> dict[str, int]:
        """Symbol -> funding interval in hours, for symbols whose interval Binance lists (fetched once)."""
        if self._funding_info is None:
            rows = self.client.get_json(FUNDING_INFO_PATH, weight=1)
            self._funding_info = {r["symbol"]: int(r["fundingIntervalHours"]) for r in rows}
        return self._funding_info

    def funding_rates(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Funding settlements with event_time in [start, end), snapped to the hour."""
        start_ms, end_ms = to_ms(start), to_ms(end)
        if end_ms <= start_ms:
            return schemas.empty(schemas.FUNDING_RATES)
        last_ms = end_ms - 1  # Binance's endTime is inclusive
        cursor = start_ms - FUNDING_LOOKBACK_MS
        rows: list[dict[str, Any]] = []
        pages = 0
        while cursor <= last_ms:
            page = self.client.get_json(FUNDING_PATH, {
                "symbol": symbol, "startTime": cursor, "endTime": last_ms, "limit": FUNDING_LIMIT}, weight=1)
            pages += 1
            rows.extend(page)
            if len(page) < FUNDING_LIMIT:
                break
            latest = int(page[-1]["fundingTime"])
            self.client.progress(f"funding {symbol}: page {pages}, {len(rows)} rows up to {_iso(latest)}")
            # The next settlement lies at least an hour after this one on the grid: stop when
            # no grid slot is left before `end`.
            if _snap_hour(latest) + HOUR_MS >= end_ms:
                break
            cursor = latest + 1
        if not rows:
            return schemas.empty(schemas.FUNDING_RATES)

        served = pl.DataFrame({
            "exchange_ms": [int(r["fundingTime"]) for r in rows],
            "funding_rate": [r["fundingRate"] for r in rows],
            "mark_price": [r.get("markPrice") for r in rows],
        }, schema={"exchange_ms": pl.Int64, "funding_rate": pl.Utf8, "mark_price": pl.Utf8})
        where = f"GET {FUNDING_PATH} {symbol}"
        served = _served_numbers(_collapse(served, "exchange_ms", where),
                                 {"funding_rate": "fundingRate", "mark_price": "markPrice"}, where, "exchange_ms")
        df = snap_funding_times(served.with_columns(_ms("exchange_ms").alias("exchange_time")).drop("exchange_ms"),
                                symbol, what=f"GET {FUNDING_PATH}")
        # Only a settlement with no predecessor in the fetch needs today's listed interval.
        first_in_range = df["event_time"][0] >= start
        first_hours = (self.funding_info().get(symbol, DEFAULT_FUNDING_INTERVAL_HOURS)
                       if first_in_range else DEFAULT_FUNDING_INTERVAL_HOURS)
        out = (
            with_funding_intervals(df, first_hours)
            .filter((pl.col("event_time") >= start) & (pl.col("event_time") < end))
            .select(
                pl.lit(symbol).alias("symbol"),
                "event_time",
                "funding_rate",
                "funding_interval_hours",
                "mark_price",
                "exchange_time",
                pl.col("event_time").alias("available_at"),
                pl.lit(SOURCE).alias("source"),
                pl.lit(self.now()).cast(TS).alias("ingested_at"),
            )
        )
        return schemas.conform(schemas.FUNDING_RATES, out)

    # ------------------------------------------------------------------ open interest

    def oi_rest_window_start(self) -> datetime:
        """The oldest instant /futures/data/openInterestHist still serves (now - 30 days)."""
        return self.now() - OI_REST_WINDOW

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Open-interest rows stamped in [start, end); `start` must lie within the last 30 days."""
        if period not in BINANCE_OI_PERIODS:
            raise ValueError(f"open-interest period {period!r}: Binance serves {BINANCE_OI_PERIODS}")
        oldest = self.oi_rest_window_start()
        if start < oldest:
            older = "the whole range is" if end <= oldest else "the range starts"
            raise OutOfRestWindowError(
                f"open interest {symbol} {start.isoformat()} .. {end.isoformat()}: {older} older than "
                f"the 30 days Binance's REST API serves (oldest {oldest.isoformat()}). Read that part "
                f"from the public archive's daily metrics files, "
                f"{ARCHIVE_METRICS_URL.format(symbol=symbol)}, and only the rest from REST.")
        period_ms = interval_ms(period)
        start_ms, end_ms = to_ms(start), to_ms(end)
        rows: list[dict[str, Any]] = []
        # Each request's window holds at most OI_LIMIT stamps, so the answer is the same whether
        # Binance fills a capped page from the window's start or from its end.
        cursor, pages = start_ms, 0
        while cursor < end_ms:
            window_last = min(cursor + OI_LIMIT * period_ms, end_ms) - 1
            page = self.client.get_json(OI_PATH, {
                "symbol": symbol, "period": period, "startTime": cursor, "endTime": window_last,
                "limit": OI_LIMIT}, weight=0)
            rows.extend(page)
            pages += 1
            cursor = window_last + 1
            if cursor < end_ms:
                self.client.progress(f"open interest {symbol} {period}: page {pages}, {len(rows)} rows "
                                     f"up to {_iso(window_last)}")
        if not rows:
            return schemas.empty(schemas.OPEN_INTEREST)
        lag_ms = period_ms + self.oi_publication_lag_s * 1000
        ingested_at = self.now()
        where = f"GET {OI_PATH} {symbol} {period}"
        served = pl.DataFrame({
            "ts": [int(r["timestamp"]) for r in rows],
            "open_interest": [r["sumOpenInterest"] for r in rows],
            "open_interest_value": [r.get("sumOpenInterestValue") for r in rows],
        }, schema={"ts": pl.Int64, "open_interest": pl.Utf8, "open_interest_value": pl.Utf8})
        served = _served_numbers(_collapse(served.filter(pl.col("ts").is_between(start_ms, end_ms, closed="left")),
                                           "ts", where),
                                 {"open_interest": "sumOpenInterest", "open_interest_value": "sumOpenInterestValue"},
                                 where, "ts")
        out = (
            served
            .sort("ts")
            .select(
                pl.lit(symbol).alias("symbol"),
                _ms("ts").alias("event_time"),
                pl.lit(period_ms // 60_000).alias("period_minutes"),
                "open_interest",
                "open_interest_value",
                (pl.col("ts") + lag_ms).cast(TS).alias("available_at"),
                pl.lit(SOURCE).alias("source"),
                pl.lit(ingested_at).cast(TS).alias("ingested_at"),
            )
        )
        return schemas.conform(schemas.OPEN_INTEREST, out)

    # ------------------------------------------------------------------ klines

    def klines(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Closed candles opening in [start, end); the still-forming bar (closing after now) is dropped."""
        step = interval_ms(interval)
        start_ms, end_ms = to_ms(start), to_ms(end)
        rows: list[list[Any]] = []
        cursor, pages = start_ms, 0
        while cursor < end_ms:
            page = self.client.get_json(KLINES_PATH, {
                "symbol": symbol, "interval": interval, "startTime": cursor, "endTime": end_ms - 1,
                "limit": KLINES_LIMIT}, weight=klines_weight(KLINES_LIMIT))
            rows.extend(page)
            pages += 1
            if len(page) < KLINES_LIMIT:
                break
            cursor = int(page[-1][0]) + step
            if cursor < end_ms:
                self.client.progress(f"klines {symbol} {interval}: page {pages}, {len(rows)} rows "
                                     f"up to {_iso(cursor)}")
        if not rows:
            return schemas.empty(schemas.KLINES)
        now = self.now()
        now_ms = to_ms(now)
        cols = ("open_ms", "open", "high", "low", "close", "volume", "close_ms", "quote_volume",
                "trade_count", "taker_buy_volume")
        raw = pl.DataFrame([[str(v) if v is not None else None for v in r[:10]] for r in rows],
                           schema={c: pl.Utf8 for c in cols}, orient="row")
        where = f"GET {KLINES_PATH} {symbol} {interval}"
        raw = _served_numbers(raw.with_columns(pl.col("open_ms").cast(pl.Int64)),
                              {c: f"{c} (index {i})" for i, c in enumerate(cols)
                               if c not in ("open_ms", "close_ms")}, where, "open_ms")
        out = (
            _collapse(raw.filter(pl.col("open_ms").is_between(start_ms, end_ms, closed="left")
                                 & (pl.col("open_ms") + step <= now_ms)), "open_ms", where)
            .sort("open_ms")
            .select(
                pl.lit(symbol).alias("symbol"),
                pl.lit(interval).alias("interval"),
                _ms("open_ms").alias("event_time"),
                (pl.col("open_ms") + step).cast(TS).alias("close_time"),
                "open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume",
                pl.col("trade_count").cast(pl.Int64),
                (pl.col("open_ms") + step).cast(TS).alias("available_at"),
                pl.lit(SOURCE).alias("source"),
                pl.lit(now).cast(TS).alias("ingested_at"),
            )
        )
        return schemas.conform(schemas.KLINES, out)


def _snap_hour(ms: int) -> int:
    return (ms + HOUR_MS // 2) // HOUR_MS * HOUR_MS


def _iso(ms: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(milliseconds=int(ms))).isoformat() + "Z"
