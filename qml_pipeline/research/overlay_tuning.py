"""Tuning the overlay's thresholds on early trades only and judging the chosen configuration on the later
ones (a time split); the tuning rows stored and the configuration read back from them."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime

import polars as pl

from qml_pipeline.research.overlay import apply_overlay, OverlayConfig
from qml_pipeline.research.overlay_backtest import _sized, BacktestResult, control_of, overlay_backtest
from qml_pipeline.store.schemas import TS
from qml_pipeline.trades.contract import FILLED_OUTCOMES
from qml_pipeline.trades.metrics import summarize


# ---------------------------------------------------------------- tune early, judge late

@dataclass(frozen=True)
class TuneResult:
    """Thresholds chosen on the tuning period, judged on the later one.

    grid: one row per candidate (its parameters and `objective` on the tuning trades), best first.
    tuning / judging: backtests of the chosen config on each period. split_time: tuning trades
    closed (exit_time) before it, judging trades were decided at or after it; trades straddling it
    are in neither (n_straddling).
    """

    config: OverlayConfig
    grid: pl.DataFrame
    split_time: datetime
    tuning: BacktestResult
    judging: BacktestResult
    tuning_trade_ids: list[str]
    judging_trade_ids: list[str]
    n_straddling: int
    objective: str


def split_by_time(trades: pl.DataFrame, split_time: datetime | None = None,
                  split_fraction: float = 0.6) -> tuple[pl.DataFrame, pl.DataFrame, datetime, int]:
    """(tuning, judging, split_time, straddling count) over the filled trades.

    Without `split_time` it is the decision_time of the filled trade at position
    floor(split_fraction * n) in decision order. Tuning trades exited before it, judging trades were
    decided at or after it: nothing known after the split can reach the tuning period.
    """
    filled = trades.filter(pl.col("outcome").is_in(FILLED_OUTCOMES) & pl.col("r_multiple").is_not_null()
                           ).sort("decision_time", "trade_id")
    if filled.height < 2:
        raise ValueError(f"need at least 2 filled trades to split into tuning and judging, got {filled.height}")
    if split_time is None:
        if not 0 < split_fraction < 1:
            raise ValueError(f"split_fraction must lie in (0, 1), got {split_fraction}")
        split_time = filled["decision_time"][int(split_fraction * filled.height)]
    split = pl.lit(split_time).cast(TS)
    tuning = filled.filter(pl.col("exit_time") < split)
    judging = filled.filter(pl.col("decision_time") >= split)
    straddling = filled.height - tuning.height - judging.height
    if tuning.height == 0 or judging.height == 0:
        raise ValueError(f"split at {split_time} leaves {tuning.height} tuning and {judging.height} "
                         "judging trades; choose another split")
    return tuning, judging, split_time, straddling


def grid_configs(grid: Mapping[str, Sequence], base: OverlayConfig) -> list[OverlayConfig]:
    """Every combination of the grid's values (keys are OverlayConfig field names), in grid order."""
    names = {f.name for f in fields(OverlayConfig)}
    if unknown := [k for k in grid if k not in names]:
        raise ValueError(f"grid keys {unknown} are not OverlayConfig fields; choose among {sorted(names)}")
    keys = list(grid)
    return [replace(base, **dict(zip(keys, values))) for values in itertools.product(*(grid[k] for k in keys))]


def _objective(trades: pl.DataFrame, overlay: pl.DataFrame, variant: str, config: OverlayConfig) -> float | None:
    """The gate's measure on these trades: per-trade Sharpe of the variant minus its control's."""
    df = trades.join(overlay.select("trade_id", "multiplier", "adjusted_confidence"), on="trade_id", how="left")
    values = []
    for v in (variant, control_of(variant)):
        frame, size = _sized(df, v, config)
        values.append(summarize(frame, size_col=size)["sharpe_per_trade"][0])
    return None if None in values else values[0] - values[1]


