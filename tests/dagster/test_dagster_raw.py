"""The Dagster layer: definitions load, raw assets materialise ranges, bad data is not written."""

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl

from dagster_project.definitions import defs
from dagster_project.defs.raw_market_data import RAW_ASSETS, RAW_CHECKS
from dagster_project.defs.schedules import (CHUNK_TAG, daily_refresh, refresh_of_instance,
                                            refresh_requests)
from dagster_project.resources import MarketDataResource, WarehouseResource
from qml_pipeline.sources.sample import SampleSource
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from tests.dagster_runs import QUIET, instance_with, materialize_raw, partition_metadata

ROOT = Path(__file__).parents[2]
UTC = timezone.utc


def test_definitions_load_in_process() -> None:
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"funding_rates", "open_interest", "klines"} <= keys
    job_assets = {k.to_user_string() for k in repo.get_job("raw_refresh").asset_layer.executable_asset_keys}
    assert job_assets == {"funding_rates", "open_interest", "klines"}


def test_dagster_definitions_validate_cli() -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate",
                           "-w", "workspace.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _materialize(tmp_path: Path, symbol: str, first: str, last: str, market=None) -> dg.ExecuteInProcessResult:
    return materialize_raw(tmp_path, symbol, first, last, market=market)


def test_one_run_covers_a_symbol_range_and_is_idempotent(tmp_path: Path) -> None:
    result = _materialize(tmp_path, "BTCUSDT", "2024-01-15", "2024-02-18")
    assert result.success
    mats = result.get_asset_materialization_events()
    assert {m.partition for m in mats if m.asset_key.to_user_string() == "funding_rates"} == {"BTCUSDT|2024"}
    wh = Warehouse(tmp_path)
    first = {t: wh.read(schemas.TABLES[t]).drop("ingested_at") for t in ("funding_rates", "open_interest", "klines")}
    # the year partition holds all of 2024 the sample has, whatever days the run was asked for
    sample, y0, y1 = SampleSource(ROOT / "sample_data"), datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)
    assert first["funding_rates"].height == sample.funding_rates("BTCUSDT", y0, y1).height > 1000
    for interval in ("1h", "4h"):
        assert first["klines"].filter(pl.col("interval") == interval).height == \
            sample.klines("BTCUSDT", interval, y0, y1).height > 2000
    oi = sample.open_interest("BTCUSDT", "1h", y0, y1).height
    assert first["open_interest"].height == oi > 8000
    assert all(e.passed for e in result.get_asset_check_evaluations())
    year = partition_metadata(result, "open_interest")["BTCUSDT|2024"]
    # the archive hole (hour_end 2024-02-16 15:00 .. 2024-02-17 00:00, 10 rows) stays a hole, a known one
    assert year["dagster/row_count"] == oi and year["known_gap_stamps"] == 10
    assert year["missing_stamps"] == 0 and year["rows_fetched"] == oi
    complete = next(e for e in result.get_asset_check_evaluations()
                    if e.check_name == "complete" and e.partition == "BTCUSDT|2024" and e.asset_key.path == ["open_interest"])
    assert "10 stamp(s) in known gaps" in complete.description
    again = _materialize(tmp_path, "BTCUSDT", "2024-01-15", "2024-02-18")
    assert again.success
    assert all(p["rows_fetched"] == 0 for p in partition_metadata(again, "klines").values())  # complete: not fetched
    assert partition_metadata(again, "klines")["BTCUSDT|2024"]["dagster/row_count"] == first["klines"].height
    for t, df in first.items():
        assert wh.read(schemas.TABLES[t]).drop("ingested_at").equals(df), t
    assert (tmp_path / "catalog.sqlite").exists()


class BadSource(SampleSource):
    def funding_rates(self, symbol, start, end):
        df = super().funding_rates(symbol, start, end)
        return df.with_columns(funding_rate=pl.when(pl.int_range(pl.len()) == 1).then(0.5)
                               .otherwise(pl.col("funding_rate")))


class BadMarket(MarketDataResource):
    def open(self, log=None, cache_dir=None, venue="binance"):
        return BadSource(self.sample_dir)


def test_bad_rows_fail_the_contract_check_and_are_not_written(tmp_path: Path) -> None:
    assert _materialize(tmp_path, "BTCUSDT", "2024-02-15", "2024-02-15").success
    before = Warehouse(tmp_path).read(schemas.FUNDING_RATES).drop("ingested_at")
    result = _materialize(tmp_path, "BTCUSDT", "2024-02-15", "2024-02-15",
                          market=BadMarket(source="sample", refetch=True))
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed and failed[0].check_name == "contract"
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    description = failure.step_failure_data.user_failure_data.description
    assert ("binance BTCUSDT event_time 2024-01-01 08:00:00+00:00 column funding_rate: fails 'in_range(-0.03, 0.03)' "
            "(value: 0.5)") in description
    assert "row 1" not in description
    assert Warehouse(tmp_path).read(schemas.FUNDING_RATES).drop("ingested_at").equals(before)


