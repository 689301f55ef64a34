"""Outcomes of detected patterns on the bars after the decision, with fees and funding (docs/detector.md).

Bar resolution: a bar's high/low says a level was touched, not when. Entry and exit times are the
open times of the fill and exit bars. A pattern whose outcome the data cannot yet decide (the fill
window or the holding period runs past the last bar) yields no row.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from qml_pipeline.trades.detector import DetectorConfig, detect_patterns
from qml_pipeline.store.schemas import TS
from qml_pipeline.timeutil import epoch_ms
from qml_pipeline.trades.contract import REFERENCE_SOURCE, TRADES, validate_trades

# below this many bars the reference detector runs in this process (measured: docs/scale.md)
PARALLEL_MIN_BARS = 400_000


@dataclass(frozen=True)
class SimulationConfig:
    """Units: bars of the pattern's interval; fees in basis points of notional per side."""

    fill_timeout_bars: int = 20    # the limit order is cancelled if not touched within this many bars
    max_hold_bars: int = 100       # counted from the fill bar (inclusive); exit at the last one's close
    entry_fee_bps: float = 2.0     # limit entry: maker fee
    exit_fee_bps: float = 5.0      # stop, target and timeout exits all charged as taker

    def __post_init__(self) -> None:
        if self.fill_timeout_bars < 1 or self.max_hold_bars < 1:
            raise ValueError("fill_timeout_bars and max_hold_bars must be at least 1")


def trade_id(symbol: str, timeframe: str, direction: str, decision_time: datetime) -> str:
    return f"{symbol}-{timeframe}-{direction[:4]}-{decision_time:%Y%m%dT%H%M}"


