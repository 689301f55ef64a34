"""Assemble the researcher's view (context cards, pattern cards, the HTML report) from the warehouse."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from qml_pipeline.features.aggregate import aggregate_features
from qml_pipeline.store import schemas
from qml_pipeline.view.card_store import (read_latest_context_cards, read_pattern_cards, write_context_cards,
                                          write_pattern_cards)
from qml_pipeline.view.cards import MISSING, CardConfig, context_card_rows, context_cards, with_oi_aggregate
from qml_pipeline.view.pattern_cards import pattern_card_rows, pattern_cards, pattern_cards_for_render
from qml_pipeline.trades.metrics import equity_curve
from qml_pipeline.research.evidence import evidence
from qml_pipeline.research.overlay import OverlayConfig
from qml_pipeline.view.report import write_report
from qml_pipeline.sources.sample import SampleSource
from qml_pipeline.trades.contract import FILLED_OUTCOMES
from qml_pipeline.store.warehouse import Warehouse
from qml_pipeline.timeutil import utc_now

REPORT_FEATURES = ("funding_rate", "funding_rate_z30d", "funding_rate_change_8h", "oi_change_24h", "oi_change_7d",
                   "oi_percentile_30d", "distance_to_liq_cluster", "atr_pct", "oi_agg_change_24h",
                   "oi_agg_change_7d", "oi_agg_percentile_30d", "oi_binance_share", "funding_spread_8h")
# Per symbol, the bins of its newest liquidation-map snapshot at as_of (?, ?: the lookback start and as_of).
LIQ_MAP_SNAPSHOT_SQL = """
SELECT * FROM liquidation_map
WHERE snapshot_time > ? AND snapshot_time <= ?
QUALIFY snapshot_time = max(snapshot_time) OVER (PARTITION BY symbol)
"""
# A card value older than this at as_of is not read, so it shows as 'missing' (older ones would be 'stale'
# anyway); it bounds what one build reads to the recent edge of the raw tables, whatever their history.
CARD_LOOKBACK = timedelta(days=7)
DATA_AS_OF_SQL = """
SELECT max(t) AS as_of FROM (
    SELECT max(available_at) AS t FROM funding_rates WHERE venue = 'binance'
    UNION ALL SELECT max(available_at) FROM open_interest WHERE venue = 'binance'
    UNION ALL SELECT max(available_at) FROM klines
    UNION ALL SELECT max(snapshot_time) FROM liquidation_map)
