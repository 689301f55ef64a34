"""The warehouse: Parquet files written atomically, and a DuckDB catalogue of views over them.

Why this shape: DuckDB lets one process write a database file at a time, and even a read-only
session blocks writers. Here no pipeline run ever writes the DuckDB file that analysts open.
Data lives in Parquet, one file per table, symbol (and interval) and calendar month:

    <root>/data/klines/symbol=BTCUSDT/interval=1h/2024-01.parquet
    <root>/data/trades/all.parquet                       (tables without a time partition)

A write builds the new file beside the old one and swaps it in with an atomic rename, so a reader
sees the old file or the new one, never half of one; writers of the same file are serialised by a
lock file. `<root>/qml.duckdb` holds only views over the Parquet globs; it is rebuilt the same way
(new file, rename), so an analyst's open session never blocks the pipeline and the pipeline never
breaks the analyst's session. A run killed midway leaves every file it had not swapped in intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from qml_pipeline.config import PROJECT_ROOT
from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import Table
from qml_pipeline.timeutil import month_starts, next_month

CATALOG_NAME = "qml.duckdb"
VIEWS_DIR = PROJECT_ROOT / "warehouse" / "views"


@dataclass(frozen=True)
class WriteStats:
    table: str
    rows_written: int
    rows_replaced: int
    files: int


class Warehouse:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self.data_dir = self.root / "data"
        self.catalog_path = self.root / CATALOG_NAME

    # ------------------------------------------------------------------ paths

    def table_dir(self, table: Table) -> Path:
        return self.data_dir / table.name

    def _file_for(self, table: Table, parts: dict[str, str], month: datetime) -> Path:
        d = self.table_dir(table) / f"symbol={_safe(parts['symbol'])}"
        for col in table.file_by:
            d = d / f"{col}={_safe(parts[col])}"
        return d / f"{month:%Y-%m}.parquet"

    @contextlib.contextmanager
    def _lock(self, table: Table, name: str) -> Iterator[None]:
        lock_dir = self.table_dir(table)
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f".lock-{_safe(name)}", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ writes

    def write_window(self, table: Table, df: pl.DataFrame, *, start: datetime, end: datetime,
                     symbol: str, **file_parts: str) -> WriteStats:
        """Make the rows of (`symbol`, `file_parts`) with time in [start, end) exactly `df`.

        Idempotent: the same frame written twice leaves the same rows. Each month file is swapped in
        atomically; rows of `df` outside the window are refused rather than written.
        """
        if table.time_column is None:
            raise ValueError(f"{table.name} has no time column; use replace_table")
        parts = {"symbol": symbol, **file_parts}
        missing = [c for c in table.file_by if c not in parts]
        if missing:
            raise ValueError(f"{table.name}: write_window needs {missing}")
        df = self._stamp(table, df)
        tcol = table.time_column
        for col, value in parts.items():
            bad = df.filter(pl.col(col) != value)
            if bad.height:
                raise ValueError(f"{table.name}: {bad.height} row(s) have {col} != {value!r}")
        outside = df.filter((pl.col(tcol) < start) | (pl.col(tcol) >= end))
        if outside.height:
            raise ValueError(
                f"{table.name}: {outside.height} row(s) lie outside the window [{start}, {end}): "
                f"first {outside[tcol][0]}")
        written = replaced = files = 0
        lock_name = "-".join(parts[k] for k in ("symbol", *table.file_by))
        with self._lock(table, lock_name):
            for month in month_starts(start, end):
                lo, hi = max(start, month), min(end, next_month(month))
                path = self._file_for(table, parts, month)
                new_rows = df.filter((pl.col(tcol) >= lo) & (pl.col(tcol) < hi))
                old = pl.read_parquet(path) if path.exists() else schemas.empty(table)
                in_window = (pl.col(tcol) >= lo) & (pl.col(tcol) < hi)
                replaced += old.filter(in_window).height
                merged = pl.concat([old.filter(~in_window), new_rows]).sort(list(table.key))
                if merged.height == 0:
                    if path.exists():
                        path.unlink()
                        files += 1
                    continue
                if merged.height == old.height and new_rows.height == 0:
                    continue
                _atomic_write_parquet(merged, path)
                written += new_rows.height
                files += 1
        return WriteStats(table.name, written, replaced, files)

    def replace_table(self, table: Table, df: pl.DataFrame) -> WriteStats:
        """Replace a whole (unpartitioned) table atomically."""
        df = self._stamp(table, df)
        path = self.table_dir(table) / "all.parquet"
        with self._lock(table, "all"):
            old_rows = pl.scan_parquet(path).select(pl.len()).collect().item() if path.exists() else 0
            _atomic_write_parquet(df.sort(list(table.key)) if table.key else df, path)
        return WriteStats(table.name, df.height, old_rows, 1)

    def replace_group(self, table: Table, df: pl.DataFrame, column: str, value: str) -> WriteStats:
        """Make the rows of an unpartitioned table whose `column` equals `value` exactly `df`, keeping
        the others (a gate's parts, a model version's results). Atomic like replace_table."""
        bad = df.filter(pl.col(column) != value)
        if bad.height:
            raise ValueError(f"{table.name}: {bad.height} row(s) have {column} != {value!r}")
        kept = self.read(table).filter(pl.col(column) != value)
        return self.replace_table(table, pl.concat([kept, schemas.conform(table, df)]))

    def _stamp(self, table: Table, df: pl.DataFrame) -> pl.DataFrame:
        return schemas.conform(table, df)

    # ------------------------------------------------------------------ reads

    def files(self, table: Table) -> list[Path]:
        d = self.table_dir(table)
        return sorted(d.rglob("*.parquet")) if d.exists() else []

    def view_sql(self, table: Table) -> str:
        cols = ", ".join(f'CAST("{c.name}" AS {c.duckdb_type}) AS "{c.name}"' for c in table.columns)
        if self.files(table):
            glob = str(self.table_dir(table) / "**" / "*.parquet").replace("'", "''")
            src = f"read_parquet('{glob}', union_by_name = true, hive_partitioning = false)"
            return f'CREATE OR REPLACE VIEW "{table.name}" AS SELECT {cols} FROM {src}'
        nulls = ", ".join(f'CAST(NULL AS {c.duckdb_type}) AS "{c.name}"' for c in table.columns)
        return f'CREATE OR REPLACE VIEW "{table.name}" AS SELECT {nulls} WHERE false'

    def _create_views(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("SET TimeZone = 'UTC'")
        for table in schemas.TABLES.values():
            con.execute(self.view_sql(table))
        if VIEWS_DIR.exists():
            for sql_file in sorted(VIEWS_DIR.glob("*.sql")):
                con.execute(sql_file.read_text())

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with every table as a view (for the pipeline's own SQL)."""
        con = duckdb.connect()
        self._create_views(con)
        return con

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with contextlib.closing(self.connect()) as con:
            return frame(con, sql, params)

    def read(self, table: Table, *, symbol: str | None = None, start: datetime | None = None,
             end: datetime | None = None, **equals: str) -> pl.DataFrame:
        """Rows of `table`, optionally for one symbol and [start, end) of its time column."""
        where, params = [], []
        if symbol is not None:
            where.append("symbol = ?")
            params.append(symbol)
        for col, value in equals.items():
            where.append(f'"{col}" = ?')
            params.append(value)
        if start is not None:
            where.append(f'"{table.time_column}" >= ?')
            params.append(start)
        if end is not None:
            where.append(f'"{table.time_column}" < ?')
            params.append(end)
        sql = f'SELECT * FROM "{table.name}"' + (" WHERE " + " AND ".join(where) if where else "")
        if table.key:
            sql += " ORDER BY " + ", ".join(f'"{k}"' for k in table.key)
        df = self.query(sql, params)
        return schemas.conform(table, df) if df.height else schemas.empty(table)

    def refresh_catalog(self) -> Path:
        """Rebuild `qml.duckdb` (views only) and swap it in atomically; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{CATALOG_NAME}.{uuid.uuid4().hex}.tmp"
        try:
            con = duckdb.connect(str(tmp))
            try:
                self._create_views(con)
                con.execute("CHECKPOINT")
            finally:
                con.close()
            os.replace(tmp, self.catalog_path)
        finally:
            for leftover in (tmp, Path(str(tmp) + ".wal")):
                leftover.unlink(missing_ok=True)
        return self.catalog_path

    def summary(self) -> pl.DataFrame:
        """Per table (and symbol): rows and time range, for the demo and metadata."""
        frames = []
        with contextlib.closing(self.connect()) as con:
            for table in schemas.TABLES.values():
                has_symbol = "symbol" in table.names
                group = "symbol" if has_symbol else "NULL"
                tcol = f'"{table.time_column}"' if table.time_column else "NULL::TIMESTAMPTZ"
                frames.append(frame(
                    con, f"SELECT '{table.name}' AS table_name, CAST({group} AS VARCHAR) AS symbol, "
                    f"count(*) AS rows, min({tcol}) AS first_time, max({tcol}) AS last_time "
                    f'FROM "{table.name}" GROUP BY ALL ORDER BY ALL'))
        return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pl.DataFrame:
    """Run `sql` and return a polars DataFrame (through Arrow, no per-row copies)."""
    return con.sql(sql, params=params or None).pl()


def open_read_only(catalog_path: str | os.PathLike[str], retries: int = 20,
                   delay_s: float = 0.05) -> duckdb.DuckDBPyConnection:
    """Open the analysts' catalogue read-only, retrying briefly if it is being swapped in."""
    last: Exception | None = None
    for _ in range(retries):
        try:
            return duckdb.connect(str(catalog_path), read_only=True)
        except duckdb.Error as exc:  # pragma: no cover - timing dependent
            last = exc
            time.sleep(delay_s)
    raise RuntimeError(f"could not open {catalog_path} read-only: {last}")


def _atomic_write_parquet(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        df.write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _safe(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", value):
        raise ValueError(f"unsafe partition value {value!r}")
    return value
