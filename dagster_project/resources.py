"""Dagster resources: the warehouse and the market-data source, configured from QML_* env vars."""


from collections.abc import Callable

import dagster as dg

from qml_pipeline.config import Settings
from qml_pipeline.ingest import MarketSource
from qml_pipeline.sources.sample import SampleSource
from qml_pipeline.warehouse import Warehouse

SETTINGS = Settings.from_env()


class WarehouseResource(dg.ConfigurableResource):
    """Where the Parquet data and the analysts' DuckDB catalogue live (QML_WAREHOUSE_DIR)."""

    root: str = SETTINGS.warehouse_dir

    def get(self) -> Warehouse:
        return Warehouse(self.root)


class MarketDataResource(dg.ConfigurableResource):
    """Which market data feeds the raw assets (QML_SOURCE: sample | binance) and its settings."""

    source: str = SETTINGS.source
    sample_dir: str = SETTINGS.sample_dir
    binance_fapi_url: str = SETTINGS.binance_fapi_url
    binance_archive_url: str = SETTINGS.binance_archive_url
    oi_period: str = SETTINGS.oi_period
    oi_publication_lag_seconds: int = SETTINGS.oi_publication_lag_seconds
    funding_rate_cap: float = SETTINGS.funding_rate_cap

    def open(self, log: Callable[[str], None] | None = None) -> MarketSource:
        if self.source == "sample":
            return SampleSource(self.sample_dir, self.oi_publication_lag_seconds)
        if self.source == "binance":
            from qml_pipeline.sources.binance import BinanceSource

            return BinanceSource(fapi_url=self.binance_fapi_url, archive_url=self.binance_archive_url,
                                 oi_publication_lag_s=self.oi_publication_lag_seconds, on_progress=log)
        raise ValueError(f"unknown market data source {self.source!r}: use 'sample' or 'binance'")


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {"warehouse": WarehouseResource(), "market": MarketDataResource()}
