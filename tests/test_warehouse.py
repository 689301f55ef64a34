"""The warehouse: idempotent, atomic window writes and a catalogue analysts can read while it changes."""

import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pytest

from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse

UTC = timezone.utc
DAY = datetime(2024, 1, 31, tzinfo=UTC)


def funding_frame(start: datetime, n: int, rate: float = 0.0001, symbol: str = "BTCUSDT") -> pl.DataFrame:
    times = [start + timedelta(hours=8 * i) for i in range(n)]
    return pl.DataFrame({
        "symbol": symbol, "event_time": times, "funding_rate": rate, "funding_interval_hours": 8,
        "exchange_time": times, "available_at": times, "source": "test",
    }).pipe(lambda df: schemas.conform(schemas.FUNDING_RATES, df))


def without_ingested(df: pl.DataFrame) -> pl.DataFrame:
    return df.drop("ingested_at")


def test_write_window_twice_gives_the_same_rows(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    frame = funding_frame(DAY, 6)  # crosses a month boundary: two files
    first = wh.write_window(schemas.FUNDING_RATES, frame, start=DAY, end=DAY + timedelta(days=2), symbol="BTCUSDT")
    after_first = wh.read(schemas.FUNDING_RATES)
    second = wh.write_window(schemas.FUNDING_RATES, frame, start=DAY, end=DAY + timedelta(days=2), symbol="BTCUSDT")
    after_second = wh.read(schemas.FUNDING_RATES)
    assert first.rows_written == 6 and first.files == 2
    assert second.rows_replaced == 6
    assert after_second.height == 6
    assert without_ingested(after_first).equals(without_ingested(after_second))


def test_window_write_replaces_only_its_window(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.write_window(schemas.FUNDING_RATES, funding_frame(DAY, 6), start=DAY, end=DAY + timedelta(days=2),
                    symbol="BTCUSDT")
    day2 = DAY + timedelta(days=1)
    wh.write_window(schemas.FUNDING_RATES, funding_frame(day2, 3, rate=0.0005), start=day2,
                    end=day2 + timedelta(days=1), symbol="BTCUSDT")
    rates = wh.read(schemas.FUNDING_RATES)["funding_rate"].to_list()
    assert rates == [0.0001] * 3 + [0.0005] * 3


def test_rows_outside_the_window_are_refused(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    with pytest.raises(ValueError, match="outside the window"):
        wh.write_window(schemas.FUNDING_RATES, funding_frame(DAY, 6), start=DAY, end=DAY + timedelta(days=1),
                        symbol="BTCUSDT")
    assert wh.files(schemas.FUNDING_RATES) == []


def test_failed_write_leaves_previous_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wh = Warehouse(tmp_path)
    window = dict(start=DAY, end=DAY + timedelta(days=1), symbol="BTCUSDT")
    wh.write_window(schemas.FUNDING_RATES, funding_frame(DAY, 3), **window)
    before = wh.read(schemas.FUNDING_RATES)

    def crash(self, *args, **kwargs):
        Path(args[0]).write_bytes(b"half a parquet file")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(OSError, match="disk full"):
        wh.write_window(schemas.FUNDING_RATES, funding_frame(DAY, 3, rate=0.0009), **window)
    monkeypatch.undo()
    assert wh.read(schemas.FUNDING_RATES).equals(before)
    leftovers = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.suffix == ".tmp"]
    assert leftovers == []


def test_killed_writer_leaves_previous_contents(tmp_path: Path) -> None:
    """A process killed in the middle of a write (SIGKILL) leaves the old file readable and whole."""
    wh = Warehouse(tmp_path)
    window = dict(start=DAY, end=DAY + timedelta(days=1), symbol="BTCUSDT")
    wh.write_window(schemas.FUNDING_RATES, funding_frame(DAY, 3), **window)
    script = textwrap.dedent(f"""
        import os, signal, polars as pl
        from datetime import datetime, timezone
        from qml_pipeline.store import schemas
        from qml_pipeline.store.warehouse import Warehouse
        from tests.test_warehouse import funding_frame, DAY
        original = pl.DataFrame.write_parquet
        def write_then_die(self, path, **kw):
            original(self, path, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        pl.DataFrame.write_parquet = write_then_die
        Warehouse({str(tmp_path)!r}).write_window(schemas.FUNDING_RATES, funding_frame(DAY, 3, rate=0.0009),
            start=DAY, end=DAY.replace(day=DAY.day + 0) + __import__('datetime').timedelta(days=1), symbol="BTCUSDT")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert wh.read(schemas.FUNDING_RATES)["funding_rate"].to_list() == [0.0001] * 3


def test_catalogue_views_empty_tables_and_read_only(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    wh.refresh_catalog()
    con = duckdb.connect(str(wh.catalog_path), read_only=True)
    assert con.sql("SELECT count(*) FROM klines").fetchall() == [(0,)]
    con.close()
    wh.write_window(schemas.FUNDING_RATES, funding_frame(DAY, 3), start=DAY, end=DAY + timedelta(days=1),
                    symbol="BTCUSDT")
    wh.refresh_catalog()
    con = duckdb.connect(str(wh.catalog_path), read_only=True)
    types = dict(con.sql("SELECT column_name, data_type FROM information_schema.columns "
                         "WHERE table_name = 'funding_rates'").fetchall())
    assert types["event_time"] == "TIMESTAMP WITH TIME ZONE"
    assert con.sql("SELECT count(*) FROM funding_rates").fetchall() == [(3,)]


WRITER = """
import sys, time
from datetime import timedelta
from tests.test_warehouse import funding_frame, DAY
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
wh = Warehouse(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
i = 0
while time.monotonic() < deadline:
    day = DAY + timedelta(days=i % 40)
    wh.write_window(schemas.FUNDING_RATES, funding_frame(day, 3, rate=0.0001 * (i % 7)),
                    start=day, end=day + timedelta(days=1), symbol="BTCUSDT")
    wh.refresh_catalog()
    i += 1
print(i)
"""

READER = """
import sys, time
from qml_pipeline.store.warehouse import open_read_only
deadline = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < deadline:
    con = open_read_only(sys.argv[1])
    rows = con.sql("SELECT count(*), count(DISTINCT event_time) FROM funding_rates").fetchall()[0]
    assert rows[0] == rows[1], rows
    con.close()
    n += 1
print(n)
"""


def test_analyst_reads_while_the_pipeline_writes(tmp_path: Path) -> None:
    """Two processes: a writer rewriting partitions and the catalogue, and an analyst session
    querying the catalogue read-only. Neither fails on a lock and the reader never sees a torn table."""
    wh = Warehouse(tmp_path)
    wh.write_window(schemas.FUNDING_RATES, funding_frame(DAY, 3), start=DAY, end=DAY + timedelta(days=1),
                    symbol="BTCUSDT")
    wh.refresh_catalog()
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    seconds = "4"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), seconds], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(wh.catalog_path), seconds], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    w_out, w_err = writer.communicate(timeout=60)
    r_out, r_err = reader.communicate(timeout=60)
    assert writer.returncode == 0, w_err.decode()[-2000:]
    assert reader.returncode == 0, r_err.decode()[-2000:]
    assert int(w_out) > 5 and int(r_out) > 5
    assert wh.read(schemas.FUNDING_RATES)["event_time"].n_unique() == wh.read(schemas.FUNDING_RATES).height


def test_replace_group_keeps_other_groups(tmp_path: Path) -> None:
    from qml_pipeline.research.phases import gate_rows
    from qml_pipeline.research.overlay import GatePart, make_gate

    wh = Warehouse(tmp_path)
    for gate, ok in (("phase9", False), ("phase10", True)):
        rows = gate_rows(gate, make_gate(gate, [GatePart("p", ok, 1.0, 2.0, "m")]))
        wh.replace_group(schemas.RESEARCH_GATES, rows, "gate", gate)
    again = gate_rows("phase9", make_gate("phase9", [GatePart("p", True, 3.0, 2.0, "m2")]))
    wh.replace_group(schemas.RESEARCH_GATES, again, "gate", "phase9")
    stored = wh.read(schemas.RESEARCH_GATES).sort("gate")
    assert stored["gate"].to_list() == ["phase10", "phase9"] and stored["passed"].to_list() == [True, True]
    with pytest.raises(ValueError, match="gate != 'phase10'"):
        wh.replace_group(schemas.RESEARCH_GATES, again, "gate", "phase10")
