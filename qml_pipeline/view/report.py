"""One self-contained static HTML report for the researcher: context cards, pattern cards, gates,
equity curves, winners-vs-losers distributions, per-year metrics, model summary, data quality, notes.

`report.html` opens with no server and no internet: CSS is inline, images are PNGs embedded as
base64 data URIs (matplotlib, Agg canvas, no pyplot state), no scripts, no external fonts. A section
whose input is missing says so instead of failing.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

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

CSS = """
body{font-family:"DejaVu Sans","Liberation Sans",Arial,sans-serif;margin:0;background:#f3f4f6;color:#1f2937}
main{max-width:1320px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:32px 0 10px;border-bottom:2px solid #d1d5db;padding-bottom:4px}
.sub{color:#6b7280;font-size:13px}
.na{color:#6b7280;font-style:italic;background:#fff;border:1px dashed #d1d5db;padding:12px;border-radius:6px}
.notes{background:#fffbeb;border:1px solid #f59e0b;border-radius:6px;padding:10px 16px}
.notes li{margin:3px 0}
.symbol-row{margin:8px 0 18px}.symbol-row h3{margin:0 0 6px;font-size:16px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d1d5db;border-radius:8px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
.ctx{width:190px;padding:10px 12px;text-align:center}
.ctx .label{font-size:12px;letter-spacing:.12em;color:#6b7280;font-weight:bold}
.ctx .value{font-size:22px;font-weight:bold;margin:6px 0;font-family:"DejaVu Sans Mono",monospace}
.ctx .age{font-size:11px;color:#6b7280;margin-top:4px}
.ctx.stale .value{color:#9ca3af;text-decoration:line-through}
.chip{display:inline-block;padding:2px 9px;border-radius:10px;font-size:13px;font-weight:bold}
.chip.High,.chip.Falling,.chip.Near{background:#fee2e2;color:#b91c1c}
.chip.Negative,.chip.Rising{background:#dcfce7;color:#15803d}
.chip.Low{background:#fef9c3;color:#854d0e}
.chip.Neutral,.chip.Flat,.chip.Far,.chip.none{background:#e5e7eb;color:#374151}
.chip.stale{background:#ede9fe;color:#6d28d9}.chip.missing{background:#f3f4f6;color:#9ca3af}
.pattern{width:400px;padding:12px 16px;font-family:"DejaVu Sans Mono",monospace;font-size:13px}
.pattern .title{font-weight:bold;font-size:15px}
.pattern .meta{color:#6b7280;font-size:11px;margin:2px 0 8px}
.pattern hr{border:0;border-top:1px dashed #9ca3af;margin:8px 0}
.pattern ul{list-style:none;padding:0;margin:4px 0}
.pattern li{display:flex;justify-content:space-between;gap:8px;margin:2px 0}
.pos{color:#15803d;font-weight:bold}.neg{color:#b91c1c;font-weight:bold}
.pattern .noeffect{color:#6b7280;font-size:11px}
.pattern .adjusted{font-weight:bold;font-size:15px}
.pattern .model{color:#1d4ed8}
.outcome{font-weight:bold}.outcome.WIN{color:#15803d}.outcome.LOSS{color:#b91c1c}
table.data{border-collapse:collapse;background:#fff;font-size:12px;margin:6px 0}
table.data th,table.data td{border:1px solid #e5e7eb;padding:4px 8px;text-align:right;white-space:nowrap}
table.data th{background:#f9fafb;position:sticky;top:0}
table.data td.text,table.data th.text{text-align:left}
table.data tr.warn td{background:#fff7ed}
.gate{background:#fff;border-left:6px solid #9ca3af;border-radius:6px;padding:8px 14px;margin:8px 0}
.gate.pass{border-left-color:#16a34a}.gate.fail{border-left-color:#dc2626}
.badge{display:inline-block;padding:1px 8px;border-radius:4px;color:#fff;font-weight:bold;font-size:12px}
.badge.pass{background:#16a34a}.badge.fail{background:#dc2626}
.gate li{margin:3px 0;font-size:13px}
figure{margin:8px 0;background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:8px}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#6b7280;margin-top:4px}
pre{background:#fff;border:1px solid #e5e7eb;padding:10px;border-radius:6px;white-space:pre-wrap;font-size:12px}
"""


# ---------------------------------------------------------------- small helpers

def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _na(what: str) -> str:
    return f'<p class="na">{_e(what)}: not available yet.</p>'


def _fmt_cell(col: str, value: object) -> str:
    return cell_text(value, col) or "—"


def table_html(df: pl.DataFrame, columns: Sequence[str] | None = None, warn: pl.Series | None = None) -> str:
    """A plain HTML table of a frame; numbers right-aligned, text left, NULL as a dash."""
    cols = [c for c in (columns or df.columns) if c in df.columns]
    text_cols = {c for c in cols if df.schema[c] in (pl.Utf8, pl.Categorical) or df.schema[c] == pl.Boolean}
    head = "".join(f'<th class="{"text" if c in text_cols else ""}">{_e(c)}</th>' for c in cols)
    rows = []
    flags = warn.to_list() if warn is not None else [False] * df.height
    for flag, r in zip(flags, df.select(cols).iter_rows(named=True)):
        cells = "".join(f'<td class="{"text" if c in text_cols else ""}">{_e(_fmt_cell(c, r[c]))}</td>'
                        for c in cols)
        rows.append(f'<tr class="{"warn" if flag else ""}">{cells}</tr>')
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


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


def _img(uri: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{_e(alt)}">{cap}</figure>'


# ---------------------------------------------------------------- cards

def _ctx_card(label: str, value: str | None, status: str, status_text: str, age: float | None,
              rule: str | None = None) -> str:
    stale = " stale" if status == STALE else ""
    age_text = fmt_age(age)
    age_line = f"{age_text} old" if age_text else "no data"
    if status == STALE:
        age_line = f"last value, {age_line}"
    return (f'<div class="card ctx{stale}"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(value or "—")}</div>'
            f'<span class="chip {_e(status)}" title="{_e(rule)}">{_e(status_text)}</span>'
            f'<div class="age">{_e(age_line)}</div></div>')


def context_cards_html(df: pl.DataFrame | None) -> str:
    if df is None or df.height == 0:
        return _na("Context cards")
    parts = []
    for r in df.iter_rows(named=True):
        price = fmt_usd(r.get("price"))
        head = f"{r['symbol']}" + (f" · {price}" if price else "")
        as_of = r.get("as_of")
        when = f" · as of {as_of:%Y-%m-%d %H:%M} UTC" if as_of else ""
        fs, os_, ls = r["funding_status"], r["oi_status"], r["liq_status"]
        funding = _ctx_card("FUNDING", r.get("funding_value"), fs, "no data" if fs == MISSING else fs,
                            r.get("funding_age_minutes"), r.get("funding_rule"))
        oi = _ctx_card("OI 24h", oi_card_value(r), os_, "no data" if os_ == MISSING else os_,
                       r.get("oi_age_minutes"), r.get("oi_rule"))
        side = r.get("liq_cluster_side")
        if ls in LIQ_WORDS:
            liq_text = f"{liq_arrow(side)} {ls} · {side}s {r['liq_distance_pct']:.1f}%"
        elif ls == NO_CLUSTER:
            liq_text = "no cluster"
        elif ls == MISSING:
            liq_text = "no data"
        else:
            liq_text = f"{ls} {liq_arrow(side)}".strip()
        liq = _ctx_card("LIQ", r.get("liq_value"), ls, liq_text, r.get("liq_age_minutes"), r.get("liq_rule"))
        parts.append(f'<div class="symbol-row"><h3>{_e(head)}<span class="sub">{_e(when)}</span></h3>'
                     f'<div class="cards">{funding}{oi}{liq}</div></div>')
    return "".join(parts)


def pattern_cards_html(df: pl.DataFrame | None) -> str:
    if df is None or df.height == 0:
        return _na("Pattern cards")
    cards = []
    for r in df.iter_rows(named=True):
        when = r.get("decision_time")
        outcome = r.get("outcome") or "?"
        meta = (f"decided {when:%Y-%m-%d %H:%M} UTC · " if when else "") + f"{r['trade_id']}"
        items = "".join(
            f'<li><span>• {_e(a["reason"])}</span>'
            f'<span class="{"pos" if (a["mult"] or 1) >= 1 else "neg"}">{_e(a["effect"])}</span></li>'
            for a in (r.get("adjustments") or []))
        adj = f"<div>Context adjustments:</div><ul>{items}</ul>" if items else \
            "<div>Context adjustments: none fired</div>"
        none = r.get("no_effect") or []
        none_html = f'<div class="noeffect">no effect: {_e("; ".join(none))}</div>' if none else ""
        mult = ""
        if r.get("multiplier") is not None:
            mult = f" (x{r['multiplier']:.2f}" + (f", clamped from x{r['raw_multiplier']:.2f}" if r.get("clamped")
                                                  else "") + ")"
        model = f'<div class="model">MODEL PROBABILITY: {_e(r["model_text"])}</div>' if r.get("model_text") else ""
        if not model and r.get("model_gate"):
            model = f'<div class="noeffect">model probability not shown: {_e(r["model_gate"])}</div>'
        cards.append(
            f'<div class="card pattern"><div class="title">{_e(r["title"])}</div>'
            f'<div class="meta">{_e(meta)} · <span class="outcome {_e(outcome)}">{_e(outcome)}</span></div>'
            f'<div>Base Confidence: <b>{_e(r["base_confidence_text"])}</b></div><hr>{adj}{none_html}<hr>'
            f'<div class="adjusted">ADJUSTED CONFIDENCE: {_e(r["adjusted_confidence_text"])}</div>'
            f'<div class="noeffect">rule overlay{_e(mult)}</div>{model}</div>')
    built = ""
    if "built_at" in df.columns and df["built_at"].max() is not None:
        built = (f'<p class="sub">pattern cards as of {df["as_of"].max():%Y-%m-%d %H:%M} UTC, built '
                 f'{df["built_at"].max():%Y-%m-%d %H:%M} UTC</p>')
    return f'{built}<div class="cards">{"".join(cards)}</div>'


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

def _gates_html(gates: list[dict] | None) -> str:
    if not gates:
        return _na("Decision gates")
    out = []
    for g in gates:
        passed = bool(g.get("passed"))
        cls, word = ("pass", "PASSED") if passed else ("fail", "FAILED")
        parts = []
        for p in g.get("parts") or []:
            ok = bool(p.get("passed"))
            parts.append(f'<li><span class="badge {"pass" if ok else "fail"}">{"ok" if ok else "FAIL"}</span> '
                         f'<b>{_e(p.get("name"))}</b>: {_e(p.get("message"))}</li>')
        extra = f"<div>{_e(g['message'])}</div>" if g.get("message") and not parts else ""
        override = f'<div class="sub">override: {_e(g["override"])}</div>' if g.get("override") else ""
        basis = f'<div class="sub">{_e(g["basis"])}</div>' if g.get("basis") else ""
        out.append(f'<div class="gate {cls}"><span class="badge {cls}">{word}</span> '
                   f'<b>{_e(g.get("gate", "gate"))}</b>{basis}{extra}<ul>{"".join(parts)}</ul>{override}</div>')
    return "".join(out)


DQ_COLUMNS = ("table_name", "symbol", "series", "sources", "rows", "first_event_time", "last_event_time",
              "missing_rows", "completeness", "duplicate_rows", "zero_rows", "gaps", "longest_gap_minutes",
              "longest_gap_start", "last_available_at", "freshness_minutes")


def _data_quality_html(dq: pl.DataFrame | None) -> str:
    if dq is None or dq.height == 0:
        return _na("Data freshness and gaps")
    warn = None
    if {"completeness", "duplicate_rows"} <= set(dq.columns):
        flag = (pl.col("completeness") < 0.99) | (pl.col("duplicate_rows") > 0)
        if "zero_rows" in dq.columns:
            flag = flag | (pl.col("zero_rows").fill_null(0) > 0)
        warn = dq.select(flag.fill_null(False).alias("w"))["w"]
    as_of = f" Freshness measured at {dq['as_of'][0]:%Y-%m-%d %H:%M} UTC." if "as_of" in dq.columns else ""
    return (table_html(dq, DQ_COLUMNS, warn)
            + f'<p class="sub">Highlighted: completeness below 99%, duplicates or zero values '
              f'(zero OI is missing data, never a real zero).{_e(as_of)}</p>')


def _wvl_html(stats: pl.DataFrame | None, feature_values: pl.DataFrame | None) -> str:
    parts = []
    if stats is not None and stats.height:
        cols = ["feature", "n_win", "n_loss", "median_win", "median_loss", "cliffs_delta", "mw_p", "p_adj",
                "significant", "mde_cliffs_delta"]
        parts.append(table_html(stats, cols))
        parts.append('<p class="sub">Values in each feature\'s stored unit (docs/features.md). Mann-Whitney U, '
                     "Benjamini-Hochberg adjusted across features; Cliff's delta = P(winner &gt; loser) - "
                     "P(winner &lt; loser); mde_cliffs_delta: the smallest |Cliff's delta| found with 80% power at "
                     "this feature's n after the correction.</p>")
    else:
        parts.append(_na("Winners-vs-losers statistics"))
    if feature_values is not None and feature_values.height:
        uri, skipped = distribution_figure(feature_values, stats)
        if uri:
            parts.append(_img(uri, "winners vs losers feature distributions",
                              "Each panel: share of winners / losers per bin of the feature at decision time."))
        else:
            parts.append(_na("Feature distributions (no feature has values for both winners and losers)"))
        if skipped:
            parts.append(f'<p class="sub">Not plotted (no values for winners or for losers): '
                         f'{_e(", ".join(skipped))}.</p>')
    else:
        parts.append(_na("Feature distributions"))
    return "".join(parts)


def _per_year_html(df: pl.DataFrame | None) -> str:
    if df is None or df.height == 0:
        return _na("Per-year metrics")
    preferred = ["variant", "scope", "year", "dimension", "group", "patterns", "trades", "wins", "losses",
                 "timeouts", "win_rate", "expectancy_r", "total_r", "profit_factor", "sharpe_per_trade",
                 "sharpe_daily", "max_drawdown_r", "trades_per_year"]
    cols = [c for c in preferred if c in df.columns] or df.columns
    return table_html(df, cols) + ('<p class="sub">win rate = wins / filled trades (a timeout is not a win); '
                                   "R after fees and funding; sharpe_per_trade: mean / std of R per trade; "
                                   "sharpe_daily: per calendar day, idle days as 0, x sqrt(365) "
                                   "(qml_pipeline/trades/metrics.py).</p>")


def evidence_html(can: Sequence[str], cannot: Sequence[str], parts: pl.DataFrame | None) -> str:
    """'What this evidence can and cannot say': two lists of sentences and the gate parts' numbers."""
    if not can and not cannot:
        return _na("What this evidence can and cannot say")
    out = ""
    if can:
        out += "<h3>Can say</h3><ul>" + "".join(f"<li>{_e(c)}</li>" for c in can) + "</ul>"
    if cannot:
        out += "<h3>Cannot say</h3><ul>" + "".join(f"<li>{_e(c)}</li>" for c in cannot) + "</ul>"
    if parts is not None and parts.height:
        out += table_html(parts) + ('<p class="sub">Per gate part: value and threshold in the part\'s unit; control: '
                                    "what it is measured against; null_percentile / null_p95: chance of the same "
                                    "size; mde: the smallest effect found with 80% power at this n; ci_*: 95% "
                                    "bootstrap interval by cluster of overlapping trades and by independent trade "
                                    "(docs/evidence.md).</p>")
    return out


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

    eq = equity_figure(equity_curves or {})
    equity_html = _img(eq, "equity curves", "Cumulative R per closed trade (step at each exit); lower panel: "
                       "drawdown from the running peak.") if eq else _na("Equity curves")
    notes_html = ("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>") if notes else \
        '<p class="sub">No notes.</p>'
    model_html = f"<pre>{_e(model_summary)}</pre>" if model_summary else _na("Model summary")

    sections = [
        ("Notes", f'<div class="notes">{notes_html}</div>'),
        ("Market context now", context_cards_html(context_cards)
         + '<p class="sub">Funding per its settlement interval (status on the 8h-equivalent rate); OI change '
           'over 24h; nearest estimated liquidation cluster (longs below the price ↓, shorts above ↑; an '
           'estimate, not exchange data). Ages are measured from when each value became available; '
           'a stale value is struck through.</p>'),
        ("Recent patterns", pattern_cards_html(pattern_cards)
         + '<p class="sub">Adjustments are the rule overlay\'s multiplicative factors (docs/overlay.md); '
           'adjusted confidence = base x multiplier, clipped to [0, 100%].</p>'),
        ("Decision gates", _gates_html(gates)),
        ("What this evidence can and cannot say", evidence_html(evidence_can, evidence_cannot, evidence_parts)),
        ("Equity: baseline vs overlay", equity_html),
        ("Winners vs losers", _wvl_html(winners_vs_losers, feature_values)),
        ("Metrics per year", _per_year_html(per_year_metrics)),
        ("Model", model_html),
        ("Data freshness and gaps", _data_quality_html(data_quality)),
    ]
    body = "".join(f"<section><h2>{_e(h)}</h2>{content}</section>" for h, content in sections)
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
           f'<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
           f"<h1>{_e(title)}</h1><div class=\"sub\">generated {generated_at:%Y-%m-%d %H:%M} UTC · "
           f"static file, no scripts, no network</div>{body}</main></body></html>")
    path = out_dir / REPORT_FILE
    path.write_text(doc, encoding="utf-8")
    return path
