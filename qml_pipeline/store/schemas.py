"""The one place that knows each warehouse table: columns, types, units, keys and validation rules.

Everything else (writers, readers, the DuckDB catalogue, the docs page, pandera checks) derives
from `TABLES`. Timestamps are UTC, timezone-aware, millisecond precision everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime

import pandera.polars as pa
import polars as pl

from qml_pipeline.errors import InputError
from qml_pipeline.timeutil import utc_now

TS = pl.Datetime("ms", "UTC")

# Binance's funding caps are per symbol (0.3%..3% per interval at the time of writing); a rate
# beyond this bound is a unit error, not a market extreme. Configurable via QML_FUNDING_RATE_CAP.
DEFAULT_FUNDING_RATE_CAP = 0.03
# Binance and Bybit settle every 1, 2, 4 or 8 hours; OKX also every 6 hours (its funding-rate
# history docs).
FUNDING_INTERVALS_HOURS = (1, 2, 4, 6, 8)
# The exchanges whose open interest and funding the raw tables hold (the `venue` column). Binance is the
# trades' venue (klines and the Binance features come from it); docs/venues.md.
VENUES = ("binance", "bybit", "okx")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    duckdb_type: str
    unit: str
    doc: str
    nullable: bool = False
    # filled in by `conform` when a frame lacks the column (e.g. venue 'binance', revision 0)
    default: object = None


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    # The column a partition's time window applies to (a day partition owns rows whose
    # time_column lies in [day, day + 1)).
    time_column: str | None = None
    # The columns a re-published row is compared on: a different value is kept as a new revision (raw
    # tables, merged by key). Empty for derived tables, which are replaced whole.
    value_columns: tuple[str, ...] = field(default=())

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def revisioned(self) -> bool:
        """Rows are merged by key and differing re-publications kept (column `revision`)."""
        return "revision" in self.names

    @property
    def stored_key(self) -> tuple[str, ...]:
        """What is unique among stored rows: the key, plus the revision where revisions are kept."""
        return (*self.key, "revision") if self.revisioned else self.key

    @property
    def polars_schema(self) -> pl.Schema:
        return pl.Schema({c.name: c.dtype for c in self.columns})

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}")


VENUE = Column("venue", pl.Utf8, "VARCHAR", "",
               "exchange the row describes: binance, bybit or okx", default="binance")
REVISION = Column("revision", pl.Int32, "INTEGER", "",
                  "0 for the first publication of the key; n for the n-th later re-publication with different "
                  "values (its available_at is no earlier than when it was ingested). Features use revision 0.",
                  default=0)


def _lineage() -> tuple[Column, ...]:
    return (
        Column("available_at", TS, "TIMESTAMPTZ", "UTC",
               "earliest moment a trader could have known this value; features use only rows with "
               "available_at <= decision_time"),
        Column("source", pl.Utf8, "VARCHAR", "",
               "where the row came from: binance_rest, binance_archive, bybit_rest, okx_rest, freqtrade, "
               "sample_archive_1h, or a name containing 'synthetic' for generated data"),
        Column("ingested_at", TS, "TIMESTAMPTZ", "UTC", "when the pipeline wrote the row"),
    )


FUNDING_RATES = Table(
    name="funding_rates",
    doc="Funding settlements of USD-M perpetuals, one row per symbol and settlement.",
    columns=(
        VENUE,
        Column("symbol", pl.Utf8, "VARCHAR", "", "the project's symbol (Binance spelling), e.g. BTCUSDT"),
        Column("event_time", TS, "TIMESTAMPTZ", "UTC",
               "settlement time snapped to the hourly settlement grid"),
        Column("funding_rate", pl.Float64, "DOUBLE", "fraction per interval",
               "rate paid by longs to shorts per interval: 0.0001 = 0.01%"),
        Column("funding_interval_hours", pl.Int16, "SMALLINT", "hours",
               "the settlement interval in force for this settlement (8, 6, 4, 2 or 1)"),
        Column("mark_price", pl.Float64, "DOUBLE", "USDT", "mark price at settlement, when served",
               nullable=True),
        Column("exchange_time", TS, "TIMESTAMPTZ", "UTC",
               "the settlement time as the source served it, with its millisecond jitter"),
        *_lineage(),
        REVISION,
    ),
    key=("venue", "symbol", "event_time"),
    time_column="event_time",
    value_columns=("funding_rate",),
)

OPEN_INTEREST = Table(
    name="open_interest",
    doc="Open interest snapshots, one row per symbol and stamp.",
    columns=(
        VENUE,
        Column("symbol", pl.Utf8, "VARCHAR", "", "the project's symbol (Binance spelling), e.g. BTCUSDT"),
        Column("event_time", TS, "TIMESTAMPTZ", "UTC",
               "the row's stamp as the source serves it (archive create_time, REST timestamp)"),
        Column("period_minutes", pl.Int32, "INTEGER", "minutes",
               "the bucket length of the source row (5 for the archive's metrics)"),
        Column("open_interest", pl.Float64, "DOUBLE", "base asset (e.g. BTC)", "sum of open interest"),
        Column("open_interest_value", pl.Float64, "DOUBLE", "USDT",
               "sum of open interest value; 0 in some archive rows where data is missing", nullable=True),
        *_lineage(),
        REVISION,
    ),
    key=("venue", "symbol", "event_time"),
    time_column="event_time",
    value_columns=("open_interest", "open_interest_value"),
)

KLINES = Table(
    name="klines",
    doc="Closed candles of USD-M perpetuals, one row per symbol, interval and open time.",
    columns=(
        Column("symbol", pl.Utf8, "VARCHAR", "", "exchange symbol"),
        Column("interval", pl.Utf8, "VARCHAR", "", "candle length: 1m .. 1d (Binance notation)"),
        Column("event_time", TS, "TIMESTAMPTZ", "UTC", "the candle's open time"),
        Column("close_time", TS, "TIMESTAMPTZ", "UTC", "open time + interval (exclusive end)"),
        Column("open", pl.Float64, "DOUBLE", "USDT", "first trade price"),
        Column("high", pl.Float64, "DOUBLE", "USDT", "highest trade price"),
        Column("low", pl.Float64, "DOUBLE", "USDT", "lowest trade price"),
        Column("close", pl.Float64, "DOUBLE", "USDT", "last trade price"),
        Column("volume", pl.Float64, "DOUBLE", "base asset", "traded volume"),
        Column("quote_volume", pl.Float64, "DOUBLE", "USDT", "traded quote volume", nullable=True),
        Column("trade_count", pl.Int64, "BIGINT", "trades", "number of trades", nullable=True),
        Column("taker_buy_volume", pl.Float64, "DOUBLE", "base asset", "taker buy volume", nullable=True),
        *_lineage(),
        REVISION,
    ),
    key=("symbol", "interval", "event_time"),
    time_column="event_time",
    value_columns=("open", "high", "low", "close", "volume"),
)

# ---------------------------------------------------------------- derived tables

TRADES = Table(
    name="trades",
    doc="One row per pattern traded (or left unfilled): the baseline the context phases judge.",
    columns=(
        Column("trade_id", pl.Utf8, "VARCHAR", "", "unique id; the detector's is "
               "<symbol>-<timeframe>-<BULL|BEAR>-<decision_time %Y%m%dT%H%M>"),
        Column("symbol", pl.Utf8, "VARCHAR", "", "exchange symbol, e.g. BTCUSDT"),
        Column("timeframe", pl.Utf8, "VARCHAR", "", "candle interval the pattern was found on "
               "(Binance notation: 1h, 4h, ...)"),
        Column("direction", pl.Utf8, "VARCHAR", "", "BULLISH (long) or BEARISH (short)"),
        Column("decision_time", TS, "TIMESTAMPTZ", "UTC",
               "when the pattern was complete and a trader could act (close of the break-of-structure "
               "bar); context features use only rows with available_at <= decision_time"),
        Column("entry_time", TS, "TIMESTAMPTZ", "UTC",
               "when the entry filled (the detector: open time of the fill bar); NULL if never filled",
               nullable=True),
        Column("entry_price", pl.Float64, "DOUBLE", "quote per base unit (USDT)",
               "limit entry price (the left shoulder level for the detector)"),
        Column("stop_price", pl.Float64, "DOUBLE", "quote per base unit (USDT)",
               "protective stop; below entry for BULLISH, above for BEARISH"),
        Column("target_price", pl.Float64, "DOUBLE", "quote per base unit (USDT)",
               "take-profit level", nullable=True),
        Column("exit_time", TS, "TIMESTAMPTZ", "UTC",
               "when the position closed (the detector: close time of the bar in which the stop, target or "
               "timeout was hit: the outcome is certain by then); NULL if never filled", nullable=True),
        Column("exit_price", pl.Float64, "DOUBLE", "quote per base unit (USDT)", "exit price",
               nullable=True),
        Column("r_multiple", pl.Float64, "DOUBLE", "R (initial risk units)",
               "net result after fees and funding: gross_r_multiple - fees_r - funding_r; NULL if "
               "never filled", nullable=True),
        Column("gross_r_multiple", pl.Float64, "DOUBLE", "R",
               "price result before costs: signed (exit - entry) / |entry - stop|", nullable=True),
        Column("fees_r", pl.Float64, "DOUBLE", "R", "trading fees of both sides, as a cost (>= 0)",
               nullable=True),
        Column("funding_r", pl.Float64, "DOUBLE", "R",
               "funding paid while in the trade, as a cost: positive = paid, negative = received",
               nullable=True),
        Column("outcome", pl.Utf8, "VARCHAR", "",
               "WIN (target hit), LOSS (stop hit), TIMEOUT (closed at max hold), NOT_FILLED (limit "
               "not reached in time), INVALIDATED (close beyond the head before the fill)"),
        Column("base_confidence", pl.Float64, "DOUBLE", "fraction 0..1",
               "pattern quality from geometry alone (docs/detector.md); NULL if the export has none",
               nullable=True),
        Column("source", pl.Utf8, "VARCHAR", "",
               "reference_detector, or user_export:<file name>"),
        Column("ls_time", TS, "TIMESTAMPTZ", "UTC", "open time of the left-shoulder bar", nullable=True),
        Column("ls_price", pl.Float64, "DOUBLE", "USDT",
               "left shoulder: the swing high (BEARISH) / swing low (BULLISH)", nullable=True),
        Column("head_time", TS, "TIMESTAMPTZ", "UTC", "open time of the head bar", nullable=True),
        Column("head_price", pl.Float64, "DOUBLE", "USDT",
               "head: the higher high (BEARISH) / lower low (BULLISH)", nullable=True),
        Column("low_time", TS, "TIMESTAMPTZ", "UTC",
               "open time of the bar of the swing between shoulder and head (the 'L'; a swing high "
               "for BULLISH)", nullable=True),
        Column("low_price", pl.Float64, "DOUBLE", "USDT",
               "the L level whose close-through is the break of structure (a swing high for BULLISH)",
               nullable=True),
        Column("bos_time", TS, "TIMESTAMPTZ", "UTC",
               "open time of the break-of-structure bar (decision_time is its close)", nullable=True),
    ),
    key=("trade_id",),
    time_column="decision_time",
)

LIQUIDATION_MAP = Table(
    name="liquidation_map",
    doc="Estimated liquidation notional per price bin, per symbol and snapshot (model: "
        "docs/liquidation_map.md). An estimate from OI and klines, not exchange data.",
    columns=(
        Column("symbol", pl.Utf8, "VARCHAR", "", "exchange symbol"),
        Column("snapshot_time", TS, "TIMESTAMPTZ", "UTC",
               "as-of time: uses OI rows and bars with available_at <= snapshot_time"),
        Column("price_bin_low", pl.Float64, "DOUBLE", "USDT",
               "lower edge of the liquidation-price bin (inclusive)"),
        Column("price_bin_high", pl.Float64, "DOUBLE", "USDT", "upper edge of the bin (exclusive)"),
        Column("long_liq_notional", pl.Float64, "DOUBLE", "base asset (e.g. BTC)",
               "estimated long positions whose liquidation price lies in the bin"),
        Column("long_liq_notional_usd", pl.Float64, "DOUBLE", "USDT",
               "the same long positions valued at their liquidation prices"),
        Column("short_liq_notional", pl.Float64, "DOUBLE", "base asset (e.g. BTC)",
               "estimated short positions whose liquidation price lies in the bin"),
        Column("short_liq_notional_usd", pl.Float64, "DOUBLE", "USDT",
               "the same short positions valued at their liquidation prices"),
        Column("reference_price", pl.Float64, "DOUBLE", "USDT",
               "close of the last closed bar at snapshot_time (longs' bins lie below, shorts' above)"),
        Column("open_interest", pl.Float64, "DOUBLE", "base asset",
               "the newest OI value the map includes (cluster thresholds are shares of it)"),
        Column("oi_available_at", TS, "TIMESTAMPTZ", "UTC", "available_at of that newest OI row"),
        Column("source", pl.Utf8, "VARCHAR", "", "'estimated' (this model)"),
    ),
    key=("symbol", "snapshot_time", "price_bin_low"),
    time_column="snapshot_time",
)


_METRIC_COLUMNS = (
    Column("patterns", pl.Int64, "BIGINT", "rows", "patterns in the group, filled or not"),
    Column("trades", pl.Int64, "BIGINT", "trades", "filled trades (WIN, LOSS or TIMEOUT)"),
    Column("wins", pl.Int64, "BIGINT", "trades", "target hit"),
    Column("losses", pl.Int64, "BIGINT", "trades", "stop hit"),
    Column("timeouts", pl.Int64, "BIGINT", "trades", "closed at the maximum holding time"),
    Column("not_filled", pl.Int64, "BIGINT", "patterns", "limit entry never reached"),
    Column("invalidated", pl.Int64, "BIGINT", "patterns", "close beyond the head before the fill"),
    Column("win_rate", pl.Float64, "DOUBLE", "fraction 0..1", "wins / trades", nullable=True),
    Column("avg_gross_r", pl.Float64, "DOUBLE", "R", "mean R before costs", nullable=True),
    Column("expectancy_r", pl.Float64, "DOUBLE", "R", "mean net R per trade (average R after costs)",
           nullable=True),
    Column("total_r", pl.Float64, "DOUBLE", "R", "sum of net R", nullable=True),
    Column("avg_win_r", pl.Float64, "DOUBLE", "R", "mean net R of wins", nullable=True),
    Column("avg_loss_r", pl.Float64, "DOUBLE", "R", "mean net R of losses", nullable=True),
    Column("profit_factor", pl.Float64, "DOUBLE", "ratio", "sum of positive R / |sum of negative R|",
           nullable=True),
    Column("trades_per_year", pl.Float64, "DOUBLE", "trades/year", "trades / span in years", nullable=True),
    Column("sharpe_per_trade", pl.Float64, "DOUBLE", "per trade, not annualised",
           "mean/std of per-trade R: cannot be moved by taking fewer trades at random "
           "(qml_pipeline/trades/metrics.py); the one the phase 10 gate compares", nullable=True),
    Column("sharpe_daily", pl.Float64, "DOUBLE", "annualised (sqrt 365)",
           "mean/std of the R realised per calendar day, days without an exit counted as 0, on one calendar "
           "(comparisons use the baseline's); shrinks towards 0 when fewer trades are taken", nullable=True),
    Column("sharpe_trade_count_dependent", pl.Float64, "DOUBLE", "annualised by trade count",
           "TRADE-COUNT DEPENDENT: mean/std of per-trade R times sqrt(trades per year); a random half of the "
           "trades shrinks it by sqrt(2) towards 0, so never compare variants with it", nullable=True),
    Column("calendar_days", pl.Int64, "BIGINT", "days", "days of the calendar behind sharpe_daily", nullable=True),
    Column("max_drawdown_r", pl.Float64, "DOUBLE", "R", "largest fall of cumulative R from its peak",
           nullable=True),
)

BASELINE_METRICS = Table(
    name="baseline_metrics",
    doc="The baseline's metrics (seed checklist): overall, per calendar year, symbol and timeframe.",
    columns=(
        Column("dimension", pl.Utf8, "VARCHAR", "", "overall, year, symbol or timeframe"),
        Column("group", pl.Utf8, "VARCHAR", "", "the group's value ('all' for overall)"),
        *_METRIC_COLUMNS,
    ),
    key=("dimension", "group"),
)

LIQUIDATIONS = Table(
    name="liquidations",
    doc="Liquidated long and short positions per bucket (Coinglass), per pair and exchange or per coin "
        "aggregated over exchanges (exchange 'ALL').",
    columns=(
        Column("symbol", pl.Utf8, "VARCHAR", "",
               "pair (e.g. BTCUSDT) for one exchange; coin (e.g. BTC) when exchange is 'ALL'"),
        Column("exchange", pl.Utf8, "VARCHAR", "",
               "exchange name as Coinglass spells it (e.g. Binance), or 'ALL' for the aggregate over "
               "the requested exchange list"),
        Column("interval", pl.Utf8, "VARCHAR", "", "bucket length: 1m .. 1w (Coinglass notation)"),
        Column("event_time", TS, "TIMESTAMPTZ", "UTC", "bucket start"),
        Column("long_liquidation_usd", pl.Float64, "DOUBLE", "USD",
               "value of long positions liquidated in the bucket", nullable=True),
        Column("short_liquidation_usd", pl.Float64, "DOUBLE", "USD",
               "value of short positions liquidated in the bucket", nullable=True),
        Column("available_at", TS, "TIMESTAMPTZ", "UTC",
               "bucket end (event_time + interval): the earliest moment the bucket's total was known"),
        Column("source", pl.Utf8, "VARCHAR", "", "'coinglass'"),
        Column("ingested_at", TS, "TIMESTAMPTZ", "UTC", "when the pipeline wrote the row"),
        REVISION,
    ),
    key=("symbol", "exchange", "interval", "event_time"),
    time_column="event_time",
    value_columns=("long_liquidation_usd", "short_liquidation_usd"),
)

DATA_QUALITY = Table(
    name="data_quality",
    doc="Per raw table, symbol and series: coverage, missing rows, duplicates, zero values, gaps, freshness.",
    columns=(
        Column("table_name", pl.Utf8, "VARCHAR", "", "raw table: funding_rates, open_interest or klines"),
        VENUE,
        Column("symbol", pl.Utf8, "VARCHAR", "", "exchange symbol"),
        Column("series", pl.Utf8, "VARCHAR", "", "kline interval for klines; '' for the other tables"),
        Column("sources", pl.Utf8, "VARCHAR", "", "the rows' sources, comma-separated"),
        Column("rows", pl.Int64, "BIGINT", "rows", "rows stored"),
        Column("first_event_time", TS, "TIMESTAMPTZ", "UTC", "earliest event_time"),
        Column("last_event_time", TS, "TIMESTAMPTZ", "UTC", "latest event_time"),
        Column("expected_step_minutes", pl.Float64, "DOUBLE", "minutes",
               "the most common expected spacing between rows (funding interval, OI modal spacing "
               "per source, kline interval)"),
        Column("expected_rows", pl.Int64, "BIGINT", "rows",
               "distinct stamps + missing rows between first and last event_time"),
        Column("missing_rows", pl.Int64, "BIGINT", "rows",
               "stamps absent from the expected grid between first and last event_time (missing "
               "funding settlements, OI buckets, candles)"),
        Column("completeness", pl.Float64, "DOUBLE", "fraction", "distinct stamps / expected_rows"),
        Column("duplicate_rows", pl.Int64, "BIGINT", "rows", "rows beyond the first for the same key"),
        Column("zero_rows", pl.Int64, "BIGINT", "rows",
               "open_interest: open_interest <= 0 (missing data in the archive, not zero OI); klines: "
               "a price <= 0; NULL for funding_rates (a zero or negative rate is valid)", nullable=True),
        Column("zero_value_rows", pl.Int64, "BIGINT", "rows",
               "open_interest: open_interest_value <= 0; klines: volume <= 0; NULL for funding_rates",
               nullable=True),
        Column("gap_threshold_minutes", pl.Float64, "DOUBLE", "minutes", "the shortest gap counted in gaps"),
        Column("gaps", pl.Int64, "BIGINT", "gaps", "gaps (time without rows) of at least the threshold"),
        Column("longest_gap_minutes", pl.Float64, "DOUBLE", "minutes",
               "the longest time without rows (spacing - expected step); NULL when none", nullable=True),
        Column("longest_gap_start", TS, "TIMESTAMPTZ", "UTC",
               "the first missing stamp of the longest gap", nullable=True),
        Column("last_available_at", TS, "TIMESTAMPTZ", "UTC", "latest available_at"),
        Column("freshness_minutes", pl.Float64, "DOUBLE", "minutes", "as_of - last_available_at"),
        Column("as_of", TS, "TIMESTAMPTZ", "UTC", "the moment freshness is measured from"),
        Column("revised_rows", pl.Int64, "BIGINT", "rows",
               "later re-publications with values different from the first (kept as revisions > 0; "
               "features use the first publication)"),
    ),
    key=("table_name", "venue", "symbol", "series"),
)


def _c(name: str, dtype: pl.DataType, unit: str, doc: str, nullable: bool = True) -> Column:
    duck = {pl.Utf8: "VARCHAR", pl.Float64: "DOUBLE", pl.Int64: "BIGINT", pl.Int32: "INTEGER",
            pl.Int16: "SMALLINT", pl.Boolean: "BOOLEAN"}.get(dtype, "TIMESTAMPTZ")
    return Column(name, dtype, duck, unit, doc, nullable)


TRADE_CONTEXT_FEATURES = Table(
    name="trade_context_features",
    doc="Derivatives context of each trade at its decision_time (point-in-time; docs/features.md).",
    columns=(
        Column("trade_id", pl.Utf8, "VARCHAR", "", "the trade's id"),
        Column("symbol", pl.Utf8, "VARCHAR", "", "exchange symbol"),
        Column("timeframe", pl.Utf8, "VARCHAR", "", "kline interval of the trade's pattern"),
        Column("direction", pl.Utf8, "VARCHAR", "", "BULLISH or BEARISH"),
        Column("decision_time", TS, "TIMESTAMPTZ", "UTC", "the instant the features are taken at"),
        Column("funding_rate", pl.Float64, "DOUBLE", "fraction per interval",
               "last settled rate known at decision_time; NULL if stale", nullable=True),
        Column("funding_event_time", TS, "TIMESTAMPTZ", "UTC", "settlement time of the rate used",
               nullable=True),
        Column("funding_age_hours", pl.Float64, "DOUBLE", "hours",
               "decision_time - funding_event_time (kept when the rate is stale)", nullable=True),
        Column("funding_interval_hours", pl.Int16, "SMALLINT", "hours",
               "settlement interval of the rate used", nullable=True),
        Column("funding_rate_z30d", pl.Float64, "DOUBLE", "standard deviations",
               "(funding_rate - mean) / sample std of the settlements known in (t - 30d, t]",
               nullable=True),
        Column("funding_z30d_count", pl.Int64, "BIGINT", "settlements",
               "settlements in the z-score window", nullable=True),
        Column("funding_rate_change_8h", pl.Float64, "DOUBLE", "fraction per interval",
               "funding_rate - the rate known at t - 8h", nullable=True),
        Column("funding_8h_event_time", TS, "TIMESTAMPTZ", "UTC",
               "settlement time of the rate known at t - 8h", nullable=True),
        Column("funding_8h_age_hours", pl.Float64, "DOUBLE", "hours",
               "(t - 8h) - funding_8h_event_time", nullable=True),
        Column("oi", pl.Float64, "DOUBLE", "base asset", "open interest known at decision_time; NULL if stale",
               nullable=True),
        Column("oi_event_time", TS, "TIMESTAMPTZ", "UTC", "stamp of the OI row used", nullable=True),
        Column("oi_age_minutes", pl.Float64, "DOUBLE", "minutes", "decision_time - oi_event_time",
               nullable=True),
        Column("oi_period_minutes", pl.Int32, "INTEGER", "minutes", "period of the OI row used",
               nullable=True),
        Column("oi_change_24h", pl.Float64, "DOUBLE", "percent",
               "(oi / OI known at t - 24h - 1) * 100", nullable=True),
        Column("oi_24h_event_time", TS, "TIMESTAMPTZ", "UTC", "stamp of the OI known at t - 24h",
               nullable=True),
        Column("oi_24h_age_minutes", pl.Float64, "DOUBLE", "minutes", "(t - 24h) - oi_24h_event_time",
               nullable=True),
        Column("oi_change_7d", pl.Float64, "DOUBLE", "percent", "(oi / OI known at t - 7d - 1) * 100",
               nullable=True),
        Column("oi_7d_event_time", TS, "TIMESTAMPTZ", "UTC", "stamp of the OI known at t - 7d",
               nullable=True),
        Column("oi_7d_age_minutes", pl.Float64, "DOUBLE", "minutes", "(t - 7d) - oi_7d_event_time",
               nullable=True),
        Column("oi_percentile_30d", pl.Float64, "DOUBLE", "percent (0-100)",
               "share of the hourly OI snapshots in (t - 30d, t] that are <= oi, times 100", nullable=True),
        Column("oi_percentile_points", pl.Int64, "BIGINT", "snapshots",
               "non-NULL hourly snapshots in the percentile window", nullable=True),
        Column("distance_to_liq_cluster", pl.Float64, "DOUBLE", "ATRs",
               "|price - nearest estimated liquidation cluster in the trade's direction| / atr: long "
               "liquidations below price for BEARISH, short liquidations above for BULLISH "
               "(docs/liquidation_map.md); NULL when none or stale", nullable=True),
        Column("liq_cluster_size", pl.Float64, "DOUBLE", "USDT",
               "estimated notional of that cluster, valued at its liquidation prices", nullable=True),
        Column("liq_cluster_price", pl.Float64, "DOUBLE", "USDT",
               "size-weighted liquidation price of that cluster", nullable=True),
        Column("liq_map_age_minutes", pl.Float64, "DOUBLE", "minutes",
               "decision_time - available_at of the newest OI row in the map", nullable=True),
        Column("realised_long_liq_usd_24h", pl.Float64, "DOUBLE", "USD",
               "Coinglass: long liquidations in the 24h of buckets closed by decision_time; NULL "
               "without Coinglass data", nullable=True),
        Column("realised_short_liq_usd_24h", pl.Float64, "DOUBLE", "USD",
               "Coinglass: short liquidations in the same window; NULL without Coinglass data",
               nullable=True),
        Column("atr", pl.Float64, "DOUBLE", "USDT", "ATR(14): mean true range of the last 14 closed bars",
               nullable=True),
        Column("atr_pct", pl.Float64, "DOUBLE", "percent", "atr / last_close * 100", nullable=True),
        Column("last_close", pl.Float64, "DOUBLE", "USDT", "close of the last closed bar", nullable=True),
        Column("atr_bar_close_time", TS, "TIMESTAMPTZ", "UTC", "close time of the last closed bar",
               nullable=True),
        Column("atr_age_minutes", pl.Float64, "DOUBLE", "minutes", "decision_time - atr_bar_close_time",
               nullable=True),
        # across venues (qml_pipeline/features/aggregate.py; docs/venues.md): NULL unless two venues are known
        _c("oi_agg_change_24h", pl.Float64, "percent",
           "(USD OI summed over the venues known at t / the same sum at t - 24h - 1) * 100, from "
           "open_interest_aggregate; NULL unless the same two or more venues are present at both instants"),
        _c("oi_agg_change_7d", pl.Float64, "percent", "the same with t - 7d"),
        _c("oi_agg_percentile_30d", pl.Float64, "percent (0-100)",
           "share of the hourly aggregate totals in (t - 30d, t] over the same venues that are <= the total at t, "
           "times 100; NULL with fewer than two venues or too few hourly totals"),
        _c("oi_binance_share", pl.Float64, "fraction 0..1",
           "Binance's USD OI / the aggregate's at t; NULL unless another venue is present beside Binance"),
        _c("oi_agg_venues", pl.Utf8, "", "venues in the aggregate at t, comma-separated ('' when none is fresh); "
           "NULL without an aggregate row at t"),
        _c("funding_spread_8h", pl.Float64, "fraction per 8h",
           "Binance's last settled rate known at t scaled to 8h minus the mean of the other venues' (each scaled "
           "to 8h, each with the funding staleness rule); NULL without Binance's or another venue's rate"),
        _c("funding_spread_venues", pl.Utf8, "", "the other venues whose rates the spread averages, comma-separated"),
    ),
    key=("trade_id",),
)


CONTEXT_ERROR_ANALYSIS = Table(
    name="context_error_analysis",
    doc="Phase 9: winners vs losers on each context feature (filled trades; TIMEOUT counts as a loss). "
        "docs/overlay.md.",
    columns=(
        _c("feature", pl.Utf8, "", "context feature (funding_fuel_8h: the 8h-equivalent rate signed "
           "against the trade's direction, positive = crowd against the trade)", nullable=False),
        _c("n_win", pl.Int64, "trades", "winners with a value"),
        _c("n_loss", pl.Int64, "trades", "losers with a value"),
        _c("n_null_win", pl.Int64, "trades", "winners without a value (NULL or stale)"),
        _c("n_null_loss", pl.Int64, "trades", "losers without a value"),
        _c("median_win", pl.Float64, "feature unit", "median among winners"),
        _c("median_loss", pl.Float64, "feature unit", "median among losers"),
        _c("mean_win", pl.Float64, "feature unit", "mean among winners"),
        _c("mean_loss", pl.Float64, "feature unit", "mean among losers"),
        _c("mw_u", pl.Float64, "", "Mann-Whitney U of winners vs losers"),
        _c("mw_p", pl.Float64, "probability", "two-sided Mann-Whitney p-value"),
        _c("ks_stat", pl.Float64, "", "two-sample Kolmogorov-Smirnov statistic"),
        _c("ks_p", pl.Float64, "probability", "KS p-value"),
        _c("cliffs_delta", pl.Float64, "-1..1", "effect size: P(win > loss) - P(win < loss)"),
        _c("p_adj", pl.Float64, "probability", "Mann-Whitney p adjusted by Benjamini-Hochberg across features"),
        _c("significant", pl.Boolean, "", "p_adj < alpha (default 0.05)"),
        _c("mde_cliffs_delta", pl.Float64, "0..1", "minimum detectable |Cliff's delta| at 80% power for this "
           "feature's n_win / n_loss after BH over the features tested (research/power.py)"),
    ),
    key=("feature",),
)

CONTEXT_OVERLAY = Table(
    name="context_overlay",
    doc="Phase 10: the seed's ContextOverlay per trade, each rule itemised (docs/overlay.md).",
    columns=(
        _c("trade_id", pl.Utf8, "", "the trade", nullable=False),
        _c("symbol", pl.Utf8, "", "exchange symbol"),
        _c("direction", pl.Utf8, "", "BULLISH or BEARISH"),
        _c("decision_time", TS, "UTC", "when the pattern completed"),
        _c("outcome", pl.Utf8, "", "the trade's outcome"),
        _c("base_confidence", pl.Float64, "fraction 0..1", "the pattern's own confidence"),
        _c("funding_rate", pl.Float64, "fraction per interval", "funding known at decision time"),
        _c("funding_interval_hours", pl.Int16, "hours", "its settlement interval"),
        _c("funding_rate_8h", pl.Float64, "fraction per 8h", "rate * 8 / interval: the basis of the rule"),
        _c("funding_rule", pl.Utf8, "", "crowded_longs, crowded_shorts, neutral or missing"),
        _c("funding_mult", pl.Float64, "multiplier", "the funding rule's factor"),
        _c("oi_change_24h", pl.Float64, "percent", "OI change over 24h"),
        _c("oi_rule", pl.Utf8, "", "rising, falling, flat or missing"),
        _c("oi_mult", pl.Float64, "multiplier", "the OI rule's factor"),
        _c("distance_to_liq_cluster", pl.Float64, "ATRs", "to the nearest estimated cluster in the trade's direction"),
        _c("liq_rule", pl.Utf8, "", "near_cluster, far, missing or disabled"),
        _c("liq_mult", pl.Float64, "multiplier", "the liquidation rule's factor"),
        _c("raw_multiplier", pl.Float64, "multiplier", "product of the rules' factors"),
        _c("multiplier", pl.Float64, "multiplier", "raw_multiplier clamped to [0.5, 1.5]"),
        _c("clamped", pl.Boolean, "", "the clamp changed the multiplier"),
        _c("adjusted_confidence", pl.Float64, "fraction 0..1", "clip(base_confidence * multiplier, 0, 1)"),
        _c("reason", pl.Utf8, "", "the rules that fired, as a pattern card shows them"),
    ),
    key=("trade_id",),
    time_column="decision_time",
)

OVERLAY_BACKTEST = Table(
    name="overlay_backtest",
    doc="Phase 10: baseline vs overlay (sizing, filtering) metrics on all trades and on the tuning and "
        "judging periods, overall and per calendar year.",
    columns=(
        _c("period", pl.Utf8, "", "all (default thresholds), tuning (earlier trades) or judging (later, out of "
           "sample, thresholds chosen on tuning)", nullable=False),
        _c("variant", pl.Utf8, "", "baseline, sizing (R * multiplier), filtering (adjusted_confidence >= "
           "min_confidence) or confidence_only (base_confidence >= min_confidence: filtering's control)",
           nullable=False),
        _c("scope", pl.Utf8, "", "overall or group (a calendar year)", nullable=False),
        _c("year", pl.Int32, "year", "calendar year of decision_time; NULL for overall"),
        *_METRIC_COLUMNS,
    ),
    key=("period", "variant", "scope", "year"),
)

OVERLAY_DIFFERENCES = Table(
    name="overlay_differences",
    doc="Phase 10: each variant minus its control per metric, with paired bootstrap 95% intervals by cluster of "
        "overlapping trades and by independent trade, chance of the same size (null) and the minimum detectable "
        "effect. docs/overlay.md, docs/evidence.md.",
    columns=(
        _c("period", pl.Utf8, "", "all, tuning or judging", nullable=False),
        _c("variant", pl.Utf8, "", "sizing, filtering or confidence_only", nullable=False),
        _c("control", pl.Utf8, "", "what the variant is measured against: baseline (every trade, unfiltered) or "
           "confidence_only (the same filter with every multiplier 1: the control of filtering)", nullable=False),
        _c("metric", pl.Utf8, "", "metric name (qml_pipeline/trades/metrics.py)", nullable=False),
        _c("control_value", pl.Float64, "metric unit", "the control's value"),
        _c("variant_value", pl.Float64, "metric unit", "the variant's value"),
        _c("diff", pl.Float64, "metric unit", "variant - control"),
        _c("ci_low", pl.Float64, "metric unit", "2.5% quantile of the difference, bootstrap by cluster of trades "
           "overlapping in time (dependence-aware)"),
        _c("ci_high", pl.Float64, "metric unit", "97.5% quantile, bootstrap by cluster"),
        _c("se", pl.Float64, "metric unit", "bootstrap standard error by cluster"),
        _c("share_not_better", pl.Float64, "fraction", "cluster resamples where the variant was not better"),
        _c("n_undefined", pl.Int64, "resamples", "cluster resamples where the metric was undefined"),
        _c("ci_low_independent", pl.Float64, "metric unit", "2.5% quantile, bootstrap by independent trade (the "
           "comparison that ignores dependence)"),
        _c("ci_high_independent", pl.Float64, "metric unit", "97.5% quantile, bootstrap by independent trade"),
        _c("se_independent", pl.Float64, "metric unit", "bootstrap standard error by independent trade"),
        _c("n_clusters", pl.Int64, "clusters", "clusters the cluster bootstrap resampled"),
        _c("null_mean", pl.Float64, "metric unit", "mean gain when the variant's choices are random but its size "
           "is not (same number of trades kept; same multipliers dealt at random)"),
        _c("null_p95", pl.Float64, "metric unit", "95th percentile of that null: a gate part must beat it"),
        _c("null_percentile", pl.Float64, "percentile 0..100", "where the observed diff lies in the null"),
        _c("mde", pl.Float64, "metric unit", "minimum detectable gain at 80% power, one-sided 5%, from the "
           "cluster bootstrap SE"),
    ),
    key=("period", "variant", "control", "metric"),
)


def _gate_part_columns() -> tuple[Column, ...]:
    return (
        _c("part", pl.Utf8, "", "the condition (or, in sensitivity tables, a phase 9 feature)", nullable=False),
        _c("passed", pl.Boolean, "", "this part passed", nullable=False),
        _c("gate_passed", pl.Boolean, "", "every part of the gate passed", nullable=False),
        _c("value", pl.Float64, "part's unit", "measured value"),
        _c("threshold", pl.Float64, "part's unit", "required value"),
        _c("control", pl.Utf8, "", "what the value is measured against"),
        _c("n", pl.Int64, "trades", "trades behind the value"),
        _c("p_value", pl.Float64, "probability", "the part's test p-value (BH-adjusted for features; Fisher's "
           "exact for the issue shares)"),
        _c("null_percentile", pl.Float64, "percentile 0..100", "where the value lies among gains of chance of the "
           "same size"),
        _c("null_p95", pl.Float64, "part's unit", "95th percentile of that null"),
        _c("mde", pl.Float64, "part's unit", "minimum detectable effect at 80% power for this n: a FAIL rules out "
           "effects larger than this, not smaller ones"),
        _c("ci_low", pl.Float64, "part's unit", "95% bootstrap interval by cluster (dependence-aware), low"),
        _c("ci_high", pl.Float64, "part's unit", "95% bootstrap interval by cluster, high"),
        _c("ci_low_independent", pl.Float64, "part's unit", "95% bootstrap interval by independent trade, low"),
        _c("ci_high_independent", pl.Float64, "part's unit", "95% bootstrap interval by independent trade, high"),
        _c("message", pl.Utf8, "", "what passed or failed, and by how much"),
    )


RESEARCH_GATES = Table(
    name="research_gates",
    doc="The seed's decision gates (phase 9, phase 10), part by part, as last evaluated, with each part's "
        "control, chance of the same size, minimum detectable effect and intervals.",
    columns=(
        _c("gate", pl.Utf8, "", "phase9 or phase10", nullable=False),
        *_gate_part_columns(),
        _c("evaluated_at", TS, "UTC", "when the gate was evaluated", nullable=False),
    ),
    key=("gate", "part"),
)

MODEL_BACKTEST = dataclasses.replace(
    OVERLAY_BACKTEST, name="model_backtest",
    doc="Phase 11: the phase 10 backtest metrics on the walk-forward test trades when a probability is used "
        "as the adjusted confidence: baseline (every test trade), overlay_filter (rule overlay's adjusted "
        "confidence >= its min_confidence), confidence_filter (its control: base_confidence >= the same "
        "min_confidence), logistic_filter and model_filter (take a trade when its predicted "
        "win probability p gives a positive expected R: p * reward_R - (1 - p) > 0, reward_R = |target - entry| / "
        "|entry - stop|). period = model version.")

MODEL_EVALUATION = Table(
    name="model_evaluation",
    doc="Phase 11: out-of-sample (purged walk-forward) comparison of the probability baselines (base_rate, "
        "confidence = base_confidence Platt-calibrated on each fold's training trades), logistic regression, the "
        "rule overlay (tuned thresholds, calibrated the same way) and the fusion network, overall, per fold and per "
        "calendar year.",
    columns=(
        _c("model_version", pl.Utf8, "", "the context_model version evaluated", nullable=False),
        _c("scope", pl.Utf8, "", "overall, fold or year", nullable=False),
        _c("group", pl.Utf8, "", "fold number or year; 'all' for overall", nullable=False),
        _c("model", pl.Utf8, "", "base_rate, confidence, logistic, overlay or fusion", nullable=False),
        _c("n", pl.Int64, "trades", "test trades"),
        _c("win_rate", pl.Float64, "fraction", "observed win rate"),
        _c("mean_predicted", pl.Float64, "fraction", "mean predicted win probability"),
        _c("auc", pl.Float64, "0..1", "area under the ROC curve (0.5 = chance)"),
        _c("log_loss", pl.Float64, "nats", "mean negative log likelihood"),
        _c("brier", pl.Float64, "", "mean squared error of the probability"),
    ),
    key=("model_version", "scope", "group", "model"),
)

MODEL_PREDICTIONS = Table(
    name="model_predictions",
    doc="Phase 11: each trade's adjusted confidence from the fusion model: out of sample (walk-forward "
        "fold) where the trade was a test trade, NULL otherwise.",
    columns=(
        _c("trade_id", pl.Utf8, "", "the trade", nullable=False),
        _c("model_version", pl.Utf8, "", "context_model version", nullable=False),
        _c("fold", pl.Int64, "", "walk-forward fold the trade was tested in; NULL if never a test trade"),
        _c("probability", pl.Float64, "fraction 0..1", "the fusion model's win probability, out of sample"),
        _c("logistic_probability", pl.Float64, "fraction 0..1", "logistic regression on the context vector, "
           "out of sample"),
    ),
    key=("trade_id",),
)


CONTEXT_ISSUE_SHARES = Table(
    name="context_issue_shares",
    doc="Phase 9: losers and winners with an identifiable context issue under each definition (narrow, seed, "
        "broad: docs/overlay.md), with Fisher's exact test of the difference; `gate` marks the gate's definition.",
    columns=(
        _c("definition", pl.Utf8, "", "narrow, seed or broad", nullable=False),
        _c("share", pl.Float64, "fraction", "losers with an issue / losers"),
        _c("losers", pl.Int64, "trades", "losers judged"),
        _c("with_issue", pl.Int64, "trades", "losers with an issue"),
        _c("without_context", pl.Int64, "trades", "losers with neither funding nor OI context"),
        _c("winner_share", pl.Float64, "fraction", "winners with an issue / winners (the control group)"),
        _c("winners", pl.Int64, "trades", "winners judged"),
        _c("winners_with_issue", pl.Int64, "trades", "winners with an issue"),
        _c("difference", pl.Float64, "fraction", "share - winner_share"),
        _c("odds_ratio", pl.Float64, "ratio", "Fisher's sample odds ratio (losers vs winners)"),
        _c("fisher_p", pl.Float64, "probability", "Fisher's exact test, one-sided: losers have an issue more often"),
        _c("mde", pl.Float64, "fraction", "difference detectable with 80% power at alpha (research/power.py)"),
        _c("gate", pl.Boolean, "", "the definition the phase 9 gate uses"),
        _c("timeout_as", pl.Utf8, "", "timeout label policy (trades/metrics.py)"),
    ),
    key=("definition",),
)

OVERLAY_TUNING = Table(
    name="overlay_tuning",
    doc="Phase 10: every threshold candidate scored on the tuning trades (the gate's measure: per-trade Sharpe "
        "of the variant minus its control's); `chosen` marks the thresholds the judging period and phase 11 use.",
    columns=(
        _c("candidate", pl.Int64, "", "candidate number in grid order", nullable=False),
        _c("parameter", pl.Utf8, "", "OverlayConfig field", nullable=False),
        _c("value", pl.Float64, "the field's unit", "the candidate's value (research/overlay.py OverlayConfig)"),
        _c("objective", pl.Float64, "per-trade Sharpe", "objective on the tuning trades (NULL: undefined)"),
        _c("chosen", pl.Boolean, "", "the best candidate", nullable=False),
    ),
    key=("candidate", "parameter"),
)

_SENSITIVITY_DOC = ("The phase 9 and phase 10 gates re-evaluated under each {what} (one row per setting and gate "
                    "part, plus phase 9's per-feature Cliff's delta as gate 'phase9_features'). docs/evidence.md.")
SENSITIVITY_OI_LAG = Table(
    name="sensitivity_oi_lag",
    doc=_SENSITIVITY_DOC.format(what="open-interest publication lag (0 / 60 / 300 / 900 s added to each OI row's "
                                     "event time + period; features recomputed)"),
    columns=(
        _c("setting", pl.Utf8, "", "the setting's value", nullable=False),
        _c("gate", pl.Utf8, "", "phase9, phase10 or phase9_features", nullable=False),
        *_gate_part_columns(),
    ),
    key=("setting", "gate", "part"),
)
SENSITIVITY_TIMEOUTS = dataclasses.replace(
    SENSITIVITY_OI_LAG, name="sensitivity_timeouts",
    doc=_SENSITIVITY_DOC.format(what="timeout label policy (loss: the seed's meaning and the default; exclude; "
                                     "r_sign: a timeout with positive R is a win)"))
SENSITIVITY_THRESHOLDS = dataclasses.replace(
    SENSITIVITY_OI_LAG, name="sensitivity_thresholds",
    doc=_SENSITIVITY_DOC.format(what="overlay thresholds on the judging period: the defaults (the seed's intent, "
                                     "untuned) and those tuned on the earlier trades"))
SENSITIVITY_REGIMES = dataclasses.replace(
    SENSITIVITY_OI_LAG, name="sensitivity_regimes",
    doc=_SENSITIVITY_DOC.format(what="market regime: calendar year, and a trend/volatility regime from candles "
                                     "only, known at decision time (90-day return sign x 30-day volatility tercile "
                                     "within the trailing year); default thresholds, every trade of the regime"))



def _per_venue_columns() -> tuple[Column, ...]:
    out: list[Column] = []
    for v in VENUES:
        out += [Column(f"{v}_oi_usd", pl.Float64, "DOUBLE", "USDT",
                       f"{v}'s open_interest_value in the total; NULL when {v} is not present", nullable=True),
                Column(f"{v}_share", pl.Float64, "DOUBLE", "fraction 0..1",
                       f"{v}_oi_usd / oi_usd_total; NULL when {v} is not present (never 0 for a missing venue)",
                       nullable=True),
                Column(f"{v}_event_time", TS, "TIMESTAMPTZ", "UTC",
                       f"stamp of {v}'s row in the total", nullable=True)]
    return tuple(out)


OPEN_INTEREST_AGGREGATE = Table(
    name="open_interest_aggregate",
    doc="USD open interest summed across the venues known at each 5-minute instant, point in time (each "
        "venue's newest row with available_at <= event_time, if fresh), with per-venue shares and coverage "
        "(docs/venues.md). Rebuilt from open_interest; appending later rows never changes an earlier row.",
    columns=(
        Column("symbol", pl.Utf8, "VARCHAR", "", "the project's symbol (Binance spelling), e.g. BTCUSDT"),
        Column("event_time", TS, "TIMESTAMPTZ", "UTC",
               "the instant the aggregate is taken at (a multiple of 5 minutes since the epoch)"),
        Column("available_at", TS, "TIMESTAMPTZ", "UTC",
               "= event_time: every row summed was available by then"),
        Column("venue_count", pl.Int32, "INTEGER", "venues", "venues present (fresh) at event_time"),
        Column("venues_present", pl.Utf8, "VARCHAR", "", "the venues summed, comma-separated ('' when none)"),
        Column("venues_missing", pl.Utf8, "VARCHAR", "",
               "configured venues without a fresh row at event_time, comma-separated ('' when none)"),
        Column("oi_usd_total", pl.Float64, "DOUBLE", "USDT",
               "sum of the present venues' open_interest_value; NULL when none is present", nullable=True),
        Column("oi_coins_total", pl.Float64, "DOUBLE", "base asset (e.g. BTC)",
               "sum of the same rows' open_interest", nullable=True),
        *_per_venue_columns(),
    ),
    key=("symbol", "event_time"),
    time_column="event_time",
)

VENUE_DIVERGENCE = Table(
    name="venue_divergence",
    doc="Data quality across venues: hours where one venue's open-interest change over a window differs from "
        "the median change of the venues compared by more than the window's threshold (docs/venues.md).",
    columns=(
        VENUE,
        _c("symbol", pl.Utf8, "", "the project's symbol (Binance spelling), e.g. BTCUSDT", nullable=False),
        _c("event_time", TS, "UTC", "the whole hour compared: each venue's newest stamp at or before it (if fresh)",
           nullable=False),
        _c("window_hours", pl.Int32, "hours", "the change's window", nullable=False),
        _c("change_pct", pl.Float64, "percent",
           "(the venue's open_interest at event_time / at event_time - window - 1) * 100 (coins)", nullable=False),
        _c("median_pct", pl.Float64, "percent",
           "median of the change_pct of every venue compared at that hour and window (this one included)",
           nullable=False),
        _c("deviation_points", pl.Float64, "percentage points", "change_pct - median_pct", nullable=False),
        _c("threshold_points", pl.Float64, "percentage points", "the window's threshold that |deviation_points| "
           "exceeded", nullable=False),
        _c("other_venues", pl.Utf8, "", "the venues compared with, comma-separated", nullable=False),
        _c("open_interest", pl.Float64, "base asset (e.g. BTC)", "the venue's value at event_time", nullable=False),
    ),
    key=("venue", "symbol", "event_time", "window_hours"),
    time_column="event_time",
)


# ---------------------------------------------------------------- cards (the researcher's view, docs/cards.md)

_AS_OF_DOC = ("the instant the cards describe: every value is the one known then (available_at <= as_of). A live "
              "source: the wall-clock time the cards were built; the bundled sample (a past dataset): its newest "
              "available_at")
_STATUS_RULE_DOC = "the rule that produced the status, with its thresholds (qml_pipeline/view/cards.py CardConfig)"

CONTEXT_CARDS = Table(
    name="context_cards",
    doc="The seed's command-bar cards (FUNDING, OI, LIQ) per symbol and as-of time, exactly as the Dagster "
        "metadata, the HTML report and the JSON export show them; kept per as_of (history). Ages: as_of minus "
        "the moment each value became available (docs/cards.md).",
    columns=(
        _c("symbol", pl.Utf8, "", "exchange symbol", nullable=False),
        _c("as_of", TS, "UTC", _AS_OF_DOC, nullable=False),
        _c("built_at", TS, "UTC", "when the row was computed", nullable=False),
        _c("price", pl.Float64, "USDT", "close of the newest closed kline published at most "
           "CardConfig.price_max_age_minutes before as_of; NULL when none is that fresh"),
        _c("price_time", TS, "UTC", "available_at of that kline (its close)"),
        _c("price_age_minutes", pl.Float64, "minutes", "as_of - price_time"),
        _c("funding_rate", pl.Float64, "fraction per interval",
           "the FUNDING card's value: the latest settled rate known at as_of, per its own interval"),
        _c("funding_interval_hours", pl.Int16, "hours", "that settlement's interval"),
        _c("funding_unit", pl.Utf8, "", "the unit of funding_rate in this row: 'fraction per <n>h'"),
        _c("funding_rate_8h", pl.Float64, "fraction per 8h", "rate * 8 / interval: the basis of the status"),
        _c("funding_event_time", TS, "UTC", "the settlement time (a settled rate is known at its settlement)"),
        _c("funding_age_minutes", pl.Float64, "minutes", "data age: as_of - the settlement's available_at"),
        _c("funding_value", pl.Utf8, "", "the card's value as displayed, e.g. '+0.021% / 8h'"),
        _c("funding_status", pl.Utf8, "", "High, Neutral, Low, Negative, stale or missing", nullable=False),
        _c("funding_direction", pl.Utf8, "", "up (positive rate: longs pay shorts), down (shorts pay longs), "
           "flat (zero); NULL without a value"),
        _c("funding_rule", pl.Utf8, "", _STATUS_RULE_DOC),
        _c("oi", pl.Float64, "base asset (e.g. BTC)", "open interest known at as_of"),
        _c("oi_event_time", TS, "UTC", "its stamp"),
        _c("oi_24h_event_time", TS, "UTC", "stamp of the value known at as_of - 24h (the change's base)"),
        _c("oi_change_24h", pl.Float64, "percent", "the OI card's value: (oi / the value 24h before - 1) * 100"),
        _c("oi_age_minutes", pl.Float64, "minutes", "data age: as_of - available_at of the current OI row"),
        _c("oi_value", pl.Utf8, "", "the card's value as displayed, e.g. '+3.2%'"),
        _c("oi_status", pl.Utf8, "", "Rising, Flat, Falling, stale or missing", nullable=False),
        _c("oi_direction", pl.Utf8, "", "up, down or flat: the sign of oi_change_24h; NULL without a value"),
        _c("oi_rule", pl.Utf8, "", _STATUS_RULE_DOC),
        _c("oi_agg_change_24h", pl.Float64, "percent", "the same 24h change of the USD open interest summed across "
           "venues, where open_interest_aggregate holds two or more at as_of (NULL otherwise, or when the venues "
           "present differ between the two instants)"),
        _c("oi_agg_venues", pl.Utf8, "", "the venues in that sum, comma-separated"),
        _c("oi_agg_value", pl.Utf8, "", "as displayed, e.g. '+2.9% (binance, bybit, okx)'"),
        _c("liq_snapshot_time", TS, "UTC", "the estimated liquidation map snapshot used (newest at as_of)"),
        _c("liq_age_minutes", pl.Float64, "minutes", "data age: as_of - liq_snapshot_time (a snapshot is "
           "available at its snapshot_time)"),
        _c("liq_cluster_side", pl.Utf8, "", "long (below the price) or short (above) cluster"),
        _c("liq_cluster_price", pl.Float64, "USDT", "the LIQ card's value: the nearest cluster's "
           "notional-weighted liquidation price"),
        _c("liq_cluster_notional_usd", pl.Float64, "USDT", "estimated notional in that bin"),
        _c("liq_distance_pct", pl.Float64, "percent of price", "|cluster price - price| / price * 100"),
        _c("liq_value", pl.Utf8, "", "the card's value as displayed, e.g. '$95.2K'"),
        _c("liq_status", pl.Utf8, "", "Near, Far, none (no cluster), stale or missing", nullable=False),
        _c("liq_direction", pl.Utf8, "", "down (a long cluster below the price, shown as ↓) or up (a short "
           "cluster above, ↑); NULL without a cluster"),
        _c("liq_rule", pl.Utf8, "", _STATUS_RULE_DOC),
    ),
    key=("symbol", "as_of"),
    time_column="as_of",
)

PATTERN_CARDS = Table(
    name="pattern_cards",
    doc="The seed's pattern cards, one per trade: base confidence, the adjusted confidence of the rule overlay "
        "(each adjustment in pattern_card_adjustments) and the model's probability where the model passed its "
        "gate. Replaced whole per run.",
    columns=(
        _c("trade_id", pl.Utf8, "", "the trade", nullable=False),
        _c("title", pl.Utf8, "", "e.g. 'BEARISH QML - BTCUSDT 4H'"),
        _c("symbol", pl.Utf8, "", "exchange symbol"),
        _c("timeframe", pl.Utf8, "", "candle interval of the pattern"),
        _c("direction", pl.Utf8, "", "BULLISH or BEARISH"),
        _c("decision_time", TS, "UTC", "when the pattern completed (a trader could act)"),
        _c("outcome", pl.Utf8, "", "the trade's outcome so far (trades.outcome)"),
        _c("as_of", TS, "UTC", _AS_OF_DOC, nullable=False),
        _c("built_at", TS, "UTC", "when the row was computed", nullable=False),
        _c("age_minutes", pl.Float64, "minutes", "as_of - decision_time: how long ago the pattern completed"),
        _c("base_confidence", pl.Float64, "fraction 0..1", "the pattern's own confidence"),
        _c("base_confidence_text", pl.Utf8, "", "as displayed, e.g. '72%' ('n/a' without one)"),
        _c("raw_multiplier", pl.Float64, "multiplier", "product of the applied adjustments' multipliers"),
        _c("multiplier", pl.Float64, "multiplier", "raw_multiplier clamped to the overlay's bounds"),
        _c("clamped", pl.Boolean, "", "the clamp changed the multiplier"),
        _c("adjusted_confidence", pl.Float64, "fraction 0..1", "clip(base_confidence * multiplier, 0, 1)"),
        _c("adjusted_confidence_text", pl.Utf8, "", "as displayed, e.g. '89%'"),
        _c("adjustments_text", pl.Utf8, "", "the applied adjustments as one line: '<reason> <effect>; ...'"),
        _c("model_probability", pl.Float64, "fraction 0..1", "the fusion model's out-of-sample win "
           "probability; NULL unless the model passed its gate (model_gate)"),
        _c("model_version", pl.Utf8, "", "the model version of model_probability"),
        _c("model_gate", pl.Utf8, "", "why model_probability is shown or not (docs/cards.md)"),
        _c("model_text", pl.Utf8, "", "as displayed, e.g. '64% (model <version>)'"),
    ),
    key=("trade_id",),
    time_column="decision_time",
)

PATTERN_CARD_ADJUSTMENTS = Table(
    name="pattern_card_adjustments",
    doc="Each context rule of each pattern card, in card order: applied (changed the multiplier) or not, "
        "with its reason and size. Replaced with pattern_cards, in the same snapshot.",
    columns=(
        _c("trade_id", pl.Utf8, "", "the trade (pattern_cards.trade_id)", nullable=False),
        _c("position", pl.Int32, "", "order on the card, from 1", nullable=False),
        _c("rule", pl.Utf8, "", "funding, oi, liq (or overlay: no overlay row for the trade)", nullable=False),
        _c("applied", pl.Boolean, "", "the rule changed the multiplier", nullable=False),
        _c("reason", pl.Utf8, "", "what the card says, e.g. 'Funding +0.021%/8h (crowded longs)'",
           nullable=False),
        _c("multiplier", pl.Float64, "multiplier", "the rule's factor (1 = no effect); NULL without data"),
        _c("effect_pct", pl.Float64, "percent", "(multiplier - 1) * 100, for applied rules"),
        _c("effect_text", pl.Utf8, "", "as displayed, e.g. '+20%', for applied rules"),
    ),
    key=("trade_id", "position"),
)


TABLES: dict[str, Table] = {t.name: t for t in (FUNDING_RATES, OPEN_INTEREST, KLINES, TRADES, TRADE_CONTEXT_FEATURES, LIQUIDATION_MAP,
                                                  LIQUIDATIONS, BASELINE_METRICS,
                                                  DATA_QUALITY, CONTEXT_ERROR_ANALYSIS, CONTEXT_OVERLAY,
                                                  OVERLAY_BACKTEST, OVERLAY_DIFFERENCES, RESEARCH_GATES,
                                                  MODEL_EVALUATION, MODEL_BACKTEST, MODEL_PREDICTIONS,
                                                  CONTEXT_ISSUE_SHARES, OVERLAY_TUNING, SENSITIVITY_OI_LAG,
                                                  SENSITIVITY_TIMEOUTS, SENSITIVITY_THRESHOLDS,
                                                  SENSITIVITY_REGIMES,
                                                  OPEN_INTEREST_AGGREGATE, VENUE_DIVERGENCE,
                                                  CONTEXT_CARDS, PATTERN_CARDS, PATTERN_CARD_ADJUSTMENTS)}


def conform(table: Table, df: pl.DataFrame) -> pl.DataFrame:
    """Select and cast `df` to the table's columns and order; missing nullable columns become NULL.

    `ingested_at`, when absent, is stamped with the current time. Raises ValueError naming missing
    non-nullable columns.
    """
    if "ingested_at" in table.names and "ingested_at" not in df.columns:
        df = df.with_columns(pl.lit(utc_now()).cast(TS).alias("ingested_at"))
    missing = [c.name for c in table.columns
               if c.name not in df.columns and not c.nullable and c.default is None]
    if missing:
        raise ValueError(f"{table.name}: missing required columns {missing}; got {df.columns}")
    exprs = []
    for c in table.columns:
        if c.name in df.columns:
            exprs.append(pl.col(c.name).cast(c.dtype, strict=True))
        else:
            exprs.append(pl.lit(c.default, dtype=c.dtype).alias(c.name))
    return df.select(exprs)


def empty(table: Table) -> pl.DataFrame:
    return pl.DataFrame(schema=table.polars_schema)


# ---------------------------------------------------------------- validation (pandera, polars)

# An exchange symbol as the pipeline accepts it anywhere it becomes a partition key, a URL or a path.
SYMBOL_PATTERN = r"^[A-Z0-9]{2,30}$"
SYMBOL_RULE = "2 to 30 capital letters or digits (^[A-Z0-9]{2,30}$), e.g. BTCUSDT"


def symbol_problem(symbol: object) -> str | None:
    """Why `symbol` is not a symbol, or None when it is one."""
    if isinstance(symbol, str) and re.fullmatch(SYMBOL_PATTERN, symbol):
        return None
    return f"{symbol!r} is not a symbol: expected {SYMBOL_RULE}"


def check_symbol(symbol: object) -> str:
    """`symbol` unchanged; raises InputError before it can reach a URL, a path or a partition key."""
    problem = symbol_problem(symbol)
    if problem:
        raise InputError(problem)
    return symbol  # type: ignore[return-value]


@dataclass(frozen=True)
class BarPlausibility:
    """When a kline is implausible (a unit error or a corrupt row, not a market move).

    A bar fails when its close-to-close move |ln(close / previous close)| or its range ln(high / low)
    exceeds both `factor` times the median of the same measure over the `window` bars centred on it
    (same symbol and interval) and `min_log_move` (0.5 = a 65% rise or a 39% fall). Settings:
    QML_BAR_OUTLIER_FACTOR, QML_BAR_OUTLIER_MIN_LOG_MOVE, QML_BAR_OUTLIER_WINDOW.
    """

    factor: float = 50.0
    min_log_move: float = 0.5
    window: int = 48

    def check_name(self, measure: str) -> str:
        return (f"plausible bar: {measure} <= max({self.factor:g} x its median over {self.window} bars, "
                f"{self.min_log_move:g})")

    def ok(self, measure: pl.Expr) -> pl.Expr:
        """True where `measure` (a per-bar log move, NULL/NaN/inf where undefined) is plausible; bars
        are compared within their symbol and interval, in event_time order."""
        median = measure.rolling_median(window_size=self.window, center=True, min_samples=1)
        plausible = measure <= pl.max_horizontal(median * self.factor, pl.lit(self.min_log_move))
        return (~measure.is_finite().fill_null(False) | plausible).over(["symbol", "interval"],
                                                                         order_by="event_time")

    @staticmethod
    def jump() -> pl.Expr:
        return (pl.col("close").log() - pl.col("close").log().shift(1)).abs()

    @staticmethod
    def range() -> pl.Expr:
        return (pl.col("high") / pl.col("low")).log()


def _frame_check(expr: pl.Expr, name: str) -> pa.Check:
    return pa.Check(lambda data: data.lazyframe.select(expr), name=name)


FINITE = pa.Check(lambda data: data.lazyframe.select(pl.col(data.key).is_finite()), name="finite number")


def _pandera_schema(table: Table, funding_rate_cap: float,
                    plausibility: BarPlausibility | None = None) -> pa.DataFrameSchema:
    col_checks: dict[str, list[pa.Check]] = {c.name: [FINITE] for c in table.columns if c.dtype == pl.Float64}
    frame_checks: list[pa.Check] = [
        _frame_check(pl.col("available_at") >= pl.col("event_time"), "available_at >= event_time"),
    ]
    if "venue" in table.names:
        col_checks["venue"] = [pa.Check.isin(list(VENUES))]
    if table.name == "funding_rates":
        col_checks["funding_rate"] += [pa.Check.in_range(-funding_rate_cap, funding_rate_cap)]
        col_checks["funding_interval_hours"] = [pa.Check.isin(list(FUNDING_INTERVALS_HOURS))]
        col_checks["mark_price"] += [pa.Check.gt(0)]
        frame_checks.append(_frame_check(
            pl.col("event_time") == pl.col("event_time").dt.truncate("1h"), "event_time on the hourly grid"))
    elif table.name == "open_interest":
        col_checks["open_interest"] += [pa.Check.ge(0)]
        col_checks["open_interest_value"] += [pa.Check.ge(0)]
        col_checks["period_minutes"] = [pa.Check.gt(0)]
        frame_checks.append(_frame_check(pl.col("available_at") > pl.col("event_time"),
                                         "available_at > event_time"))
    elif table.name == "klines":
        bars = plausibility or BarPlausibility()
        for price in ("open", "high", "low", "close"):
            col_checks[price] += [pa.Check.gt(0)]
        for vol in ("volume", "quote_volume", "taker_buy_volume"):
            col_checks[vol] += [pa.Check.ge(0)]
        col_checks["close"].append(_frame_check(bars.ok(bars.jump()), bars.check_name("|ln(close / previous close)|")))
        col_checks["high"].append(_frame_check(bars.ok(bars.range()), bars.check_name("ln(high / low)")))
        frame_checks += [
            _frame_check(pl.col("high") >= pl.max_horizontal("open", "close"), "high >= max(open, close)"),
            _frame_check(pl.col("low") <= pl.min_horizontal("open", "close"), "low <= min(open, close)"),
            _frame_check(pl.col("close_time") > pl.col("event_time"), "close_time > event_time"),
            _frame_check(pl.col("available_at") >= pl.col("close_time"), "available_at >= close_time"),
        ]
    columns = {
        c.name: pa.Column(c.dtype, checks=col_checks.get(c.name, []), nullable=c.nullable)
        for c in table.columns
    }
    return pa.DataFrameSchema(columns, checks=frame_checks, unique=list(table.stored_key), strict=True,
                              name=table.name)


class ValidationError(InputError):
    """Rows broke a table's contract. `failures` lists (check, column, index, failure_case, row)."""

    def __init__(self, table: str, failures: pl.DataFrame):
        self.table = table
        self.failures = failures
        super().__init__(describe_failures(table, failures))


