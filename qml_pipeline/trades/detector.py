"""The reference Quasimodo (QML) detector on closed klines (definition: docs/detector.md).

Bearish: swing high LS, swing low L, higher swing high H, then a close below L once H is confirmed
(the break of structure, BOS). The bullish pattern is the mirror image and is found by running the
bearish rules on negated prices. Every rule uses only bars that had closed by the pattern's
`decision_time` (the BOS bar's close), so cutting the history right after it finds the same pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

from qml_pipeline.store.schemas import TS

PATTERN_SCHEMA = pl.Schema({
    "symbol": pl.Utf8, "timeframe": pl.Utf8, "direction": pl.Utf8,
    "ls_time": TS, "ls_price": pl.Float64, "low_time": TS, "low_price": pl.Float64,
    "head_time": TS, "head_price": pl.Float64, "bos_time": TS, "decision_time": TS,
    "decision_close": pl.Float64, "atr": pl.Float64, "entry_price": pl.Float64,
    "stop_price": pl.Float64, "target_price": pl.Float64, "base_confidence": pl.Float64,
})


@dataclass(frozen=True)
class DetectorConfig:
    """Detector knobs. Units: bars of the klines' interval, ATR multiples, R multiples."""

    swing_k: int = 3                     # bars each side that confirm a swing point
    atr_period: int = 14                 # bars in the simple moving average of the true range
    stop_atr_mult: float = 0.25          # stop = head +/- this many ATRs (ATR at decision)
    target_rule: Literal["fixed_r", "bos_extreme"] = "fixed_r"
    target_r: float = 2.0                # fixed_r: target = entry -/+ target_r * risk
    max_bos_bars: int = 30               # the break must close within this many bars after H
    min_head_atr: float = 0.25           # H must exceed LS by this many ATRs (else a double top)
    directions: tuple[str, ...] = ("BEARISH", "BULLISH")

    def __post_init__(self) -> None:
        if self.swing_k < 1:
            raise ValueError(f"swing_k={self.swing_k}: need at least 1 bar each side")
        if self.max_bos_bars < self.swing_k:
            raise ValueError(f"max_bos_bars={self.max_bos_bars} < swing_k={self.swing_k}: "
                             "no break could be accepted after the head is confirmed")
        if self.target_rule not in ("fixed_r", "bos_extreme"):
            raise ValueError(f"target_rule={self.target_rule!r}: expected 'fixed_r' or 'bos_extreme'")
        if not set(self.directions) <= {"BEARISH", "BULLISH"}:
            raise ValueError(f"directions={self.directions}: expected BEARISH and/or BULLISH")


