"""The researcher's view: context cards, pattern cards and the static HTML report."""

import dagster as dg

from dagster_project.resources import (
    SETTINGS,
    MarketDataResource,
    ResearchResource,
    WarehouseResource,
)
from qml_pipeline.cards import context_cards_markdown, pattern_cards_markdown
from qml_pipeline.researcher_view import (
    ReportInputs,
    latest_context_cards,
    recent_pattern_cards,
    write_research_report,
)
from qml_pipeline.sources.sample import SampleSource

GROUP = "researcher_view"


@dg.asset(deps=["funding_rates", "open_interest", "klines", "liquidation_map"], group_name=GROUP, kinds={"markdown"})
def context_cards(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Per symbol: latest funding, 24h OI change and nearest estimated liquidation cluster, each with its
    status word (rules in qml_pipeline/cards.py) and the data's age."""
    cards = latest_context_cards(warehouse.get())
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


@dg.asset(deps=["context_error_analysis", "baseline_metrics", "data_quality", context_cards], group_name=GROUP,
          kinds={"html"})
def research_report(warehouse: WarehouseResource, market: MarketDataResource,
                    research: ResearchResource) -> dg.MaterializeResult:
    """A static HTML report (no server, no network): cards, equity curves baseline vs overlay, winners vs
    losers distributions, per-year metrics, data freshness and gaps, the gates and the model's verdict."""
    wh = warehouse.get()
    notes = []
    if market.source == "sample":
        notes.append("Data: the bundled offline sample (real Binance data, 2021-12..2024-12).")
        missing = SampleSource(market.sample_dir).symbols_without_open_interest(list(SETTINGS.symbols))
        if missing:
            notes.append(f"No open interest in the sample for {', '.join(missing)}: their OI and liquidation "
                         "features are NULL (nothing is invented).")
    if research.override_gates:
        notes.append("QML_OVERRIDE_GATES=1: phases 10 and 11 ran even where an earlier gate failed; their "
                     "results past a failed gate are not evidence that context helps.")
    path = write_research_report(wh, wh.root / "reports", ReportInputs(notes, research.override_gates))
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path)),
                                          "open": dg.MetadataValue.url(f"file://{path}")})
