"""When Dagster rebuilds what, declared on the assets (declarative automation) and evaluated by ONE sensor,
`research_automation` (dagster_project/defs/schedules.py).

- Raw assets have no condition: the `daily_refresh` schedule runs them, a chunk of symbols per run
  (QML_REFRESH_SYMBOLS_PER_RUN) over the year partitions holding yesterday and today. `on_cron` would ask for the
  latest year only (missing the last day of December on the 1st of January) and for every symbol in one run.
- Everything downstream rebuilds once per day, after the daily refresh tick, as soon as each of its inputs has
  been updated since that tick (or is requested in the same evaluation, so the whole graph is one run), no input
  is still being refreshed (a queued or running chunk), and every blocking check of its inputs passed (the research
  gates). The raw tables' blocking checks act inside their runs (a failed `contract` writes nothing, a failed
  `complete` fails the run); as automation inputs they are left out, because Dagster 1.13 evaluated them as not
  passed on the symbol x year partitions even after passing runs (tests/dagster/test_dagster_automation.py). It does not follow every upstream update (`eager`): the
  intraday refresh updates the raw tables every few minutes, and the research must not be rebuilt each time.
- `warehouse_maintenance` keeps its weekly `on_cron`.

The cron is read at import: schedules and automation conditions are definitions, fixed when the code loads.
"""

import dagster as dg

from dagster_project.defs.raw_market_data import RAW_GROUP

DAILY_REFRESH_CRON = "10 0 * * *"
MAINTENANCE_CRON = "0 3 * * 0"

AFTER_DAILY_REFRESH = (
    dg.AutomationCondition.cron_tick_passed(DAILY_REFRESH_CRON).since_last_handled()
    & dg.AutomationCondition.all_deps_updated_since_cron(DAILY_REFRESH_CRON)
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & dg.AutomationCondition.all_deps_blocking_checks_passed().ignore(dg.AssetSelection.groups(RAW_GROUP))
).with_label("after_daily_refresh")


def after_rebuild_of(asset: str) -> dg.AutomationCondition:
    """For a check that judges `asset`'s rows (about another asset): requested with `asset` when the sensor requests
    it, so the check runs in the run that rebuilds what it judges, and only then."""
    return dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested()).allow(
        dg.AssetSelection.assets(asset)).with_label(f"with_{asset}")
