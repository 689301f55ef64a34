"""Warehouse upkeep: snapshot expiry and file clean-up, on a weekly schedule, as an asset in the writer pool."""

from datetime import timedelta

import dagster as dg

from dagster_project.automation import MAINTENANCE_CRON
from dagster_project.defs.raw_market_data import WRITER_POOL
from dagster_project.resources import WarehouseResource

GROUP = "maintenance"


@dg.asset(group_name=GROUP, kinds={"ducklake"}, pool=WRITER_POOL,
          automation_condition=dg.AutomationCondition.on_cron(MAINTENANCE_CRON))
def warehouse_maintenance(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Weekly (Sunday 03:00 UTC): flush rows DuckLake inlined in the catalog into Parquet, merge small files,
    expire snapshots older than the retention (QML_WAREHOUSE_RETENTION_DAYS, default 30: time travel reaches
    back that far), delete the files no snapshot needs, and remove orphan files left by killed writers."""
    wh = warehouse.for_run(context)
    done = wh.maintain(retention=timedelta(days=warehouse.retention_days))
    return dg.MaterializeResult(metadata={**done, "retention_days": warehouse.retention_days,
                                          "current_snapshot": wh.current_snapshot()})
