"""The one Definitions object: every asset, check, job, schedule and resource of the pipeline."""

import dagster as dg

from dagster_project.defs.raw_market_data import RAW_ASSETS, RAW_CHECKS
from dagster_project.defs.quality import data_quality, raw_data_quality
from dagster_project.defs.trades import baseline_metrics, trades
from dagster_project.defs.schedules import JOBS, SCHEDULES, SENSORS
from dagster_project.resources import default_resources

defs = dg.Definitions(
    assets=[*RAW_ASSETS, data_quality, trades, baseline_metrics],
    asset_checks=[*RAW_CHECKS, raw_data_quality],
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources=default_resources(),
)