def describe_failures(table: str, failures: pl.DataFrame, limit: int = 20) -> str:
    """One line per failure naming the row by its key (symbol, interval, time), the column, the
    check and the value seen."""
    lines = [f"{table}: {failures.height} value(s) break the table's contract"]
    for row in failures.head(limit).iter_rows(named=True):
        where = row.get("row") or (f"row {row['index']}" if row["index"] is not None else "table")
        col = f" column {row['column']}" if row["column"] and row["column"] != table else ""
        lines.append(f"  - {where}{col}: fails '{row['check']}' (value: {_seen(row['failure_case'], row['check'])})")
    if failures.height > limit:
        lines.append(f"  ... and {failures.height - limit} more")
    return "\n".join(lines)


def _seen(failure_case: str | None, check: str) -> str | None:
    """A frame check's failure case is the whole row as JSON: keep the columns its check names."""
    if not failure_case or not failure_case.startswith("{"):
        return failure_case
    try:
        values = json.loads(failure_case)
    except ValueError:
        return failure_case
    named = {k: v for k, v in values.items() if re.search(rf"\b{re.escape(k)}\b", check)}
    return ", ".join(f"{k}={v}" for k, v in (named or values).items())


_FAILURES_SCHEMA = {"check": pl.Utf8, "column": pl.Utf8, "index": pl.Int64, "failure_case": pl.Utf8,
                    "row": pl.Utf8}


