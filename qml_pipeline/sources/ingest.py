"""Fetch raw market data for a symbol and time range from a source, validate it, write it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import Table
from qml_pipeline.timeutil import day_ranges
from qml_pipeline.store.warehouse import Warehouse


class MarketSource(Protocol):
    """What every market-data source serves, in the raw tables' shapes, for [start, end)."""

    name: str

    def funding_rates(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame: ...

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame: ...

    def klines(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame: ...


@dataclass(frozen=True)
class IngestResult:
    table: str
    symbol: str
    start: datetime
    end: datetime
    rows: int
    rows_replaced: int
    first_time: datetime | None
    last_time: datetime | None
    parts: tuple[tuple[str, str], ...] = ()

    def as_row(self) -> dict[str, object]:
        return {"table": self.table, "symbol": self.symbol, **dict(self.parts),
                "start": self.start.isoformat(), "end": self.end.isoformat(), "rows": self.rows,
                "rows_replaced": self.rows_replaced,
                "first_time": self.first_time.isoformat() if self.first_time else None,
                "last_time": self.last_time.isoformat() if self.last_time else None}


def fetch(source: MarketSource, table: Table, symbol: str, start: datetime, end: datetime,
          *, interval: str | None = None, oi_period: str = "5m") -> pl.DataFrame:
    if table is schemas.FUNDING_RATES:
        return source.funding_rates(symbol, start, end)
    if table is schemas.OPEN_INTEREST:
        return source.open_interest(symbol, oi_period, start, end)
    if table is schemas.KLINES:
        if interval is None:
            raise ValueError("klines need an interval")
        return source.klines(symbol, interval, start, end)
    raise ValueError(f"no source method for table {table.name}")


def ingest(warehouse: Warehouse, table: Table, frame: pl.DataFrame, *, symbol: str, start: datetime,
           end: datetime, funding_rate_cap: float = schemas.DEFAULT_FUNDING_RATE_CAP,
           **parts: str) -> IngestResult:
    """Validate `frame` against the table's contract, then make it the window's rows.

    Raises schemas.ValidationError naming the offending rows; nothing is written then.
    """
    frame = schemas.conform(table, frame)
    schemas.validate(table, frame, funding_rate_cap)
    stats = warehouse.write_window(table, frame, start=start, end=end, symbol=symbol, **parts)
    tcol = table.time_column
    return IngestResult(
        table=table.name, symbol=symbol, start=start, end=end, rows=frame.height,
        rows_replaced=stats.rows_replaced,
        first_time=frame[tcol].min() if frame.height else None,
        last_time=frame[tcol].max() if frame.height else None,
        parts=tuple(sorted(parts.items())))


def partition_ranges(partition_keys: list[str]) -> dict[str, list[tuple[datetime, datetime]]]:
    """`SYMBOL|YYYY-MM-DD` keys -> per symbol, the contiguous [start, end) day ranges they cover."""
    days: dict[str, list[str]] = defaultdict(list)
    for key in partition_keys:
        symbol, day = key.split("|")
        days[symbol].append(day)
    return {symbol: day_ranges(ds) for symbol, ds in sorted(days.items())}
