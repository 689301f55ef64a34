"""The one Definitions object: every asset, check, job, schedule and sensor found in dagster_project/defs (a
`dg` project: pyproject.toml [tool.dg]), with the resources, the executor and the daily automation condition of
every asset downstream of the raw tables (dagster_project/automation.py)."""

from pathlib import Path

import dagster as dg

from dagster_project.automation import AFTER_DAILY_REFRESH
from dagster_project.defs.raw_market_data import RAW_CHECKS, RAW_GROUP
from dagster_project.defs.maintenance import GROUP as MAINTENANCE_GROUP
from dagster_project.executors import configured_executor
from dagster_project.resources import DEFINITIONS_SETTINGS, default_resources

# groups not rebuilt after the daily refresh: the raw tables (the schedule runs them) and the maintenance (weekly)
OWN_TRIGGER_GROUPS = (RAW_GROUP, MAINTENANCE_GROUP)


def _daily(spec: dg.AssetSpec) -> dg.AssetSpec:
    if spec.group_name in OWN_TRIGGER_GROUPS:
        return spec
    return spec.replace_attributes(automation_condition=AFTER_DAILY_REFRESH)


def build_defs() -> dg.Definitions:
    found = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    # a definition imported by another defs module is found twice: keep each object once
    assets = list({id(a): a for a in found.assets or []}.values())
    return dg.Definitions(
        assets=dg.map_asset_specs(_daily, assets), asset_checks=found.asset_checks, jobs=found.jobs,
        schedules=found.schedules, sensors=found.sensors, resources=default_resources(),
        executor=configured_executor(DEFINITIONS_SETTINGS.executor))


defs = build_defs()

# what runs after the raw tables (the research job's assets and checks; tests and the demo materialize these)
RESEARCH_ASSETS = [a for a in defs.assets if not {s.group_name for s in a.specs} & set(OWN_TRIGGER_GROUPS)]
RESEARCH_CHECKS = [c for c in defs.asset_checks if all(c is not raw for raw in RAW_CHECKS)]
