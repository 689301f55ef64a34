"""Which symbols the pipeline covers: the configured list (QML_SYMBOLS) or every USD-M perpetual Binance lists.

Symbols are data: the Dagster layer turns a `Universe` into dynamic partitions and never removes one, so a
delisted contract keeps its history and its partitions. Binance's `/fapi/v1/exchangeInfo` lists trading,
pending and recently delisted contracts (status SETTLING or CLOSE, with the delivery date); delivery futures
(`contractType` CURRENT_QUARTER, ...) are not perpetuals and are left out. A listed name that is not a symbol
the project can use as a path and partition key (`schemas.SYMBOL_PATTERN`, e.g. names in other scripts) is
reported, never silently renamed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qml_pipeline.store.schemas import symbol_problem

PERPETUAL = "PERPETUAL"
LIVE_STATUSES = ("TRADING", "PENDING_TRADING")


@dataclass(frozen=True)
class Universe:
    """`symbols` in listing order (oldest first, then by name); `delisted` is the subset no longer trading;
    `refused` names listed contracts that are not usable symbols, with why."""

    source: str
    symbols: tuple[str, ...]
    delisted: tuple[str, ...] = ()
    refused: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        parts = [f"{len(self.symbols)} symbol(s) from {self.source}"]
        if self.delisted:
            parts.append(f"{len(self.delisted)} delisted (kept: {', '.join(self.delisted[:10])}"
                         + (", ..." if len(self.delisted) > 10 else "") + ")")
        if self.refused:
            parts.append(f"{len(self.refused)} refused ({'; '.join(self.refused[:5])})")
        return "; ".join(parts)


def configured_universe(symbols: Iterable[str]) -> Universe:
    """The configured symbols (already validated by Settings), in their configured order."""
    return Universe("QML_SYMBOLS", tuple(dict.fromkeys(symbols)))


def binance_usdm_universe(exchange_info: Mapping[str, Mapping[str, Any]]) -> Universe:
    """Every perpetual in Binance's exchangeInfo rows (symbol -> row, as `BinanceRest.exchange_info()` returns
    them), listed or delisted."""
    usable, delisted, refused = [], [], []
    rows = sorted(exchange_info.values(), key=lambda r: (int(r.get("onboardDate") or 0), str(r.get("symbol"))))
    for row in rows:
        if row.get("contractType") != PERPETUAL:
            continue
        symbol = row.get("symbol")
        problem = symbol_problem(symbol)
        if problem:
            refused.append(problem)
            continue
        usable.append(symbol)
        if row.get("status") not in LIVE_STATUSES:
            delisted.append(symbol)
    return Universe("Binance USD-M exchangeInfo", tuple(usable), tuple(delisted), tuple(refused))
