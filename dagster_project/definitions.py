"""The one Definitions object: every asset, check, job, schedule and resource of the pipeline."""

import dagster as dg

from dagster_project.defs.context import (
                                          liquidation_map,
                                          liquidations,
                                          ohlcv_windows,
                                          open_interest_aggregate,
                                          trade_context_features,
)
from dagster_project.defs.maintenance import warehouse_maintenance
from dagster_project.defs.quality import data_quality, raw_data_quality, venue_divergence
from dagster_project.defs.raw_market_data import RAW_ASSETS, RAW_CHECKS
from dagster_project.defs.research import (
                                          context_error_analysis,
                                          context_model,
                                          context_overlay,
                                          model_beats_chance,
)
from dagster_project.defs.schedules import JOBS, SCHEDULES, SENSORS
from dagster_project.defs.sensitivity import SENSITIVITY_ASSETS
from dagster_project.defs.trades import baseline_metrics, trades
from dagster_project.defs.view import context_cards, pattern_cards, research_report
from dagster_project.executors import configured_executor
from dagster_project.resources import SETTINGS, default_resources

RESEARCH_ASSETS = [data_quality, venue_divergence, trades, baseline_metrics, open_interest_aggregate, liquidation_map,
                   liquidations, trade_context_features, ohlcv_windows, context_error_analysis, context_overlay,
                   context_model, *SENSITIVITY_ASSETS, context_cards, pattern_cards, research_report]
RESEARCH_CHECKS = [raw_data_quality, model_beats_chance]

defs = dg.Definitions(
    assets=[*RAW_ASSETS, *RESEARCH_ASSETS, warehouse_maintenance],
    asset_checks=[*RAW_CHECKS, *RESEARCH_CHECKS],
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources=default_resources(),
    executor=configured_executor(SETTINGS.executor),
)
