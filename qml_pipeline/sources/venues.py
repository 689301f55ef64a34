"""The exchanges beside Binance: symbol mapping, open-interest periods, contract sizes, the `venue`
column, and what a venue's answer covered.

Symbols: the project names an instrument the Binance way (BTCUSDT, a USDT-margined perpetual).
Bybit's linear perpetual has the same name in category `linear`; OKX's is `<BASE>-<QUOTE>-SWAP`
(BTC-USDT-SWAP). A name that does not end in a known quote coin, or that a venue does not list,
raises `UnknownSymbolError` naming the venue and the symbol. Multiplier-prefixed symbols
(1000PEPEUSDT) have no mapping: each venue scales them differently, so they are refused rather
than guessed.

Units: `open_interest` is in base coins (BTC) on every venue and `open_interest_value` in USD
(USDT). A venue that counts contracts is converted with the contract size its instrument list
serves (`Instrument.contract_size`, base coins per contract).

The `venue` column: the raw tables gain it in the warehouse rewrite; until then `with_venue`
conforms a frame to its table and appends `venue` as the last column, and `validate_with_venue`
validates such a frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import TS, Table
from qml_pipeline.timeutil import from_ms, interval_ms, to_ms

VENUES = ("binance", "bybit", "okx")
QUOTES = ("USDT", "USDC")
HOUR_MS = 3_600_000

# The project's open-interest periods (Binance notation) as each venue spells them. OKX's 6H, 12H
# and 1D bars open at 00:00 UTC+8; their `utc` variants open at 00:00 UTC like everyone else's.
OI_PERIODS: dict[str, dict[str, str]] = {
    "binance": {p: p for p in ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")},
    "bybit": {"5m": "5min", "15m": "15min", "30m": "30min", "1h": "1h", "4h": "4h", "1d": "1d"},
    "okx": {"5m": "5m", "15m": "15m", "30m": "30m", "1h": "1H", "2h": "2H", "4h": "4H",
            "6h": "6Hutc", "12h": "12Hutc", "1d": "1Dutc"},
}


class UnknownSymbolError(ValueError):
    """A venue does not list the symbol (or the symbol has no mapping to the venue)."""

    def __init__(self, venue: str, symbol: str, reason: str):
        self.venue = venue
        self.symbol = symbol
        super().__init__(f"{venue}: unknown symbol {symbol!r}: {reason}")


class OutOfHistoryError(ValueError):
    """The requested range lies wholly before the oldest time the venue still serves."""


@dataclass(frozen=True)
class Instrument:
    """One perpetual on one venue, as the venue's instrument list describes it."""

    venue: str
    symbol: str  # the project's name, e.g. BTCUSDT
    venue_symbol: str  # the venue's name, e.g. BTC-USDT-SWAP
    base: str
    quote: str
    contract_size: float  # base coins per contract; 1.0 where the venue counts OI in coins
    listed_at: datetime | None = None  # the venue serves no history before this
    funding_interval_hours: int | None = None  # the interval the venue lists today


def _check_venue(venue: str) -> None:
    if venue not in VENUES:
        raise ValueError(f"unknown venue {venue!r}; expected one of {VENUES}")


def split_symbol(venue: str, symbol: str) -> tuple[str, str]:
    """(base, quote) of a project symbol, e.g. ('BTC', 'USDT') for BTCUSDT."""
    _check_venue(venue)
    quote = next((q for q in QUOTES if symbol.endswith(q) and len(symbol) > len(q)), None)
    if quote is None:
        raise UnknownSymbolError(venue, symbol, f"expected a USD-margined perpetual named <BASE><QUOTE> "
                                                f"with QUOTE in {QUOTES}, e.g. BTCUSDT")
    base = symbol[: -len(quote)]
    if base[0].isdigit():
        raise UnknownSymbolError(venue, symbol, "multiplier-prefixed symbols (e.g. 1000PEPEUSDT) are "
                                                "scaled differently on each venue and have no mapping")
    return base, quote


def venue_symbol(venue: str, symbol: str) -> str:
    """The venue's name for a project symbol: BTCUSDT -> BTCUSDT (Binance, Bybit linear),
    BTC-USDT-SWAP (OKX)."""
    base, quote = split_symbol(venue, symbol)
    return f"{base}-{quote}-SWAP" if venue == "okx" else symbol


def project_symbol(venue: str, name: str) -> str:
    """The project symbol for a venue's name (the inverse of `venue_symbol`)."""
    _check_venue(venue)
    if venue == "okx":
        parts = name.split("-")
        if len(parts) != 3 or parts[2] != "SWAP":
            raise UnknownSymbolError(venue, name, "expected an OKX perpetual swap id <BASE>-<QUOTE>-SWAP")
        symbol = parts[0] + parts[1]
    else:
        symbol = name
    split_symbol(venue, symbol)
    return symbol


def venue_period(venue: str, period: str) -> str:
    """The venue's spelling of an open-interest period given in Binance notation (5m, 1h, 1d)."""
    _check_venue(venue)
    try:
        return OI_PERIODS[venue][period]
    except KeyError:
        raise ValueError(f"{venue} serves open interest for periods {sorted(OI_PERIODS[venue], key=interval_ms)} "
                         f"(Binance notation); got {period!r}") from None


