"""The UI walk, in process: the daily_refresh schedule on, one tick, its raw run, then the automation sensor's
evaluation rebuilds everything downstream in one run, with the checks evaluated in the runs that produced what
they judge, and a failed blocking gate stopping the next phase (and not retried until the next day's tick)."""

import contextlib
import shutil
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.test_utils import freeze_time  # Dagster's own test clock (events stamped at the walk's times)

from dagster_project.definitions import defs
from dagster_project.defs.schedules import daily_refresh
from dagster_project.resources import (CoinglassResource, MarketDataResource, RefreshResource, ResearchResource,
                                       TradeSourceResource, WarehouseResource)
from dagster_project.partitions import sync_symbols
from tests.dagster_runs import QUIET

RAW = {"funding_rates", "open_interest", "klines"}
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


# The bundled sample is a past dataset ending 2024-12-05: the refresh tick asks for that day (its year partition), and
# Dagster's clock runs on a later day, when that year partition is complete (Dagster knows a year once it ended).
SAMPLE_DAY = datetime(2024, 12, 5, 0, 10, tzinfo=timezone.utc)


def _at(hour: int, minute: int) -> datetime:
    return datetime(2025, 1, 6, hour, minute, tzinfo=timezone.utc)


def _evaluate(project: dg.Definitions, instance: dg.DagsterInstance, at: datetime, previous=None):
    """One tick of the automation sensor at `at`."""
    with freeze_time(at):
        return dg.evaluate_automation_conditions(project, instance, evaluation_time=at,
                                                 cursor=previous.cursor if previous else None)


def _requested(result) -> set[str]:
    """Asset names and `asset:check` names the evaluation requested."""
    out = set()
    for r in result.results:
        if r.true_subset.size:
            key = r.key
            out.add(key.to_user_string() if isinstance(key, dg.AssetKey)
                    else f"{key.asset_key.to_user_string()}:{key.name}")
    return out


@pytest.mark.slow
def test_one_refresh_tick_rebuilds_downstream_with_current_checks(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        _walk(tmp_path, stack)


def _walk(tmp_path: Path, stack: contextlib.ExitStack) -> None:
    resources = {"warehouse": WarehouseResource(root=str(tmp_path)), "market": MarketDataResource(source="sample"),
                 "trade_source": TradeSourceResource(export_path=""),
                 "research": ResearchResource(override_gates=False, model_epochs=2),
                 "coinglass": CoinglassResource()}
    project = dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, resources=resources)
    instance = stack.enter_context(dg.instance_for_test())  # a stored instance: the schedule context needs its ref
    sync_symbols(instance, ["BTCUSDT"])

    # the automation sensor has been running: before the tick nothing is due (nothing refreshed yet)
    before = _evaluate(project, instance, _at(0, 5))
    assert before.total_requested == 0
    ticked = _evaluate(project, instance, _at(0, 11), before)
    # the tick passed: only the Coinglass liquidations (no upstream; skipped without a key) are due, the rest waits
    # for its inputs to be refreshed
    assert _requested(ticked) == {"liquidations"}

    # the schedule's tick: one run per chunk of symbols over the year partition of yesterday and today
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=SAMPLE_DAY,
                                   resources={"refresh": RefreshResource()}) as tick:
        requests = daily_refresh(tick)
    assert [r.tags["dagster/asset_partition_range_start"] for r in requests] == ["BTCUSDT|2024"]
    raw_assets = [dg.AssetKey(name) for name in sorted(RAW)]
    for request in requests:
        # the raw_refresh job: the raw assets and their own checks (the quality_<SYMBOL> checks wait for data_quality)
        with freeze_time(_at(0, 20)):  # Dagster's clock: the run's events fall between two evaluations
            raw = dg.materialize([*project.assets, *project.asset_checks],
                                 selection=dg.AssetSelection.assets(*raw_assets)
                                 - dg.AssetSelection.checks(*[c for c in project.asset_checks if any(
                                     k.name.startswith("quality_") for k in c.check_keys)]),
                                 instance=instance, resources=resources, tags=request.tags, raise_on_error=False,
                                 run_config=QUIET)
        assert raw.success
        assert raw.get_asset_materialization_events()

    # the sensor's next evaluation: every downstream asset at once (one run), with the checks that follow them
    due = _evaluate(project, instance, _at(0, 30), ticked)
    requested = _requested(due)
    downstream = {k.to_user_string() for a in project.assets for k in a.keys} - RAW - {"warehouse_maintenance"}
    assert downstream - {"liquidations"} <= requested  # liquidations: handled at the tick
    assert {"klines:quality_BTCUSDT", "context_model:model_beats_chance"} <= requested
    assets = [n for n in requested if ":" not in n]
    checks = [dg.AssetCheckKey(dg.AssetKey(n.split(":")[0]), n.split(":")[1]) for n in requested if ":" in n]
    with freeze_time(_at(0, 40)):
        run = dg.materialize([*project.assets, *project.asset_checks], selection=dg.AssetSelection.assets(*assets)
                             | dg.AssetSelection.checks(*checks), instance=instance, resources=resources,
                             raise_on_error=False, run_config=QUIET)
    built = {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()}
    assert {"data_quality", "trades", "trade_context_features", "context_error_analysis", "phase9_gate",
            "sensitivity_regimes", "context_cards", "research_report"} <= built
    # the sample's phase 9 gate fails: its blocking check stops phase 10 and 11 in this run
    evaluations = {(e.asset_key.to_user_string(), e.check_name): e for e in run.get_asset_check_evaluations()}
    assert not evaluations[("phase9_gate", "passed")].passed
    assert not built & {"context_overlay", "phase10_gate", "context_model", "pattern_cards"}
    # the quality checks judged the data_quality this run rebuilt
    for table in RAW:
        assert (table, "quality_BTCUSDT") in evaluations
        assert evaluations[(table, "quality_BTCUSDT")].passed, evaluations[(table, "quality_BTCUSDT")].description
    records = instance.get_latest_materialization_event(dg.AssetKey("data_quality"))
    assert records.run_id == run.run_id
    check_record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("klines"), "quality_BTCUSDT")])
    assert next(iter(check_record.values())).run_id == run.run_id

    # handled for today: the next evaluation asks for nothing (a failed gate is not retried until the next tick)
    after = _evaluate(project, instance, _at(1, 0), due)
    assert after.total_requested == 0, _requested(after)


