"""Dagster resources: the warehouse, the market data, the schedules' refresh, the trades, the research settings and
Coinglass, built from QML_* env vars (qml_pipeline/config.py parses them) by `default_resources`. A field's default is
the code's default (config.Settings), so a test or script names only what it changes."""


import contextlib
import os
from pathlib import Path
from collections.abc import Callable

import dagster as dg

from qml_pipeline.trades.build import TradeSourceConfig
from qml_pipeline.config import Settings
from qml_pipeline.sources.ingest import MarketSource
from qml_pipeline.sources.coinglass import (DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL, ENV_PLAN_MIN_INTERVAL,
                                            CoinglassClient, coinglass_from_env)
from qml_pipeline.sources.sample import SampleSource
from qml_pipeline.sources.universe import Universe, binance_usdm_universe, configured_universe
from qml_pipeline.store.quality import DivergenceConfig
from qml_pipeline.store.schemas import BarPlausibility
from qml_pipeline.store.warehouse import Warehouse

# The settings Dagster needs while the definitions LOAD, read once here and nowhere else: the partitions (first
# year, the sample's last year), the raw assets per venue, the quality check specs per symbol, the crons and the
# executor are the graph itself, fixed at import. Everything read while an asset, check, schedule or sensor RUNS
# comes from a resource below; `default_resources` builds them from these same settings.
DEFINITIONS_SETTINGS = Settings.from_env()


def from_settings(resource: type[dg.ConfigurableResource], settings: Settings,
                  **renamed: str) -> dict[str, object]:
    """The fields of `resource` taken from `settings` (same name, or `field=settings_name` in `renamed`)."""
    values: dict[str, object] = {}
    for field in resource.model_fields:
        name = renamed.get(field, field)
        if hasattr(settings, name):
            value = getattr(settings, name)
            values[field] = list(value) if isinstance(value, tuple) else value
    return values


class WarehouseResource(dg.ConfigurableResource):
    """The DuckLake warehouse: its folder (QML_WAREHOUSE_DIR), catalog (QML_WAREHOUSE_CATALOG: empty = SQLite
    in the folder, or postgres:<conninfo>) and data path (QML_WAREHOUSE_DATA_PATH)."""

    root: str = Settings.warehouse_dir
    catalog: str = Settings.warehouse_catalog
    data_path: str = Settings.warehouse_data_path
    retention_days: int = Settings.warehouse_retention_days

    def get(self) -> Warehouse:
        return Warehouse(self.root, catalog=self.catalog, data_path=self.data_path)

    def for_run(self, context: dg.AssetExecutionContext | dg.OpExecutionContext) -> Warehouse:
        """The warehouse whose snapshots carry this run's id, asset(s) and partition range."""
        tags = {"dagster_run_id": context.run.run_id}
        with contextlib.suppress(Exception):
            tags["assets"] = ",".join(k.to_user_string() for k in context.selected_asset_keys)
        if context.has_partition_key_range:
            r = context.partition_key_range
            tags["partitions"] = r.start if r.start == r.end else f"{r.start}...{r.end}"
        return self.get().with_tags(**tags)


class MarketDataResource(dg.ConfigurableResource):
    """Which market data feeds the raw assets (QML_SOURCE: sample | binance for Binance's rows; Bybit and
    OKX are read from their APIs, QML_BYBIT_URL and QML_OKX_URL) and its settings."""

    source: str = Settings.source
    # where the symbols come from (QML_UNIVERSE): "configured" = `symbols`, "binance_usdm" = exchangeInfo
    universe: str = Settings.universe
    symbols: list[str] = list(Settings.symbols)
    # QML_VENUES: whose open interest and funding the context, cards and venue comparison read
    venues: list[str] = list(Settings.venues)
    kline_intervals: list[str] = list(Settings.kline_intervals)
    # QML_START_DATE: the first day the context (liquidation map, Coinglass liquidations) covers
    start_date: str = Settings.start_date
    sample_dir: str = Settings.sample_dir
    binance_fapi_url: str = Settings.binance_fapi_url
    binance_archive_url: str = Settings.binance_archive_url
    bybit_url: str = Settings.bybit_url
    okx_url: str = Settings.okx_url
    oi_period: str = Settings.oi_period
    oi_publication_lag_seconds: int = Settings.oi_publication_lag_seconds
    funding_rate_cap: float = Settings.funding_rate_cap
    known_gaps_file: str = Settings.known_gaps_file
    archive_revalidate: bool = Settings.archive_revalidate
    # fetch every window again even when the warehouse already fills it (finds re-published values)
    refetch: bool = False
    bar_outlier_factor: float = Settings.bar_outlier_factor
    bar_outlier_min_log_move: float = Settings.bar_outlier_min_log_move
    bar_outlier_window: int = Settings.bar_outlier_window
    # venue_divergence: a venue's OI change this many percentage points off the venues' median, over 1h / 24h
    venue_divergence_1h_points: float = Settings.venue_divergence_1h_points
    venue_divergence_24h_points: float = Settings.venue_divergence_24h_points

    @property
    def live(self) -> bool:
        """Binance's rows come from a live source (not the bundled past sample)."""
        return self.source != "sample"

    def divergence(self) -> DivergenceConfig:
        """When venues disagree (QML_VENUE_DIVERGENCE_*_POINTS; store/quality.DivergenceConfig)."""
        return DivergenceConfig(((1, self.venue_divergence_1h_points), (24, self.venue_divergence_24h_points)))

    def plausibility(self) -> BarPlausibility:
        """When a kline is implausible (QML_BAR_OUTLIER_*; schemas.BarPlausibility)."""
        return BarPlausibility(self.bar_outlier_factor, self.bar_outlier_min_log_move, self.bar_outlier_window)

    def universe_symbols(self) -> Universe:
        """The symbols the raw assets should cover now (the Binance universe costs one exchangeInfo request)."""
        if self.universe == "binance_usdm":
            from qml_pipeline.sources.binance_rest import BinanceRest
            from qml_pipeline.sources.http_client import HttpClient

            return binance_usdm_universe(BinanceRest(HttpClient(self.binance_fapi_url)).exchange_info())
        if self.universe == "configured":
            return configured_universe(self.symbols)
        raise ValueError(f"unknown universe {self.universe!r}: use 'configured' or 'binance_usdm'")

    def open(self, log: Callable[[str], None] | None, cache_dir: Path, venue: str = "binance") -> MarketSource:
        """The configured source of `venue`'s rows; downloaded archive files are cached under `cache_dir` (the
        warehouse's `cache/` folder: Warehouse.cache_dir)."""
        if venue in ("bybit", "okx"):
            from qml_pipeline.sources import bybit, okx

            module = bybit if venue == "bybit" else okx
            url = self.bybit_url if venue == "bybit" else self.okx_url
            source_class = bybit.BybitSource if venue == "bybit" else okx.OkxSource
            return source_class(module.make_client(url, on_progress=log),
                                oi_publication_lag_s=self.oi_publication_lag_seconds,
                                known_gaps_file=self.known_gaps_file or None)
        if venue != "binance":
            raise ValueError(f"no source for venue {venue!r}: expected binance, bybit or okx")
        if self.source == "sample":
            source = SampleSource(self.sample_dir, self.oi_publication_lag_seconds)
            if self.known_gaps_file:
                source.use_known_gaps(self.known_gaps_file)
            return source
        if self.source == "binance":
            from qml_pipeline.sources.binance import BinanceSource

            source = BinanceSource(fapi_url=self.binance_fapi_url, archive_url=self.binance_archive_url,
                                   oi_publication_lag_s=self.oi_publication_lag_seconds, on_progress=log,
                                   cache_dir=cache_dir,
                                   known_gaps_file=self.known_gaps_file or None)
            source.archive.revalidate = self.archive_revalidate
            return source
        raise ValueError(f"unknown market data source {self.source!r}: use 'sample' or 'binance'")


