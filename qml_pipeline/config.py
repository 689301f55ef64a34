"""Settings from environment variables, with defaults that run offline on the bundled sample."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qml_pipeline.store.schemas import DEFAULT_FUNDING_RATE_CAP, VENUES
from qml_pipeline.timeutil import interval_ms

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("sample", "binance")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class Settings:
    """Every knob the pipeline has; each field's env var is QML_<FIELD NAME IN CAPITALS>."""

    warehouse_dir: str = str(PROJECT_ROOT / "warehouse")
    # DuckLake catalog: empty = an SQLite file in warehouse_dir; or postgres:<libpq conninfo>
    warehouse_catalog: str = ""
    # where the lake's Parquet files go: empty = <warehouse_dir>/data; or any path/URL DuckDB can write
    warehouse_data_path: str = ""
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    kline_intervals: tuple[str, ...] = ("1h", "4h")
    oi_period: str = "5m"
    # "sample": the bundled Freqtrade data directory and open-interest file (offline);
    # "binance": Binance's REST API and public archive.
    source: str = "sample"
    sample_dir: str = str(PROJECT_ROOT / "sample_data")
    binance_fapi_url: str = "https://fapi.binance.com"
    binance_archive_url: str = "https://data.binance.vision"
    # the venues whose open interest and funding the pipeline reads (docs/venues.md). Binance always: the
    # trades, candles and Binance features come from it; bybit and okx are read live from their APIs, so
    # "binance,bybit,okx" goes with QML_SOURCE=binance (the bundled sample is Binance only).
    venues: tuple[str, ...] = ("binance",)
    bybit_url: str = "https://api.bybit.com"
    okx_url: str = "https://www.okx.com"
    # venue_divergence flags a venue whose OI change differs from the other venues' median by more than
    # this many PERCENTAGE POINTS over 1h / over 24h
    venue_divergence_1h_points: float = 3.0
    venue_divergence_24h_points: float = 10.0
    start_date: str = "2021-12-01"
    # seconds added to every open-interest row's knowable time beyond its stamp + period
    oi_publication_lag_seconds: int = 0
    funding_rate_cap: float = DEFAULT_FUNDING_RATE_CAP
    # permanent holes a source is known to have (CSV; docs/warehouse.md): their stamps don't fail the
    # completeness check. Empty: <sample_dir>/known_gaps.csv for the sample, none for binance.
    known_gaps_file: str = ""
    # re-check every cached archive file against its published CHECKSUM (slow; after a suspected corruption)
    archive_revalidate: bool = False
    # a user's backtest export (CSV or Parquet); empty: the reference detector's trades
    trades_path: str = ""
    # the export's column names mapped to the trade contract: "Entry=entry_price,Side=direction"
    trades_column_map: str = ""
    trade_timeframes: tuple[str, ...] = ("1h", "4h")
    # run phase 10 / 11 although the phase 9 / 10 gate failed; recorded in every result it touches
    override_gates: bool = False
    model_epochs: int = 30
    model_seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"QML_SOURCE={self.source!r}: expected one of {SOURCES}")
        for interval in (*self.kline_intervals, self.oi_period):
            interval_ms(interval)
        if not self.symbols:
            raise ValueError("QML_SYMBOLS is empty: name at least one symbol, e.g. BTCUSDT")
        unknown = [v for v in self.venues if v not in VENUES]
        if unknown or "binance" not in self.venues or len(set(self.venues)) != len(self.venues):
            raise ValueError(f"QML_VENUES={','.join(self.venues)!r}: expected distinct venues among {VENUES}, "
                             "binance included (the trades, candles and Binance features come from it), e.g. "
                             "'binance' or 'binance,bybit,okx'")
        for name in ("venue_divergence_1h_points", "venue_divergence_24h_points"):
            if getattr(self, name) <= 0:
                raise ValueError(f"QML_{name.upper()}={getattr(self, name)}: expected a positive number of "
                                 "percentage points")

    def column_map(self) -> dict[str, str]:
        pairs = [p.split("=", 1) for p in _csv(self.trades_column_map)]
        bad = [p[0] for p in pairs if len(p) != 2]
        if bad:
            raise ValueError(f"QML_TRADES_COLUMN_MAP: {bad} lack '=': write file_column=contract_column pairs")
        return {k.strip(): v.strip() for k, v in pairs}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        kwargs: dict[str, object] = {}
        for name, f in cls.__dataclass_fields__.items():
            raw = env.get(f"QML_{name.upper()}")
            if raw is None or raw == "":
                continue
            default = f.default
            if isinstance(default, tuple):
                kwargs[name] = _csv(raw)
            elif isinstance(default, bool):
                kwargs[name] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                kwargs[name] = int(raw)
            elif isinstance(default, float):
                kwargs[name] = float(raw)
            else:
                kwargs[name] = raw
        return cls(**kwargs)  # type: ignore[arg-type]