def _funding_arrays(funding: pl.DataFrame | None, symbol: str | None, bar_open_ms: np.ndarray,
                    bar_open: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Settlement times (ms) and cumulative rate * price per unit of base asset."""
    if funding is None or funding.height == 0:
        return np.empty(0, dtype=np.int64), np.zeros(1)
    f = funding
    if symbol is not None and "symbol" in f.columns:
        f = f.filter(pl.col("symbol") == symbol)
    f = f.sort("event_time")
    t = epoch_ms(f["event_time"]).astype(np.int64)
    rate = f["funding_rate"].cast(pl.Float64).to_numpy()
    mark = (f["mark_price"].cast(pl.Float64).to_numpy() if "mark_price" in f.columns
            else np.full(len(t), np.nan))
    # Without a mark price, the price at settlement is the open of the bar running at that moment.
    idx = np.clip(np.searchsorted(bar_open_ms, t, side="right") - 1, 0, max(len(bar_open) - 1, 0))
    price = np.where(np.isfinite(mark), mark, bar_open[idx] if len(bar_open) else np.nan)
    return t, np.concatenate(([0.0], np.cumsum(np.nan_to_num(rate * price))))


def simulate_trades(patterns: pl.DataFrame, klines: pl.DataFrame, funding: pl.DataFrame | None,
                    config: SimulationConfig | None = None) -> pl.DataFrame:
    """Simulate each pattern (detector output, one symbol and interval) on `klines`; TRADES rows.

    `funding`: FUNDING_RATES-shaped rows (event_time, funding_rate, optional mark_price and symbol).
    """
    cfg = config or SimulationConfig()
    if patterns.height == 0:
        return pl.DataFrame(schema=TRADES.polars_schema)
    for col in ("symbol", "timeframe"):
        if patterns[col].n_unique() > 1:
            raise ValueError(f"simulate_trades takes one {col} at a time; use reference_trades for many")
    k = klines.sort("event_time")
    o_ms = epoch_ms(k["event_time"]).astype(np.int64)
    op, hi, lo, cl = (k[c].cast(pl.Float64).to_numpy() for c in ("open", "high", "low", "close"))
    n = len(o_ms)
    open_times = k["event_time"].cast(TS).to_list()
    close_times = k["close_time"].cast(TS).to_list()
    symbol = patterns["symbol"][0]
    f_ms, f_cum = _funding_arrays(funding, symbol, o_ms, op)

    out: dict[str, list] = {c: [] for c in ("trade_id", "entry_time", "exit_time", "exit_price",
                                            "gross_r_multiple", "fees_r", "funding_r", "outcome")}
    keep: list[int] = []
    dec_ms = epoch_ms(patterns["decision_time"]).astype(np.int64)
    # One pass per pattern over at most fill_timeout_bars + max_hold_bars bars.
    for p, row in enumerate(patterns.iter_rows(named=True)):
        short = row["direction"] == "BEARISH"
        s = -1.0 if short else 1.0   # work in "long" space: a short is a long on negated prices
        entry, stop, target, head = (s * row[c] for c in ("entry_price", "stop_price",
                                                         "target_price", "head_price"))
        H, L, C, O = (hi, lo, cl, op) if not short else (-lo, -hi, -cl, -op)
        start = int(np.searchsorted(o_ms, dec_ms[p], side="left"))
        fill_end = min(start + cfg.fill_timeout_bars, n)
        touched = np.flatnonzero(L[start:fill_end] <= entry)
        broken = np.flatnonzero(C[start:fill_end] < head)   # close beyond the head (long space)
        first_touch = touched[0] if touched.size else None
        if broken.size and (first_touch is None or broken[0] < first_touch):
            outcome, fill, exit_bar, exit_px = "INVALIDATED", None, None, None
        elif first_touch is None:
            if start + cfg.fill_timeout_bars > n:
                continue                                      # still pending at the end of the data
            outcome, fill, exit_bar, exit_px = "NOT_FILLED", None, None, None
        else:
            fill = start + int(first_touch)
            hold_end = min(fill + cfg.max_hold_bars, n)
            stop_hit = L[fill:hold_end] <= stop
            target_hit = H[fill:hold_end] >= target
            target_hit[0] = False                             # order within the fill bar is unknown
            si = np.flatnonzero(stop_hit)
            ti = np.flatnonzero(target_hit)
            s_at = si[0] if si.size else None
            t_at = ti[0] if ti.size else None
            if s_at is not None and (t_at is None or s_at <= t_at):
                exit_bar = fill + int(s_at)
                outcome = "LOSS"
                exit_px = stop if s_at == 0 else min(stop, O[exit_bar])   # a gap through the stop
            elif t_at is not None:
                exit_bar, outcome, exit_px = fill + int(t_at), "WIN", target
            else:
                if fill + cfg.max_hold_bars > n:
                    continue
                exit_bar, outcome = fill + cfg.max_hold_bars - 1, "TIMEOUT"
                exit_px = C[exit_bar]
        keep.append(p)
        out["trade_id"].append(trade_id(symbol, row["timeframe"], row["direction"], row["decision_time"]))
        out["outcome"].append(outcome)
        if fill is None:
            for c in ("entry_time", "exit_time", "exit_price", "gross_r_multiple", "fees_r", "funding_r"):
                out[c].append(None)
            continue
        risk = entry - stop
        real_entry, real_exit = s * entry, s * exit_px
        fees = (real_entry * cfg.entry_fee_bps + real_exit * cfg.exit_fee_bps) / 1e4
        a = np.searchsorted(f_ms, o_ms[fill], side="right")
        b = np.searchsorted(f_ms, o_ms[exit_bar], side="right")
        funding_paid = (f_cum[b] - f_cum[a]) * (1.0 if not short else -1.0)  # longs pay positive rates
        out["entry_time"].append(open_times[fill])
        # the exit happened inside this bar; its close is when the outcome is certainly known
        out["exit_time"].append(close_times[exit_bar])
        out["exit_price"].append(float(real_exit))
        out["gross_r_multiple"].append(float((exit_px - entry) / risk))
        out["fees_r"].append(float(fees / risk))
        out["funding_r"].append(float(funding_paid / risk))

    base = patterns[keep]
    res = pl.DataFrame(out, schema={"trade_id": pl.Utf8, "entry_time": TS, "exit_time": TS,
                                    "exit_price": pl.Float64, "gross_r_multiple": pl.Float64,
                                    "fees_r": pl.Float64, "funding_r": pl.Float64, "outcome": pl.Utf8})
    trades = pl.concat([base, res], how="horizontal").with_columns(
        (pl.col("gross_r_multiple") - pl.col("fees_r") - pl.col("funding_r")).alias("r_multiple"),
        pl.lit(REFERENCE_SOURCE).alias("source"),
    )
    trades = trades.select([pl.col(c.name).cast(c.dtype) if c.name in trades.columns
                            else pl.lit(None, dtype=c.dtype).alias(c.name) for c in TRADES.columns])
    validate_trades(trades)
    return trades


def reference_trades(klines_all: pl.DataFrame, funding_all: pl.DataFrame | None, timeframes: list[str],
                     config: DetectorConfig | None = None,
                     sim_config: SimulationConfig | None = None, workers: int | None = None) -> pl.DataFrame:
    """Detector + simulation for every symbol of `klines_all` and each interval in `timeframes`.

    Symbols and intervals are independent, so with many bars they run in `workers` processes (default: one per
    core once the klines hold PARALLEL_MIN_BARS bars; a spawned worker costs about a second to start). The
    trades are the same, in the same order, whatever the number of workers."""
    groups = sorted(klines_all.filter(pl.col("interval").is_in(timeframes)).group_by("symbol", "interval"),
                    key=lambda g: g[0])
    jobs = [(k, _funding_of(funding_all, symbol), config, sim_config) for (symbol, _), k in groups]
    if workers is None:
        workers = os.cpu_count() or 1 if sum(k.height for k, *_ in jobs) >= PARALLEL_MIN_BARS else 1
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        frames = [_trades_of_group(job) for job in jobs]
    else:
        # spawn, not fork: a forked child of a process running polars' or DuckDB's threads can deadlock
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            frames = list(pool.map(_trades_of_group, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.DataFrame(schema=TRADES.polars_schema)
    return pl.concat(frames).sort("decision_time", "trade_id")


def _funding_of(funding_all: pl.DataFrame | None, symbol: str) -> pl.DataFrame | None:
    if funding_all is None or "symbol" not in funding_all.columns:
        return funding_all
    return funding_all.filter(pl.col("symbol") == symbol)


def _trades_of_group(job: tuple[pl.DataFrame, pl.DataFrame | None, DetectorConfig | None, SimulationConfig | None]
                     ) -> pl.DataFrame:
    """The trades of one symbol and interval (a module-level function: process pools pickle it by name)."""
    klines, funding, config, sim_config = job
    patterns = detect_patterns(klines, config)
    if not patterns.height:
        return pl.DataFrame(schema=TRADES.polars_schema)
    return simulate_trades(patterns, klines, funding, sim_config)
