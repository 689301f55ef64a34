"""Resources own configuration: no asset, check, schedule or sensor body reads the settings; what the resources
are given reaches the assets and schedules (tests/dagster/test_dagster_venues.py and test_intraday.py drive them)."""

from __future__ import annotations

import ast
from pathlib import Path

from dagster_project.resources import default_resources
from qml_pipeline.config import Settings

PROJECT = Path(__file__).resolve().parents[2] / "dagster_project"
SETTINGS_NAMES = {"SETTINGS", "DEFINITIONS_SETTINGS", "Settings"}


def _settings_reads_in_function_bodies(path: Path) -> list[str]:
    """`file:line function` of every settings name used inside a function body (defaults and decorators are
    evaluated when the module loads, so they may read the definitions' settings)."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for statement in fn.body:
                for node in ast.walk(statement):
                    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) \
                        else None
                    if name in SETTINGS_NAMES or name == "environ":
                        found.append(f"{path.name}:{node.lineno} {fn.name} reads {name}")
    return found


def test_no_asset_check_schedule_or_sensor_body_reads_settings():
    modules = sorted((PROJECT / "defs").glob("*.py"))
    assert len(modules) > 5
    assert [read for m in modules for read in _settings_reads_in_function_bodies(m)] == []


def test_the_env_is_parsed_in_one_place():
    parsing = [p.name for p in PROJECT.rglob("*.py") if "Settings.from_env" in p.read_text()]
    assert parsing == ["resources.py"]


def test_default_resources_carry_every_setting_they_are_built_from(tmp_path):
    settings = Settings(warehouse_dir=str(tmp_path), symbols=("SOLUSDT",), venues=("binance", "okx"),
                        kline_intervals=("15m",), start_date="2023-05-01", venue_divergence_1h_points=4.5,
                        refresh_symbols_per_run=7, cards_refresh_minutes=5, intraday_overlap_minutes=9,
                        trades_path="trades.csv", trade_timeframes=("4h",), override_gates=True, model_epochs=3)
    r = default_resources(settings)
    market, refresh = r["market"], r["refresh"]
    assert r["warehouse"].root == str(tmp_path) and r["warehouse"].retention_days == settings.warehouse_retention_days
    assert (market.symbols, market.venues, market.kline_intervals, market.start_date) == (
        ["SOLUSDT"], ["binance", "okx"], ["15m"], "2023-05-01")
    assert market.divergence().window_thresholds == ((1, 4.5), (24, settings.venue_divergence_24h_points))
    assert (refresh.refresh_symbols_per_run, refresh.cards_refresh_minutes, refresh.intraday_overlap_minutes) == (
        7, 5, 9)
    assert (r["trade_source"].export_path, r["trade_source"].timeframes) == ("trades.csv", ["4h"])
    assert (r["research"].override_gates, r["research"].model_epochs) == (True, 3)
