"""Import a Freqtrade data directory (`user_data/data`) as written by
`freqtrade download-data --trading-mode futures`.

Layout read: `<dir>/<exchange>/futures/<BASE>_<QUOTE>_<SETTLE>-<timeframe>-<kind>.<feather|parquet>`
with kind `futures` (candles), `funding_rate` (one row per settlement, the rate in `open`) and `mark`
(mark-price candles). Older Freqtrade names the funding and mark files `-8h-`, newer ones `-1h-`:
both are read. `date` is the candle's open time (UTC).

Every file is read through `sources.files` (a truncated or corrupt file is named, with what was
expected). Two rows of one file with the same `date`: identical ones are collapsed and counted in
`identical_duplicates` (file name -> rows dropped); different ones are refused, naming both rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.sources.candles import resample_klines
from qml_pipeline.sources.files import FileInputError, read_table, require_columns, times_or_raise
from qml_pipeline.sources.funding import FUNDING_SNAP_TOLERANCE, snap_funding_times, with_funding_intervals
from qml_pipeline.sources.grid import Coverage, Grid
from qml_pipeline.timeutil import EPOCH, interval_ms

SOURCE = "freqtrade"
FILE_COLUMNS = ("date", "open", "high", "low", "close", "volume")
_FILE = re.compile(r"^(?P<pair>[A-Z0-9]+_[A-Z0-9]+_[A-Z0-9]+)-(?P<tf>\d+[mhdw])-(?P<kind>futures|funding_rate|mark)"
                   r"\.(?P<ext>feather|parquet)$")


@dataclass(frozen=True)
class FreqtradeFile:
    path: Path
    symbol: str
    timeframe: str
    kind: str


def pair_to_symbol(pair: str) -> str:
    """`BTC_USDT_USDT` (Freqtrade's `BTC/USDT:USDT` on disk) -> `BTCUSDT`."""
    base, quote, _settle = pair.split("_")
    return f"{base}{quote}"


class FreqtradeDataDir:
    """Read candles and funding of a Freqtrade data directory in the warehouse's raw shapes."""

    def __init__(self, root: str | Path, exchange: str = "binance"):
        self.root = Path(root)
        self.futures_dir = self.root / exchange / "futures"
        if not self.futures_dir.is_dir():
            raise FileNotFoundError(
                f"no Freqtrade futures data at {self.futures_dir}: point QML_SAMPLE_DIR at a "
                f"Freqtrade data directory (user_data/data) containing {exchange}/futures/")
        self.files = [
            FreqtradeFile(p, pair_to_symbol(m["pair"]), m["tf"], m["kind"])
            for p in sorted(self.futures_dir.iterdir())
            if (m := _FILE.match(p.name))
        ]
        self._spans: dict[Path, tuple[datetime, datetime]] = {}
        self.identical_duplicates: dict[str, int] = {}

    @property
    def name(self) -> str:
        return SOURCE

    def symbols(self) -> list[str]:
        return sorted({f.symbol for f in self.files})

    def _find(self, symbol: str, kind: str, timeframe: str | None = None) -> FreqtradeFile | None:
        matches = [f for f in self.files if f.symbol == symbol and f.kind == kind
                   and (timeframe is None or f.timeframe == timeframe)]
        return min(matches, key=lambda f: interval_ms(f.timeframe)) if matches else None

    # -------------------------------------------------------------- what the files should fill

    def grid(self, table: str, variant: str) -> Grid | None:
        """Candles on their interval's grid; funding follows the settlement interval (no fixed grid)."""
        if table == "klines":
            return Grid(timedelta(milliseconds=interval_ms(variant)))
        return None

    def _base_klines(self, symbol: str, interval: str) -> FreqtradeFile | None:
        target_ms = interval_ms(interval)
        stored = [f for f in self.files if f.symbol == symbol and f.kind == "futures"
                  and target_ms % interval_ms(f.timeframe) == 0]
        return min(stored, key=lambda f: -interval_ms(f.timeframe)) if stored else None

    def _span(self, f: FreqtradeFile) -> tuple[datetime, datetime]:
        if f.path not in self._spans:
            dates = self._read(f.path)["date"]
            self._spans[f.path] = (dates.min(), dates.max())
        return self._spans[f.path]

    def coverage(self, table: str, symbol: str, variant: str) -> Coverage:
        """Where the files have rows: candles from the first to the end of the last stored bar; funding from
        the first settlement to one interval after the last; nothing for open interest (not kept)."""
        if table == "klines":
            base = self._base_klines(symbol, variant)
            if base is None:
                return Coverage(None, EPOCH)
            first, last = self._span(base)
            return Coverage(first, last + timedelta(milliseconds=interval_ms(base.timeframe)))
        if table == "funding_rates":
            f = self._find(symbol, "funding_rate")
            if f is None:
                return Coverage(None, EPOCH)
            first, last = self._span(f)
            return Coverage(first - FUNDING_SNAP_TOLERANCE, last + timedelta(hours=1))
        return Coverage(None, EPOCH)

    def data_end(self) -> datetime:
        """The end of the newest candle or settlement in the directory."""
        ends = [self._span(f)[1] + timedelta(milliseconds=interval_ms(f.timeframe)) if f.kind == "futures"
                else self._span(f)[1] for f in self.files]
        return max(ends) if ends else EPOCH

    def _read(self, path: Path) -> pl.DataFrame:
        """One Freqtrade file as (date UTC ms, open, high, low, close, volume), one row per date."""
        table = read_table(path, what="Freqtrade data file", allow_empty=True)
        require_columns(table, FILE_COLUMNS, "a Freqtrade data file")
        for col in FILE_COLUMNS[1:]:
            if not table.frame.schema[col].is_numeric():
                raise FileInputError(path, "a price or volume column that is not numeric", column=col,
                                     seen=f"type {table.frame.schema[col]}", expected="float numbers")
        df = table.frame.select(FILE_COLUMNS).with_columns(times_or_raise(table, "date"),
                                                           pl.col(FILE_COLUMNS[1:]).cast(pl.Float64))
        df, dropped = schemas.collapse_duplicates(df, ["date"], what=str(path))
        if dropped:
            self.identical_duplicates[path.name] = dropped
        return df

    # -------------------------------------------------------------- klines

    def klines(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Closed candles with open time in [start, end); a missing timeframe is aggregated from the
        finest stored one that divides it (only complete groups)."""
        base = self._base_klines(symbol, interval)
        if base is None:
            return schemas.empty(schemas.KLINES)
        step = pl.duration(milliseconds=interval_ms(base.timeframe))
        bars = (self._read(base.path)
                .filter((pl.col("date") >= start) & (pl.col("date") < end))
                .sort("date")
                .select(pl.lit(symbol).alias("symbol"), pl.lit(base.timeframe).alias("interval"),
                        pl.col("date").alias("event_time"), (pl.col("date") + step).alias("close_time"),
                        "open", "high", "low", "close", "volume"))
        source = SOURCE
        if base.timeframe != interval:
            bars = resample_klines(bars, interval)
            source = f"{SOURCE}:resampled_from_{base.timeframe}"
        out = bars.with_columns(pl.col("close_time").alias("available_at"), pl.lit(source).alias("source"))
        return schemas.conform(schemas.KLINES, out)

    # -------------------------------------------------------------- funding

    def funding_rates(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        f = self._find(symbol, "funding_rate")
        if f is None:
            return schemas.empty(schemas.FUNDING_RATES)
        df = self._read(f.path).select(pl.col("date").alias("exchange_time"), pl.col("open").alias("funding_rate"))
        df = snap_funding_times(df, symbol, what=str(f.path))
        mark = self._find(symbol, "mark")
        if mark is not None:
            marks = self._read(mark.path).select(pl.col("date").alias("event_time"), pl.col("open").alias("mark_price"))
            df = df.join(marks, on="event_time", how="left")
        out = (with_funding_intervals(df)
               .filter((pl.col("event_time") >= start) & (pl.col("event_time") < end))
               .with_columns(pl.lit(symbol).alias("symbol"), pl.col("event_time").alias("available_at"),
                             pl.lit(SOURCE).alias("source")))
        return schemas.conform(schemas.FUNDING_RATES, out)

    def open_interest(self, symbol: str, period: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Freqtrade keeps no open interest: always empty."""
        return schemas.empty(schemas.OPEN_INTEREST)
