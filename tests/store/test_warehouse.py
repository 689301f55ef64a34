"""The DuckLake warehouse: additive merges with revisions, explicit deletes, one tagged snapshot per write,
time travel, copies that read their own files, writers that retry and readers that never block them."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pytest

from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import (EmptyReplacementError, Warehouse, WarehouseBusyError, analyst_init_sql,
                                          attach_sql, location, open_read_only, restore_aside, set_aside)

UTC = timezone.utc
DAY = datetime(2024, 1, 31, tzinfo=UTC)
ROOT = Path(__file__).parents[2]


def funding_frame(start: datetime, n: int, rate: float = 0.0001, symbol: str = "BTCUSDT",
                  venue: str = "binance") -> pl.DataFrame:
    times = [start + timedelta(hours=8 * i) for i in range(n)]
    return schemas.conform(schemas.FUNDING_RATES, pl.DataFrame({
        "venue": venue, "symbol": symbol, "event_time": times, "funding_rate": rate, "funding_interval_hours": 8,
        "exchange_time": times, "available_at": times, "source": "test"}))


def trades_frame(n: int) -> pl.DataFrame:
    return schemas.conform(schemas.TRADES, pl.DataFrame({
        "trade_id": [f"t{i}" for i in range(n)], "symbol": "BTCUSDT", "timeframe": "1h", "direction": "BEARISH",
        "decision_time": [DAY + timedelta(hours=i) for i in range(n)], "entry_price": 100.0, "stop_price": 101.0,
        "outcome": "NOT_FILLED", "source": "test"}))


def without_ingested(df: pl.DataFrame) -> pl.DataFrame:
    return df.drop("ingested_at")


# ------------------------------------------------------------------------------------ writes add

def test_merge_twice_gives_the_same_rows_and_a_snapshot_tagged_with_the_run(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path, tags={"dagster_run_id": "run-1"})
    first = wh.merge(schemas.FUNDING_RATES, funding_frame(DAY, 6))
    after_first = wh.read(schemas.FUNDING_RATES)
    snapshot = wh.current_snapshot()
    second = wh.with_tags(dagster_run_id="run-2").merge(schemas.FUNDING_RATES, funding_frame(DAY, 6))
    assert (first.inserted, first.revised, first.unchanged) == (6, 0, 0)
    assert (second.inserted, second.revised, second.unchanged) == (0, 0, 6)
    assert without_ingested(wh.read(schemas.FUNDING_RATES, revisions=True)).equals(without_ingested(after_first))
    assert wh.current_snapshot() == snapshot  # nothing changed: no new snapshot
    snaps = wh.snapshots().filter(pl.col("commit_message").str.starts_with("merge funding_rates"))
    assert snaps.height == 1 and '"dagster_run_id": "run-1"' in snaps["commit_extra_info"][0]
    assert wh.snapshots_of_run("run-1")[-1] == snapshot and wh.snapshots_of_run("run-2") == []


@pytest.mark.parametrize("answer", ["empty", "gappy", "short"])
def test_a_short_or_empty_answer_never_deletes_stored_rows(tmp_path: Path, answer: str) -> None:
    wh = Warehouse(tmp_path)
    wh.merge(schemas.FUNDING_RATES, funding_frame(DAY, 12))
    before = wh.read(schemas.FUNDING_RATES)
    frame = {"empty": funding_frame(DAY, 0), "gappy": funding_frame(DAY, 12)[::3],
             "short": funding_frame(DAY, 4)}[answer]
    stats = wh.merge(schemas.FUNDING_RATES, frame)
    assert stats.inserted == stats.revised == 0
    assert wh.read(schemas.FUNDING_RATES).equals(before)


def test_a_different_value_is_kept_as_a_revision_known_no_earlier_than_its_ingestion(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.merge(schemas.FUNDING_RATES, funding_frame(DAY, 3, rate=0.0001))
    stats = wh.merge(schemas.FUNDING_RATES, funding_frame(DAY, 3, rate=0.0005))
    assert (stats.inserted, stats.revised, stats.unchanged) == (0, 3, 0)
    all_rows = wh.read(schemas.FUNDING_RATES, revisions=True)
    assert all_rows["revision"].to_list() == [0, 1, 0, 1, 0, 1]
    revised = all_rows.filter(pl.col("revision") == 1)
    assert (revised["funding_rate"] == 0.0005).all()
    assert (revised["available_at"] >= revised["ingested_at"]).all()  # never known before it was seen
    first = wh.read(schemas.FUNDING_RATES)  # the first publication is what point-in-time readers see
    assert (first["funding_rate"] == 0.0001).all() and (first["revision"] == 0).all()
    # a value equal to any stored version is not written again (no growth when two sources disagree)
    again = [wh.merge(schemas.FUNDING_RATES, funding_frame(DAY, 3, rate=r)) for r in (0.0001, 0.0005)]
    assert [s.unchanged for s in again] == [3, 3]
    assert wh.read(schemas.FUNDING_RATES, revisions=True).height == 6


def test_venues_are_separate_keys(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.merge(schemas.FUNDING_RATES, funding_frame(DAY, 3, rate=0.0001))
    stats = wh.merge(schemas.FUNDING_RATES, funding_frame(DAY, 3, rate=0.0002, venue="bybit"))
    assert stats.inserted == 3 and stats.revised == 0
    assert wh.read(schemas.FUNDING_RATES, venue="bybit")["funding_rate"].to_list() == [0.0002] * 3


def test_deleting_is_explicit_logged_and_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wh = Warehouse(tmp_path)
    wh.merge(schemas.FUNDING_RATES, funding_frame(DAY, 6))
    with pytest.raises(ValueError, match="needs a reason"):
        wh.delete_rows(schemas.FUNDING_RATES, reason=" ", symbol="BTCUSDT")
    n = wh.delete_rows(schemas.FUNDING_RATES, reason="test rows", start=DAY, end=DAY + timedelta(days=1),
                       symbol="BTCUSDT")
    assert n == 3 and wh.read(schemas.FUNDING_RATES).height == 3
    last = wh.snapshots()["commit_message"][-1]
    assert last.startswith("DELETE from funding_rates") and "test rows" in last
    assert "3 row(s) deleted" in caplog.text


def test_an_empty_replacement_of_a_stored_table_is_refused_when_asked(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.replace_table(schemas.TRADES, trades_frame(5))
    with pytest.raises(EmptyReplacementError, match="refusing to replace 5 stored row"):
        wh.replace_table(schemas.TRADES, trades_frame(0), allow_empty=False)
    assert wh.read(schemas.TRADES).height == 5


def test_a_failed_batch_writes_nothing(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.replace_table(schemas.TRADES, trades_frame(5))
    with pytest.raises(EmptyReplacementError):
        with wh.write("two writes, the second refused") as batch:
            batch.merge(schemas.FUNDING_RATES, funding_frame(DAY, 3))
            batch.replace_table(schemas.TRADES, trades_frame(0), allow_empty=False)
    assert wh.read(schemas.FUNDING_RATES).is_empty() and wh.read(schemas.TRADES).height == 5


def test_replace_group_keeps_the_other_groups(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    gate = pl.DataFrame({"gate": "phase9", "part": ["a", "b"], "passed": True, "gate_passed": True,
                         "evaluated_at": DAY})
    wh.replace_group(schemas.RESEARCH_GATES, gate, "gate", "phase9")
    wh.replace_group(schemas.RESEARCH_GATES, gate.with_columns(gate=pl.lit("phase10")), "gate", "phase10")
    wh.replace_group(schemas.RESEARCH_GATES, gate.head(1), "gate", "phase9")
    assert sorted(wh.read(schemas.RESEARCH_GATES)["gate"].to_list()) == ["phase10", "phase10", "phase9"]
    with pytest.raises(ValueError, match="gate != 'phase9'"):
        wh.replace_group(schemas.RESEARCH_GATES, gate.with_columns(gate=pl.lit("x")), "gate", "phase9")


# ------------------------------------------------------------------------------------ history

def test_time_travel_and_restore(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.replace_table(schemas.TRADES, trades_frame(3))
    kept = wh.current_snapshot()
    wh.replace_table(schemas.TRADES, trades_frame(7))
    assert wh.at_snapshot(kept).read(schemas.TRADES).height == 3
    with pytest.raises(PermissionError, match="read-only"):
        wh.at_snapshot(kept).replace_table(schemas.TRADES, trades_frame(1))
    wh.restore_table(schemas.TRADES, kept, reason="test")
    assert wh.read(schemas.TRADES).height == 3
    assert wh.snapshots()["commit_message"][-1] == f"RESTORE trades to snapshot {kept}: test"


def test_a_copied_warehouse_reads_its_own_files(tmp_path: Path) -> None:
    original = Warehouse(tmp_path / "original")
    original.merge(schemas.FUNDING_RATES, funding_frame(DAY, 3))
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    original.merge(schemas.FUNDING_RATES, funding_frame(DAY + timedelta(days=5), 3))
    copy = Warehouse(tmp_path / "copy")
    assert copy.read(schemas.FUNDING_RATES).height == 3
    shutil.rmtree(tmp_path / "original")  # the copy needs nothing of the original
    assert Warehouse(tmp_path / "copy").read(schemas.FUNDING_RATES).height == 3


def test_set_aside_and_restore_a_lake(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.replace_table(schemas.TRADES, trades_frame(4))
    aside = set_aside(tmp_path)
    assert aside is not None and not (tmp_path / "catalog.sqlite").exists()
    Warehouse(tmp_path).replace_table(schemas.TRADES, trades_frame(1))  # a fresh build that then fails
    failed = restore_aside(tmp_path, aside)
    assert Warehouse(tmp_path).read(schemas.TRADES).height == 4
    assert failed.name.startswith(".failed-") and (failed / "catalog.sqlite").exists()


def test_the_schema_grows_with_the_contract(tmp_path: Path) -> None:
    """A column the contract gained is added to an existing lake (no rebuild, rows kept)."""
    wh = Warehouse(tmp_path)
    wh.replace_table(schemas.TRADES, trades_frame(2))
    con = wh.connect(read_only=False)
    con.execute("ALTER TABLE trades DROP COLUMN bos_time")
    con.close()
    import qml_pipeline.store.warehouse as module
    module._schema_ready.clear()
    assert Warehouse(tmp_path).read(schemas.TRADES)["bos_time"].null_count() == 2


# ------------------------------------------------------------------------------------ processes

def _python(code: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_killed_writer_leaves_the_last_snapshot_and_maintenance_removes_its_orphans(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.merge(schemas.FUNDING_RATES, funding_frame(DAY, 3))
    before = wh.current_snapshot()
    proc = _python(f"""
        import os, signal, duckdb
        from tests.store.test_warehouse import funding_frame, DAY
        from qml_pipeline.store import schemas
        from qml_pipeline.store.warehouse import Warehouse
        big = funding_frame(DAY + __import__('datetime').timedelta(days=30), 20000, rate=0.0009)
        original = duckdb.DuckDBPyConnection.execute
        def die_at_commit(self, sql, *a, **k):
            if sql.startswith('CALL') and 'set_commit_message' in sql:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, sql, *a, **k)
        duckdb.DuckDBPyConnection.execute = die_at_commit
        Warehouse({str(tmp_path)!r}).merge(schemas.FUNDING_RATES, big)
    """)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    after = Warehouse(tmp_path)
    assert after.current_snapshot() == before
    assert after.read(schemas.FUNDING_RATES)["funding_rate"].to_list() == [0.0001] * 3
    parquet = lambda: sorted(p for p in (tmp_path / "data").rglob("*.parquet"))  # noqa: E731
    orphans_before = len(parquet())
    assert orphans_before >= 1  # the killed insert wrote its data file, no snapshot references it
    done = after.maintain(orphan_age=timedelta(0))
    assert done["orphan_files_deleted"] >= 1
    assert len(parquet()) < orphans_before
    assert after.read(schemas.FUNDING_RATES).height == 3


def test_an_analyst_session_holding_a_write_lock_delays_the_pipeline_then_fails_it_clearly(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path, commit_attempts=3, retry_base_s=0.05)
    wh.replace_table(schemas.TRADES, trades_frame(2))
    attach = attach_sql(location(tmp_path), read_only=False, alias="qml")  # an analyst who attached for writing
    analyst = _python(f"""
        import duckdb, sys, time
        con = duckdb.connect()
        con.execute("LOAD ducklake")
        con.execute({attach!r})
        con.execute("USE qml")
        con.execute("BEGIN")
        con.execute("CREATE TABLE scratch AS SELECT 1 AS x")
        con.execute("COMMIT")
        con.execute("BEGIN")
        con.execute("INSERT INTO scratch VALUES (2)")
        con.execute("CALL ducklake_flush_inlined_data(current_database())")
        print('holding', flush=True)
        time.sleep(60)
    """)
    try:
        assert analyst.stdout.readline().strip() == "holding"
        started = time.monotonic()
        try:
            wh.replace_table(schemas.TRADES, trades_frame(3))
            outcome = "committed"
        except WarehouseBusyError as exc:
            outcome = str(exc)
        waited = time.monotonic() - started
    finally:
        analyst.kill()
        analyst.wait()
    # either the analyst's open transaction did not block the pipeline, or the pipeline waited a bounded
    # time and said what holds the catalog
    assert outcome == "committed" or ("could not commit" in outcome and "READ_ONLY" in outcome), outcome
    assert waited < 60
    assert Warehouse(tmp_path).read(schemas.TRADES).height in (2, 3)
    # the catalog is intact for the next writer and reader
    Warehouse(tmp_path).replace_table(schemas.TRADES, trades_frame(4))
    assert open_read_only(tmp_path).execute("SELECT count(*) FROM trades").fetchone()[0] == 4


def test_read_only_analyst_connection_cannot_write(tmp_path: Path) -> None:
    Warehouse(tmp_path).replace_table(schemas.TRADES, trades_frame(2))
    con = open_read_only(tmp_path)
    assert con.execute("SELECT count(*) FROM trades").fetchone()[0] == 2
    with pytest.raises(duckdb.Error, match="read-only|READ_ONLY|attached in read-only"):
        con.execute("DELETE FROM trades")


def test_the_analyst_session_sql_attaches_read_only(tmp_path: Path) -> None:
    Warehouse(tmp_path).replace_table(schemas.TRADES, trades_frame(2))
    init = analyst_init_sql(tmp_path)
    assert "READ_ONLY" in init and "OVERRIDE_DATA_PATH" in init
    init_file = tmp_path / "init.sql"
    init_file.write_text(init)
    proc = subprocess.run([str(Path(sys.executable).parent / "duckdb"), "-csv", "-init", str(init_file), "-c",
                           "SELECT count(*) AS n FROM trades"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["n", "2"]
    denied = subprocess.run([str(Path(sys.executable).parent / "duckdb"), "-init", str(init_file), "-c",
                             "DELETE FROM trades"], capture_output=True, text=True, timeout=120)
    assert "read-only" in (denied.stdout + denied.stderr).lower()
