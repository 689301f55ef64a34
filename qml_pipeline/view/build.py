"""Assemble the researcher's view (context cards, pattern cards, the HTML report) from the warehouse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.view.cards import context_cards, pattern_cards
from qml_pipeline.trades.metrics import equity_curve
from qml_pipeline.research.overlay import OverlayConfig
from qml_pipeline.view.report import write_report
from qml_pipeline.sources.sample import SampleSource
from qml_pipeline.trades.contract import FILLED_OUTCOMES
from qml_pipeline.store.warehouse import Warehouse

REPORT_FEATURES = ("funding_rate", "funding_rate_z30d", "funding_rate_change_8h", "oi_change_24h", "oi_change_7d",
                   "oi_percentile_30d", "distance_to_liq_cluster", "atr_pct")
LIQ_MAP_LOOKBACK_SQL = """
SELECT * FROM liquidation_map m
WHERE snapshot_time >= (SELECT max(snapshot_time) - INTERVAL 2 DAY FROM liquidation_map x WHERE x.symbol = m.symbol)
"""


def latest_context_cards(wh: Warehouse) -> pl.DataFrame:
    """Per symbol, the latest funding, OI change and nearest estimated liquidation cluster with their ages."""
    return context_cards(wh.read(schemas.FUNDING_RATES, venue="binance"), wh.read(schemas.OPEN_INTEREST, venue="binance"),
                         wh.query(LIQ_MAP_LOOKBACK_SQL), wh.read(schemas.KLINES))


def recent_pattern_cards(wh: Warehouse, limit: int = 20) -> pl.DataFrame:
    predictions = wh.read(schemas.MODEL_PREDICTIONS)
    return pattern_cards(wh.read(schemas.TRADES), wh.read(schemas.CONTEXT_OVERLAY),
                         predictions if predictions.height else None, limit=limit)


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
    backtest = wh.read(schemas.OVERLAY_BACKTEST)
    per_year = (backtest.filter((pl.col("period") == "all") & (pl.col("scope") == "group"))
                if backtest.height else wh.read(schemas.BASELINE_METRICS).filter(pl.col("dimension") == "year"))
    return write_report(
        out_dir, context_cards=latest_context_cards(wh), pattern_cards=recent_pattern_cards(wh),
        equity_curves=curves, winners_vs_losers=wh.read(schemas.CONTEXT_ERROR_ANALYSIS),
        feature_values=feature_values, per_year_metrics=per_year, data_quality=wh.read(schemas.DATA_QUALITY),
        gates=gate_dicts(wh.read(schemas.RESEARCH_GATES), inputs.override_gates, verdict_basis(trades, backtest)),
        model_summary=latest_model_summary(wh.root / "models"), notes=inputs.notes)