def tune_and_judge(trades: pl.DataFrame, features: pl.DataFrame, grid: Mapping[str, Sequence],
                   split_time: datetime | None = None, split_fraction: float = 0.6,
                   base_config: OverlayConfig | None = None, objective_variant: str = "filtering",
                   n_resamples: int = 2000, seed: int = 0, n_null: int = 2000,
                   cluster_by: str = "overlap") -> TuneResult:
    """Pick thresholds on the earlier trades, report them on both periods.

    The objective is the gate's own measure on the tuning trades: the per-trade Sharpe of
    `objective_variant` ('filtering' by default: the variant the gate judges) minus that of its
    control (the same filter with every multiplier 1; for sizing, every trade). A per-trade Sharpe
    cannot be raised by trading less. Candidates with an undefined objective rank last; ties keep
    grid order.
    """
    if objective_variant not in ("sizing", "filtering"):
        raise ValueError(f"objective_variant must be 'sizing' or 'filtering', got {objective_variant!r}")
    base_config = base_config or OverlayConfig()
    tuning, judging, split_time, straddling = split_by_time(trades, split_time, split_fraction)
    split = pl.lit(split_time).cast(TS)
    if tuning.filter(pl.col("exit_time") >= split).height:
        raise RuntimeError("a tuning trade closed after the split: tuning would see the judging period")
    tune_features = features.join(tuning.select("trade_id"), on="trade_id", how="semi")

    candidates = grid_configs(grid, base_config)
    scored = []
    for i, cand in enumerate(candidates):
        objective = _objective(tuning, apply_overlay(tuning, tune_features, cand), objective_variant, cand)
        scored.append({"candidate": i, **{k: getattr(cand, k) for k in grid}, "objective": objective})
    table = pl.DataFrame(scored, infer_schema_length=None).with_columns(
        pl.col("objective").cast(pl.Float64)).sort(
        pl.col("objective").is_null(), pl.col("objective"), pl.col("candidate"),
        descending=[False, True, False])
    chosen = candidates[table["candidate"][0]]

    judge_features = features.join(judging.select("trade_id"), on="trade_id", how="semi")
    kw = {"n_resamples": n_resamples, "seed": seed, "n_null": n_null, "cluster_by": cluster_by}
    tuned = overlay_backtest(tuning, apply_overlay(tuning, tune_features, chosen), chosen, **kw)
    judged = overlay_backtest(judging, apply_overlay(judging, judge_features, chosen), chosen, **kw)
    return TuneResult(config=chosen, grid=table, split_time=split_time, tuning=tuned, judging=judged,
                      tuning_trade_ids=tuning["trade_id"].to_list(),
                      judging_trade_ids=judging["trade_id"].to_list(), n_straddling=straddling,
                      objective=f"per-trade Sharpe of the {objective_variant} variant minus its control's, "
                                "on the tuning trades")


def tuning_rows(result: TuneResult) -> pl.DataFrame:
    """The grid in long form (candidate, parameter, value, objective, chosen) for the warehouse."""
    params = [c for c in result.grid.columns if c not in ("candidate", "objective")]
    chosen = result.grid["candidate"][0]
    return (result.grid.unpivot(index=["candidate", "objective"], on=params, variable_name="parameter",
                                value_name="value")
            .with_columns(pl.col("value").cast(pl.Float64), (pl.col("candidate") == chosen).alias("chosen"))
            .sort("candidate", "parameter"))


def config_from_tuning(rows: pl.DataFrame, base: OverlayConfig | None = None) -> OverlayConfig:
    """The chosen OverlayConfig from `tuning_rows` (as stored in overlay_tuning); `base` without rows."""
    base = base or OverlayConfig()
    chosen = rows.filter(pl.col("chosen")) if rows.height else rows
    return replace(base, **{r["parameter"]: r["value"] for r in chosen.iter_rows(named=True)})
