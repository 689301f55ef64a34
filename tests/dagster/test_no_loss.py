"""A source's answer never deletes what the warehouse knows: empty, gappy and short answers through the
real raw assets (REST fake and the sample), and a bad sample directory that leaves the warehouse as it is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from dagster_project.resources import MarketDataResource
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from tests.dagster_runs import materialize_raw, partition_metadata
from tests.dagster.test_dagster_binance import NOW, SYMBOL, live  # noqa: F401  (the fixture)

UTC = timezone.utc
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"
YEAR = "2024"  # the partition holding March 2024


def _rest(url: str, refetch: bool = False) -> MarketDataResource:
    return MarketDataResource(source="binance", binance_fapi_url=url, binance_archive_url=url, oi_period="5m",
                              refetch=refetch)


def _march(root: Path, url: str, refetch: bool = False):
    return materialize_raw(root, SYMBOL, "2024-03-05", "2024-03-05", market=_rest(url, refetch))


def _complete_evaluations(result, asset: str) -> dict[str, bool]:
    return {e.partition: e.passed for e in result.get_asset_check_evaluations()
            if e.asset_key.to_user_string() == asset and e.check_name == "complete" and e.partition}


def test_an_empty_rest_answer_deletes_nothing(live, fake_binance):  # noqa: F811
    root, url = live, fake_binance.url
    assert _march(root, url).success
    before = {t.name: Warehouse(root).read(t, revisions=True) for t in (schemas.KLINES, schemas.FUNDING_RATES,
                                                                        schemas.OPEN_INTEREST)}
    assert all(df.height for df in before.values())
    fake_binance.klines.clear()
    fake_binance.funding.clear()
    fake_binance.oi.clear()  # Binance answers 200 with [] for every window
    again = _march(root, url, refetch=True)
    assert again.success  # the stored rows still fill every grid: the partitions stay complete
    for table, df in before.items():
        assert Warehouse(root).read(schemas.TABLES[table], revisions=True).equals(df), table
    meta = partition_metadata(again, "klines")[f"{SYMBOL}|{YEAR}"]
    assert meta["rows_fetched"] == 0 and meta["dagster/row_count"] == before["klines"].height


def test_a_gappy_rest_answer_is_written_as_what_it_is_and_fails_the_partition_naming_the_stamps(live, fake_binance):  # noqa: F811
    root, url = live, fake_binance.url
    hole = [datetime(2024, 3, 6, h, tzinfo=UTC) for h in (3, 4, 5)]
    hole_ms = {int(t.timestamp() * 1000) for t in hole}
    fake_binance.klines[(SYMBOL, "1h")] = [k for k in fake_binance.klines[(SYMBOL, "1h")] if k[0] not in hole_ms]
    result = _march(root, url)
    assert not result.success  # the blocking completeness check stops what depends on it
    assert _complete_evaluations(result, "klines") == {f"{SYMBOL}|{YEAR}": False}
    failed = next(e for e in result.get_asset_check_evaluations()
                  if e.check_name == "complete" and e.partition == f"{SYMBOL}|{YEAR}" and not e.passed)
    assert failed.metadata["missing"].value == (
        "klines BTCUSDT 1h [2024-03-01, 2024-03-15 12:00): 3 stamp(s): 2024-03-06T03:00Z .. 2024-03-06T05:00Z (3)")
    assert failed.description.startswith("klines BTCUSDT 1h [2024-03-01, 2024-03-15 12:00): 3 stamp(s) missing after the "
                                         "merge")
    stored = Warehouse(root).read(schemas.KLINES).filter(pl.col("interval") == "1h")
    assert stored.height > 0 and not set(hole) & set(stored["event_time"].to_list())
    # the hole filled later: the next run fetches from it and the partition is complete
    fake_binance.klines[(SYMBOL, "1h")].clear()
    step = timedelta(hours=1)
    start = datetime(2024, 1, 31, tzinfo=UTC)
    fake_binance.add_klines(SYMBOL, "1h", start, (NOW + timedelta(days=1) - start) // step)
    fixed = _march(root, url)
    assert fixed.success and _complete_evaluations(fixed, "klines") == {f"{SYMBOL}|{YEAR}": True}


def _sample_without_one_hour(tmp_path: Path, hour: datetime) -> Path:
    copy = tmp_path / "sample"
    shutil.copytree(SAMPLE, copy)
    path = copy / "freqtrade" / "binance" / "futures" / "BTC_USDT_USDT-1h-futures.feather"
    df = pl.read_ipc(path)
    df.filter(pl.col("date") != hour).write_ipc(path)
    return copy


def test_a_sample_file_missing_one_hour_keeps_the_stored_1h_and_4h_bars(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    assert materialize_raw(root, "BTCUSDT", "2024-02-10", "2024-02-10").success
    before = Warehouse(root).read(schemas.KLINES)
    damaged = _sample_without_one_hour(tmp_path, datetime(2024, 2, 10, 5, tzinfo=UTC))
    result = materialize_raw(root, "BTCUSDT", "2024-02-10", "2024-02-10",
                             market=MarketDataResource(source="sample", sample_dir=str(damaged), refetch=True))
    assert result.success
    after = Warehouse(root).read(schemas.KLINES)
    assert after.drop("ingested_at").equals(before.drop("ingested_at"))  # the 05:00 bar and its 4h bar are kept
    meta = partition_metadata(result, "klines")["BTCUSDT|2024"]
    assert meta["answer_missing_stamps"] == 2  # the source lacked the 1h bar and the 4h bar built from it
    assert meta["missing_stamps"] == 0  # ... which the warehouse still holds


def test_a_bad_sample_dir_leaves_the_warehouse_as_it_is(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    assert materialize_raw(root, "BTCUSDT", "2024-02-10", "2024-02-10").success
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    before = Warehouse(root).read(schemas.KLINES)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QML_WAREHOUSE_DIR": str(root),
           "QML_SAMPLE_DIR": str(tmp_path / "no-such-dir"), "DAGSTER_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "dagster_project.demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "the warehouse was left as it is" in proc.stderr and "no-such-dir" in proc.stderr
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) == files
    assert Warehouse(root).read(schemas.KLINES).equals(before)