def validation_failures(table: Table, df: pl.DataFrame,
                        funding_rate_cap: float = DEFAULT_FUNDING_RATE_CAP,
                        plausibility: BarPlausibility | None = None) -> pl.DataFrame:
    """Every contract violation in `df` as a frame (check, column, index, failure_case, row); empty if
    valid. `index` is the 0-based position in `df`; `row` names the row by its key (e.g.
    'BTCUSDT 1h event_time 2024-03-01 08:00:00+00:00'), which is what a user can look up."""
    schema = _pandera_schema(table, funding_rate_cap, plausibility)
    try:
        schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        unique = f"one row per key ({', '.join(table.key)})"
        fc = exc.failure_cases.select(
            pl.col("check").cast(pl.Utf8).replace({"multiple_fields_uniqueness": unique, "field_uniqueness": unique}),
            pl.col("column").cast(pl.Utf8),
            pl.col("index").cast(pl.Int64),
            pl.col("failure_case").cast(pl.Utf8),
        )
        return fc.join(_row_names(table, df), on="index", how="left")
    return pl.DataFrame(schema=_FAILURES_SCHEMA)


def _row_names(table: Table, df: pl.DataFrame) -> pl.DataFrame:
    """index -> the row's key as text, e.g. 'BTCUSDT 1h event_time 2024-03-01 08:00:00+00:00'."""
    named = [c for c in table.key if c in df.columns and c != table.time_column]
    parts = [pl.col(c).cast(pl.Utf8).fill_null("NULL") for c in named]
    if table.time_column and table.time_column in df.columns:
        parts.append(pl.lit(f"{table.time_column} ") + pl.col(table.time_column).dt.to_string("%Y-%m-%d %H:%M:%S%:z")
                     .fill_null("NULL"))
    label = pl.concat_str(parts, separator=" ") if parts else pl.lit(None, dtype=pl.Utf8)
    return df.select(label.alias("row")).with_row_index("index").with_columns(pl.col("index").cast(pl.Int64))


