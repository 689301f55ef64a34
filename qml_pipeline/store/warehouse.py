"""The warehouse: a DuckLake lake (a catalog database plus Parquet data files) with ACID snapshots.

Default layout, on one machine, everything under one folder `root` so a copied or moved warehouse works:

    <root>/catalog.sqlite        the DuckLake catalog (SQLite, WAL mode)
    <root>/data/                 the Parquet data files, partitioned by symbol and year where tables have both
    <root>/cache/, reports/, models/, review/   local artefacts of the pipeline (not part of the lake)

A team or a bigger universe changes configuration only: `catalog="postgres:dbname=qml host=..."` and
`data_path="s3://bucket/qml/"` (or any path DuckDB can write). The same code runs on both.

Write rules (the reasons this module exists):
- A source's answer is merged by key (`merge`): rows it did not return stay; a row equal to a stored version
  is not written again; a row whose values differ from every stored version of its key is kept as a new
  revision (`revision` = previous + 1) whose `available_at` is no earlier than the moment it was ingested,
  so point-in-time readers (who keep the first publication) never see it earlier than it was known.
- Derived tables are replaced whole (`replace_table`) or by group (`replace_group`) inside one transaction.
- Deleting rows of a raw table is explicit (`delete_rows`, with a reason recorded in the snapshot).
- Every write is one DuckLake snapshot whose commit message and extra info carry the caller's tags (the
  Dagster run id, asset and partitions), so any past state can be read back (`snapshot=`) or restored.
- Writers retry a failed commit (a locked catalog, a write-write conflict) with backoff, then fail loudly
  naming the catalog; a reader never blocks a writer (analysts attach READ_ONLY).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from qml_pipeline.config import PROJECT_ROOT
from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import Table

log = logging.getLogger(__name__)

LAKE = "qml"
CATALOG_FILE = "catalog.sqlite"
DATA_DIR = "data"
VIEWS_DIR = PROJECT_ROOT / "warehouse" / "views"
AUTHOR = "qml-pipeline"
# SQLite catalog: WAL lets readers run beside the single writer; the busy timeout makes a writer wait for
# another writer's commit instead of failing at once (measured: without both, readers see lock errors).
SQLITE_PARAMETERS = "MAP {'journal_mode': 'WAL', 'busy_timeout': '10000'}"
RETRYABLE = ("database is locked", "conflict", "could not serialize", "deadlock", "database table is locked",
             "SQLITE_BUSY")
_ENGINE_LOCK = threading.RLock()
_engine: tuple[int, duckdb.DuckDBPyConnection] | None = None   # (pid, the process's DuckDB instance)
_attached: dict[str, tuple[str, Path | None]] = {}              # ATTACH statement -> (alias, SQLite catalog)
_schema_ready: set[tuple[str, str]] = set()


class WarehouseBusyError(RuntimeError):
    """A write could not commit within the retry budget (another writer holds the catalog)."""


class EmptyReplacementError(ValueError):
    """A derived table would be replaced by zero rows although it holds rows (refused unless allowed)."""


@dataclass(frozen=True)
class MergeStats:
    """What one merge did: rows offered, new keys inserted, revisions added, rows already stored."""

    table: str
    offered: int
    inserted: int
    revised: int
    unchanged: int

    @property
    def written(self) -> int:
        return self.inserted + self.revised


@dataclass(frozen=True)
class WriteStats:
    table: str
    rows_written: int
    rows_replaced: int


@dataclass(frozen=True)
class Location:
    """Where the lake lives: `catalog` is 'sqlite:<path>' or 'postgres:<libpq conninfo>'."""

    root: Path
    catalog: str
    data_path: str

    @property
    def is_sqlite(self) -> bool:
        return self.catalog.startswith("sqlite:")

    def describe(self) -> str:
        where = self.catalog if self.is_sqlite else "postgres:" + _redact_conninfo(self.catalog[9:])
        return f"DuckLake catalog {where}, data {self.data_path}"


def location(root: str | os.PathLike[str], catalog: str = "", data_path: str = "") -> Location:
    """The lake of `root`: an SQLite catalog and data folder inside it unless configured otherwise."""
    root = Path(root).resolve()
    if not catalog:
        catalog = f"sqlite:{root / CATALOG_FILE}"
    elif catalog.startswith("sqlite:"):
        catalog = f"sqlite:{Path(catalog[7:]).resolve()}"
    elif not catalog.startswith("postgres:"):
        raise ValueError(f"warehouse catalog {catalog!r}: expected 'sqlite:<path>' or 'postgres:<conninfo>' "
                         "(e.g. postgres:dbname=qml host=localhost)")
    if not data_path:
        data_path = str(root / DATA_DIR)
    if "://" not in data_path:
        data_path = str(Path(data_path).resolve())
    return Location(root, catalog, data_path.rstrip("/") + "/")


def _redact_conninfo(conninfo: str) -> str:
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", conninfo)


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: object) -> str:
    """`value` as a SQL literal. Filters on the lake are written with literals, not `?` parameters: DuckLake
    prunes files (by symbol and year partition, and by column statistics) only on constants known when the
    query is planned; with parameters a read of one symbol scans every file of the table (measured: 10x the
    CPU for a year of one symbol's 5-minute open interest among ten symbols)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"no SQL literal for {value!r}")
        return repr(value)
    if isinstance(value, str):
        return _sql_string(value)
    if isinstance(value, datetime):
        kind = "TIMESTAMPTZ" if value.tzinfo is not None else "TIMESTAMP"
        return f"{kind} {_sql_string(value.isoformat(sep=' '))}"
    if isinstance(value, date):
        return f"DATE {_sql_string(value.isoformat())}"
    raise TypeError(f"no SQL literal for {type(value).__name__} {value!r}")


def load_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """Load DuckLake and both catalog scanners, installing them from the pinned PyPI packages when DuckDB's
    extension directory lacks them (there is no network to download them from)."""
    for name in ("ducklake", "sqlite_scanner", "postgres_scanner"):
        try:
            con.execute(f"LOAD {name}")
        except duckdb.Error:
            try:
                from duckdb_extensions import import_extension
            except ImportError as exc:  # pragma: no cover - the project pins it
                raise RuntimeError(f"DuckDB extension {name} is not installed and duckdb-extensions is "
                                   "missing: run scripts/setup.sh") from exc
            import_extension(name, con=con)
            con.execute(f"LOAD {name}")


def _instance() -> duckdb.DuckDBPyConnection:
    """This process's DuckDB instance (extensions load once: about a second each; a forked child gets its own)."""
    global _engine
    with _ENGINE_LOCK:
        if _engine is None or _engine[0] != os.getpid():
            con = duckdb.connect()
            load_extensions(con)
            _engine = (os.getpid(), con)
            _attached.clear()
        return _engine[1]


def attach_sql(loc: Location, *, read_only: bool, alias: str, snapshot: int | None = None) -> str:
    """The ATTACH statement for `loc` (the data path always overrides the one the catalog recorded, so a
    copied warehouse reads its own files, never the original's)."""
    options = [f"DATA_PATH {_sql_string(loc.data_path)}", "OVERRIDE_DATA_PATH true"]
    if loc.is_sqlite:
        options.append(f"METADATA_PARAMETERS {SQLITE_PARAMETERS}")
    if read_only:
        options.insert(0, "READ_ONLY")
    if snapshot is not None:
        options.append(f"SNAPSHOT_VERSION {int(snapshot)}")
    return f"ATTACH {_sql_string('ducklake:' + loc.catalog)} AS {alias} ({', '.join(options)})"


def _is_retryable(exc: BaseException) -> bool:
    text = str(exc)
    return any(marker.lower() in text.lower() for marker in RETRYABLE)


# ---------------------------------------------------------------------------------------------- schema

def _column_sql(column: schemas.Column) -> str:
    return f"{sql_ident(column.name)} {column.duckdb_type}"


def _partition_sql(table: Table) -> str | None:
    if "symbol" in table.names and table.time_column is not None:
        return f"symbol, year({sql_ident(table.time_column)})"
    return None


def _views() -> list[tuple[str, str]]:
    """(name, SQL) of the analysts' views in warehouse/views/, in file order."""
    if not VIEWS_DIR.exists():
        return []
    out = []
    for path in sorted(VIEWS_DIR.glob("*.sql")):
        sql = path.read_text()
        m = re.search(r"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(\w+)", sql, re.I)
        if m is None:
            raise ValueError(f"{path}: expected a 'CREATE OR REPLACE VIEW <name> AS ...' statement")
        out.append((m.group(1), sql))
    return out


# ---------------------------------------------------------------------------------------------- writes

@dataclass
class _Op:
    kind: str
    table: Table
    frame: pl.DataFrame | None = None
    args: dict[str, Any] = field(default_factory=dict)


class Batch:
    """Writes collected by `Warehouse.write` and committed together as one snapshot on exit."""

    def __init__(self) -> None:
        self.ops: list[_Op] = []
        self.results: list[MergeStats | WriteStats | int] = []
        self.snapshot_id: int | None = None

    def merge(self, table: Table, df: pl.DataFrame) -> None:
        self.ops.append(_Op("merge", table, schemas.conform(table, df)))

    def merge_parts(self, table: Table, frames: Sequence[pl.DataFrame]) -> None:
        """Merge several frames of one table whose keys are disjoint (e.g. one symbol's months) in one
        statement; the result is a list of MergeStats, one per frame, in order."""
        parts = [schemas.conform(table, f).with_columns(pl.lit(k, dtype=pl.Int32).alias(PART_COLUMN))
                 for k, f in enumerate(frames)]
        self.ops.append(_Op("merge_parts", table, pl.concat(parts) if parts else None, {"parts": len(frames)}))

    def replace_table(self, table: Table, df: pl.DataFrame, *, allow_empty: bool = True) -> None:
        self.ops.append(_Op("replace", table, schemas.conform(table, df), {"allow_empty": allow_empty}))

    def replace_group(self, table: Table, df: pl.DataFrame, column: str, value: object) -> None:
        df = schemas.conform(table, df)
        bad = df.filter(pl.col(column) != value)
        if bad.height:
            raise ValueError(f"{table.name}: {bad.height} row(s) have {column} != {value!r}")
        self.ops.append(_Op("replace_group", table, df, {"column": column, "value": value}))

    def delete_rows(self, table: Table, *, reason: str, where: Mapping[str, object],
                    start: datetime | None = None, end: datetime | None = None) -> None:
        if not reason.strip():
            raise ValueError("delete_rows needs a reason (it is recorded in the snapshot)")
        self.ops.append(_Op("delete", table, None, {"reason": reason, "where": dict(where), "start": start,
                                                   "end": end}))

    def restore_table(self, table: Table, snapshot: int) -> None:
        self.ops.append(_Op("restore", table, None, {"snapshot": int(snapshot)}))


class Warehouse:
    """The lake at `root` (see the module docstring). `tags` are recorded with every snapshot written;
    `snapshot` opens the lake read-only as it was at that snapshot."""

    def __init__(self, root: str | os.PathLike[str], *, catalog: str = "", data_path: str = "",
                 tags: Mapping[str, str] | None = None, snapshot: int | None = None,
                 commit_attempts: int = 12, retry_base_s: float = 0.1, retry_cap_s: float = 2.0):
        self.location = location(root, catalog, data_path)
        self.root = self.location.root
        self.tags = dict(tags or {})
        self.snapshot = snapshot
        self.commit_attempts = commit_attempts
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.last_snapshot: int | None = None

    # ------------------------------------------------------------------------ configuration

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def with_tags(self, **tags: str) -> Warehouse:
        """The same lake; snapshots it writes carry `tags` (e.g. dagster_run_id, asset, partitions)."""
        other = Warehouse.__new__(Warehouse)
        other.__dict__.update(self.__dict__)
        other.tags = {**self.tags, **{k: str(v) for k, v in tags.items() if v is not None}}
        return other

    def at_snapshot(self, snapshot: int) -> Warehouse:
        """A read-only view of the lake as it was at `snapshot` (reproduce a past verdict)."""
        other = self.with_tags()
        other.snapshot = int(snapshot)
        return other

    # ------------------------------------------------------------------------ connections

    def _alias(self, read_only: bool) -> str:
        """Attach the lake to the process's DuckDB instance once (per mode and snapshot); its alias."""
        loc = self.location
        snapshot = self.snapshot
        read_only = read_only or snapshot is not None
        if loc.is_sqlite:
            catalog_file = Path(loc.catalog[7:])
            if not catalog_file.exists():
                if read_only:
                    raise FileNotFoundError(
                        f"no warehouse at {self.root}: {catalog_file} does not exist (run the pipeline, e.g. "
                        f"`bash scripts/demo.sh`, or point QML_WAREHOUSE_DIR at an existing warehouse)")
                catalog_file.parent.mkdir(parents=True, exist_ok=True)
            if "://" not in loc.data_path:
                Path(loc.data_path).mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1(f"{loc.catalog}|{loc.data_path}".encode()).hexdigest()[:10]
        alias = f"lake_{digest}" + ("_ro" if read_only else "") + (f"_s{snapshot}" if snapshot is not None else "")
        statement = attach_sql(loc, read_only=read_only, alias=alias, snapshot=snapshot)
        with _ENGINE_LOCK:
            db = _instance()
            _detach_vanished(db)
            if statement not in _attached:
                db.execute(statement)
                _attached[statement] = (alias, Path(loc.catalog[7:]) if loc.is_sqlite else None)
        return alias

    def _cursor(self, read_only: bool) -> tuple[duckdb.DuckDBPyConnection, str]:
        alias = self._alias(read_only)
        cur = _instance().cursor()
        cur.execute("SET TimeZone = 'UTC'")
        # duckdb 1.5 plans an ASOF JOIN with a registered (Arrow) left side as a nested loop otherwise
        cur.execute("SET asof_loop_join_threshold = 0")
        cur.execute(f"USE {alias}")
        return cur, alias

    def connect(self, *, read_only: bool = True, venue: str | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection where the lake's tables and the analysts' views are visible by their plain
        names (the lake is the default catalog). The pipeline writes through the methods below, each one
        snapshot; temporary tables and registered frames work on any connection. With `venue`, tables that
        hold several venues show only that venue's rows on this connection."""
        self.ensure_schema()
        con, alias = self._cursor(read_only=read_only or self.snapshot is not None)
        if venue is not None:
            for table in schemas.TABLES.values():
                if "venue" in table.names and table.revisioned:
                    con.execute(f"CREATE OR REPLACE TEMP VIEW {sql_ident(table.name)} AS SELECT * FROM "
                                f"{alias}.main.{sql_ident(table.name)} WHERE venue = {_sql_string(venue)}")
        return con

    @contextlib.contextmanager
    def session(self, *, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self.connect(read_only=read_only)
        try:
            yield con
        finally:
            con.close()

    def ensure_schema(self) -> None:
        """Create missing tables (partitioned by symbol and year where they have both), add columns the
        contract gained, and (re)create the analysts' views; one snapshot, only when something changed."""
        ident = (self.location.catalog, self.location.data_path)
        if ident in _schema_ready or self.snapshot is not None:
            return

        def create(con: duckdb.DuckDBPyConnection) -> bool:
            existing = {name: {c: t for c, t in cols} for name, cols in _lake_columns(con).items()}
            changed = False
            for table in schemas.TABLES.values():
                cols = existing.get(table.name)
                if cols is None:
                    con.execute(f"CREATE TABLE {sql_ident(table.name)} "
                                f"({', '.join(_column_sql(c) for c in table.columns)})")
                    part = _partition_sql(table)
                    if part:
                        con.execute(f"ALTER TABLE {sql_ident(table.name)} SET PARTITIONED BY ({part})")
                    changed = True
                    continue
                for column in table.columns:
                    have = cols.get(column.name)
                    if have is None:
                        con.execute(f"ALTER TABLE {sql_ident(table.name)} ADD COLUMN {_column_sql(column)}")
                        changed = True
                    elif have.upper() != column.duckdb_type.upper() and not _compatible(have, column.duckdb_type):
                        raise RuntimeError(
                            f"{self.location.describe()}: table {table.name} column {column.name} is {have} in the "
                            f"lake but {column.duckdb_type} in qml_pipeline/store/schemas.py; migrate the table "
                            f"(CREATE a new one and INSERT ... SELECT with a cast) before running")
            stored_views = dict(con.execute(
                "SELECT view_name, comment FROM duckdb_views() WHERE database_name = current_database()").fetchall())
            for name, sql in _views():
                tag = "sha256:" + hashlib.sha256(sql.encode()).hexdigest()
                if stored_views.get(name) != tag:
                    con.execute(sql)
                    con.execute(f"COMMENT ON VIEW {sql_ident(name)} IS '{tag}'")
                    changed = True
            return changed

        self._write(create, "schema: create or extend tables and views", only_if=True)
        _schema_ready.add(ident)

    # ------------------------------------------------------------------------ the write path

    def _write(self, body: Callable[[duckdb.DuckDBPyConnection], Any], message: str,
               only_if: bool = False) -> tuple[Any, int | None]:
        """Run `body` in one transaction, commit it as one snapshot tagged with `message` and the tags;
        retry with backoff when the catalog is locked or the commit conflicts. `only_if`: `body` returns
        whether it changed anything; nothing is committed otherwise."""
        if self.snapshot is not None:
            raise PermissionError(f"this warehouse is opened at snapshot {self.snapshot}: read-only")
        write_id = uuid.uuid4().hex
        extra = json.dumps({**self.tags, "write_id": write_id}, sort_keys=True)
        started = time.monotonic()
        last: BaseException | None = None
        for attempt in range(self.commit_attempts):
            con, alias = self._cursor(read_only=False)
            try:
                con.execute("BEGIN TRANSACTION")
                result = body(con)
                if only_if and not result:
                    con.execute("ROLLBACK")
                    return result, None
                con.execute(f"CALL {alias}.set_commit_message(?, ?, extra_info => ?)", [AUTHOR, message, extra])
                con.execute("COMMIT")
                snapshot = con.execute(f"SELECT max(snapshot_id) FROM {alias}.snapshots() WHERE commit_extra_info = ?",
                                       [extra]).fetchone()[0]
                if attempt:
                    log.info("%s: committed after %d retries (%.1fs)", message, attempt,
                             time.monotonic() - started)
                return result, snapshot
            except duckdb.Error as exc:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                if not _is_retryable(exc):
                    raise
                last = exc
                # capped so a writer that lost a few races is not starved by its own growing pauses
                pause = min(self.retry_cap_s, self.retry_base_s * (2 ** attempt)) * (0.5 + random.random())
                log.warning("%s: commit attempt %d failed (%s); retrying in %.2fs", message, attempt + 1,
                            str(exc).splitlines()[-1][:200], pause)
                time.sleep(pause)
            finally:
                con.close()
        raise WarehouseBusyError(
            f"{message}: could not commit to the {self.location.describe()} after {self.commit_attempts} attempts "
            f"over {time.monotonic() - started:.0f}s; another process keeps the catalog locked for writing (an "
            f"analyst session attached without READ_ONLY, or a second pipeline writer outside the "
            f"'warehouse_writer' pool). Last error: {last}")

    @contextlib.contextmanager
    def write(self, message: str) -> Iterator[Batch]:
        """Collect writes and commit them on exit as one snapshot (all or nothing)."""
        batch = Batch()
        yield batch
        if not batch.ops:
            return
        self.ensure_schema()

        def body(con: duckdb.DuckDBPyConnection) -> list:
            return [_apply(con, op) for op in batch.ops]

        batch.results, batch.snapshot_id = self._write(body, message)
        self.last_snapshot = batch.snapshot_id

    def merge(self, table: Table, df: pl.DataFrame, *, message: str | None = None) -> MergeStats:
        """Add `df`'s rows by key (see the module docstring); never deletes. One snapshot."""
        with self.write(message or f"merge {table.name} ({df.height} rows)") as batch:
            batch.merge(table, df)
        return batch.results[0] if batch.results else MergeStats(table.name, 0, 0, 0, 0)

    def replace_table(self, table: Table, df: pl.DataFrame, *, allow_empty: bool = True,
                      message: str | None = None) -> WriteStats:
        """Make the (derived) table exactly `df`, atomically. With allow_empty=False, zero rows replacing
        stored rows raise EmptyReplacementError and nothing changes."""
        with self.write(message or f"replace {table.name} ({df.height} rows)") as batch:
            batch.replace_table(table, df, allow_empty=allow_empty)
        return batch.results[0]

    def replace_group(self, table: Table, df: pl.DataFrame, column: str, value: object, *,
                      message: str | None = None) -> WriteStats:
        """Make the rows whose `column` equals `value` exactly `df`, keeping the others; atomically."""
        with self.write(message or f"replace {table.name} where {column} = {value!r} ({df.height} rows)") as batch:
            batch.replace_group(table, df, column, value)
        return batch.results[0]

    def delete_rows(self, table: Table, *, reason: str, start: datetime | None = None,
                    end: datetime | None = None, **where: object) -> int:
        """Delete rows explicitly (never a side effect of a source's answer): those matching `where` with
        the time column in [start, end). The reason is logged and recorded in the snapshot."""
        scope = ", ".join(f"{k}={v!r}" for k, v in where.items()) or "all rows"
        span = f" in [{start}, {end})" if start or end else ""
        message = f"DELETE from {table.name} ({scope}{span}): {reason}"
        with self.write(message) as batch:
            batch.delete_rows(table, reason=reason, where=where, start=start, end=end)
        log.warning("%s: %d row(s) deleted", message, batch.results[0])
        return int(batch.results[0])

    def restore_table(self, table: Table, snapshot: int, *, reason: str = "restore") -> WriteStats:
        """Make `table` what it was at `snapshot` (a new snapshot; history is kept)."""
        with self.write(f"RESTORE {table.name} to snapshot {snapshot}: {reason}") as batch:
            batch.restore_table(table, snapshot)
        return batch.results[0]

    # ------------------------------------------------------------------------ reads

    def query(self, sql: str, params: Sequence[object] | None = None) -> pl.DataFrame:
        with self.session() as con:
            return frame(con, sql, params)

    def read(self, table: Table, *, symbol: str | Sequence[str] | None = None, start: datetime | None = None,
             end: datetime | None = None, revisions: bool = False, **equals: object) -> pl.DataFrame:
        """Rows of `table` (optionally one symbol, or several, and [start, end) of its time column). For tables
        with revisions, only each key's first publication unless revisions=True."""
        where = []
        if isinstance(symbol, str):
            where.append(f"symbol = {sql_literal(symbol)}")
        elif symbol is not None:
            where.append(f"symbol IN ({', '.join(sql_literal(s) for s in symbol) or 'NULL'})")
        for col, value in equals.items():
            where.append(f"{sql_ident(col)} = {sql_literal(value)}")
        if start is not None:
            where.append(f"{sql_ident(table.time_column)} >= {sql_literal(start)}")
        if end is not None:
            where.append(f"{sql_ident(table.time_column)} < {sql_literal(end)}")
        if table.revisioned and not revisions:
            where.append("revision = 0")
        cols = ", ".join(sql_ident(c) for c in table.names)
        sql = f"SELECT {cols} FROM {sql_ident(table.name)}" + (" WHERE " + " AND ".join(where) if where else "")
        order = list(table.key) + (["revision"] if table.revisioned else [])
        if order:
            sql += " ORDER BY " + ", ".join(sql_ident(k) for k in order)
        df = self.query(sql)
        return schemas.conform(table, df) if df.height else schemas.empty(table)

    def snapshots(self) -> pl.DataFrame:
        """Every snapshot: id, time, message, the tags it was written with (JSON), what changed."""
        return self.query("SELECT snapshot_id, snapshot_time, commit_message, commit_extra_info, "
                          "CAST(changes AS VARCHAR) AS changes FROM ducklake_snapshots(current_database()) "
                          "ORDER BY snapshot_id")

    def current_snapshot(self) -> int:
        return int(self.query("SELECT max(snapshot_id) AS s FROM ducklake_snapshots(current_database())")["s"][0])

    def snapshots_of_run(self, run_id: str) -> list[int]:
        df = self.snapshots().filter(pl.col("commit_extra_info").str.contains(f'"dagster_run_id": "{run_id}"',
                                                                              literal=True))
        return df["snapshot_id"].to_list()

    def months_written(self, table: Table, snapshots: Sequence[int]) -> dict[str, list[datetime]]:
        """Symbol -> the UTC months (first instants) of the rows `table` gained from the first to the last of
        `snapshots` (every snapshot in between included)."""
        if not snapshots or "symbol" not in table.names or table.time_column is None:
            return {}
        month = f"date_trunc('month', make_timestamp(epoch_us({sql_ident(table.time_column)})))"
        df = self.query(f"SELECT DISTINCT symbol, epoch_ms({month}) AS month_ms FROM ducklake_table_insertions("
                        f"current_database(), 'main', ?, ?, ?) ORDER BY ALL",
                        [table.name, min(snapshots), max(snapshots)])
        out: dict[str, list[datetime]] = {}
        for symbol, month_ms in df.iter_rows():
            out.setdefault(symbol, []).append(datetime.fromtimestamp(month_ms / 1000, tz=timezone.utc))
        return out

    def summary(self) -> pl.DataFrame:
        """Per table (and symbol): rows and time range, for the demo and metadata."""
        parts = []
        for table in schemas.TABLES.values():
            group = "symbol" if "symbol" in table.names else "NULL"
            tcol = sql_ident(table.time_column) if table.time_column else "NULL::TIMESTAMPTZ"
            parts.append(f"SELECT '{table.name}' AS table_name, CAST({group} AS VARCHAR) AS symbol, count(*) AS rows, "
                         f"min({tcol}) AS first_time, max({tcol}) AS last_time FROM {sql_ident(table.name)} GROUP BY ALL")
        return self.query(" UNION ALL ".join(parts) + " ORDER BY table_name, symbol")

    # ------------------------------------------------------------------------ maintenance

    def maintain(self, retention: timedelta = timedelta(days=30), orphan_age: timedelta = timedelta(hours=1),
                 cache_tmp_age: timedelta = timedelta(hours=1)) -> dict[str, int]:
        """Flush inlined rows to Parquet, merge small files, expire snapshots older than `retention`, delete the
        files no snapshot needs, and remove orphan files (left by a killed writer) older than `orphan_age`.
        Returns counts of what was done. Run it with no other writer (the writer pool guarantees it)."""
        self.ensure_schema()
        out: dict[str, int] = {}
        con, alias = self._cursor(read_only=False)
        try:
            def count(sql: str) -> int:
                return len(con.execute(sql).fetchall())

            out["inlined_flushed"] = count(f"CALL ducklake_flush_inlined_data('{alias}')")
            out["files_merged"] = count(f"CALL ducklake_merge_adjacent_files('{alias}')")
            cutoff = f"now() - INTERVAL '{int(retention.total_seconds())} seconds'"
            out["snapshots_expired"] = count(f"CALL ducklake_expire_snapshots('{alias}', older_than => {cutoff})")
            out["old_files_deleted"] = count(f"CALL ducklake_cleanup_old_files('{alias}', cleanup_all => true)")
            orphan_cut = f"now() - INTERVAL '{int(orphan_age.total_seconds())} seconds'"
            out["orphan_files_deleted"] = count(
                f"CALL ducklake_delete_orphaned_files('{alias}', older_than => {orphan_cut})")
        finally:
            con.close()
        out["cache_tmp_deleted"] = remove_stale_tmp_files(self.cache_dir, cache_tmp_age)
        return out


# ---------------------------------------------------------------------------------------------- helpers

def frame(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] | None = None) -> pl.DataFrame:
    """Run `sql` and return a polars DataFrame (through Arrow, no per-row copies). `execute` with parameters,
    not `sql(params=...)`: the latter is 50-80x slower on duckdb 1.5 for a filtered read."""
    return (con.execute(sql, list(params)) if params else con.execute(sql)).pl()


def remove_stale_tmp_files(folder: Path, older_than: timedelta) -> int:
    """Delete `.<name>.<hex>.tmp` files (an interrupted atomic write) older than `older_than`."""
    if not folder.exists():
        return 0
    cutoff = time.time() - older_than.total_seconds()
    removed = 0
    for path in folder.rglob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


def _lake_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
    rows = con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = 'main' ORDER BY table_name, ordinal_position"
    ).fetchall()
    views = {r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE database_name = current_database()").fetchall()}
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in rows:
        if table not in views:
            out.setdefault(table, []).append((column, dtype))
    return out


def _compatible(have: str, want: str) -> bool:
    aliases = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ", "INT": "INTEGER", "INT4": "INTEGER", "INT8": "BIGINT",
               "FLOAT8": "DOUBLE", "TEXT": "VARCHAR", "INT2": "SMALLINT"}
    return aliases.get(have.upper(), have.upper()) == aliases.get(want.upper(), want.upper())


def _register(con: duckdb.DuckDBPyConnection, df: pl.DataFrame) -> str:
    name = f"incoming_{uuid.uuid4().hex[:12]}"
    con.register(name, df.to_arrow())
    return name


def _apply(con: duckdb.DuckDBPyConnection, op: _Op) -> MergeStats | WriteStats | int:
    table, target = op.table, sql_ident(op.table.name)
    cols = ", ".join(sql_ident(c) for c in table.names)
    if op.kind == "merge":
        return _merge(con, table, op.frame)
    if op.kind == "merge_parts":
        return _merge_parts(con, table, op.frame, op.args["parts"])
    if op.kind == "replace":
        old = con.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
        if op.frame.height == 0 and old and not op.args["allow_empty"]:
            raise EmptyReplacementError(
                f"{table.name}: refusing to replace {old} stored row(s) with none; the input is empty "
                "(nothing was changed)")
        src = _register(con, op.frame)
        con.execute(f"DELETE FROM {target}")
        con.execute(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {src}")
        con.unregister(src)
        return WriteStats(table.name, op.frame.height, old)
    if op.kind == "replace_group":
        column, value = sql_ident(op.args["column"]), op.args["value"]
        old = con.execute(f"SELECT count(*) FROM {target} WHERE {column} = ?", [value]).fetchone()[0]
        src = _register(con, op.frame)
        con.execute(f"DELETE FROM {target} WHERE {column} = ?", [value])
        con.execute(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {src}")
        con.unregister(src)
        return WriteStats(table.name, op.frame.height, old)
    if op.kind == "delete":
        where, params = [], []
        for col, value in op.args["where"].items():
            where.append(f"{sql_ident(col)} = ?")
            params.append(value)
        for bound, cmp in (("start", ">="), ("end", "<")):
            if op.args[bound] is not None:
                where.append(f"{sql_ident(table.time_column)} {cmp} ?")
                params.append(op.args[bound])
        cond = " AND ".join(where) or "true"
        n = con.execute(f"SELECT count(*) FROM {target} WHERE {cond}", params).fetchone()[0]
        con.execute(f"DELETE FROM {target} WHERE {cond}", params)
        return int(n)
    if op.kind == "restore":
        snap = op.args["snapshot"]
        old = con.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
        con.execute(f"DELETE FROM {target}")
        con.execute(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {target} AT (VERSION => {snap})")
        new = con.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
        return WriteStats(table.name, new, old)
    raise ValueError(f"unknown write {op.kind}")


def _merge_parts(con: duckdb.DuckDBPyConnection, table: Table, df: pl.DataFrame | None,
                 parts: int) -> list[MergeStats]:
    """`_merge` of frames concatenated with their index in PART_COLUMN; one MergeStats per frame."""
    if df is None or df.height == 0:
        if not table.revisioned:
            raise ValueError(f"{table.name} keeps no revisions: merge is for raw tables; use replace_table")
        return [MergeStats(table.name, 0, 0, 0, 0) for _ in range(parts)]
    counts = _merge(con, table, df, by_part=True)
    return [MergeStats(table.name, *counts.get(k, (0, 0, 0, 0))) for k in range(parts)]


def _merge(con: duckdb.DuckDBPyConnection, table: Table, df: pl.DataFrame,
           by_part: bool = False) -> MergeStats | dict[int, tuple[int, int, int, int]]:
    """Insert rows of `df` whose key is new (revision 0) or whose values differ from every stored version of
    their key (revision = latest + 1, available_at no earlier than ingested_at). In SQL, inside the caller's
    transaction; stored rows are never changed. `by_part`: `df` carries PART_COLUMN and the counts
    (offered, inserted, revised, unchanged) come back per part."""
    if not table.revisioned:
        raise ValueError(f"{table.name} keeps no revisions: merge is for raw tables; use replace_table")
    if df.height == 0:
        return MergeStats(table.name, 0, 0, 0, 0)
    target = sql_ident(table.name)
    src = _register(con, df)
    key = ", ".join(sql_ident(k) for k in table.key)
    on = " AND ".join(f"s.{sql_ident(k)} = i.{sql_ident(k)}" for k in table.key)
    same = " AND ".join(f"s.{sql_ident(v)} IS NOT DISTINCT FROM i.{sql_ident(v)}" for v in table.value_columns)
    # the stored rows the incoming ones can meet, bounded with literals so the lake reads only their files
    prune = []
    if "symbol" in table.names:
        prune.append(f"symbol IN ({', '.join(sql_literal(v) for v in df['symbol'].unique().sort())})")
    if table.time_column:
        t = table.time_column
        prune.append(f"{sql_ident(t)} BETWEEN {sql_literal(df[t].min())} AND {sql_literal(df[t].max())}")
    con.execute(f"""
        CREATE TEMP TABLE merge_plan AS
        WITH stored AS (SELECT * FROM {target} WHERE {' AND '.join(prune) or 'true'}),
        latest AS (SELECT {key}, max(revision) AS _latest FROM stored GROUP BY ALL),
        same AS (SELECT DISTINCT {', '.join(f'i.{sql_ident(k)}' for k in table.key)}, true AS _same
                 FROM {src} i JOIN stored s ON {on} AND {same or 'true'})
        SELECT i.*, l._latest, coalesce(m._same, false) AS _same
        FROM {src} i LEFT JOIN latest l USING ({key}) LEFT JOIN same m USING ({key})""")
    group = PART_COLUMN if by_part else "0"
    per_part = {int(k): (int(n), int(a), int(b), int(c)) for k, n, a, b, c in con.execute(
        f"SELECT {group}, count(*), count(*) FILTER (WHERE _latest IS NULL), "
        "count(*) FILTER (WHERE _latest IS NOT NULL AND NOT _same), count(*) FILTER (WHERE _same) "
        f"FROM merge_plan GROUP BY ALL").fetchall()}
    select = []
    for c in table.names:
        if c == "revision":
            select.append("coalesce(_latest + 1, 0)")
        elif c == "available_at" and "ingested_at" in table.names:
            select.append("CASE WHEN _latest IS NULL THEN available_at ELSE greatest(available_at, ingested_at) END")
        else:
            select.append(sql_ident(c))
    cols = ", ".join(sql_ident(c) for c in table.names)
    con.execute(f"INSERT INTO {target} ({cols}) SELECT {', '.join(select)} FROM merge_plan WHERE NOT _same")
    con.execute("DROP TABLE merge_plan")
    con.unregister(src)
    if by_part:
        return per_part
    return MergeStats(table.name, *per_part[0])


PART_COLUMN = "_merge_part"
LAKE_FILES = (CATALOG_FILE, CATALOG_FILE + "-wal", CATALOG_FILE + "-shm", DATA_DIR)


def set_aside(root: str | os.PathLike[str]) -> Path | None:
    """Move the default-layout lake of `root` (catalog file and data folder) into a new folder beside it and
    return that folder (None when there was no lake): a fresh build can then start while the previous lake
    is kept until the build succeeds (or put back with `restore_aside`)."""
    root = Path(root).resolve()
    present = [root / name for name in LAKE_FILES if (root / name).exists()]
    if not present:
        return None
    aside = root / f".previous-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    aside.mkdir(parents=True)
    for path in present:
        os.replace(path, aside / path.name)
    _forget(root)
    return aside


def restore_aside(root: str | os.PathLike[str], aside: str | os.PathLike[str]) -> Path:
    """Put a lake moved by `set_aside` back; the lake found at `root` meanwhile moves to a `.failed-...`
    folder, whose path is returned."""
    root, aside = Path(root).resolve(), Path(aside)
    failed = set_aside(root) or root / ".failed-empty"
    if failed.name.startswith(".previous-"):
        failed = failed.rename(failed.with_name(failed.name.replace(".previous-", ".failed-", 1)))
    for path in aside.iterdir():
        os.replace(path, root / path.name)
    aside.rmdir()
    _forget(root)
    return failed


def _forget(root: Path) -> None:
    """Detach any lake of `root` from this process (its files moved) so the next use attaches afresh."""
    with _ENGINE_LOCK:
        if _engine is None or _engine[0] != os.getpid():
            return
        for statement, (alias, _) in list(_attached.items()):
            if str(root) in statement:
                with contextlib.suppress(duckdb.Error):
                    _engine[1].execute(f"DETACH {alias}")
                del _attached[statement]
        for ident in [i for i in _schema_ready if str(root) in i[0]]:
            _schema_ready.discard(ident)


def _detach_vanished(db: duckdb.DuckDBPyConnection) -> None:
    """Detach lakes whose SQLite catalog file is gone (a moved or deleted warehouse): DuckDB's catalog-wide
    functions would fail on them."""
    for statement, (alias, catalog_file) in list(_attached.items()):
        if catalog_file is not None and not catalog_file.exists():
            with contextlib.suppress(duckdb.Error):
                db.execute(f"DETACH {alias}")
            del _attached[statement]
            _schema_ready.difference_update({i for i in _schema_ready if i[0] == f"sqlite:{catalog_file}"})


def open_read_only(root: str | os.PathLike[str], catalog: str = "", data_path: str = "") -> duckdb.DuckDBPyConnection:
    """An analyst's connection: the lake attached READ_ONLY as `qml` (it never blocks the pipeline)."""
    return Warehouse(root, catalog=catalog, data_path=data_path).connect(read_only=True)


def analyst_init_sql(root: str | os.PathLike[str], catalog: str = "", data_path: str = "") -> str:
    """SQL that attaches the lake read-only in a DuckDB CLI session (scripts/sql.sh feeds it to -init)."""
    loc = location(root, catalog, data_path)
    if loc.is_sqlite and not Path(loc.catalog[7:]).exists():
        raise FileNotFoundError(f"no warehouse at {loc.root}: run the pipeline first (bash scripts/demo.sh)")
    return (f".bail on\nLOAD ducklake;\nSET TimeZone = 'UTC';\n{attach_sql(loc, read_only=True, alias=LAKE)};\n"
            f"USE {LAKE};\n.bail off\n"
            f"SELECT '{loc.describe()}: attached read-only as {LAKE}' AS warehouse;\n")
