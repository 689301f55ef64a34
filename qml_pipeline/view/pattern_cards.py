"""Pattern cards: one per trade, from the overlay's itemised rule columns (qml_pipeline/research/overlay.py):
each rule that changed the multiplier with its reason and size, the rules that did not (and why: neutral,
or no data), the adjusted confidence and, when given, a model's probability; the rows of the
pattern_cards and pattern_card_adjustments tables and their shape for the renderers (docs/cards.md)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime

import polars as pl

from qml_pipeline.formats import fmt_usd
from qml_pipeline.research.overlay import REFERENCE_INTERVAL_HOURS
from qml_pipeline.store.schemas import TS
from qml_pipeline.view.cards import minutes_between


# ---------------------------------------------------------------- pattern cards

ADJUSTMENT = pl.Struct({"rule": pl.Utf8, "reason": pl.Utf8, "effect": pl.Utf8, "mult": pl.Float64})
# every rule of a card, applied or not (the rows of the pattern_card_adjustments table)
CARD_ITEM = pl.Struct({"rule": pl.Utf8, "reason": pl.Utf8, "effect": pl.Utf8, "mult": pl.Float64,
                       "applied": pl.Boolean})

PATTERN_CARD_SCHEMA = pl.Schema({
    "trade_id": pl.Utf8, "title": pl.Utf8, "symbol": pl.Utf8, "timeframe": pl.Utf8, "direction": pl.Utf8,
    "decision_time": TS, "outcome": pl.Utf8,
    "base_confidence": pl.Float64, "adjustments": pl.List(ADJUSTMENT), "no_effect": pl.List(pl.Utf8),
    "items": pl.List(CARD_ITEM),
    "raw_multiplier": pl.Float64, "multiplier": pl.Float64, "clamped": pl.Boolean,
    "adjusted_confidence": pl.Float64, "model_probability": pl.Float64, "model_version": pl.Utf8,
    "base_confidence_text": pl.Utf8, "adjusted_confidence_text": pl.Utf8, "model_text": pl.Utf8,
    "adjustments_text": pl.Utf8,
})


def _effect(mult: float) -> str:
    text = f"{(mult - 1) * 100:+.1f}".removesuffix(".0")
    return f"{text}%"


def _conf(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.0f}%"


def _funding_reason(r: dict) -> str:
    rate, f8 = r.get("funding_rate"), r.get("funding_rate_8h")
    hours = r.get("funding_interval_hours")
    hours = int(hours) if hours else REFERENCE_INTERVAL_HOURS
    if rate is None:
        return f"Funding {f8 * 100:+.3f}%/8h"
    if hours == REFERENCE_INTERVAL_HOURS or f8 is None:
        return f"Funding {rate * 100:+.3f}%/{hours}h"
    return f"Funding {rate * 100:+.3f}%/{hours}h = {f8 * 100:+.3f}%/8h"


def _card_items(r: dict) -> list[dict]:
    """Every context rule of one overlay row, in card order: {rule, reason, effect, mult, applied}; `applied`
    when the rule changed the multiplier (effect is its size as text, else None)."""
    items: list[dict] = []

    def add(rule: str, reason: str, mult: float | None = None, applied: bool = False) -> None:
        items.append({"rule": rule, "reason": reason, "effect": _effect(mult) if applied else None,
                      "mult": mult, "applied": applied})

    def rule(name: str, state: str | None, mult: float | None, missing: str, fired: Callable[[], str],
             neutral: Callable[[], str]) -> None:
        """One rule's item: no data, fired (changed the multiplier) or neutral."""
        if state == "missing":
            add(name, missing, mult)
        elif mult is not None and mult != 1.0:
            add(name, fired(), mult, applied=True)
        else:
            add(name, neutral(), mult)

    fr = r.get("funding_rule")
    if fr is None:
        add("overlay", "no overlay row for this trade")
        return items
    rule("funding", fr, r.get("funding_mult"), "Funding: no data at decision time",
         lambda: f"{_funding_reason(r)} ({'crowded longs' if fr == 'crowded_longs' else 'crowded shorts'})",
         lambda: f"{_funding_reason(r)} ({fr.replace('_', ' ')})")
    oir, oi = r.get("oi_rule"), r.get("oi_change_24h")
    rule("oi", oir, r.get("oi_mult"), "OI: no data at decision time",
         lambda: f"OI {oir} {oi:+.1f}% 24h ({'conviction' if oir == 'rising' else 'weak'})",
         lambda: f"OI {oir} {oi:+.1f}% 24h" if oi is not None else f"OI {oir}")
    lr, lm, dist = r.get("liq_rule"), r.get("liq_mult"), r.get("distance_to_liq_cluster")
    if dist is not None and math.isnan(dist):
        dist = None
    price = fmt_usd(r.get("liq_cluster_price"))
    where = f" {price}" if price else ""
    no_estimate = "Liq cluster: no estimate at decision time"
    if lr == "disabled":
        add("liq", "Liq rule disabled", lm)
    else:
        rule("liq", lr, lm, no_estimate, lambda: f"Near liq cluster{where} ({dist:.2f} ATR)",
             lambda: f"Liq cluster{where} {dist:.2f} ATR away (far)" if dist is not None else no_estimate)
    return items


