"""Settings from environment variables, with defaults that run offline on the bundled sample.

Settings are validated when they load: every problem (a symbol that is not a symbol, an unknown
interval, a number that is not one, a column map that cannot work, ...) is collected into ONE
`SettingsError` naming each variable, the value seen and what is allowed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path

from qml_pipeline.errors import InputError
from qml_pipeline.sources.venues import BINANCE_OI_PERIODS
from qml_pipeline.store.schemas import DEFAULT_FUNDING_RATE_CAP, VENUES, BarPlausibility, symbol_problem
from qml_pipeline.timeutil import INTERVAL_MS
from qml_pipeline.trades.contract import parse_column_map

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("sample", "binance")
# Where the symbol universe comes from: QML_SYMBOLS, or Binance's USD-M perpetuals (exchangeInfo).
UNIVERSES = ("configured", "binance_usdm")
# Dagster executors a deployment can pick (dagster_project/executors.py)
EXECUTORS = ("default", "in_process", "multiprocess", "k8s", "docker", "celery", "celery_k8s")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# a cron step of minutes (*/n) only ticks evenly when n divides the hour
CARDS_REFRESH_MINUTES = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)
_DEFAULT_BARS = BarPlausibility()


class SettingsError(InputError):
    """One or more settings are wrong; `problems` lists each, naming its QML_ variable."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} setting(s) are wrong; fix them and load again:\n"
                         + "\n".join(f"  - {p}" for p in problems))


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _parse(raw: str, default: object) -> object:
    """An environment value as the type of the field's default; ValueError says what is expected."""
    text = raw.strip()
    if isinstance(default, tuple):
        return _csv(raw)
    if isinstance(default, bool):
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"expected one of {list(_TRUE + _FALSE)}")
        return text.lower() in _TRUE
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected a whole number, e.g. 30") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number, e.g. 0.03") from None
    return text


def env_name(field_name: str) -> str:
    return f"QML_{field_name.upper()}"


