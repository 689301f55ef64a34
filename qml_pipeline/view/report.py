"""One self-contained static HTML report for the researcher: context cards, pattern cards, gates,
equity curves, winners-vs-losers distributions, per-year metrics, model summary, data quality, notes.

`report.html` is rendered from the Jinja2 templates in templates/ (autoescaped; the CSS in
templates/report.css is inlined). It opens with no server and no internet: CSS is inline, images are PNGs embedded as
base64 data URIs (matplotlib, Agg canvas, no pyplot state), no scripts, no external fonts. A section
whose input is missing says so instead of failing.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
from jinja2 import Environment, PackageLoader, select_autoescape

from qml_pipeline.view.card_text import liq_arrow, oi_card_value
from qml_pipeline.view.cards import LIQ_WORDS, MISSING, NO_CLUSTER, STALE
from qml_pipeline.formats import cell_text, fmt_age, fmt_usd
from qml_pipeline.timeutil import utc_now

REPORT_FILE = "report.html"

# feature -> (readable name, unit, scale applied to the stored value for display)
FEATURE_DISPLAY: dict[str, tuple[str, str, float]] = {
    "funding_rate": ("funding rate", "% per interval", 100.0),
    "funding_rate_8h": ("funding rate, 8h-equivalent", "% per 8h", 100.0),
    "funding_fuel_8h": ("funding against the trade (fuel)", "% per 8h", 100.0),
    "funding_rate_z30d": ("funding z-score, 30 days", "standard deviations", 1.0),
    "funding_rate_change_8h": ("funding change over 8h", "percentage points", 100.0),
    "oi_change_24h": ("open interest change, 24h", "%", 1.0),
    "oi_change_7d": ("open interest change, 7 days", "%", 1.0),
    "oi_percentile_30d": ("open interest percentile, 30 days", "percentile 0-100", 1.0),
    "distance_to_liq_cluster": ("distance to liquidation cluster", "ATRs", 1.0),
    "atr_pct": ("ATR(14)", "% of price", 1.0),
}
WIN_LABELS = ("WIN", "win")
LOSS_LABELS = ("LOSS", "TIMEOUT", "loss")
WIN_COLOR, LOSS_COLOR = "#1b9e77", "#d95f02"
_META_COLS = ("trade_id", "outcome", "label", "symbol", "timeframe", "direction", "decision_time", "year")

# ---------------------------------------------------------------- what the templates show
# (templates/*.html.j2, autoescaped: the values below are plain text)

_TEMPLATES = Environment(loader=PackageLoader("qml_pipeline.view", "templates"),
                         autoescape=select_autoescape(["html", "html.j2"]), keep_trailing_newline=False)


def _fmt_cell(col: str, value: object) -> str:
    return cell_text(value, col) or "—"


def table_rows(df: pl.DataFrame, columns: Sequence[str] | None = None, warn: pl.Series | None = None) -> dict:
    """A frame as a table for the templates' `table` macro: numbers right-aligned, text left, NULL as a dash."""
    cols = [c for c in (columns or df.columns) if c in df.columns]
    text_cols = {c for c in cols if df.schema[c] in (pl.Utf8, pl.Categorical) or df.schema[c] == pl.Boolean}
    flags = warn.to_list() if warn is not None else [False] * df.height
    rows = [{"warn": flag, "cells": [{"value": _fmt_cell(c, r[c]), "text": c in text_cols} for c in cols]}
            for flag, r in zip(flags, df.select(cols).iter_rows(named=True))]
    return {"columns": [{"name": c, "text": c in text_cols} for c in cols], "rows": rows}


