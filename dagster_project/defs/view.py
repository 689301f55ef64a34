"""The researcher's view: context cards, pattern cards and the static HTML report."""

import dagster as dg

from dagster_project.resources import SETTINGS, MarketDataResource, ResearchResource, WarehouseResource
from qml_pipeline.view.cards import context_cards_markdown, pattern_cards_markdown
from qml_pipeline.view.build import (ReportInputs, latest_context_cards, recent_pattern_cards, report_notes,
                                          write_research_report)

GROUP = "researcher_view"


@dg.asset(deps=["funding_rates", "open_interest", "klines", "liquidation_map", "open_interest_aggregate"],
          group_name=GROUP, kinds={"markdown"})
def context_cards(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Per symbol: latest funding, 24h OI change (Binance's, and across venues where the aggregate exists) and
    nearest estimated liquidation cluster, each with its status word (rules in qml_pipeline/view/cards.py) and
    the data's age."""
    cards = latest_context_cards(warehouse.get(), SETTINGS.venues)
    return dg.MaterializeResult(metadata={"symbols": cards.height,
                                          "cards": dg.MetadataValue.md(context_cards_markdown(cards))})


# Reads model_predictions when present; not a hard dependency, so the cards exist before phase 11 runs.
@dg.asset(deps=["context_overlay"], group_name=GROUP, kinds={"markdown"})
def pattern_cards(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The most recent patterns: base confidence, each context adjustment with its reason and size, the
    adjusted confidence (rule overlay) and the model's probability where a model exists."""
    cards = recent_pattern_cards(warehouse.get())
    return dg.MaterializeResult(metadata={"patterns": cards.height,
                                          "cards": dg.MetadataValue.md(pattern_cards_markdown(cards))})


@dg.asset(deps=["context_error_analysis", "baseline_metrics", "data_quality", context_cards, "sensitivity_oi_lag",
                "sensitivity_timeouts", "sensitivity_thresholds", "sensitivity_regimes"], group_name=GROUP,
          kinds={"html"})
def research_report(warehouse: WarehouseResource, market: MarketDataResource,
                    research: ResearchResource) -> dg.MaterializeResult:
    """A static HTML report (no server, no network): cards, equity curves baseline vs overlay, winners vs
    losers distributions, per-year metrics, data freshness and gaps, the gates, the model's verdict and
    what this evidence can and cannot say (from the gates and the sensitivity tables).

    It depends on phase 9 only, so it is written even when a gate stops phases 10 and 11; their
    sections show what the warehouse holds from their last successful run (gate times are shown)."""
    wh = warehouse.get()
    notes = report_notes(market.source, market.sample_dir, list(SETTINGS.symbols), research.override_gates)
    path = write_research_report(wh, wh.root / "reports", ReportInputs(notes, research.override_gates))
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path)),
                                          "open": dg.MetadataValue.url(f"file://{path}")})