@dataclass(frozen=True)
class Settings:
    """Every knob the pipeline has; each field's env var is QML_<FIELD NAME IN CAPITALS>."""

    warehouse_dir: str = str(PROJECT_ROOT / "warehouse")
    # DuckLake catalog: empty = an SQLite file in warehouse_dir; or postgres:<libpq conninfo>
    warehouse_catalog: str = ""
    # where the lake's Parquet files go: empty = <warehouse_dir>/data; or any path/URL DuckDB can write
    warehouse_data_path: str = ""
    # snapshots older than this many days are expired by the weekly maintenance (time travel reaches back so far)
    warehouse_retention_days: int = 30
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    # "configured": the symbols above; "binance_usdm": every USD-M perpetual Binance lists (delisted ones kept)
    universe: str = "configured"
    # the daily refresh runs this many symbols per run (one run per chunk; a failing symbol fails its chunk)
    refresh_symbols_per_run: int = 50
    # the Dagster executor of every job (dagster_project/executors.py): default, multiprocess, k8s, celery, ...
    executor: str = "default"
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
    # a kline fails the contract when its move exceeds both factor x the median move of the window
    # of bars around it and min_log_move (schemas.BarPlausibility)
    bar_outlier_factor: float = _DEFAULT_BARS.factor
    bar_outlier_min_log_move: float = _DEFAULT_BARS.min_log_move
    bar_outlier_window: int = _DEFAULT_BARS.window
    # the intraday schedule refreshes the live edge and rebuilds the cards every this many minutes (divides 60)
    cards_refresh_minutes: int = 15
    # ... re-reading from this many minutes before each window's first missing stamp (late corrections
    # become revisions); the daily refresh re-reads a day
    intraday_overlap_minutes: int = 60

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise SettingsError(problems)

    def problems(self) -> list[str]:
        """Every setting that is wrong, as 'QML_X=<value>: what is allowed'."""
        out: list[str] = []
        if self.source not in SOURCES:
            out.append(f"QML_SOURCE={self.source!r}: expected one of {list(SOURCES)}")
        if self.executor not in EXECUTORS:
            out.append(f"QML_EXECUTOR={self.executor!r}: expected one of {list(EXECUTORS)}")
        if self.universe not in UNIVERSES:
            out.append(f"QML_UNIVERSE={self.universe!r}: expected one of {list(UNIVERSES)}")
        elif self.universe == "binance_usdm" and self.source == "sample":
            out.append("QML_UNIVERSE=binance_usdm needs QML_SOURCE=binance: the bundled sample holds only its own "
                       "symbols (use QML_SYMBOLS)")
        if not self.symbols:
            out.append("QML_SYMBOLS is empty: name at least one symbol, e.g. BTCUSDT,ETHUSDT")
        out += [f"QML_SYMBOLS: {p}" for p in filter(None, map(symbol_problem, self.symbols))]
        repeated = sorted({s for s in self.symbols if self.symbols.count(s) > 1})
        if repeated:
            out.append(f"QML_SYMBOLS names {repeated} more than once")
        for name in ("kline_intervals", "trade_timeframes"):
            values = getattr(self, name)
            if not values:
                out.append(f"{env_name(name)} is empty: name at least one interval, e.g. 1h,4h")
            bad = [v for v in values if v not in INTERVAL_MS]
            if bad:
                out.append(f"{env_name(name)}: {bad} not interval(s); expected Binance notation, one of "
                           f"{list(INTERVAL_MS)}")
        if self.oi_period not in BINANCE_OI_PERIODS:
            out.append(f"QML_OI_PERIOD={self.oi_period!r}: expected one of {list(BINANCE_OI_PERIODS)}")
        for name in ("binance_fapi_url", "binance_archive_url"):
            if name == "binance_archive_url" and re.match(r"^file:///\S*$", self.binance_archive_url):
                continue  # a local mirror of the archive's layout, read in place
            if not re.match(r"^https?://[^\s/]+", getattr(self, name)):
                out.append(f"{env_name(name)}={getattr(self, name)!r}: expected an http(s) URL, e.g. "
                           f"{getattr(Settings, name)}")
        try:
            date.fromisoformat(self.start_date)
        except ValueError:
            out.append(f"QML_START_DATE={self.start_date!r}: expected a date as YYYY-MM-DD, e.g. 2021-12-01")
        for name, low, high, what in (
                ("oi_publication_lag_seconds", 0, None, "seconds, 0 or more"),
                ("refresh_symbols_per_run", 1, None, "a whole number of symbols, 1 or more, e.g. 50"),
                ("funding_rate_cap", 0, 1, "a fraction per interval above 0 and at most 1 (0.03 = 3%)"),
                ("model_epochs", 1, None, "a whole number of epochs, 1 or more"),
                ("bar_outlier_factor", 1, None, "a multiple of the median move above 1, e.g. 50"),
                ("bar_outlier_min_log_move", 0, None, "a log move above 0, e.g. 0.5"),
                ("bar_outlier_window", 3, None, "a number of bars, 3 or more, e.g. 48")):
            value = getattr(self, name)
            strict_low = name in ("funding_rate_cap", "bar_outlier_factor", "bar_outlier_min_log_move")
            if (not math.isfinite(value) or value < low or (strict_low and value == low)
                    or (high is not None and value > high)):
                out.append(f"{env_name(name)}={value!r}: expected {what}")
        unknown = [v for v in self.venues if v not in VENUES]
        if unknown or "binance" not in self.venues or len(set(self.venues)) != len(self.venues):
            out.append(f"QML_VENUES={','.join(self.venues)!r}: expected distinct venues among {VENUES}, binance "
                       "included (the trades, candles and Binance features come from it), e.g. 'binance' or "
                       "'binance,bybit,okx'")
        for name in ("venue_divergence_1h_points", "venue_divergence_24h_points"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                out.append(f"{env_name(name)}={getattr(self, name)!r}: expected a positive number of percentage "
                           "points")
        if self.cards_refresh_minutes not in CARDS_REFRESH_MINUTES:
            out.append(f"QML_CARDS_REFRESH_MINUTES={self.cards_refresh_minutes!r}: expected minutes that divide an "
                       f"hour, one of {list(CARDS_REFRESH_MINUTES)}")
        if self.intraday_overlap_minutes < 0:
            out.append(f"QML_INTRADAY_OVERLAP_MINUTES={self.intraday_overlap_minutes!r}: expected minutes, 0 or more")
        out += [f"QML_TRADES_COLUMN_MAP: {p}" for p in parse_column_map(self.trades_column_map)[1]]
        return out

    def column_map(self) -> dict[str, str]:
        """QML_TRADES_COLUMN_MAP as {file column: contract column} (validated when the settings loaded)."""
        return parse_column_map(self.trades_column_map)[0]

    def bar_plausibility(self) -> BarPlausibility:
        return BarPlausibility(self.bar_outlier_factor, self.bar_outlier_min_log_move, self.bar_outlier_window)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        """Settings from QML_* variables; raises one SettingsError listing every problem."""
        env = dict(os.environ if env is None else env)
        kwargs: dict[str, object] = {}
        problems: list[str] = []
        for f in fields(cls):
            var = env_name(f.name)
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                kwargs[f.name] = _parse(raw, f.default)
            except ValueError as exc:
                problems.append(f"{var}={raw!r}: {exc}")
        try:
            settings = cls(**kwargs)  # type: ignore[arg-type]
        except SettingsError as exc:
            problems += exc.problems
        if problems:
            raise SettingsError(problems)
        return settings