@pytest.mark.slow
def test_after_a_failed_raw_run_the_research_rebuilds_on_what_is_stored_with_its_quality_checks(
        tmp_path: Path) -> None:
    """What docs/architecture.md says: the raw blocking checks fail their own run but are not automation inputs
    (dagster_project/automation.py says why), so the day's research still rebuilds, with the quality checks."""
    damaged = tmp_path / "sample"
    shutil.copytree(SAMPLE, damaged)
    hourly = damaged / "freqtrade" / "binance" / "futures" / "BTC_USDT_USDT-1h-futures.feather"
    bars = pl.read_ipc(hourly)
    bars.filter(pl.col("date") != datetime(2024, 2, 10, 5, tzinfo=timezone.utc)).write_ipc(hourly)

    def resources(sample: Path) -> dict:
        return {"warehouse": WarehouseResource(root=str(tmp_path / "wh")),
                "market": MarketDataResource(source="sample", sample_dir=str(sample)),
                "trade_source": TradeSourceResource(export_path=""),
                "research": ResearchResource(override_gates=False, model_epochs=2), "coinglass": CoinglassResource()}

    with dg.instance_for_test() as instance:
        sync_symbols(instance, ["BTCUSDT"])
        project = dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, resources=resources(damaged))
        ticked = _evaluate(project, instance, _at(0, 11), _evaluate(project, instance, _at(0, 5)))
        downstream = {k.to_user_string() for a in project.assets for k in a.keys} - RAW - {"warehouse_maintenance",
                                                                                               "liquidations"}

        def raw_run(sample: Path, at: datetime) -> dg.ExecuteInProcessResult:
            """The raw_refresh job's run of BTCUSDT|2024 (the quality_<SYMBOL> checks wait for data_quality)."""
            with freeze_time(at):
                return dg.materialize([*project.assets, *project.asset_checks],
                                      selection=dg.AssetSelection.assets(*[dg.AssetKey(n) for n in sorted(RAW)])
                                      - dg.AssetSelection.checks(*[c for c in project.asset_checks if any(
                                          k.name.startswith("quality_") for k in c.check_keys)]),
                                      instance=instance, resources=resources(sample), raise_on_error=False,
                                      tags={"dagster/asset_partition_range_start": "BTCUSDT|2024",
                                            "dagster/asset_partition_range_end": "BTCUSDT|2024"}, run_config=QUIET)

        failed = raw_run(damaged, _at(0, 20))
        assert not failed.success  # klines' blocking `complete` check: the 05:00 bar and its 4h bar are missing
        due = _evaluate(project, instance, _at(0, 30), ticked)
        assert downstream <= _requested(due) and "klines:quality_BTCUSDT" in _requested(due)
