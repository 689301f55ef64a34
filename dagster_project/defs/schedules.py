"""The daily refresh (the year partitions holding yesterday and today of every symbol, a chunk of symbols per
run; everything downstream follows by declarative automation, dagster_project/automation.py), the automation
sensor that evaluates those conditions, and the intraday refresh (the live edge of every symbol in one run, then
the cards, every few minutes).

The one switch: turn on `daily_refresh` (STOPPED by default). `research_automation` is RUNNING by default and
does nothing until raw data is refreshed after a daily tick (and the weekly warehouse maintenance)."""


from collections.abc import Sequence
from datetime import date, datetime, timedelta

import dagster as dg

from dagster_project.automation import DAILY_REFRESH_CRON
from dagster_project.defs.raw_market_data import OVERLAP_TAG, RAW_CHECKS, RAW_GROUP
from dagster_project.defs.quality import raw_data_quality
from dagster_project.partitions import SYMBOLS, range_tags, symbol_blocks, symbol_chunks
from dagster_project.resources import DEFINITIONS_SETTINGS, MarketDataResource, RefreshResource
from qml_pipeline.config import Settings
from qml_pipeline.features.liquidation_map import LiqMapConfig

REFRESH_TAG = "qml/refresh_date"
CHUNK_TAG = "qml/refresh_chunk"

# the quality_<SYMBOL> checks judge data_quality's rows: they run where data_quality is rebuilt, not here
raw_refresh_job = dg.define_asset_job(
    "raw_refresh", selection=dg.AssetSelection.groups(RAW_GROUP) - dg.AssetSelection.checks(raw_data_quality),
    description="Raw market data for a range of symbols and UTC years (one run per symbol-range).")

research_job = dg.define_asset_job(
    "research", selection=(dg.AssetSelection.all() - dg.AssetSelection.groups(RAW_GROUP, "maintenance"))
    | dg.AssetSelection.checks(raw_data_quality),
    description="Everything downstream of the raw tables: trades, features, analysis, model, report, and the "
                "quality_<SYMBOL> checks on the rebuilt data_quality (what the automation sensor runs daily).")


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


@dg.schedule(cron_schedule=DAILY_REFRESH_CRON, job=raw_refresh_job, execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Daily at 00:10 UTC: refresh yesterday and today for every symbol partition, "
                         "QML_REFRESH_SYMBOLS_PER_RUN symbols per run. THE switch: the research_automation sensor "
                         "(on by default) then rebuilds everything downstream once every input is updated and no chunk "
                         "is still running (the research gates block; the raw checks fail their own runs).")
def daily_refresh(context: dg.ScheduleEvaluationContext, refresh: RefreshResource) -> list[dg.RunRequest] | dg.SkipReason:
    return refresh_of_instance(context.instance, context.scheduled_execution_time.date().isoformat(),
                               refresh.refresh_symbols_per_run)


def refresh_of_instance(instance: dg.DagsterInstance, scheduled_date: str,
                        per_run: int = Settings.refresh_symbols_per_run) -> list[dg.RunRequest] | dg.SkipReason:
    """The refresh runs for every symbol partition the instance holds now (read at each evaluation: a symbol
    added by the universe sensor is refreshed the next day, with no code change or reload)."""
    symbols = instance.get_dynamic_partitions(SYMBOLS.name)
    if not symbols:
        return dg.SkipReason("no symbol partitions yet: the symbol_universe sensor adds them")
    return refresh_requests(scheduled_date, symbols, per_run)


research_automation = dg.AutomationConditionSensorDefinition(
    "research_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates the assets' automation conditions (dagster_project/automation.py): after the daily "
                "refresh, everything downstream of the raw tables once every input is updated and no chunk is still "
                "running, stopped by the research gates' blocking checks (a failed raw check fails its own run, "
                "and the research then rebuilds on what is stored); the weekly warehouse maintenance.")


# ---------------------------------------------------------------- intraday: fresh cards (docs/cards.md)