# ---------------------------------------------------------------- the venue column

def with_venue(table: Table, df: pl.DataFrame, venue: str) -> pl.DataFrame:
    """`df` conformed to `table`, with `venue` appended as the last column."""
    _check_venue(venue)
    return schemas.conform(table, df).with_columns(pl.lit(venue).alias("venue"))


def validate_with_venue(table: Table, df: pl.DataFrame, **kw: float) -> None:
    """Validate a frame made by `with_venue`: the table's contract, and a known venue on every row."""
    if "venue" not in df.columns:
        raise ValueError(f"{table.name}: no 'venue' column; got {df.columns}")
    unknown = sorted(set(df["venue"].drop_nulls().to_list()) - set(VENUES))
    if df["venue"].null_count() or unknown:
        raise ValueError(f"{table.name}: venue must be one of {VENUES} on every row; "
                         f"{df['venue'].null_count()} null, unknown {unknown}")
    schemas.validate(table, df.drop("venue"), **kw)


# ---------------------------------------------------------------- what an answer covered

@dataclass
class Coverage:
    """A venue's answer for [start, end), measured against the grid it should fill.

    expected: grid stamps the answer should hold (published by `now`, not older than the venue
    serves); missing: those it lacks, never filled in; served_from: the oldest time the venue
    serves for this request (`start` unless the venue's history is shorter); notes: anything
    else a reader must know (rows without a USD value, fields the venue left empty).
    """

    venue: str
    table: str
    symbol: str
    start: datetime
    end: datetime
    frame: pl.DataFrame
    expected: int
    missing: list[datetime]
    served_from: datetime
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and self.served_from <= self.start

    def describe(self) -> str:
        what = f"{self.venue} {self.table} {self.symbol} [{self.start.isoformat()}, {self.end.isoformat()})"
        parts = [f"{what}: {self.frame.height} rows, {self.expected - len(self.missing)} of "
                 f"{self.expected} expected stamps"]
        if self.missing:
            shown = ", ".join(t.isoformat() for t in self.missing[:5])
            more = f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
            parts.append(f"{len(self.missing)} missing: {shown}{more}")
        if self.served_from > self.start:
            parts.append(f"nothing before {self.served_from.isoformat()}: older than {self.venue} serves")
        parts.extend(self.notes)
        return "; ".join(parts)


def missing_on_grid(times: pl.Series, start: datetime, end: datetime, step_ms: int) -> list[datetime]:
    """Stamps on the grid of multiples of `step_ms` (from the epoch) in [start, end) absent from `times`."""
    first = -(-to_ms(start) // step_ms) * step_ms
    last = to_ms(end)
    if first >= last:
        return []
    grid = pl.DataFrame({"ms": pl.int_range(first, last, step_ms, eager=True)})
    have = pl.DataFrame({"ms": times.cast(pl.Int64)})  # TS is ms since the epoch
    return [from_ms(ms) for ms in grid.join(have, on="ms", how="anti").sort("ms")["ms"].to_list()]


def missing_settlements(frame: pl.DataFrame, start: datetime, end: datetime,
                        fallback_interval_hours: int | None) -> list[datetime]:
    """Settlements the funding grid implies in [start, end) that `frame` lacks.

    Between two served settlements, and before the first and after the last, the grid steps by
    the interval in force (`funding_interval_hours`: the gap to the previous settlement, the
    previous valid interval across a gap). With no rows at all, the grid is the multiples of
    `fallback_interval_hours` from midnight UTC (nothing is reported when that is unknown).
    A change of interval is indistinguishable from missing settlements where the new gap is itself
    a valid interval (e.g. 8 h in force, then a 16 h gap would be missing; a 4 h gap is a change).
    """
    start_ms, end_ms = to_ms(start), to_ms(end)
    if frame.height == 0:
        if not fallback_interval_hours:
            return []
        return missing_on_grid(pl.Series([], dtype=TS), start, end, fallback_interval_hours * HOUR_MS)
    rows = (
        frame.sort("event_time")
        .select(ms=pl.col("event_time").cast(pl.Int64),
                step=pl.col("funding_interval_hours").cast(pl.Int64) * HOUR_MS)
    )
    nxt = pl.col("ms").shift(-1)
    # Between settlements, and from the last one to `end`, the next row's interval is in force.
    inner = rows.select(
        slots=pl.int_ranges(pl.col("ms") + pl.col("step").shift(-1).fill_null(pl.col("step")),
                            nxt.fill_null(end_ms), pl.col("step").shift(-1).fill_null(pl.col("step"))))
    first_ms, first_step = rows["ms"][0], rows["step"][0]
    lead = list(range(first_ms - first_step, start_ms - 1, -first_step))
    slots = [ms for ms in inner["slots"].explode().drop_nulls().to_list() if start_ms <= ms < end_ms]
    return [from_ms(ms) for ms in sorted(slots + lead)]