"""
# The fusion model's probability is shown only past this out-of-sample AUC (the model_beats_chance check's bar).
CHANCE_AUC = 0.5


def card_as_of(wh: Warehouse, live: bool) -> datetime | None:
    """The instant a build of the cards describes: now for a live source; for the bundled sample (a past
    dataset), the newest moment any of its values became available. None when the warehouse holds nothing."""
    if live:
        return utc_now()
    return wh.query(DATA_AS_OF_SQL)["as_of"][0]


def _recent(wh: Warehouse, table: schemas.Table, as_of: datetime, since: datetime, when: str = "event_time",
            venue: bool = True) -> pl.DataFrame:
    where = "venue = 'binance' AND " if venue else ""
    df = wh.query(f"SELECT * FROM {table.name} WHERE {where}revision = 0 AND {when} > ? AND {when} <= ? "
                  "ORDER BY ALL", [since, as_of])
    return schemas.conform(table, df) if df.height else schemas.empty(table)


def build_context_cards(wh: Warehouse, as_of: datetime, symbols: Sequence[str] = (),
                        config: CardConfig = CardConfig(), venues: Sequence[str] = schemas.VENUES) -> pl.DataFrame:
    """The context_cards rows of every symbol in the warehouse (and every one of `symbols`, 'missing' where
    the warehouse has nothing) as of `as_of`, from the values of the last CARD_LOOKBACK (plus OI's 24h base),
    with the 24h OI change across `venues` where the aggregate holds two or more."""
    since = as_of - CARD_LOOKBACK
    oi_since = since - timedelta(hours=config.features.oi_change_short_hours)
    cards = context_cards(_recent(wh, schemas.FUNDING_RATES, as_of, since),
                          _recent(wh, schemas.OPEN_INTEREST, as_of, oi_since),
                          wh.query(LIQ_MAP_SNAPSHOT_SQL, [since, as_of]),
                          _recent(wh, schemas.KLINES, as_of, since, when="available_at", venue=False),
                          as_of=as_of, config=config)
    absent = [s for s in dict.fromkeys(symbols) if s not in set(cards["symbol"].to_list())]
    if absent:
        cards = pl.concat([cards, pl.DataFrame({"symbol": absent}).with_columns(
            pl.lit(as_of).cast(schemas.TS).alias("as_of"),
            *[pl.lit(MISSING).alias(f"{k}_status") for k in ("funding", "oi", "liq")])],
            how="diagonal_relaxed").sort("symbol")
    probes = cards.select(pl.col("symbol").alias("trade_id"), "symbol", pl.col("as_of").alias("decision_time"))
    with contextlib.closing(wh.connect()) as con:
        con.register("card_probes", probes.to_arrow())
        across = aggregate_features(con, venues, probes="card_probes")
    cards = with_oi_aggregate(cards, across)
    rows = context_card_rows(cards, config).with_columns(pl.lit(utc_now()).cast(schemas.TS).alias("built_at"))
    return schemas.conform(schemas.CONTEXT_CARDS, rows)


@dataclass(frozen=True)
class ModelGate:
    """Whether pattern cards show the model's probability, and why (stored as pattern_cards.model_gate)."""

    shown: bool
    reason: str


def model_gate(wh: Warehouse) -> ModelGate:
    """Shown only when the phase 10 gate (phase 11's entry gate) passed without an override and the stored
    model's out-of-sample fusion AUC beats chance (> CHANCE_AUC, the model_beats_chance check's rule)."""
    predictions = wh.read(schemas.MODEL_PREDICTIONS)
    if predictions.height == 0:
        return ModelGate(False, "no model: phase 11 has not run")
    version = predictions["model_version"][0]
    gate = wh.read(schemas.RESEARCH_GATES).filter(pl.col("gate") == "phase10")
    if gate.height == 0 or not gate["gate_passed"][0]:
        why = "was not evaluated" if gate.height == 0 else "failed"
        return ModelGate(False, f"the phase 10 gate {why}, so model {version} ran only under QML_OVERRIDE_GATES")
    auc = (wh.read(schemas.MODEL_EVALUATION, model_version=version)
           .filter((pl.col("scope") == "overall") & (pl.col("model") == "fusion"))["auc"])
    if auc.len() == 0 or auc[0] is None or not auc[0] > CHANCE_AUC:
        seen = "none" if auc.len() == 0 or auc[0] is None else f"{auc[0]:.3f}"
        return ModelGate(False, f"model {version}: out-of-sample fusion AUC {seen}, not above chance ({CHANCE_AUC})")
    return ModelGate(True, f"phase 10 gate passed; model {version} out-of-sample fusion AUC {auc[0]:.3f} > "
                           f"{CHANCE_AUC}")


def build_pattern_cards(wh: Warehouse, as_of: datetime, gate: ModelGate | None = None
                        ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(pattern_cards rows, pattern_card_adjustments rows) for every trade, as of `as_of`; the model's
    probability only where `gate` (default: `model_gate(wh)`) shows it."""
    gate = gate or model_gate(wh)
    trades = wh.read(schemas.TRADES)
    cards = pattern_cards(trades, wh.read(schemas.CONTEXT_OVERLAY),
                          wh.read(schemas.MODEL_PREDICTIONS) if gate.shown else None, limit=trades.height)
    rows, items = pattern_card_rows(cards, as_of, gate.reason)
    rows = rows.with_columns(
        pl.lit(utc_now()).cast(schemas.TS).alias("built_at"),
        pl.when(pl.lit(gate.shown) & pl.col("model_probability").is_null())
        .then(pl.lit("no out-of-sample prediction for this trade (never a walk-forward test trade)"))
        .otherwise(pl.col("model_gate")).alias("model_gate"))
    return (schemas.conform(schemas.PATTERN_CARDS, rows),
            schemas.conform(schemas.PATTERN_CARD_ADJUSTMENTS, items) if items.height
            else schemas.empty(schemas.PATTERN_CARD_ADJUSTMENTS))


def refresh_context_cards(wh: Warehouse, *, live: bool, symbols: Sequence[str] = (),
                          config: CardConfig = CardConfig(), venues: Sequence[str] = schemas.VENUES) -> pl.DataFrame:
    """Build the context cards as of now (live) or the data's end (sample) and store them; the rows."""
    as_of = card_as_of(wh, live)
    if as_of is None:
        return schemas.empty(schemas.CONTEXT_CARDS)
    rows = build_context_cards(wh, as_of, symbols, config, venues)
    write_context_cards(wh, rows)
    return rows


def refresh_pattern_cards(wh: Warehouse, *, live: bool) -> tuple[pl.DataFrame, pl.DataFrame, ModelGate]:
    """Build every trade's pattern card as of now (live) or the data's end (sample) and store them; the rows
    and the model gate they were built with."""
    as_of = card_as_of(wh, live) or utc_now()
    gate = model_gate(wh)
    cards, adjustments = build_pattern_cards(wh, as_of, gate)
    write_pattern_cards(wh, cards, adjustments)
    return cards, adjustments, gate


def latest_context_cards(wh: Warehouse) -> pl.DataFrame:
    """The stored context cards a dashboard sees: per symbol, its newest row (what every view renders)."""
    with contextlib.closing(wh.connect()) as con:
        return read_latest_context_cards(con)


def recent_pattern_cards(wh: Warehouse, limit: int = 20, days: float | None = None) -> pl.DataFrame:
    """The `limit` newest stored pattern cards (within `days` before their as_of, if given), shaped for the
    markdown and HTML renderers (pattern_cards_for_render)."""
    with contextlib.closing(wh.connect()) as con:
        cards, adjustments = read_pattern_cards(con, days=days, limit=limit)
    return pattern_cards_for_render(cards, adjustments)


def verdict_basis(trades: pl.DataFrame, backtest: pl.DataFrame) -> dict[str, str]:
    """Per gate, what its verdict rests on: the filled trades and symbols phase 9 compared, and for phase 10
    the later trades its out-of-sample judgement used (so a reader sees how small an effect it could see)."""
    filled = trades.filter(pl.col("outcome").is_in(FILLED_OUTCOMES))
    years = filled["decision_time"].dt.year() if filled.height else pl.Series([], dtype=pl.Int32)
    base = (f"{filled.height} filled trades of {filled['symbol'].n_unique()} symbol(s)"
            + (f", {years.min()}-{years.max()}" if filled.height else ""))
    out = {"phase9": f"rests on {base}"}
    judged = backtest.filter((pl.col("period") == "judging") & (pl.col("variant") == "baseline")
                             & (pl.col("scope") == "overall")) if backtest.height else backtest
    out["phase10"] = (f"rests on the {judged['trades'][0]} later (out-of-sample) trades of the {base}"
                      if judged.height else f"rests on {base}")
    return out


def gate_dicts(gates: pl.DataFrame, override: bool, basis: dict[str, str] | None = None) -> list[dict]:
    out = []
    for gate in gates["gate"].unique(maintain_order=True).to_list():
        rows = gates.filter(pl.col("gate") == gate)
        out.append({"gate": gate, "passed": bool(rows["gate_passed"][0]), "basis": (basis or {}).get(gate, ""),
                    "parts": rows.select("part", "passed", "message").rename({"part": "name"}).to_dicts(),
                    "override": "QML_OVERRIDE_GATES=1: later phases ran past this gate"
                                if override and not rows["gate_passed"][0] else ""})
    return out


def latest_model_summary(model_dir: Path) -> str | None:
    sidecars = sorted(model_dir.glob("*/model.json"), key=lambda p: p.stat().st_mtime)
    if not sidecars:
        return None
    meta = json.loads(sidecars[-1].read_text())
    return f"model version {sidecars[-1].parent.name}\n\n{meta.get('metrics', {}).get('verdict', '')}"


def report_notes(source: str, sample_dir: str, symbols: list[str], override_gates: bool) -> list[str]:
    """What a reader must know before trusting the report: the data used and any gate overridden."""
    notes = []
    if source == "sample":
        notes.append("Data: the bundled offline sample (real Binance data, 2021-12..2024-12).")
        missing = SampleSource(sample_dir).symbols_without_open_interest(symbols)
        if missing:
            notes.append(f"No open interest in the sample for {', '.join(missing)}: their OI and liquidation "
                         "features are NULL (nothing is invented).")
    if override_gates:
        notes.append("QML_OVERRIDE_GATES=1: phases 10 and 11 ran even where an earlier gate failed; their "
                     "results past a failed gate are not evidence that context helps.")
    return notes


@dataclass(frozen=True)
class ReportInputs:
    notes: list[str]
    override_gates: bool


def write_research_report(wh: Warehouse, out_dir: Path, inputs: ReportInputs) -> Path:
    trades = wh.read(schemas.TRADES)
    overlay = wh.read(schemas.CONTEXT_OVERLAY)
    features = wh.read(schemas.TRADE_CONTEXT_FEATURES)
    curves = {"baseline": equity_curve(trades)}
    if overlay.height:
        sized = trades.join(overlay.select("trade_id", "multiplier", "adjusted_confidence"), on="trade_id", how="left")
        curves["overlay (sizing)"] = equity_curve(sized, size_col="multiplier")
        curves["overlay (filtering)"] = equity_curve(
            sized.filter(pl.col("adjusted_confidence") >= OverlayConfig().min_confidence))
    filled = trades.filter(pl.col("outcome").is_in(FILLED_OUTCOMES))
    feature_values = filled.select("trade_id", "outcome").join(
        features.select("trade_id", *[c for c in REPORT_FEATURES if c in features.columns]), on="trade_id",
        how="left")
    gates = wh.read(schemas.RESEARCH_GATES)
    stats = wh.read(schemas.CONTEXT_ERROR_ANALYSIS)
    ev = evidence(gates, wh.read(schemas.OVERLAY_DIFFERENCES), stats, wh.read(schemas.CONTEXT_ISSUE_SHARES),
                  {"OI publication lag": wh.read(schemas.SENSITIVITY_OI_LAG),
                   "timeout policy": wh.read(schemas.SENSITIVITY_TIMEOUTS),
                   "thresholds": wh.read(schemas.SENSITIVITY_THRESHOLDS),
                   "regime": wh.read(schemas.SENSITIVITY_REGIMES)})
    backtest = wh.read(schemas.OVERLAY_BACKTEST)
    per_year = (backtest.filter((pl.col("period") == "all") & (pl.col("scope") == "group"))
                if backtest.height else wh.read(schemas.BASELINE_METRICS).filter(pl.col("dimension") == "year"))
    return write_report(
        out_dir, context_cards=latest_context_cards(wh), pattern_cards=recent_pattern_cards(wh),
        equity_curves=curves, winners_vs_losers=stats,
        feature_values=feature_values, per_year_metrics=per_year, data_quality=wh.read(schemas.DATA_QUALITY),
        gates=gate_dicts(gates, inputs.override_gates, verdict_basis(trades, backtest)), model_summary=latest_model_summary(wh.root / "models"),
        evidence_can=ev.can, evidence_cannot=ev.cannot, evidence_parts=ev.parts, notes=inputs.notes)