def test_daily_schedule_requests_one_run_per_chunk_of_the_instance_symbols() -> None:
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    requests = refresh_requests("2024-03-10", symbols, per_run=2)
    assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
            for r in requests] == [("BTCUSDT|2024", "ETHUSDT|2024"), ("SOLUSDT|2024", "SOLUSDT|2024")]
    assert [r.tags[CHUNK_TAG] for r in requests] == ["1/2", "2/2"]
    new_year = refresh_requests("2024-01-01", ("BTCUSDT",), per_run=50)  # yesterday's year is refreshed once more
    assert new_year[0].tags["dagster/asset_partition_range_start"] == "BTCUSDT|2023"
    assert new_year[0].tags["dagster/asset_partition_range_end"] == "BTCUSDT|2024"
    instance = dg.DagsterInstance.ephemeral()
    assert isinstance(refresh_of_instance(instance, "2024-03-10"), dg.SkipReason)  # no symbol partitions yet
    instance.add_dynamic_partitions("symbols", list(symbols))
    runs = refresh_of_instance(instance, "2024-03-10")
    assert len(runs) == 1 and runs[0].tags["dagster/asset_partition_range_end"] == "SOLUSDT|2024"
    instance.add_dynamic_partitions("symbols", ["XRPUSDT"])  # a new symbol: no code change, no reload
    assert refresh_of_instance(instance, "2024-03-10")[0].tags["dagster/asset_partition_range_end"] == "XRPUSDT|2024"
    assert daily_refresh.cron_schedule == "10 0 * * *"


def test_a_refresh_run_over_a_symbol_range_materialises_each_symbol_year(tmp_path: Path) -> None:
    instance = instance_with(["BTCUSDT", "ETHUSDT"])
    request = refresh_requests("2024-03-10", ("BTCUSDT", "ETHUSDT"), per_run=50)[0]
    result = dg.materialize([*RAW_ASSETS, *RAW_CHECKS], instance=instance, tags=request.tags, raise_on_error=False,
                            resources={"warehouse": WarehouseResource(root=str(tmp_path)),
                                       "market": MarketDataResource(source="sample")}, run_config=QUIET)
    assert result.success
    assert {e.partition for e in result.get_asset_materialization_events()} == {"BTCUSDT|2024", "ETHUSDT|2024"}
    klines = partition_metadata(result, "klines")
    stored = Warehouse(tmp_path).query("SELECT symbol, count(*) AS n FROM klines GROUP BY 1")
    assert {s: klines[f"{s}|2024"]["dagster/row_count"] for s in ("BTCUSDT", "ETHUSDT")} == dict(stored.iter_rows())
    checks = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()
              if e.check_name == "stored_rows_valid"}
    assert checks["klines"].passed and checks["klines"].metadata["covered"].value == (
        "24 symbol-month(s) this run wrote, 2 symbol(s)")
    again = dg.materialize([*RAW_ASSETS, *RAW_CHECKS], instance=instance, tags=request.tags, raise_on_error=False,
                           resources={"warehouse": WarehouseResource(root=str(tmp_path)),
                                      "market": MarketDataResource(source="sample")}, run_config=QUIET)
    checks = {e.asset_key.to_user_string(): e for e in again.get_asset_check_evaluations()
              if e.check_name == "stored_rows_valid"}
    assert checks["klines"].metadata["covered"].value == "nothing: this run wrote no row"




def test_a_quality_check_without_stored_rows_says_so_in_its_description(tmp_path: Path) -> None:
    from dagster_project.defs.quality import data_quality, raw_data_quality

    root = tmp_path / "wh"
    assert materialize_raw(root, "BTCUSDT", "2024-02-10", "2024-02-10").success  # BTCUSDT only: ETHUSDT has nothing
    result = dg.materialize([*RAW_ASSETS, data_quality, raw_data_quality],
                            selection=dg.AssetSelection.assets(data_quality) | dg.AssetSelection.checks(raw_data_quality),
                            resources={"warehouse": WarehouseResource(root=str(root)),
                                       "market": MarketDataResource(source="sample")}, run_config=QUIET)
    evaluations = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    eth = evaluations[("open_interest", "quality_ETHUSDT")]
    assert not eth.passed and eth.severity == dg.AssetCheckSeverity.WARN
    assert eth.description == "no binance open_interest rows for ETHUSDT in data_quality (nothing stored)"
    assert evaluations[("klines", "quality_BTCUSDT")].passed
