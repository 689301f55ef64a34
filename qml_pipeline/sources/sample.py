"""The bundled offline sample: a Freqtrade data directory plus real hourly open interest.

`sample_data/open_interest/<SYMBOL>-binance-oi-1h-*.csv` holds one archive `metrics` row an hour
(hour_end_ms, sum_open_interest_value, sum_open_interest): the row with the latest create_time before
hour_end, normally stamped hour_end - 5 min. Such a row is knowable from stamp + 5 min (the archive's
stamp meaning changed on 2024-03-04; see the data README), i.e. from hour_end.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.sources.files import numbers_or_raise, raise_for_rows, read_table, require_columns, times_or_raise
from qml_pipeline.sources.freqtrade import FreqtradeDataDir

OI_SOURCE = "sample_archive_1h"
ARCHIVE_PERIOD = timedelta(minutes=5)


OI_FILE_COLUMNS = ("hour_end_ms", "sum_open_interest_value", "sum_open_interest")


def read_hourly_oi_csv(path: Path, symbol: str, publication_lag_s: int = 0) -> pl.DataFrame:
    """The hourly OI file as OPEN_INTEREST rows; a bad file, value or duplicate hour is named (file,
    line, column, value seen, what is expected)."""
    table = read_table(path, what="open-interest file")
    require_columns(table, OI_FILE_COLUMNS, "an hourly open-interest file")
    df = pl.DataFrame([
        times_or_raise(table, "hour_end_ms").alias("hour_end"),
        numbers_or_raise(table, "sum_open_interest", "a number of base-asset units, e.g. 59287.999"),
        numbers_or_raise(table, "sum_open_interest_value", "a USDT amount, e.g. 3416622719.65"),
    ])
    for column, source_column in (("hour_end", "hour_end_ms"), ("sum_open_interest", "sum_open_interest")):
        if df[column].null_count():
            raise_for_rows(table, source_column, "empty values", df[column].is_null(), "a value in every row")
    df, _ = schemas.collapse_duplicates(df, ["hour_end"], what=str(path), row_label="line",
                                     first_position=2)
    hour_end = pl.col("hour_end")
    return schemas.conform(schemas.OPEN_INTEREST, df.select(
        pl.lit(symbol).alias("symbol"),
        (hour_end - ARCHIVE_PERIOD).alias("event_time"),
        pl.lit(5).alias("period_minutes"),
        pl.col("sum_open_interest").alias("open_interest"),
        pl.col("sum_open_interest_value").alias("open_interest_value"),
        (hour_end + pl.duration(seconds=publication_lag_s)).alias("available_at"),
        pl.lit(OI_SOURCE).alias("source"),
    ).sort("event_time"))


class SampleSource:
    """Offline market data: candles and funding from Freqtrade files, real OI where bundled."""

    name = "sample"

    def __init__(self, sample_dir: str | Path, oi_publication_lag_s: int = 0):
        self.dir = Path(sample_dir)
        self.freqtrade = FreqtradeDataDir(self.dir / "freqtrade")
        self.oi_lag_s = oi_publication_lag_s
        self._oi_cache: dict[str, pl.DataFrame] = {}

    @property
    def identical_duplicates(self) -> dict[str, int]:
        """Identical repeated rows collapsed per file (Freqtrade files)."""
        return self.freqtrade.identical_duplicates

    def oi_files(self) -> dict[str, Path]:
        oi_dir = self.dir / "open_interest"
        files = sorted(oi_dir.glob("*-binance-oi-1h-*.csv")) if oi_dir.is_dir() else []
        return {p.name.split("-")[0]: p for p in files}

    def symbols_without_open_interest(self, symbols: list[str]) -> list[str]:
        have = self.oi_files()
        return [s for s in symbols if s not in have]

    def klines(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        return self.freqtrade.klines(symbol, interval, start, end)

    def funding_rates(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        return self.freqtrade.funding_rates(symbol, start, end)

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Real hourly archive OI where bundled (whatever `period` asks: the sample has one row an
        hour); empty for symbols without a file, which the caller reports."""
        path = self.oi_files().get(symbol)
        if path is None:
            return schemas.empty(schemas.OPEN_INTEREST)
        if symbol not in self._oi_cache:
            self._oi_cache[symbol] = read_hourly_oi_csv(path, symbol, self.oi_lag_s)
        df = self._oi_cache[symbol]
        return df.filter((pl.col("event_time") >= start) & (pl.col("event_time") < end))
