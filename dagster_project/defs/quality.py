"""Data quality of the raw tables: one table analysts can query, markdown in the UI, and checks
per raw table and symbol (completeness, duplicates, zero values, long gaps, freshness); and the venues
compared with each other (venue_divergence)."""

import contextlib
from datetime import timedelta

import dagster as dg
import polars as pl

from dagster_project.automation import after_rebuild_of
from dagster_project.defs.raw_market_data import raw_asset_keys, raw_asset_name, venue_tables
from dagster_project.metadata import markdown_table, table_metadata
from dagster_project.resources import DEFINITIONS_SETTINGS, MarketDataResource, WarehouseResource
from qml_pipeline.store import schemas
from qml_pipeline.store.quality import (SeriesRules, compare_venues, data_quality_markdown, data_quality_report,
                                        divergent, series_problems)

GROUP = "data_quality"
RULES = SeriesRules()
# (asset, table, venue) of every configured venue's raw assets
RAW_SERIES = [(raw_asset_name(t, v), t.name, v) for v in DEFINITIONS_SETTINGS.venues for t in venue_tables(v)]


@dg.asset(deps=[asset for asset, _, _ in RAW_SERIES], group_name=GROUP, kinds={"ducklake", "duckdb"},
          metadata=table_metadata(schemas.DATA_QUALITY))
def data_quality(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Coverage, missing funding settlements / OI buckets / candles, duplicates, zero values, gaps, freshness."""
    wh = warehouse.for_run(context)
    with contextlib.closing(wh.connect()) as con:
        report = data_quality_report(con)
    wh.replace_table(schemas.DATA_QUALITY, report)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": report.height, "series": report.height, "missing_rows": int(report["missing_rows"].sum() or 0),
        "duplicate_rows": int(report["duplicate_rows"].sum() or 0),
        "report": dg.MetadataValue.md(data_quality_markdown(report))})


def _quality_specs(symbols: tuple[str, ...]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(f"quality_{symbol}", asset=asset, additional_deps=[data_quality],
                              automation_condition=after_rebuild_of("data_quality"),
                              description=f"{venue} {table} {symbol}: >= {RULES.min_completeness:.0%} complete, no "
                                          f"duplicates, fresh within {RULES.max_age} (live sources), judged on "
                                          "data_quality as rebuilt in the same run (the research job and the "
                                          "automation sensor run it there; raw refresh runs leave it out)")
            for asset, table, venue in RAW_SERIES for symbol in symbols]


@dg.multi_asset_check(specs=_quality_specs(DEFINITIONS_SETTINGS.symbols), can_subset=True)
def raw_data_quality(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource,
                     market: MarketDataResource):
    report = warehouse.get().read(schemas.DATA_QUALITY)
    series = {asset: (table, venue) for asset, table, venue in RAW_SERIES}
    for key in context.selected_asset_check_keys:
        (table, venue), symbol = series[key.asset_key.to_user_string()], key.name.removeprefix("quality_")
        rows = report.filter((pl.col("table_name") == table) & (pl.col("venue") == venue)
                             & (pl.col("symbol") == symbol))
        if rows.is_empty():
            reason = f"no {venue} {table} rows for {symbol} in data_quality (nothing stored)"
            yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=False,
                                      severity=dg.AssetCheckSeverity.WARN, description=reason,
                                      metadata={"reason": reason})
            continue
        worst = rows.sort("completeness").row(0, named=True)
        live = market.live or venue != "binance"
        age = timedelta(minutes=float(rows["freshness_minutes"].max()))
        problems = series_problems(rows, live, RULES)
        yield dg.AssetCheckResult(
            asset_key=key.asset_key, check_name=key.name, passed=not problems,
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(problems) or "complete, unique" + (" and fresh" if live else ""),
            metadata={"missing_rows": int(rows["missing_rows"].sum()), "completeness": worst["completeness"],
                      "duplicate_rows": int(rows["duplicate_rows"].sum()),
                      "zero_rows": int(rows["zero_rows"].fill_null(0).sum()),
                      "gaps": int(rows["gaps"].sum()),
                      "longest_gap_minutes": float(rows["longest_gap_minutes"].max() or 0),
                      "freshness": "not applicable (bundled sample)" if not live else str(age)})


DIVERGENCE_CHECK = "venues_agree"


@dg.asset(deps=raw_asset_keys(schemas.OPEN_INTEREST), group_name=GROUP, kinds={"ducklake", "duckdb"},
          metadata=table_metadata(schemas.VENUE_DIVERGENCE),
          check_specs=[dg.AssetCheckSpec(
              DIVERGENCE_CHECK, asset="venue_divergence",
              description="no venue's OI change differs from the median of the venues' changes by more than the "
                          "thresholds (QML_VENUE_DIVERGENCE_1H_POINTS / _24H_POINTS percentage points over 1h / "
                          "24h; the result's metadata names the ones applied; a warning: a venue's data error or "
                          "a venue-specific move; the hours are listed)")])
def venue_divergence(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     market: MarketDataResource) -> dg.MaterializeResult:
    """Hours where one venue's open-interest change (1h, 24h) is out of line with the other venues'
    (QML_VENUE_DIVERGENCE_1H_POINTS, QML_VENUE_DIVERGENCE_24H_POINTS), by symbol, time and venue."""
    wh = warehouse.for_run(context)
    config = market.divergence()
    with contextlib.closing(wh.connect()) as con:
        compared = compare_venues(con, tuple(market.venues), config)
    flagged = divergent(compared)
    wh.replace_table(schemas.VENUE_DIVERGENCE, flagged)
    per_venue = (compared.group_by("symbol", "venue", "window_hours")
                 .agg(pl.len().alias("hours_compared"),
                      (pl.col("deviation_points").abs() > pl.col("threshold_points")).sum().alias("hours_flagged"))
                 .sort("symbol", "venue", "window_hours"))
    if compared.is_empty():
        verdict = (f"nothing to compare: no hour had the open interest of two of the configured venues "
                   f"({', '.join(market.venues)})")
    elif flagged.is_empty():
        verdict = f"{compared.height} venue-hour comparisons, none beyond its threshold"
    else:
        verdict = (f"{flagged.height} of {compared.height} venue-hour comparisons beyond their threshold, first "
                   f"{flagged['venue'][0]} {flagged['symbol'][0]} at {flagged['event_time'][0]:%Y-%m-%d %H:%M} UTC")
    return dg.MaterializeResult(
        metadata={"dagster/row_count": flagged.height, "comparisons": compared.height,
                  "per_venue": markdown_table(per_venue)},
        check_results=[dg.AssetCheckResult(
            check_name=DIVERGENCE_CHECK, passed=flagged.is_empty(), severity=dg.AssetCheckSeverity.WARN,
            description=verdict,
            metadata={"comparisons": compared.height, "flagged": flagged.height,
                      "threshold_points": ", ".join(f"{h}h: {p:g}" for h, p in config.window_thresholds),
                      "first_flagged": markdown_table(flagged.head(20))})])
