"""The cards as text: status marks, the liquidation arrow, the OI line and the markdown of context and
pattern cards (Dagster metadata); the HTML report (report.py) and the JSON export (export.py) render the
same rows."""

from __future__ import annotations

import polars as pl

from qml_pipeline.formats import fmt_age, fmt_usd
from qml_pipeline.markdown import escape
from qml_pipeline.view.cards import LIQ_WORDS, MISSING, NO_CLUSTER, STALE


def oi_card_value(r: dict) -> str | None:
    """The OI card's value: Binance's 24h change, and the change across venues where it exists."""
    parts = [r.get("oi_value"), f"all venues {r['oi_agg_value']}" if r.get("oi_agg_value") else None]
    return " · ".join(p for p in parts if p) or None


# ---------------------------------------------------------------- markdown

FUNDING_MARK = {"High": "🔴", "Negative": "🟢", "Low": "🟡", "Neutral": "⚪", STALE: "⏳", MISSING: "·"}
OI_MARK = {"Rising": "▲", "Falling": "▼", "Flat": "▬", STALE: "⏳", MISSING: "·"}


def liq_arrow(side: str | None) -> str:
    return {"long": "↓", "short": "↑"}.get(side or "", "")


def _age_line(minutes: float | None) -> str:
    age = fmt_age(minutes)
    return f"{age} old" if age else "—"


def context_cards_markdown(df: pl.DataFrame) -> str:
    """The command-bar cards per symbol as markdown tables (value, status, age)."""
    if df.height == 0:
        return "_no context data yet_"
    parts = []
    for r in df.iter_rows(named=True):
        price = fmt_usd(r["price"])
        head = f"**{r['symbol']}**" + (f" · price {price}" if price else "") + \
               f" · as of {r['as_of']:%Y-%m-%d %H:%M} UTC"
        fs, os_, ls = r["funding_status"], r["oi_status"], r["liq_status"]
        liq_status = ls
        if ls in LIQ_WORDS:
            liq_status = f"{liq_arrow(r['liq_cluster_side'])} {ls} ({r['liq_cluster_side']}s, " \
                         f"{r['liq_distance_pct']:.1f}% away)"
        elif ls == NO_CLUSTER:
            liq_status = "no cluster"
        elif ls == MISSING:
            liq_status = "· missing"
        elif ls == STALE:
            liq_status = f"⏳ stale ({liq_arrow(r['liq_cluster_side'])} {r['liq_cluster_side'] or 'no'} cluster)"
        rows = [
            ["FUNDING", "OI 24h", "LIQ"],
            [r["funding_value"] or "no data", oi_card_value(r) or "no data", r["liq_value"] or "no data"],
            [f"{FUNDING_MARK.get(fs, '')} {fs}".strip(), f"{OI_MARK.get(os_, '')} {os_}".strip(), liq_status],
            [_age_line(r["funding_age_minutes"]), _age_line(r["oi_age_minutes"]), _age_line(r["liq_age_minutes"])],
        ]
        table = ["| " + " | ".join(rows[0]) + " |", "|:---:|:---:|:---:|"]
        table += ["| " + " | ".join(escape(x) for x in row) + " |" for row in rows[1:]]
        parts.append(head + "\n\n" + "\n".join(table))
    return "\n\n".join(parts)


def pattern_cards_markdown(df: pl.DataFrame) -> str:
    """Each pattern card as a markdown block like the seed's."""
    if df.height == 0:
        return "_no trades yet_"
    parts = []
    for r in df.iter_rows(named=True):
        when = f"{r['decision_time']:%Y-%m-%d %H:%M} UTC" if r["decision_time"] else "?"
        lines = [f"#### {r['title']}",
                 f"decided {when} · outcome {r['outcome'] or '?'} · `{r['trade_id']}`", "",
                 f"- Base confidence: **{r['base_confidence_text']}**"]
        if r["adjustments"]:
            lines.append("- Context adjustments (multiplicative):")
            lines += [f"  - {escape(a['reason'])} **{a['effect']}**" for a in r["adjustments"]]
        else:
            lines.append("- Context adjustments: none fired")
        if r["no_effect"]:
            lines.append("- No effect: " + "; ".join(escape(x) for x in r["no_effect"]))
        mult = ""
        if r["multiplier"] is not None:
            mult = f" (multiplier x{r['multiplier']:.2f}"
            if r["clamped"]:
                mult += f", clamped from x{r['raw_multiplier']:.2f}"
            mult += ")"
        lines.append(f"- **ADJUSTED CONFIDENCE: {r['adjusted_confidence_text']}** rule overlay{mult}")
        if r["model_text"]:
            lines.append(f"- Model probability: **{r['model_text']}**")
        elif r.get("model_gate"):
            lines.append(f"- Model probability: not shown ({escape(r['model_gate'])})")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