def pattern_cards(trades: pl.DataFrame, overlay: pl.DataFrame, model_predictions: pl.DataFrame | None = None,
                  limit: int = 20, trade_ids: Sequence[str] | None = None) -> pl.DataFrame:
    """One card per trade (columns PATTERN_CARD_SCHEMA): the `limit` most recent by decision_time
    (newest first), or the given `trade_ids` in their order.

    `overlay`: `overlay.apply_overlay` output (its *_rule / *_mult columns itemise each adjustment;
    a `liq_cluster_price` column, if either frame has one, names the cluster's price).
    `model_predictions`: trade_id, probability (0..1), model_version.
    """
    if trade_ids is not None:
        order = pl.DataFrame({"trade_id": list(trade_ids)}, schema={"trade_id": pl.Utf8}).with_row_index("_order")
        chosen = trades.join(order, on="trade_id", how="inner").sort("_order").drop("_order")
        if unknown := sorted(set(trade_ids) - set(chosen["trade_id"].to_list())):
            raise ValueError(f"trade_ids not among the trades: {unknown[:5]}")
    else:
        chosen = trades.sort("decision_time", "trade_id", descending=True).head(limit)
    base_cols = [c for c in ("trade_id", "symbol", "timeframe", "direction", "decision_time", "outcome",
                             "base_confidence", "liq_cluster_price") if c in chosen.columns]
    df = chosen.select(base_cols)
    ov = overlay.unique("trade_id", keep="first")
    extra = [c for c in ov.columns if c not in df.columns or c == "base_confidence"]
    if "base_confidence" in df.columns and "base_confidence" in ov.columns:
        df = df.drop("base_confidence")
    df = df.join(ov.select("trade_id", *[c for c in extra if c != "trade_id"]), on="trade_id", how="left")
    if model_predictions is not None and model_predictions.height:
        preds = model_predictions.select("trade_id", pl.col("probability").cast(pl.Float64).alias("model_probability"),
                                         pl.col("model_version").cast(pl.Utf8)).unique("trade_id", keep="last")
        df = df.join(preds, on="trade_id", how="left")
    for name, dtype in PATTERN_CARD_SCHEMA.items():
        if (name not in df.columns and name not in ("title", "adjustments", "no_effect", "items")
                and not name.endswith("_text")):
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(name))
    for name, dtype in (("funding_rule", pl.Utf8), ("funding_mult", pl.Float64), ("oi_rule", pl.Utf8),
                        ("oi_mult", pl.Float64), ("liq_rule", pl.Utf8), ("liq_mult", pl.Float64),
                        ("funding_rate", pl.Float64), ("funding_rate_8h", pl.Float64),
                        ("funding_interval_hours", pl.Float64), ("oi_change_24h", pl.Float64),
                        ("distance_to_liq_cluster", pl.Float64), ("liq_cluster_price", pl.Float64)):
        if name not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(name))

    items = [_card_items(r) for r in df.iter_rows(named=True)]
    applied = [[{k: i[k] for k in ADJUSTMENT.to_schema()} for i in row if i["applied"]] for row in items]
    adjustments = pl.Series("adjustments", applied, dtype=pl.List(ADJUSTMENT))
    no_effect = pl.Series("no_effect", [[i["reason"] for i in row if not i["applied"]] for row in items],
                          dtype=pl.List(pl.Utf8))
    text = ["; ".join(f"{a['reason']} {a['effect']}" for a in adj) for adj in applied]
    df = df.with_columns(adjustments, no_effect, pl.Series("items", items, dtype=pl.List(CARD_ITEM)),
                         pl.Series("adjustments_text", text, dtype=pl.Utf8))
    tf = pl.col("timeframe").fill_null("").str.to_uppercase()
    df = df.with_columns(
        pl.concat_str(pl.col("direction").fill_null("?").str.to_uppercase(), pl.lit(" QML - "),
                      pl.col("symbol").fill_null("?"), pl.lit(" "), tf).str.strip_chars().alias("title"),
        pl.Series("base_confidence_text", [_conf(v) for v in df["base_confidence"].to_list()], dtype=pl.Utf8),
        pl.Series("adjusted_confidence_text", [_conf(v) for v in df["adjusted_confidence"].to_list()],
                  dtype=pl.Utf8),
        pl.Series("model_text", [None if p is None else f"{p * 100:.0f}% (model {v or 'unversioned'})"
                                 for p, v in zip(df["model_probability"].to_list(), df["model_version"].to_list())],
                  dtype=pl.Utf8),
    )
    return df.select([pl.col(n).cast(t) for n, t in PATTERN_CARD_SCHEMA.items()])