INTRADAY_TAG = "qml/intraday"
CARD_ASSETS = ("context_cards", "pattern_cards")
LIQ_MAP_ASSET = "liquidation_map"
# whole-table checks (every stored row, the data_quality asset's rules) belong to the daily refresh
intraday_job = dg.define_asset_job(
    "intraday_cards",
    selection=(dg.AssetSelection.groups(RAW_GROUP) | dg.AssetSelection.assets(*CARD_ASSETS, LIQ_MAP_ASSET))
    - dg.AssetSelection.checks(*RAW_CHECKS, raw_data_quality),
    executor_def=dg.in_process_executor,
    description="The live edge of the raw tables for every symbol (only stamps not yet stored, re-read from "
                "QML_INTRADAY_OVERLAP_MINUTES before the first missing one), then the context and pattern cards "
                "and their JSON export; the liquidation map once per snapshot interval. One run, one process.")


def intraday_cron(minutes: int) -> str:
    return "0 * * * *" if minutes == 60 else f"*/{minutes} * * * *"


def liq_map_due(scheduled: datetime, refresh_minutes: int,
                snapshot_minutes: int = LiqMapConfig().snapshot_every_minutes) -> bool:
    """True on the tick after the one at each snapshot boundary of the liquidation map: the new snapshot's
    inputs (OI published up to the boundary) have been fetched by then."""
    since = (scheduled.hour * 60 + scheduled.minute) % snapshot_minutes
    return refresh_minutes <= since < 2 * refresh_minutes or (refresh_minutes >= snapshot_minutes and since == 0)


def intraday_requests(scheduled: datetime, symbols: Sequence[str], known: list[str], refresh_minutes: int,
                      overlap_minutes: int) -> list[dg.RunRequest]:
    """One run per block of consecutive symbols (usually one run for all) covering the months from a day
    before `scheduled` (a refresh just after midnight on the 1st still completes the previous month) to its
    month: raw live edge, cards, and the liquidation map when a snapshot is due."""
    first, last = (scheduled - timedelta(days=1)).date().isoformat(), scheduled.date().isoformat()
    assets = [*CARD_ASSETS, *([LIQ_MAP_ASSET] if liq_map_due(scheduled, refresh_minutes) else [])]
    selection = [dg.AssetKey(k) for k in ("funding_rates", "open_interest", "klines", *assets)]
    return [dg.RunRequest(run_key=f"intraday-{scheduled:%Y%m%dT%H%M}-{lo}-{hi}", job_name=intraday_job.name,
                          asset_selection=selection,
                          tags={**range_tags(lo, first, last, hi), INTRADAY_TAG: f"{scheduled:%Y-%m-%dT%H:%M}",
                                OVERLAP_TAG: str(overlap_minutes)})
            for lo, hi in symbol_blocks(symbols, known)]


IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


# the cron is a definition (fixed at load); the run requests use the refresh resource's interval, built from the
# same QML_CARDS_REFRESH_MINUTES
INTRADAY_MINUTES = DEFINITIONS_SETTINGS.cards_refresh_minutes


@dg.schedule(cron_schedule=intraday_cron(INTRADAY_MINUTES), job=intraday_job, execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description=f"Every {INTRADAY_MINUTES} min (QML_CARDS_REFRESH_MINUTES): the live edge of "
                         "every symbol and fresh cards; skipped while the previous one still runs.")
def intraday_refresh(context: dg.ScheduleEvaluationContext, market: MarketDataResource,
                     refresh: RefreshResource) -> list[dg.RunRequest] | dg.SkipReason:
    if not market.live:
        return dg.SkipReason("QML_SOURCE=sample: the bundled sample is a past dataset with no live edge; the "
                             "intraday refresh needs a live source (QML_SOURCE=binance)")
    running = context.instance.get_runs(filters=dg.RunsFilter(job_name=intraday_job.name, statuses=IN_FLIGHT),
                                        limit=1)
    if running:
        return dg.SkipReason(f"intraday run {running[0].run_id} is still {running[0].status.value.lower()}")
    known = context.instance.get_dynamic_partitions(SYMBOLS.name)
    if not known:
        return dg.SkipReason("no symbol partitions yet: the symbol_universe sensor adds them")
    return intraday_requests(context.scheduled_execution_time, known, known, refresh.cards_refresh_minutes,
                             refresh.intraday_overlap_minutes)


