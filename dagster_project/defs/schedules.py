"""The daily refresh: yesterday's and today's raw partitions per symbol, then everything downstream."""


from datetime import date, timedelta

import dagster as dg

from dagster_project.defs.raw_market_data import RAW_GROUP
from dagster_project.partitions import range_tags
from dagster_project.resources import SETTINGS

REFRESH_TAG = "qml/refresh_date"

raw_refresh_job = dg.define_asset_job(
    "raw_refresh", selection=dg.AssetSelection.groups(RAW_GROUP),
    description="Raw market data for one symbol and a range of UTC days (one run per symbol-range).")

research_job = dg.define_asset_job(
    "research", selection=dg.AssetSelection.all() - dg.AssetSelection.groups(RAW_GROUP, "maintenance"),
    description="Everything downstream of the raw tables: trades, features, analysis, model, report.")


def refresh_requests(scheduled_date: str, symbols: tuple[str, ...]) -> list[dg.RunRequest]:
    """One run per symbol covering the day before `scheduled_date` and that day (still forming)."""
    day = date.fromisoformat(scheduled_date)
    first, last = (day - timedelta(days=1)).isoformat(), day.isoformat()
    return [dg.RunRequest(run_key=f"refresh-{symbol}-{last}", job_name=raw_refresh_job.name,
                          tags={**range_tags(symbol, first, last), REFRESH_TAG: last})
            for symbol in symbols]


def all_symbols_refreshed(runs: list[dg.DagsterRun], symbols: tuple[str, ...]) -> bool:
    """True when the newest run of every symbol succeeded (a failed run re-executed later counts as
    its re-execution)."""
    latest: dict[str, dg.DagsterRun] = {}
    for run in runs:  # the instance lists runs newest first
        symbol = run.tags.get("dagster/asset_partition_range_start", "").split("|")[0]
        latest.setdefault(symbol, run)
    return all(s in latest and latest[s].status == dg.DagsterRunStatus.SUCCESS for s in symbols)


@dg.schedule(cron_schedule="10 0 * * *", job=raw_refresh_job, execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Daily at 00:10 UTC: refresh yesterday and today for every symbol.")
def daily_refresh(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    return refresh_requests(context.scheduled_execution_time.date().isoformat(), SETTINGS.symbols)


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[raw_refresh_job],
                      request_job=research_job, default_status=dg.DefaultSensorStatus.STOPPED,
                      description="Once every symbol of a day's refresh has succeeded, rebuild downstream.")
def research_after_refresh(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    refresh_date = context.dagster_run.tags.get(REFRESH_TAG)
    if refresh_date is None:
        return dg.SkipReason("not a scheduled refresh run")
    runs = context.instance.get_runs(filters=dg.RunsFilter(tags={REFRESH_TAG: refresh_date}))
    if not all_symbols_refreshed(runs, SETTINGS.symbols):
        return dg.SkipReason(f"refresh {refresh_date}: waiting for the latest run of each of "
                             f"{len(SETTINGS.symbols)} symbols to succeed")
    return dg.RunRequest(run_key=f"research-{refresh_date}", tags={REFRESH_TAG: refresh_date})


JOBS = [raw_refresh_job, research_job]
SCHEDULES = [daily_refresh]
SENSORS = [research_after_refresh]
