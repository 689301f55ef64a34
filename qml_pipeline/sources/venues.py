"""The exchanges beside Binance: symbol mapping, open-interest periods, contract sizes.

Symbols: the project names an instrument the Binance way (BTCUSDT, a USDT-margined perpetual).
Bybit's linear perpetual has the same name in category `linear`; OKX's is `<BASE>-<QUOTE>-SWAP`
(BTC-USDT-SWAP). A name that does not end in a known quote coin, or that a venue does not list,
raises `UnknownSymbolError` naming the venue and the symbol. Multiplier-prefixed symbols
(1000PEPEUSDT) have no mapping: each venue scales them differently, so they are refused rather
than guessed.

Units: `open_interest` is in base coins (BTC) on every venue and `open_interest_value` in USD
(USDT). A venue that counts contracts is converted with the contract size its instrument list
serves (`Instrument.contract_size`, base coins per contract).

Rows of the raw tables built from the venues' answers: `venue_frames`; what Bybit and OKX share
behind the MarketSource protocol (coverage, grid, known gaps): `venue_source`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from qml_pipeline.store.schemas import VENUES
from qml_pipeline.timeutil import interval_ms

QUOTES = ("USDT", "USDC")

# Binance's open-interest periods (REST /futures/data/openInterestHist and the archive's buckets): the
# project's notation for every venue.
BINANCE_OI_PERIODS = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
# The project's open-interest periods (Binance notation) as each venue spells them. OKX's 6H, 12H
# and 1D bars open at 00:00 UTC+8; their `utc` variants open at 00:00 UTC like everyone else's.
OI_PERIODS: dict[str, dict[str, str]] = {
    "binance": {p: p for p in BINANCE_OI_PERIODS},
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


def check_venue(venue: str) -> None:
    if venue not in VENUES:
        raise ValueError(f"unknown venue {venue!r}; expected one of {VENUES}")


def split_symbol(venue: str, symbol: str) -> tuple[str, str]:
    """(base, quote) of a project symbol, e.g. ('BTC', 'USDT') for BTCUSDT."""
    check_venue(venue)
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
    check_venue(venue)
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
    check_venue(venue)
    try:
        return OI_PERIODS[venue][period]
    except KeyError:
        raise ValueError(f"{venue} serves open interest for periods {sorted(OI_PERIODS[venue], key=interval_ms)} "
                         f"(Binance notation); got {period!r}") from None