def validate(table: Table, df: pl.DataFrame, funding_rate_cap: float = DEFAULT_FUNDING_RATE_CAP,
             plausibility: BarPlausibility | None = None) -> None:
    """Raise ValidationError (offending rows named by key) unless `df` meets the table's contract."""
    failures = validation_failures(table, df, funding_rate_cap, plausibility)
    if failures.height:
        raise ValidationError(table.name, failures)


# ---------------------------------------------------------------- duplicates within one batch

class ConflictingRowsError(InputError):
    """Two rows of one batch share a key but differ in value: which is right cannot be decided."""


def collapse_duplicates(df: pl.DataFrame, key: list[str], *, what: str, ignore: tuple[str, ...] = (),
                        row_label: str = "row", first_position: int = 1) -> tuple[pl.DataFrame, int]:
    """`df` with identical repeats of a key collapsed (the first kept), and how many were dropped.

    Rows are identical when they agree on every column but `ignore` (e.g. a served time's jitter).
    Raises ConflictingRowsError naming both rows of each conflicting key (their positions in `df`
    counted from `first_position` and called `row_label`: 'row' from 1, or a CSV's 'line' from 2)
    with the columns that differ: keeping either one would silently pick a value.
    """
    if df.height == 0:
        return df, 0
    indexed = df.with_row_index("_pos", offset=first_position)
    compared = [c for c in df.columns if c not in ignore]
    distinct = indexed.unique(subset=compared, keep="first", maintain_order=True)
    conflicts = distinct.filter(pl.len().over(key) > 1)
    if conflicts.height:
        lines = []
        groups = conflicts.group_by(key, maintain_order=True).agg(pl.all())
        for group in groups.head(5).iter_rows(named=True):
            a, b = group["_pos"][:2]
            keys = ", ".join(f"{k} {_show(group[k])}" for k in key)
            diffs = ", ".join(f"{c} {_show(group[c][0])} vs {_show(group[c][1])}" for c in compared
                              if c not in key and group[c][0] != group[c][1] and not _both_nan(group[c][:2]))
            lines.append(f"  - {row_label}s {a} and {b} ({keys}): {diffs}")
        more = f"\n  ... and {groups.height - 5} more key(s)" if groups.height > 5 else ""
        raise ConflictingRowsError(
            f"{what}: {groups.height} key(s) appear twice with different values; which is right cannot be "
            f"decided, so nothing of this batch is used. Fix or remove one row of each:\n" + "\n".join(lines) + more)
    collapsed = distinct.unique(subset=key, keep="first", maintain_order=True).drop("_pos")
    return collapsed, df.height - collapsed.height


def _show(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value) if isinstance(value, str) else str(value)


def _both_nan(values: list[object]) -> bool:
    return all(isinstance(v, float) and math.isnan(v) for v in values)