def _figure_png(fig) -> str:
    """base64 data URI of a matplotlib Figure (Agg canvas)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------- cards

def _ctx_card(label: str, value: str | None, status: str, status_text: str, age: float | None,
              rule: str | None = None) -> dict:
    age_text = fmt_age(age)
    age_line = f"{age_text} old" if age_text else "no data"
    if status == STALE:
        age_line = f"last value, {age_line}"
    return {"label": label, "value": value or "—", "status": status, "status_text": status_text,
            "age_line": age_line, "rule": "" if rule is None else rule, "stale": status == STALE}


def context_card_views(df: pl.DataFrame | None) -> list[dict]:
    """Per symbol: its heading and the FUNDING, OI and LIQ cards as the template shows them."""
    if df is None:
        return []
    out = []
    for r in df.iter_rows(named=True):
        price = fmt_usd(r.get("price"))
        as_of = r.get("as_of")
        fs, os_, ls = r["funding_status"], r["oi_status"], r["liq_status"]
        side = r.get("liq_cluster_side")
        if ls in LIQ_WORDS:
            liq_text = f"{liq_arrow(side)} {ls} · {side}s {r['liq_distance_pct']:.1f}%"
        elif ls == NO_CLUSTER:
            liq_text = "no cluster"
        elif ls == MISSING:
            liq_text = "no data"
        else:
            liq_text = f"{ls} {liq_arrow(side)}".strip()
        out.append({"head": f"{r['symbol']}" + (f" · {price}" if price else ""),
                    "when": f" · as of {as_of:%Y-%m-%d %H:%M} UTC" if as_of else "",
                    "cards": [_ctx_card("FUNDING", r.get("funding_value"), fs, "no data" if fs == MISSING else fs,
                                        r.get("funding_age_minutes"), r.get("funding_rule")),
                              _ctx_card("OI 24h", oi_card_value(r), os_, "no data" if os_ == MISSING else os_,
                                        r.get("oi_age_minutes"), r.get("oi_rule")),
                              _ctx_card("LIQ", r.get("liq_value"), ls, liq_text, r.get("liq_age_minutes"),
                                        r.get("liq_rule"))]})
    return out


def pattern_card_views(df: pl.DataFrame | None) -> tuple[list[dict], str]:
    """The pattern cards as the template shows them, and the 'as of / built' line."""
    if df is None or df.height == 0:
        return [], ""
    cards = []
    for r in df.iter_rows(named=True):
        when = r.get("decision_time")
        mult = ""
        if r.get("multiplier") is not None:
            mult = f" (x{r['multiplier']:.2f}" + (f", clamped from x{r['raw_multiplier']:.2f}" if r.get("clamped")
                                                  else "") + ")"
        cards.append({
            "title": r["title"], "outcome": r.get("outcome") or "?",
            "meta": (f"decided {when:%Y-%m-%d %H:%M} UTC · " if when else "") + f"{r['trade_id']}",
            "base": r["base_confidence_text"], "adjusted": r["adjusted_confidence_text"], "mult": mult,
            "adjustments": [{"reason": a["reason"], "effect": a["effect"],
                             "sign": "pos" if (a["mult"] or 1) >= 1 else "neg"} for a in (r.get("adjustments") or [])],
            "no_effect": "; ".join(r.get("no_effect") or []),
            "model": r.get("model_text"), "model_gate": r.get("model_gate")})
    built = ""
    if "built_at" in df.columns and df["built_at"].max() is not None:
        built = (f'pattern cards as of {df["as_of"].max():%Y-%m-%d %H:%M} UTC, built '
                 f'{df["built_at"].max():%Y-%m-%d %H:%M} UTC')
    return cards, built


# ---------------------------------------------------------------- plots

def equity_figure(curves: dict[str, pl.DataFrame]) -> str | None:
    """Cumulative R and drawdown over exit time, one line per curve; None when no curve has trades."""
    usable = {k: v for k, v in curves.items() if v is not None and v.height and
              {"exit_time", "cum_r"} <= set(v.columns)}
    if not usable:
        return None
    fig = _new_figure(12, 6.5)
    gs = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
    ax, ax_dd = fig.add_subplot(gs[0]), None
    ax_dd = fig.add_subplot(gs[1], sharex=ax)
    for name, curve in usable.items():
        curve = curve.sort("exit_time")
        x = curve["exit_time"].to_list()
        y = curve["cum_r"].cast(pl.Float64).to_numpy()
        dd = np.maximum(np.maximum.accumulate(y), 0.0) - y
        line = ax.step(x, y, where="post", linewidth=1.8,
                       label=f"{name}: {y[-1]:+.1f} R over {curve.height} trades")[0]
        ax_dd.step(x, -dd, where="post", linewidth=1.4, color=line.get_color(), label=name)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_ylabel("cumulative R (risk units)", fontsize=11)
    ax.set_title("Equity curves: baseline vs context overlay", fontsize=13)
    ax.legend(loc="upper left", fontsize=10)
    ax.grid(alpha=0.3)
    ax.tick_params(labelbottom=False)
    ax_dd.set_ylabel("drawdown (R)", fontsize=11)
    ax_dd.set_xlabel("exit time (UTC)", fontsize=11)
    ax_dd.grid(alpha=0.3)
    for label in ax_dd.get_xticklabels():
        label.set_rotation(20)
        label.set_horizontalalignment("right")
    return _figure_png(fig)


def _groups(feature_values: pl.DataFrame) -> tuple[pl.Expr, pl.Expr]:
    col = "label" if "label" in feature_values.columns else "outcome"
    return pl.col(col).is_in(WIN_LABELS), pl.col(col).is_in(LOSS_LABELS)


def distribution_figure(feature_values: pl.DataFrame, stats: pl.DataFrame | None = None,
                        max_features: int = 12) -> tuple[str | None, list[str]]:
    """Histograms of each numeric feature, winners vs losers, with medians; (data URI, skipped features)."""
    if "outcome" not in feature_values.columns and "label" not in feature_values.columns:
        return None, ["(no outcome column)"]
    is_win, is_loss = _groups(feature_values)
    numeric = [c for c, t in feature_values.schema.items() if c not in _META_COLS and t.is_numeric()]
    p_adj = {}
    if stats is not None and {"feature", "p_adj"} <= set(stats.columns):
        p_adj = dict(zip(stats["feature"].to_list(), stats["p_adj"].to_list()))
    plotted, skipped = [], []
    for c in numeric:
        v = pl.col(c).cast(pl.Float64)
        clean = pl.when(v.is_finite()).then(v)
        w = feature_values.filter(is_win).select(clean.alias("v"))["v"].drop_nulls().to_numpy()
        lo = feature_values.filter(is_loss).select(clean.alias("v"))["v"].drop_nulls().to_numpy()
        if w.size and lo.size:
            plotted.append((c, w, lo))
        else:
            skipped.append(c)
    plotted = plotted[:max_features]
    if not plotted:
        return None, skipped
    ncols = 3 if len(plotted) > 2 else len(plotted)
    nrows = math.ceil(len(plotted) / ncols)
    fig = _new_figure(5.2 * ncols, 4.0 * nrows)
    for i, (c, w, lo) in enumerate(plotted):
        name, unit, scale = FEATURE_DISPLAY.get(c, (c, "", 1.0))
        w, lo = w * scale, lo * scale
        ax = fig.add_subplot(nrows, ncols, i + 1)
        both = np.concatenate([w, lo])
        a, b = np.percentile(both, [1, 99])
        if not b > a:
            a, b = both.min() - 0.5, both.max() + 0.5
        bins = np.linspace(a, b, 21)
        for vals, label, color in ((w, "winners", WIN_COLOR), (lo, "losers", LOSS_COLOR)):
            ax.hist(np.clip(vals, a, b), bins=bins, weights=np.full(vals.size, 100.0 / vals.size),
                    histtype="stepfilled", alpha=0.4, color=color, edgecolor=color, linewidth=1.2,
                    label=f"{label} (n={vals.size}, median {np.median(vals):.3g})")
            ax.axvline(np.median(vals), color=color, linestyle="--", linewidth=1.5)
        p = p_adj.get(c)
        title = name if p is None else f"{name}\nBH-adjusted p = {p:.3g}"
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(f"{c} ({unit})" if unit else c, fontsize=10)
        ax.set_ylabel("share of group (%)", fontsize=10)
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle("Context at decision time: winners vs losers (dashed: medians; tails beyond the "
                 "1st-99th percentile drawn at the edges)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _figure_png(fig), skipped


# ---------------------------------------------------------------- sections

DQ_COLUMNS = ("table_name", "symbol", "series", "sources", "rows", "first_event_time", "last_event_time",
              "missing_rows", "completeness", "duplicate_rows", "zero_rows", "gaps", "longest_gap_minutes",
              "longest_gap_start", "last_available_at", "freshness_minutes")
WVL_COLUMNS = ("feature", "n_win", "n_loss", "median_win", "median_loss", "cliffs_delta", "mw_p", "p_adj",
               "significant", "mde_cliffs_delta")
PER_YEAR_COLUMNS = ("variant", "scope", "year", "dimension", "group", "patterns", "trades", "wins", "losses",
                    "timeouts", "win_rate", "expectancy_r", "total_r", "profit_factor", "sharpe_per_trade",
                    "sharpe_daily", "max_drawdown_r", "trades_per_year")


def _present(df: pl.DataFrame | None) -> bool:
    return df is not None and df.height > 0


def _data_quality_table(dq: pl.DataFrame) -> dict:
    """Rows with completeness below 99%, duplicates or zero values are flagged."""
    warn = None
    if {"completeness", "duplicate_rows"} <= set(dq.columns):
        flag = (pl.col("completeness") < 0.99) | (pl.col("duplicate_rows") > 0)
        if "zero_rows" in dq.columns:
            flag = flag | (pl.col("zero_rows").fill_null(0) > 0)
        warn = dq.select(flag.fill_null(False).alias("w"))["w"]
    return table_rows(dq, DQ_COLUMNS, warn)


def write_report(out_dir: Path, *, context_cards: pl.DataFrame | None = None,
                 pattern_cards: pl.DataFrame | None = None,
                 equity_curves: dict[str, pl.DataFrame] | None = None,
                 winners_vs_losers: pl.DataFrame | None = None,
                 feature_values: pl.DataFrame | None = None,
                 per_year_metrics: pl.DataFrame | None = None,
                 data_quality: pl.DataFrame | None = None,
                 gates: list[dict] | None = None,
                 model_summary: str | None = None,
                 evidence_can: Sequence[str] = (),
                 evidence_cannot: Sequence[str] = (),
                 evidence_parts: pl.DataFrame | None = None,
                 notes: Sequence[str] = (),
                 title: str = "QML context report",
                 generated_at: datetime | None = None) -> Path:
    """Write `out_dir/report.html` (self-contained: inline CSS, images as data URIs) and return its path.

    equity_curves: name -> `metrics.equity_curve` frame (exit_time, cum_r). feature_values: trade_id,
    outcome (WIN / LOSS / TIMEOUT, or label win / loss) and numeric feature columns. gates:
    `GateResult.as_dict()` dicts. evidence_*: research.evidence.Evidence's sentences and gate parts.
    Every input may be None or empty: its section says so.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generated_at = generated_at or utc_now()
    patterns, pattern_built = pattern_card_views(pattern_cards)
    has_values = _present(feature_values)
    distribution, skipped = distribution_figure(feature_values, winners_vs_losers) if has_values else (None, [])
    per_year = None
    if _present(per_year_metrics):
        per_year = table_rows(per_year_metrics, [c for c in PER_YEAR_COLUMNS if c in per_year_metrics.columns]
                              or per_year_metrics.columns)
    doc = _TEMPLATES.get_template("report.html.j2").render(
        title=title, generated_at=f"{generated_at:%Y-%m-%d %H:%M}", notes=list(notes),
        context_rows=context_card_views(context_cards), pattern_cards=patterns, pattern_built=pattern_built,
        gates=[{**g, "passed": bool(g.get("passed"))} for g in gates or []],
        evidence_can=list(evidence_can), evidence_cannot=list(evidence_cannot),
        evidence_parts=table_rows(evidence_parts) if _present(evidence_parts) else None,
        equity=equity_figure(equity_curves or {}),
        wvl_stats=table_rows(winners_vs_losers, WVL_COLUMNS) if _present(winners_vs_losers) else None,
        has_feature_values=has_values, distribution=distribution, skipped=skipped,
        per_year=per_year, model_summary=model_summary,
        data_quality=_data_quality_table(data_quality) if _present(data_quality) else None,
        dq_as_of=(f" Freshness measured at {data_quality['as_of'][0]:%Y-%m-%d %H:%M} UTC."
                  if _present(data_quality) and "as_of" in data_quality.columns else ""))
    path = out_dir / REPORT_FILE
    path.write_text(doc, encoding="utf-8")
    return path
