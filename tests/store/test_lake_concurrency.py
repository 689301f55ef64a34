"""Two writer processes and three readers on one lake for 20 s, on the SQLite catalog and on PostgreSQL:
every write commits (after retries) or fails loudly, readers never fail or see a count go down, and the
lake ends with exactly what the commits wrote (no lost update)."""

import subprocess
import uuid
from pathlib import Path

import pytest

from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from tests.lake_stress import run

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 20.0


@pytest.fixture(scope="module")
def postgres() -> str:
    """A conninfo for a fresh database on the project's own PostgreSQL (scripts/postgres.sh starts it)."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"scripts/postgres.sh start failed: {proc.stderr[-2000:]}"
    conninfo = proc.stdout.strip().splitlines()[-1]
    import psycopg2

    name = f"qml_test_{uuid.uuid4().hex[:10]}"
    con = psycopg2.connect(conninfo)
    con.autocommit = True
    con.cursor().execute(f"CREATE DATABASE {name}")
    con.close()
    return conninfo.replace("dbname=qml", f"dbname={name}")


def _check(root: Path, catalog: str, reports: list[dict]) -> tuple[list[dict], list[dict]]:
    writers = [r for r in reports if r["role"] == "writer"]
    readers = [r for r in reports if r["role"] == "reader"]
    for w in writers:
        assert all("could not commit" in e for e in w["errors"]), w  # a failure names what held the catalog
    for r in readers:
        assert r["errors"] == 0, r["messages"]
        assert not r["went_down"]
        assert r["reads"] > 0
    wh = Warehouse(root, catalog=catalog)
    committed = sum(w["commits"] for w in writers)
    assert committed > 0
    assert wh.read(schemas.FUNDING_RATES).height == 10 * committed  # every commit whole, nothing lost or doubled
    gates = wh.read(schemas.RESEARCH_GATES)
    assert sorted(set(gates["gate"])) == sorted(f"w{w['writer']}" for w in writers if w["commits"])
    assert gates.height == 2 * len(set(gates["gate"]))  # replace_group never lost or doubled an update
    return writers, readers


@pytest.mark.slow
def test_sqlite_catalog_under_two_writers_and_three_readers(tmp_path: Path) -> None:
    reports = run(tmp_path, "", writers=2, readers=3, seconds=SECONDS)
    _check(tmp_path, "", reports)


@pytest.mark.slow
def test_postgres_catalog_lets_both_writers_progress(tmp_path: Path, postgres: str) -> None:
    catalog = f"postgres:{postgres}"
    reports = run(tmp_path, catalog, writers=2, readers=3, seconds=SECONDS)
    writers, _ = _check(tmp_path, catalog, reports)
    assert all(w["commits"] > 0 for w in writers), writers
