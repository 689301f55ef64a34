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
from qml_pipeline.sources.freqtrade import FreqtradeDataDir

OI_SOURCE = "sample_archive_1h"
ARCHIVE_PERIOD = timedelta(minutes=5)


def read_hourly_oi_csv(path: Path, symbol: str, publication_lag_s: int = 0) -> pl.DataFrame:
    df = pl.read_csv(path, schema_overrides={"hour_end_ms": pl.Int64})
    hour_end = pl.from_epoch("hour_end_ms", time_unit="ms").dt.replace_time_zone("UTC")
    return schemas.conform(schemas.OPEN_INTEREST, df.select(
        pl.lit(symbol).alias("symbol"),
        (hour_end - ARCHIVE_PERIOD).alias("event_time"),
        pl.lit(5).alias("period_minutes"),
        pl.col("sum_open_interest").cast(pl.Float64).alias("open_interest"),
        pl.col("sum_open_interest_value").cast(pl.Float64).alias("open_interest_value"),
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
