"""The daily refresh: the year partitions holding yesterday and today of every symbol, a chunk of symbols per run,
then everything downstream once every chunk has succeeded."""


from collections.abc import Sequence
from datetime import date, timedelta

import dagster as dg

from dagster_project.defs.raw_market_data import RAW_GROUP
from dagster_project.defs.universe import symbol_universe
from dagster_project.partitions import SYMBOLS, range_tags, symbol_chunks
from dagster_project.resources import SETTINGS

REFRESH_TAG = "qml/refresh_date"
CHUNK_TAG = "qml/refresh_chunk"

raw_refresh_job = dg.define_asset_job(
    "raw_refresh", selection=dg.AssetSelection.groups(RAW_GROUP),
    description="Raw market data for a range of symbols and UTC months (one run per symbol-range).")

research_job = dg.define_asset_job(
    "research", selection=dg.AssetSelection.all() - dg.AssetSelection.groups(RAW_GROUP, "maintenance"),
    description="Everything downstream of the raw tables: trades, features, analysis, model, report.")


def refresh_requests(scheduled_date: str, symbols: Sequence[str], per_run: int) -> list[dg.RunRequest]:
    """One run per chunk of `per_run` consecutive symbols (in the `symbols` partitions' order), covering the
    months holding the day before `scheduled_date` and that day (still forming). Only stamps not yet stored
    are fetched (qml_pipeline/sources/ingest.py), so the cost is a day of data per symbol."""
    day = date.fromisoformat(scheduled_date)
    first, last = (day - timedelta(days=1)).isoformat(), day.isoformat()
    chunks = symbol_chunks(symbols, per_run)
    return [dg.RunRequest(run_key=f"refresh-{chunk[0]}-{chunk[-1]}-{last}", job_name=raw_refresh_job.name,
                          tags={**range_tags(chunk[0], first, last, chunk[-1]), REFRESH_TAG: last,
                                CHUNK_TAG: f"{k}/{len(chunks)}"})
            for k, chunk in enumerate(chunks, 1)]


def all_chunks_refreshed(runs: list[dg.DagsterRun]) -> tuple[bool, str]:
    """(True when the newest run of every chunk of a refresh succeeded, what is still missing). A failed
    run re-executed later counts as its re-execution."""
    latest: dict[str, dg.DagsterRun] = {}
    expected = 0
    for run in runs:  # the instance lists runs newest first
        chunk = run.tags.get(CHUNK_TAG, "1/1")
        latest.setdefault(chunk.split("/")[0], run)
        expected = max(expected, int(chunk.split("/")[1]))
    waiting = [k for k in map(str, range(1, expected + 1))
               if k not in latest or latest[k].status != dg.DagsterRunStatus.SUCCESS]
    return (expected > 0 and not waiting), (f"chunk(s) {', '.join(waiting)} of {expected} not yet succeeded"
                                            if waiting else "")


@dg.schedule(cron_schedule="10 0 * * *", job=raw_refresh_job, execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Daily at 00:10 UTC: refresh yesterday and today for every symbol partition, "
                         "QML_REFRESH_SYMBOLS_PER_RUN symbols per run.")
def daily_refresh(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    return refresh_of_instance(context.instance, context.scheduled_execution_time.date().isoformat())


def refresh_of_instance(instance: dg.DagsterInstance, scheduled_date: str) -> list[dg.RunRequest] | dg.SkipReason:
    """The refresh runs for every symbol partition the instance holds now (read at each evaluation: a symbol
    added by the universe sensor is refreshed the next day, with no code change or reload)."""
    symbols = instance.get_dynamic_partitions(SYMBOLS.name)
    if not symbols:
        return dg.SkipReason("no symbol partitions yet: the symbol_universe sensor adds them")
    return refresh_requests(scheduled_date, symbols, SETTINGS.refresh_symbols_per_run)


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[raw_refresh_job],
                      request_job=research_job, default_status=dg.DefaultSensorStatus.STOPPED,
                      description="Once every chunk of a day's refresh has succeeded, rebuild downstream.")
def research_after_refresh(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    refresh_date = context.dagster_run.tags.get(REFRESH_TAG)
    if refresh_date is None:
        return dg.SkipReason("not a scheduled refresh run")
    runs = context.instance.get_runs(filters=dg.RunsFilter(tags={REFRESH_TAG: refresh_date}))
    done, waiting = all_chunks_refreshed(runs)
    if not done:
        return dg.SkipReason(f"refresh {refresh_date}: waiting, {waiting}")
    return dg.RunRequest(run_key=f"research-{refresh_date}", tags={REFRESH_TAG: refresh_date})


JOBS = [raw_refresh_job, research_job]
SCHEDULES = [daily_refresh]
SENSORS = [research_after_refresh, symbol_universe]
