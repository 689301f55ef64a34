"""The bundled offline sample: a Freqtrade data directory plus real hourly open interest.

`sample_data/open_interest/<SYMBOL>-binance-oi-1h-*.csv` holds one archive `metrics` row an hour
(hour_end_ms, sum_open_interest_value, sum_open_interest): the row with the latest create_time before
hour_end, normally stamped hour_end - 5 min. Such a row is knowable from stamp + 5 min (the archive's
stamp meaning changed on 2024-03-04; see the data README), i.e. from hour_end.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from qml_pipeline.sources.files import numbers_or_raise, raise_for_rows, read_table, require_columns, times_or_raise
from qml_pipeline.sources.freqtrade import FreqtradeDataDir
from qml_pipeline.sources.grid import Coverage, Gap, Grid, KnownGap, gaps_for, read_known_gaps
from qml_pipeline.store import schemas
from qml_pipeline.timeutil import EPOCH, UTC

OI_SOURCE = "sample_archive_1h"
ARCHIVE_PERIOD = timedelta(minutes=5)
# one row an hour, stamped hour_end - 5 min
OI_GRID = Grid(timedelta(hours=1), timedelta(minutes=55))
KNOWN_GAPS_FILE = "known_gaps.csv"


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
    venue = "binance"

    def __init__(self, sample_dir: str | Path, oi_publication_lag_s: int = 0):
        self.dir = Path(sample_dir)
        self.freqtrade = FreqtradeDataDir(self.dir / "freqtrade")
        self.oi_lag_s = oi_publication_lag_s
        self._oi_cache: dict[str, pl.DataFrame] = {}
        self._known: list[KnownGap] = read_known_gaps(self.dir / KNOWN_GAPS_FILE)

    # ------------------------------------------------------------------ what the sample should fill

    def grid(self, table: str, variant: str) -> Grid | None:
        if table == "open_interest":
            return OI_GRID
        return self.freqtrade.grid(table, variant)

    def coverage(self, table: str, symbol: str, variant: str) -> Coverage:
        if table == "open_interest":
            oi = self._oi(symbol)
            if oi is None or oi.is_empty():
                return Coverage(None, EPOCH)  # no OI for this symbol at all
            return Coverage(oi["event_time"].min(), oi["event_time"].max() + OI_GRID.step)
        return self.freqtrade.coverage(table, symbol, variant)

    def use_known_gaps(self, path: str | Path) -> None:
        """Read known gaps from `path` instead of the sample's own known_gaps.csv."""
        self._known = read_known_gaps(path)

    def known_gaps(self, table: str, symbol: str, variant: str) -> list[Gap]:
        return gaps_for(self._known, self.venue, table, symbol, variant)

    def check_inputs(self, symbols: Sequence[str], kline_intervals: Sequence[str]) -> None:
        """Read every file the pipeline will read for `symbols` and check it against the raw tables'
        contracts; raise one ValueError listing every problem (before anything is written anywhere)."""
        everything = (EPOCH, datetime(2100, 1, 1, tzinfo=UTC))
        problems = []
        for symbol in symbols:
            reads = [(schemas.KLINES, f"klines {i}", lambda i=i: self.klines(symbol, i, *everything))
                     for i in kline_intervals]
            reads += [(schemas.FUNDING_RATES, "funding", lambda: self.funding_rates(symbol, *everything)),
                      (schemas.OPEN_INTEREST, "open interest", lambda: self.open_interest(symbol, "5m", *everything))]
            for table, what, read in reads:
                try:
                    frame = read()
                    schemas.validate(table, schemas.conform(table, frame))
                except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
                    problems.append(f"{symbol} {what}: {exc}")
                    continue
                if frame.is_empty() and table is schemas.KLINES:
                    problems.append(f"{symbol} {what}: no candles in {self.freqtrade.futures_dir} (expected a file "
                                    f"named like {symbol[:-4]}_USDT_USDT-1h-futures.feather)")
        if problems:
            raise ValueError(f"{self.dir}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))

    def data_end(self) -> datetime:
        """The end of the newest row the sample holds (partitions end there)."""
        ends = [self.freqtrade.data_end()]
        for symbol in self.oi_files():
            oi = self._oi(symbol)
            if oi is not None and oi.height:
                ends.append(oi["available_at"].max())
        return max(ends)

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
        df = self._oi(symbol)
        if df is None:
            return schemas.empty(schemas.OPEN_INTEREST)
        return df.filter((pl.col("event_time") >= start) & (pl.col("event_time") < end))

    def _oi(self, symbol: str) -> pl.DataFrame | None:
        path = self.oi_files().get(symbol)
        if path is None:
            return None
        if symbol not in self._oi_cache:
            self._oi_cache[symbol] = read_hourly_oi_csv(path, symbol, self.oi_lag_s)
        return self._oi_cache[symbol]