class RefreshResource(dg.ConfigurableResource):
    """How the schedules refresh: symbols per daily-refresh run (QML_REFRESH_SYMBOLS_PER_RUN), the intraday
    refresh's interval (QML_CARDS_REFRESH_MINUTES; its cron is fixed when the definitions load, from the same
    setting) and how far back it re-reads (QML_INTRADAY_OVERLAP_MINUTES)."""

    refresh_symbols_per_run: int = Settings.refresh_symbols_per_run
    cards_refresh_minutes: int = Settings.cards_refresh_minutes
    intraday_overlap_minutes: int = Settings.intraday_overlap_minutes


class TradeSourceResource(dg.ConfigurableResource):
    """Which trades the research judges: a user's export (QML_TRADES_PATH, QML_TRADES_COLUMN_MAP) or,
    when no path is set, the reference QML detector on the warehouse's klines (QML_TRADE_TIMEFRAMES)."""

    export_path: str = Settings.trades_path
    column_map: str = Settings.trades_column_map
    timeframes: list[str] = list(Settings.trade_timeframes)

    def config(self) -> TradeSourceConfig:
        mapping = Settings(trades_column_map=self.column_map).column_map()  # raises SettingsError naming problems
        return TradeSourceConfig(export_path=self.export_path, column_map=mapping,
                                 timeframes=tuple(self.timeframes))


class ResearchResource(dg.ConfigurableResource):
    """Research settings: the gate override (QML_OVERRIDE_GATES), the timeout label policy (loss: the
    seed's meaning; exclude; r_sign: by the sign of R; see qml_pipeline/trades/metrics.py) and the
    model's epochs and seed."""

    override_gates: bool = Settings.override_gates
    timeout_as: str = "loss"
    model_epochs: int = Settings.model_epochs
    model_seed: int = Settings.model_seed


class CoinglassResource(dg.ConfigurableResource):
    """Optional Coinglass liquidation history. The key is a Dagster `EnvVar` (COINGLASS_API_KEY): the UI and run
    config show the variable's name, never its value; empty = Coinglass is skipped."""

    api_key: str = ""
    plan_min_interval: str = "4h"  # COINGLASS_PLAN_MIN_INTERVAL
    base_url: str = DEFAULT_BASE_URL  # COINGLASS_BASE_URL

    def client(self) -> "CoinglassClient | None":
        return coinglass_from_env({ENV_API_KEY: self.api_key, ENV_PLAN_MIN_INTERVAL: self.plan_min_interval,
                                   ENV_BASE_URL: self.base_url})


def coinglass_resource() -> CoinglassResource:
    """The Coinglass resource of the deployment: the key as an EnvVar when it is set (an unset EnvVar would fail
    every run; without a key the asset is skipped with its reason)."""
    return CoinglassResource(api_key=dg.EnvVar(ENV_API_KEY) if os.environ.get(ENV_API_KEY) else "",
                             plan_min_interval=os.environ.get(ENV_PLAN_MIN_INTERVAL) or "4h",
                             base_url=os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL)


def default_resources(settings: Settings = DEFINITIONS_SETTINGS) -> dict[str, dg.ConfigurableResource]:
    """Every resource of the deployment, configured from `settings` (the QML_* env vars by default)."""
    return {"warehouse": WarehouseResource(**from_settings(WarehouseResource, settings, root="warehouse_dir",
                                                           catalog="warehouse_catalog",
                                                           data_path="warehouse_data_path",
                                                           retention_days="warehouse_retention_days")),
            "market": MarketDataResource(**from_settings(MarketDataResource, settings)),
            "refresh": RefreshResource(**from_settings(RefreshResource, settings)),
            "trade_source": TradeSourceResource(**from_settings(TradeSourceResource, settings,
                                                                export_path="trades_path",
                                                                column_map="trades_column_map",
                                                                timeframes="trade_timeframes")),
            "research": ResearchResource(**from_settings(ResearchResource, settings)),
            "coinglass": coinglass_resource()}
