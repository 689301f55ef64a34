"""The researcher's view: the card tables (context_cards, pattern_cards), their JSON export and the static HTML
report. The markdown cards here, the report and the export all render the stored card rows (docs/cards.md)."""

import dagster as dg
import polars as pl

from dagster_project.defs.raw_market_data import WRITER_POOL
from dagster_project.metadata import row_count, table_metadata
from dagster_project.resources import MarketDataResource, ResearchResource, WarehouseResource
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from qml_pipeline.view.build import (ReportInputs, latest_context_cards, recent_pattern_cards, refresh_context_cards,
                                     refresh_pattern_cards, report_notes, write_research_report)
from qml_pipeline.view.card_text import context_cards_markdown, pattern_cards_markdown
from qml_pipeline.view.export import SCHEMA_VERSION, write_cards_export

GROUP = "researcher_view"
SHOWN_PATTERN_CARDS = 20


def _export(wh: Warehouse) -> dict[str, object]:
    """Rewrite the JSON export from both card tables (whichever card asset ran last wrote it)."""
    path = write_cards_export(wh)
    return {"export": dg.MetadataValue.path(str(path)), "export_schema_version": SCHEMA_VERSION}


@dg.asset(deps=["funding_rates", "open_interest", "klines", "liquidation_map", "open_interest_aggregate"],
          group_name=GROUP,
          kinds={"ducklake", "markdown", "json"}, pool=WRITER_POOL, metadata=table_metadata(schemas.CONTEXT_CARDS))
def context_cards(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                  market: MarketDataResource) -> dg.MaterializeResult:
    """Per symbol: latest funding, 24h OI change (Binance's, and across venues where the aggregate exists) and
    nearest estimated liquidation cluster, each with its
    status word, direction, age and the rule behind the status (qml_pipeline/view/cards.py), stored as of now
    (a live source) or the data's end (the sample); rows of earlier as_of times are kept. Rewrites the JSON
    export."""
    wh = warehouse.for_run(context)
    built = refresh_context_cards(wh, live=market.live, symbols=tuple(market.symbols),
                                  venues=tuple(market.venues))
    shown = latest_context_cards(wh)
    as_of = built["as_of"][0] if built.height else None
    return dg.MaterializeResult(metadata={
        **row_count(wh, schemas.CONTEXT_CARDS), "symbols": built.height, "as_of": str(as_of) if as_of else "no data",
        "cards": dg.MetadataValue.md(context_cards_markdown(shown)), **_export(wh)})


# model_predictions is a dependency so a run that rebuilds the model builds the cards after it (they show its
# probability where it passed its gate). A run the phase 10 gate stops skips the cards too; the stored cards stay,
# and the intraday job (which selects the cards without the model) rebuilds them from the stored model rows.
@dg.asset(deps=["context_overlay", "model_predictions"], group_name=GROUP, kinds={"ducklake", "markdown", "json"}, pool=WRITER_POOL,
          metadata=table_metadata(schemas.PATTERN_CARDS))
def pattern_cards(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                  market: MarketDataResource) -> dg.MaterializeResult:
    """Every trade's pattern card: base confidence, each context rule with its reason and size (table
    pattern_card_adjustments), the adjusted confidence (rule overlay) and the model's probability where the model
    passed its gate. Replaced per run; shows the newest ones. Rewrites the JSON export."""
    wh = warehouse.for_run(context)
    cards, adjustments, gate = refresh_pattern_cards(wh, live=market.live)
    shown = recent_pattern_cards(wh, limit=SHOWN_PATTERN_CARDS)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": cards.height, "patterns": cards.height, "as_of": str(cards["as_of"][0]) if cards.height else "no trades",
        "adjustment_rows": adjustments.height, "applied_adjustments": adjustments.filter(pl.col("applied")).height,
        "model_probability": ("shown: " if gate.shown else "not shown: ") + gate.reason,
        "cards": dg.MetadataValue.md(pattern_cards_markdown(shown)), **_export(wh)})


@dg.asset(deps=["context_error_analysis", "baseline_metrics", "data_quality", context_cards, "sensitivity_oi_lag",
                "sensitivity_timeouts", "sensitivity_thresholds", "sensitivity_regimes"], group_name=GROUP,
          kinds={"html"})
def research_report(warehouse: WarehouseResource, market: MarketDataResource,
                    research: ResearchResource) -> dg.MaterializeResult:
    """A static HTML report (no server, no network): cards, equity curves baseline vs overlay, winners vs
    losers distributions, per-year metrics, data freshness and gaps, the gates, the model's verdict and
    what this evidence can and cannot say (from the gates and the sensitivity tables).

    It depends on phase 9 only, so it is written even when a gate stops phases 10 and 11; their
    sections show what the warehouse holds from their last successful run (gate times are shown), the
    pattern cards included (their build time is shown)."""
    wh = warehouse.get()
    notes = report_notes(market.source, market.sample_dir, list(market.symbols), research.override_gates)
    path = write_research_report(wh, wh.root / "reports", ReportInputs(notes, research.override_gates))
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path)),
                                          "open": dg.MetadataValue.url(f"file://{path}")})