def atr_sma(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average of the true range over `period` bars ending at each bar (NaN before)."""
    prev_close = np.concatenate(([np.nan], close[:-1]))
    tr = np.nanmax(np.vstack([high - low, np.abs(high - prev_close), np.abs(low - prev_close)]), axis=0)
    out = np.full(len(tr), np.nan)
    if len(tr) >= period:
        c = np.cumsum(np.concatenate(([0.0], tr)))
        out[period - 1:] = (c[period:] - c[:-period]) / period
    return out


def swing_highs(high: np.ndarray, k: int) -> np.ndarray:
    """Indices i with high[i] above the k bars before it and not below the k bars after it.

    Strict on the left and weak on the right, so a flat top counts once (its first bar). A swing at i
    is known only at the close of bar i + k.
    """
    n = len(high)
    if n < 2 * k + 1:
        return np.empty(0, dtype=np.int64)
    win = sliding_window_view(high, 2 * k + 1)
    centre = win[:, k]
    ok = (centre > win[:, :k].max(axis=1)) & (centre >= win[:, k + 1:].max(axis=1))
    return np.flatnonzero(ok) + k


def _bearish(hi: np.ndarray, lo: np.ndarray, cl: np.ndarray, atr: np.ndarray,
             cfg: DetectorConfig) -> list[tuple[int, int, int, int]]:
    """(ls, l, h, bos) bar indices of bearish QMLs; bullish calls this on negated prices."""
    k = cfg.swing_k
    n = len(hi)
    sh = swing_highs(hi, k)
    sl = swing_highs(-lo, k)  # swing lows
    found = []
    # A loop over swing highs (a few per hundred bars), each step a few numpy slices.
    for h in sh:
        il = np.searchsorted(sl, h) - 1
        if il < 0:
            continue
        l = sl[il]
        ils = np.searchsorted(sh, l) - 1
        if ils < 0:
            continue
        ls = sh[ils]
        if not (hi[h] > hi[ls]                        # the head is a higher high
                and hi[ls] >= hi[ls:l + 1].max()      # LS is the top of the LS..L leg
                and lo[l] <= lo[ls:h + 1].min()       # L is the bottom between LS and H
                and hi[h] > hi[l:h].max()):           # H is the first bar at the top of L..H
            continue
        first, last = h + k, min(h + cfg.max_bos_bars, n - 1)
        if first > last:
            continue
        below = np.flatnonzero(cl[first:last + 1] < lo[l])
        if below.size == 0:
            continue
        j = first + below[0]
        if hi[h + 1:j + 1].max() > hi[h]:              # the head was exceeded before the break
            continue
        if not np.isfinite(atr[j]) or atr[j] <= 0:
            continue
        if hi[h] - hi[ls] < cfg.min_head_atr * atr[j]:
            continue
        found.append((int(ls), int(l), int(h), int(j)))
    # Nested structures can break on the same bar: one pattern per break, the one with the most
    # extreme head (the larger structure); all candidates are known at that bar, so this is point in time.
    best: dict[int, tuple[int, int, int, int]] = {}
    for p in found:
        if p[3] not in best or hi[p[2]] > hi[best[p[3]][2]]:
            best[p[3]] = p
    return sorted(best.values(), key=lambda p: p[3])


def detect_patterns(klines: pl.DataFrame, config: DetectorConfig | None = None) -> pl.DataFrame:
    """One row per QML found in `klines` (one symbol and interval, KLINES columns), in PATTERN_SCHEMA.

    Needs event_time, close_time, high, low, close; symbol and interval are taken from the frame
    when present. Rows are sorted by event_time; duplicated open times are an error.
    """
    cfg = config or DetectorConfig()
    if klines.height == 0:
        return pl.DataFrame(schema=PATTERN_SCHEMA)
    for col, what in (("symbol", "symbol"), ("interval", "interval")):
        if col in klines.columns and klines[col].n_unique() > 1:
            raise ValueError(f"detect_patterns takes one {what} at a time; got {klines[col].unique().to_list()}")
    k = klines.sort("event_time")
    if k["event_time"].is_duplicated().any():
        raise ValueError("klines have duplicated event_time values; deduplicate them first")
    symbol = k["symbol"][0] if "symbol" in k.columns else None
    timeframe = k["interval"][0] if "interval" in k.columns else None
    hi, lo, cl = (k[c].cast(pl.Float64).to_numpy() for c in ("high", "low", "close"))
    atr = atr_sma(hi, lo, cl, cfg.atr_period)

    rows: dict[str, list] = {name: [] for name in PATTERN_SCHEMA.names()}
    open_t = k["event_time"].to_list()
    close_t = k["close_time"].to_list()
    for direction in cfg.directions:
        sign = 1.0 if direction == "BEARISH" else -1.0
        h_, l_, c_ = (hi, lo, cl) if sign > 0 else (-lo, -hi, -cl)
        for ls, l, h, j in _bearish(h_, l_, c_, atr, cfg):
            risk_buffer = cfg.stop_atr_mult * atr[j]
            entry, head, low = h_[ls], h_[h], l_[l]
            stop = head + risk_buffer
            risk = stop - entry
            if cfg.target_rule == "fixed_r":
                target = entry - cfg.target_r * risk
            else:
                target = l_[h:j + 1].min()
            if not (c_[j] < entry and target < entry):
                continue
            prominence = (head - entry) / atr[j]
            t1, t2 = l - ls, h - l
            symmetry = 1.0 - abs(t1 - t2) / (t1 + t2)
            strength = (low - c_[j]) / atr[j]
            confidence = (0.4 * min(prominence / 2.0, 1.0) + 0.3 * symmetry
                          + 0.3 * min(strength, 1.0))
            rows["symbol"].append(symbol)
            rows["timeframe"].append(timeframe)
            rows["direction"].append(direction)
            rows["ls_time"].append(open_t[ls])
            rows["ls_price"].append(sign * entry)
            rows["low_time"].append(open_t[l])
            rows["low_price"].append(sign * low)
            rows["head_time"].append(open_t[h])
            rows["head_price"].append(sign * head)
            rows["bos_time"].append(open_t[j])
            rows["decision_time"].append(close_t[j])
            rows["decision_close"].append(sign * c_[j])
            rows["atr"].append(float(atr[j]))
            rows["entry_price"].append(sign * entry)
            rows["stop_price"].append(sign * stop)
            rows["target_price"].append(sign * target)
            rows["base_confidence"].append(float(np.clip(confidence, 0.0, 1.0)))
    out = pl.DataFrame(rows, schema=PATTERN_SCHEMA)
    return out.sort("decision_time", "direction")
