"""The Dagster layer: definitions load, raw assets materialise ranges, bad data is not written."""

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl

from dagster_project.definitions import defs
from dagster_project.defs.schedules import daily_refresh, refresh_requests
from dagster_project.resources import MarketDataResource
from qml_pipeline.sources.sample import SampleSource
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from tests.dagster_runs import materialize_raw, partition_metadata

ROOT = Path(__file__).parent.parent
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
    assert {m.partition for m in mats if m.asset_key.to_user_string() == "funding_rates"} == {
        "BTCUSDT|2024-01-01", "BTCUSDT|2024-02-01"}
    wh = Warehouse(tmp_path)
    first = {t: wh.read(schemas.TABLES[t]).drop("ingested_at") for t in ("funding_rates", "open_interest", "klines")}
    assert first["funding_rates"].height == (31 + 29) * 3
    assert first["klines"].filter(pl.col("interval") == "1h").height == (31 + 29) * 24
    assert first["klines"].filter(pl.col("interval") == "4h").height == (31 + 29) * 6
    # the archive hole (hour_end 2024-02-16 15:00 .. 2024-02-17 00:00, 10 rows) stays a hole, a known one
    assert first["open_interest"].height == (31 + 29) * 24 - 10
    assert all(e.passed for e in result.get_asset_check_evaluations())
    feb = partition_metadata(result, "open_interest")["BTCUSDT|2024-02-01"]
    assert feb["dagster/row_count"] == 29 * 24 - 10 and feb["known_gap_stamps"] == 10 and feb["missing_stamps"] == 0
    again = _materialize(tmp_path, "BTCUSDT", "2024-01-15", "2024-02-18")
    assert again.success
    assert all(p["rows_fetched"] == 0 for p in partition_metadata(again, "klines").values())  # complete: not fetched
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
    assert ("binance BTCUSDT event_time 2024-02-01 08:00:00+00:00 column funding_rate: fails 'in_range(-0.03, 0.03)' "
            "(value: 0.5)") in description
    assert "row 1" not in description
    assert Warehouse(tmp_path).read(schemas.FUNDING_RATES).drop("ingested_at").equals(before)


def test_daily_schedule_requests_one_run_per_symbol_range() -> None:
    requests = refresh_requests("2024-03-10", ("BTCUSDT", "ETHUSDT"))
    assert [r.tags["dagster/asset_partition_range_start"] for r in requests] == [
        "BTCUSDT|2024-03-01", "ETHUSDT|2024-03-01"]
    assert [r.tags["dagster/asset_partition_range_end"] for r in requests] == [
        "BTCUSDT|2024-03-01", "ETHUSDT|2024-03-01"]
    first_of_month = refresh_requests("2024-04-01", ("BTCUSDT",))  # yesterday's month is refreshed once more
    assert first_of_month[0].tags["dagster/asset_partition_range_start"] == "BTCUSDT|2024-03-01"
    assert first_of_month[0].tags["dagster/asset_partition_range_end"] == "BTCUSDT|2024-04-01"
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2024, 3, 10, 0, 10, tzinfo=UTC))
    assert len(daily_refresh(ctx)) == 2


def test_research_waits_for_the_latest_run_of_every_symbol() -> None:
    from dagster_project.defs.schedules import all_symbols_refreshed

    def run(symbol: str, status: dg.DagsterRunStatus) -> dg.DagsterRun:
        return dg.DagsterRun(job_name="raw_refresh", status=status,
                             tags={"dagster/asset_partition_range_start": f"{symbol}|2024-03-09"})

    ok, failed = dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE
    # newest first, as the instance lists them: ETH failed once, then its re-execution succeeded
    assert all_symbols_refreshed([run("ETHUSDT", ok), run("BTCUSDT", ok), run("ETHUSDT", failed)],
                                 ("BTCUSDT", "ETHUSDT"))
    assert not all_symbols_refreshed([run("ETHUSDT", failed), run("BTCUSDT", ok)], ("BTCUSDT", "ETHUSDT"))
    assert not all_symbols_refreshed([run("BTCUSDT", ok)], ("BTCUSDT", "ETHUSDT"))
