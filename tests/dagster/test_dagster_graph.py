"""The asset graph as the UI shows it: keys, groups, dependencies, checks (blocking or not) and automation
conditions; and the project loads the `dg` way (`dg check defs`)."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from dagster_project.automation import AFTER_DAILY_REFRESH
from dagster_project.definitions import defs

ROOT = Path(__file__).resolve().parents[2]
GRAPH = defs.get_repository_def().asset_graph

DEPS = {
    "funding_rates": [], "open_interest": [], "klines": [], "liquidations": [], "warehouse_maintenance": [],
    "data_quality": ["funding_rates", "klines", "open_interest"],
    "venue_divergence": ["open_interest"],
    "trades": ["funding_rates", "klines"],
    "baseline_metrics": ["trades"],
    "open_interest_aggregate": ["open_interest"],
    "liquidation_map": ["klines", "open_interest"],
    "trade_context_features": ["funding_rates", "klines", "liquidation_map", "open_interest",
                               "open_interest_aggregate", "trades"],
    "ohlcv_windows": ["klines", "trades"],
    "context_error_analysis": ["trade_context_features"],
    "phase9_gate": ["context_error_analysis"],
    "context_overlay": ["phase9_gate"],
    "phase10_gate": ["context_overlay"],
    "context_model": ["ohlcv_windows", "phase10_gate"],
    "model_predictions": ["ohlcv_windows", "phase10_gate"],
    "sensitivity_oi_lag": ["context_error_analysis", "funding_rates", "klines", "open_interest"],
    "sensitivity_regimes": ["context_error_analysis", "klines"],
    "sensitivity_thresholds": ["context_error_analysis"],
    "sensitivity_timeouts": ["context_error_analysis"],
    "context_cards": ["funding_rates", "klines", "liquidation_map", "open_interest", "open_interest_aggregate"],
    "pattern_cards": ["context_overlay", "model_predictions"],
    "research_report": ["baseline_metrics", "context_cards", "context_error_analysis", "data_quality",
                        "sensitivity_oi_lag", "sensitivity_regimes", "sensitivity_thresholds", "sensitivity_timeouts"],
}
GROUPS = {
    "raw_market_data": {"funding_rates", "open_interest", "klines"},
    "data_quality": {"data_quality", "venue_divergence"},
    "trades": {"trades", "baseline_metrics"},
    "context": {"open_interest_aggregate", "liquidation_map", "liquidations", "trade_context_features",
                "ohlcv_windows"},
    "research": {"context_error_analysis", "phase9_gate", "context_overlay", "phase10_gate", "context_model",
                 "model_predictions"},
    "sensitivity": {"sensitivity_oi_lag", "sensitivity_regimes", "sensitivity_thresholds", "sensitivity_timeouts"},
    "researcher_view": {"context_cards", "pattern_cards", "research_report"},
    "maintenance": {"warehouse_maintenance"},
}
RAW = ("funding_rates", "open_interest", "klines")
# (asset, check) -> blocking
CHECKS = {
    **{(a, c): c in ("contract", "complete") for a in RAW
       for c in ("contract", "complete", "stored_rows_valid", "quality_BTCUSDT", "quality_ETHUSDT")},
    ("phase9_gate", "passed"): True, ("phase10_gate", "passed"): True,
    ("trades", "enough_trades_for_phase9"): False, ("trade_context_features", "feature_nulls"): False,
    ("venue_divergence", "venues_agree"): False, ("context_model", "model_beats_chance"): False,
}


def test_asset_keys_groups_and_deps() -> None:
    got = {k.to_user_string(): sorted(p.to_user_string() for p in GRAPH.get(k).parent_keys)
           for k in GRAPH.get_all_asset_keys()}
    assert got == DEPS
    groups: dict[str, set[str]] = {}
    for k in GRAPH.get_all_asset_keys():
        groups.setdefault(GRAPH.get(k).group_name, set()).add(k.to_user_string())
    assert groups == GROUPS


def test_checks_and_which_block() -> None:
    got = {(k.asset_key.to_user_string(), k.name): GRAPH.get(k).blocking for k in GRAPH.asset_check_keys}
    assert got == CHECKS


def test_automation_conditions() -> None:
    conditions = {k.to_user_string(): GRAPH.get(k).automation_condition for k in GRAPH.get_all_asset_keys()}
    for raw in RAW:  # the daily_refresh schedule runs them, a chunk of symbols per run
        assert conditions[raw] is None
    assert conditions["warehouse_maintenance"].get_label() == "on_cron(0 3 * * 0, UTC)"
    downstream = set(DEPS) - {*RAW, "warehouse_maintenance"}
    assert {name for name in downstream if conditions[name] == AFTER_DAILY_REFRESH} == downstream
    # checks that judge another asset's rebuild follow it into its run
    labels = {(k.asset_key.to_user_string(), k.name): GRAPH.get(k).automation_condition
              for k in GRAPH.asset_check_keys}
    assert labels[("klines", "quality_BTCUSDT")].get_label() == "with_data_quality"
    assert labels[("context_model", "model_beats_chance")].get_label() == "with_context_model"
    repo = defs.get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    assert isinstance(sensors["research_automation"], dg.AutomationConditionSensorDefinition)
    assert sensors["research_automation"].default_status == dg.DefaultSensorStatus.RUNNING
    assert "research_after_refresh" not in sensors
    assert repo.get_schedule_def("daily_refresh").default_status == dg.DefaultScheduleStatus.STOPPED


def test_dg_check_defs_passes(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    dg_cli = Path(sys.executable).parent / "dg"
    done = subprocess.run([str(dg_cli), "check", "defs"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr
