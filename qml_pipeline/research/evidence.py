"""What this evidence can and cannot say: plain sentences built from the stored numbers (gates,
differences, issue shares, feature statistics, sensitivity tables) for the report. Every number
quoted comes from a warehouse table; nothing is recomputed here."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

EVIDENCE_COLUMNS = ("gate", "part", "passed", "value", "threshold", "control", "n", "p_value", "null_percentile",
                    "null_p95", "mde", "ci_low", "ci_high", "ci_low_independent", "ci_high_independent")


@dataclass(frozen=True)
class Evidence:
    can: list[str] = field(default_factory=list)
    cannot: list[str] = field(default_factory=list)
    parts: pl.DataFrame | None = None


def _g(v: float | None, fmt: str = ".3g") -> str:
    return "n/a" if v is None else format(v, fmt)


def _phase9(gates: pl.DataFrame, stats: pl.DataFrame | None, shares: pl.DataFrame | None, ev: Evidence) -> None:
    parts = {r["part"]: r for r in gates.filter(pl.col("gate") == "phase9").iter_rows(named=True)}
    trades = parts.get("min_trades", {}).get("value")
    if stats is not None and stats.height and "mde_cliffs_delta" in stats.columns:
        tested = stats.filter(pl.col("cliffs_delta").is_not_null())
        if tested.height:
            largest = tested.sort(pl.col("cliffs_delta").abs(), descending=True).row(0, named=True)
            sig = tested.filter(pl.col("significant"))["feature"].to_list()
            mdes = tested["mde_cliffs_delta"].drop_nulls()
            head = (f"Phase 9 compared winners and losers on {tested.height} context features over "
                    f"{_g(trades, '.0f')} filled trades. ")
            if sig:
                ev.can.append(head + f"After Benjamini-Hochberg, {', '.join(sig)} differ(s) at 5%.")
            else:
                ev.can.append(head + f"None differs at 5% after Benjamini-Hochberg; the largest |Cliff's delta| is "
                              f"{abs(largest['cliffs_delta']):.3f} ({largest['feature']}).")
            if mdes.len():
                ev.cannot.append(f"With these sample sizes only |Cliff's delta| of {mdes.min():.2f} (best-powered "
                                 f"feature) to {mdes.max():.2f} is found with 80% power after the correction: "
                                 "smaller context effects are neither shown nor ruled out.")
    if shares is not None and shares.height:
        gate_row = shares.filter(pl.col("gate")) if "gate" in shares.columns else shares.head(1)
        r = (gate_row if gate_row.height else shares).row(0, named=True)
        if r["share"] is not None and r["winner_share"] is not None:
            others = "; ".join(f"{o['definition']}: {_g(o['share'] * 100 if o['share'] is not None else None, '.1f')}% "
                               f"vs {_g(o['winner_share'] * 100 if o['winner_share'] is not None else None, '.1f')}%"
                               for o in shares.iter_rows(named=True) if o["definition"] != r["definition"])
            ev.can.append(f"{r['share']:.1%} of losers and {r['winner_share']:.1%} of winners had an identifiable "
                          f"context issue ({r['definition']} definition; Fisher's exact one-sided p = "
                          f"{_g(r['fisher_p'])}). The seed's 70%-of-losers reading alone says nothing without the "
                          f"winners' share" + (f"; other definitions, losers vs winners: {others}." if others else "."))
            if r["mde"] is not None:
                ev.cannot.append(f"A difference in issue shares smaller than {r['mde'] * 100:.1f} points (80% power) "
                                 "between losers and winners cannot be ruled out.")


def _phase10(gates: pl.DataFrame, differences: pl.DataFrame | None, ev: Evidence) -> None:
    parts = {r["part"]: r for r in gates.filter(pl.col("gate") == "phase10").iter_rows(named=True)}
    if not parts:
        return
    wr, wr_u = parts.get("win_rate_gain"), parts.get("win_rate_gain_vs_unfiltered")
    if wr is not None and wr["value"] is not None:
        ev.can.append(f"Out of sample ({_g(wr['n'], '.0f')} later trades), the overlay filter against {wr['control']} "
                      f"changed the win rate by {wr['value']:+.2f} points, at percentile {_g(wr['null_percentile'], '.0f')} "
                      f"of chance of the same size (95th percentile {_g(wr['null_p95'], '+.2f')}).")
        if wr["mde"] is not None:
            ev.cannot.append(f"Against that control, win-rate gains below {wr['mde']:.2f} points (80% power) cannot be "
                             "ruled out; the seed's +5 points lies " + ("above" if wr["mde"] < 5 else "below")
                             + " that limit.")
    if wr_u is not None and wr_u["value"] is not None and wr is not None and wr["value"] is not None:
        ev.can.append(f"Against every trade (the seed's literal comparison) the same filter moved the win rate by "
                      f"{wr_u['value']:+.2f} points; {wr_u['value'] - wr['value']:+.2f} of them come from the "
                      "confidence threshold alone, not from context.")
    if differences is not None and differences.height:
        null = differences.filter((pl.col("period") == "judging") & (pl.col("variant") == "filtering")
                                  & (pl.col("control") == "baseline"))
        by = {r["metric"]: r for r in null.iter_rows(named=True)}
        tc, pt = by.get("sharpe_trade_count_dependent"), by.get("sharpe_per_trade")
        if tc and pt and tc["null_mean"] is not None and pt["null_mean"] is not None:
            ev.can.append(f"Random filters keeping as many trades gain {tc['null_mean']:+.2f} on average in the "
                          f"trade-count-dependent Sharpe but {pt['null_mean']:+.3f} in the per-trade Sharpe: only the "
                          "latter is used to judge the overlay.")
        clus = differences.filter((pl.col("period") == "judging") & (pl.col("metric") == "win_rate")
                                  & pl.col("ci_low").is_not_null() & pl.col("ci_low_independent").is_not_null()
                                  & (pl.col("variant") == "filtering") & (pl.col("control") == "baseline"))
        if clus.height:
            r = clus.row(0, named=True)
            w_c, w_i = r["ci_high"] - r["ci_low"], r["ci_high_independent"] - r["ci_low_independent"]
            ev.can.append(f"Trades overlapping in time form {_g(r['n_clusters'], '.0f')} clusters; the win-rate interval "
                          f"resampling those clusters is {w_c * 100:.2f} points wide against {w_i * 100:.2f} when trades "
                          f"are taken as independent ({w_c / w_i:.2f}x)." if w_i else "")


def _sensitivity(name: str, rows: pl.DataFrame | None, ev: Evidence) -> None:
    if rows is None or rows.is_empty():
        ev.cannot.append(f"No {name} sensitivity run is stored.")
        return
    verdicts = (rows.filter(pl.col("gate").is_in(["phase9", "phase10"]))
                .group_by("gate", "setting", maintain_order=True).agg(pl.col("gate_passed").first()))
    bits = []
    for gate in ("phase9", "phase10"):
        v = verdicts.filter(pl.col("gate") == gate)
        if v.height:
            passed = v.filter(pl.col("gate_passed"))["setting"].to_list()
            bits.append(f"{gate} passes under {', '.join(passed)}" if passed else f"{gate} fails under every setting")
    text = f"{name[0].upper()}{name[1:]} ({rows['setting'].n_unique()} settings): " + "; ".join(bits) + "."
    for feature, label in (("funding_fuel_8h", "funding 'fuel'"), ("oi_change_24h", "OI 24h change")):
        f = rows.filter((pl.col("gate") == "phase9_features") & (pl.col("part") == feature))
        if f.height:
            mde = f["mde"].drop_nulls()
            text += (f" The {label} Cliff's delta ranges {f['value'].min():+.2f} to {f['value'].max():+.2f}"
                     + (f" (MDEs {mde.min():.2f} to {mde.max():.2f})." if mde.len() else "."))
    ev.can.append(text)


def evidence(gates: pl.DataFrame | None, differences: pl.DataFrame | None = None, stats: pl.DataFrame | None = None,
             shares: pl.DataFrame | None = None, sensitivities: dict[str, pl.DataFrame | None] | None = None) -> Evidence:
    """Sentences for the report's 'what this evidence can and cannot say' section, and the gate parts
    with their controls, nulls, MDEs and both intervals."""
    ev = Evidence()
    if gates is None or gates.is_empty():
        ev.cannot.append("No gate has been evaluated yet.")
        return ev
    _phase9(gates, stats, shares, ev)
    _phase10(gates, differences, ev)
    for name, rows in (sensitivities or {}).items():
        _sensitivity(name, rows, ev)
    ev.cannot.append("A FAIL with an MDE above the seed's threshold means these trades are too few to tell; a PASS "
                     "that does not beat chance of the same size is not evidence that context helps.")
    cols = [c for c in EVIDENCE_COLUMNS if c in gates.columns]
    return Evidence([c for c in ev.can if c], ev.cannot, gates.select(cols))
