"""Live Binance market data behind the MarketSource protocol (REST today; the public archive for
history older than the REST window is added by the archive source)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import polars as pl

from qml_pipeline.http_client import HttpClient
from qml_pipeline.sources.binance_rest import BinanceRest


class BinanceSource:
    name = "binance"

    def __init__(self, fapi_url: str, archive_url: str, oi_publication_lag_s: int = 0,
                 on_progress: Callable[[str], None] | None = None):
        self.client = HttpClient(fapi_url, on_progress=on_progress)
        self.rest = BinanceRest(self.client, oi_publication_lag_s)
        self.archive_url = archive_url

    def request_stats(self) -> dict[str, float]:
        return self.client.stats.as_dict()

    def funding_rates(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        return self.rest.funding_rates(symbol, start, end)

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame:
        return self.rest.open_interest(symbol, period, start, end)

    def klines(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        return self.rest.klines(symbol, interval, start, end)