def pattern_card_rows(cards: pl.DataFrame, as_of: datetime, model_gate: str | None = None
                      ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`pattern_cards` output split into the pattern_cards rows (with as_of, the pattern's age and the model
    gate's verdict) and the pattern_card_adjustments rows (every rule of every card, in card order)."""
    at = pl.lit(as_of).cast(TS)
    rows = cards.with_columns(at.alias("as_of"), minutes_between(at, pl.col("decision_time")).alias("age_minutes"),
                              pl.lit(model_gate, dtype=pl.Utf8).alias("model_gate"))
    items = (cards.select("trade_id", "items").explode("items").drop_nulls("items").unnest("items")
             .with_columns((pl.int_range(pl.len()).over("trade_id") + 1).cast(pl.Int32).alias("position"),
                           pl.col("mult").alias("multiplier"))
             .with_columns(pl.when(pl.col("applied")).then((pl.col("multiplier") - 1) * 100).alias("effect_pct"),
                           pl.col("effect").alias("effect_text")))
    return rows, items


def pattern_cards_for_render(cards: pl.DataFrame, adjustments: pl.DataFrame) -> pl.DataFrame:
    """pattern_cards rows with each card's `adjustments` (applied rules: rule, reason, effect, mult) and
    `no_effect` (the other rules' reasons) gathered from pattern_card_adjustments rows: the markdown card and
    the HTML report render this."""
    adj = adjustments.sort("trade_id", "position").group_by("trade_id", maintain_order=True).agg(
        pl.struct(pl.col("rule"), pl.col("reason"), pl.col("effect_text").alias("effect"),
                  pl.col("multiplier").alias("mult")).filter(pl.col("applied")).alias("adjustments"),
        pl.col("reason").filter(~pl.col("applied")).alias("no_effect"))
    out = cards.join(adj, on="trade_id", how="left", maintain_order="left")
    return out.with_columns(pl.col("adjustments").fill_null(pl.lit([], dtype=pl.List(ADJUSTMENT)))
                            .cast(pl.List(ADJUSTMENT)),
                            pl.col("no_effect").fill_null(pl.lit([], dtype=pl.List(pl.Utf8))))
