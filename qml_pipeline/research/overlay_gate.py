"""The phase 10 gate: the overlay's out-of-sample gain in win rate and Sharpe against each control, above
its threshold and above chance of the same size (docs/overlay.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qml_pipeline.research.gates import GatePart, GateResult, make_gate, power_text
from qml_pipeline.research.overlay_backtest import CONTROL_LABELS, BacktestResult, control_of
from qml_pipeline.research.overlay_tuning import TuneResult


@dataclass(frozen=True)
class OverlayGateConfig:
    """Phase 10 gate (seed: win rate +5%, Sharpe +0.2), judged out of sample on one variant chosen in
    advance. `filtering` by default: sizing scales R and cannot change which trades win.

    Each part compares the variant with a control: for `filtering`, the same filter with every
    multiplier 1 (confidence alone: the control) and every trade (unfiltered: the seed's literal
    comparison); for `sizing`, every trade at size 1. A part passes when the gain exceeds its
    threshold AND the 95th percentile of chance of the same size (nulls.py).

    min_sharpe_gain is on the seed's annualised scale: the per-trade Sharpe gain times
    sqrt(the control's trades per year), a rate that does not move with the variant's trade count
    (docs/overlay.md, "Which Sharpe").
    """

    min_win_rate_gain_points: float = 5.0   # percentage points, strictly more than
    min_sharpe_gain: float = 0.2            # per-trade Sharpe gain x sqrt(control trades/year), strictly more
    variant: str = "filtering"

    def __post_init__(self) -> None:
        if self.variant not in ("sizing", "filtering"):
            raise ValueError(f"OverlayGateConfig.variant must be 'sizing' or 'filtering', got {self.variant!r}")


# ---------------------------------------------------------------- gate and plot

def _judged(result: BacktestResult | TuneResult) -> BacktestResult:
    return result.judging if isinstance(result, TuneResult) else result


def _gain_part(judged: BacktestResult, name: str, variant: str, control: str, metric: str,
               threshold: float) -> GatePart:
    """One gain part: scaled to its unit (points, or Sharpe at the control's trade rate), passed when
    above the threshold and above the null's 95th percentile."""
    row = judged.difference(variant, metric, control)
    if metric == "win_rate":
        scale, unit, fmt, what = 100.0, "points", "+.2f", "win rate"
        shown = f"{_pctf(row['variant_value'])} vs {_pctf(row['control_value'])}"
    else:
        rate = judged.overall(control)["trades_per_year"]
        scale = float(np.sqrt(rate)) if rate else float("nan")
        unit, fmt, what = "", "+.3f", "per-trade Sharpe"
        shown = (f"{_num(row['variant_value'])} vs {_num(row['control_value'])} per trade, gain"
                 + (f" x sqrt({rate:.0f} trades/yr of the control)" if rate else ""))

    def scaled(v: float | None) -> float | None:
        return None if v is None or not np.isfinite(v * scale) else v * scale

    gain, p95, mde = scaled(row["diff"]), scaled(row["null_p95"]), scaled(row["mde"])
    label = CONTROL_LABELS[control]
    u = f" {unit}" if unit else ""
    if gain is None:
        msg = f"{variant} vs {label}: {what} undefined ({shown})"
        return GatePart(name, False, None, threshold, msg, control=label, n=judged.n_trades)
    beats_null = p95 is not None and gain > p95
    passed = gain > threshold and beats_null
    msg = f"{variant} vs {label}: {what} {shown}: {gain:{fmt}}{u}, need > {threshold:{fmt}}{u}"
    if gain <= threshold:
        msg += f" ({threshold - gain:{fmt.lstrip('+')}}{u} short)"
    if row["null_percentile"] is not None:
        msg += (f" and above chance of the same size (95th percentile {p95:{fmt}}{u}; this gain is at "
                f"percentile {row['null_percentile']:.0f})")
    if row["ci_low"] is not None:
        msg += (f"; 95% CI [{row['ci_low'] * scale:{fmt}}, {row['ci_high'] * scale:{fmt}}] by {judged.cluster_by} "
                f"cluster ({judged.n_clusters} clusters)")
    if row["ci_low_independent"] is not None:
        msg += (f", [{row['ci_low_independent'] * scale:{fmt}}, {row['ci_high_independent'] * scale:{fmt}}] "
                "by independent trade")
    msg += power_text(mde, not passed, fmt.lstrip("+"), unit)
    return GatePart(name, passed, gain, threshold, msg, control=label, n=judged.n_trades,
                    null_percentile=row["null_percentile"], null_p95=p95, mde=mde,
                    ci_low=scaled(row["ci_low"]), ci_high=scaled(row["ci_high"]),
                    ci_low_independent=scaled(row["ci_low_independent"]),
                    ci_high_independent=scaled(row["ci_high_independent"]))


def phase10_gate(result: BacktestResult | TuneResult, config: OverlayGateConfig | None = None) -> GateResult:
    """Out-of-sample (a TuneResult's judging period; a BacktestResult as given) improvement of the
    configured variant: win rate by more than N points and per-trade Sharpe (on the seed's annualised
    scale) by more than S, each against its control and above chance of the same size. For the
    filtering variant the seed's literal comparison with every trade stays as two more parts."""
    config = config or OverlayGateConfig()
    judged = _judged(result)
    v = config.variant
    controls = [(control_of(v), "")] + ([("baseline", "_vs_unfiltered")] if control_of(v) != "baseline" else [])
    parts = []
    for control, suffix in controls:
        parts.append(_gain_part(judged, f"win_rate_gain{suffix}", v, control, "win_rate",
                                config.min_win_rate_gain_points))
        parts.append(_gain_part(judged, f"sharpe_gain{suffix}", v, control, "sharpe_per_trade", config.min_sharpe_gain))
    return make_gate("phase 10 overlay gate (out of sample)", parts)


def _pctf(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"
