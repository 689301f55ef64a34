"""An open, documented estimate of where leveraged positions would be liquidated (docs/liquidation_map.md).

Built only from data the pipeline already has: open interest (OI) and closed klines. Every OI increase
opens hypothetical long and short positions at the price of the moment, spread over leverage tiers;
they leave the map when a later bar trades through their liquidation price, when OI falls (pro rata),
or when they are older than `expiry_days`. This is an estimate, not ground truth: commercial heatmaps
(Coinglass, Velo) use proprietary algorithms and so does this one, only openly.

Point in time: the map at time t uses only OI rows and bars with available_at <= t (a bar is known
when it is published, not when it closes), deduplicated as features.py does: of the copies of one
OI stamp or bar the earliest published wins, so a later re-publication never replaces what a trader
saw. Each hypothetical position is one row with a start time, the time it stops counting (the
available_at of the first liquidating bar, or expiry) and an amount that shrinks with OI decreases through a
cumulative factor, so a map at any instant (a snapshot grid, or a trade's exact decision time) is a
sum over the positions alive then; no row-by-row walk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from qml_pipeline.features.point_in_time import first_copies, latest_known, ms, prepare_oi
from qml_pipeline.store.schemas import LIQUIDATION_MAP, TS
from qml_pipeline.timeutil import DAY_MS, MINUTE_MS, interval_ms

FEATURE_SCHEMA = pl.Schema({
    "trade_id": pl.Utf8,
    "distance_to_liq_cluster": pl.Float64,
    "liq_cluster_price": pl.Float64,
    "liq_cluster_notional_usd": pl.Float64,
    "liq_map_time": TS,
    "liq_map_age_minutes": pl.Float64,
})

_NEVER = np.iinfo(np.int64).max
# Snapshots are computed in blocks of this many days, anchored to the Unix epoch, so the pro-rata
# scale factors stay within float range however long the series (and blocks never depend on data).
_BLOCK_DAYS = 90
# A bin whose amount is below this share of OI is rounding residue of positions that have left.
_ZERO_SHARE = 1e-12


@dataclass(frozen=True)
class LiqMapConfig:
    """Every assumption of the model, with its unit. Defaults are documented in docs/liquidation_map.md."""

    # leverage (x) of the hypothetical positions, and the share of new OI opened at each (sum 1)
    leverage_tiers: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0)
    leverage_weights: tuple[float, ...] = (0.30, 0.30, 0.20, 0.12, 0.08)
    # maintenance margin rate, fraction of notional (0.005 = 0.5%)
    maintenance_margin_rate: float = 0.005
    # fraction of an OI increase attributed to new longs; the rest to new shorts
    long_share: float = 0.5
    # price-bin width in basis points of price (log-spaced bins); or set bin_width_usd instead
    bin_width_bps: float | None = 25.0
    # absolute bin width in quote currency (USDT); exclusive with bin_width_bps
    bin_width_usd: float | None = None
    # positions older than this many days are dropped (closed for reasons the data cannot see)
    expiry_days: float = 30.0
    # a bin is a cluster when its notional (base units) >= this fraction of the current OI ...
    cluster_min_share_of_oi: float | None = 0.005
    # ... and (if set) >= this quantile of the non-empty bins on the same side of the same map
    cluster_quantile: float | None = None
    # kline interval whose close prices entries and whose high/low liquidate positions
    price_interval: str = "1h"
    # snapshot cadence of the stored table, minutes (snapshot times are multiples of it since epoch)
    snapshot_every_minutes: int = 240
    # the price used (at an OI row, snapshot or decision) must come from a bar published (available_at)
    # at most this long ago
    max_price_age_minutes: float = 120.0
    # a snapshot or trade feature needs an OI row available at most this long ago, else no map / NULL
    max_oi_age_minutes: float = 180.0
    source: str = "estimated"

    def __post_init__(self) -> None:
        if len(self.leverage_tiers) == 0 or len(self.leverage_tiers) != len(self.leverage_weights):
            raise ValueError("leverage_tiers and leverage_weights must be non-empty and of equal length, "
                             f"got {self.leverage_tiers} and {self.leverage_weights}")
        if any(w < 0 for w in self.leverage_weights) or not math.isclose(sum(self.leverage_weights), 1.0,
                                                                         abs_tol=1e-9):
            raise ValueError(f"leverage_weights must be >= 0 and sum to 1, got {self.leverage_weights}")
        if not 0 <= self.maintenance_margin_rate < 1:
            raise ValueError("maintenance_margin_rate is a fraction (0.005 = 0.5%), "
                             f"got {self.maintenance_margin_rate}")
        for lev in self.leverage_tiers:
            if lev <= 1 or 1 / lev <= self.maintenance_margin_rate:
                raise ValueError(f"leverage {lev}x with maintenance margin {self.maintenance_margin_rate} "
                                 "would be liquidated at entry: need 1 < L < 1/maintenance_margin_rate")
        if not 0 <= self.long_share <= 1:
            raise ValueError(f"long_share is a fraction in [0, 1], got {self.long_share}")
        if (self.bin_width_bps is None) == (self.bin_width_usd is None):
            raise ValueError("set exactly one of bin_width_bps and bin_width_usd")
        if (self.bin_width_bps is not None and self.bin_width_bps <= 0) or (
                self.bin_width_usd is not None and self.bin_width_usd <= 0):
            raise ValueError("the bin width must be > 0")
        if self.expiry_days <= 0:
            raise ValueError(f"expiry_days must be > 0, got {self.expiry_days}")
        if self.cluster_min_share_of_oi is None and self.cluster_quantile is None:
            raise ValueError("set cluster_min_share_of_oi, cluster_quantile or both")
        if self.cluster_quantile is not None and not 0 <= self.cluster_quantile <= 1:
            raise ValueError(f"cluster_quantile must be in [0, 1], got {self.cluster_quantile}")
        if self.snapshot_every_minutes <= 0:
            raise ValueError("snapshot_every_minutes must be > 0")
        interval_ms(self.price_interval)

    def bin_index(self, price: np.ndarray) -> np.ndarray:
        if self.bin_width_usd is not None:
            return np.floor(price / self.bin_width_usd).astype(np.int64)
        return np.floor(np.log(price) / math.log1p(self.bin_width_bps / 10_000)).astype(np.int64)

    def bin_edges(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.bin_width_usd is not None:
            return index * self.bin_width_usd, (index + 1) * self.bin_width_usd
        step = math.log1p(self.bin_width_bps / 10_000)
        return np.exp(index * step), np.exp((index + 1) * step)


# ------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class _Series:
    """One symbol's cleaned OI and bars, as numpy arrays (times in Unix ms)."""

    oi_avail: np.ndarray
    oi: np.ndarray
    log_scale: np.ndarray  # cumulative log of the pro-rata survival factor after each OI row
    bar_avail: np.ndarray  # available_at of each bar: when it is known
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray


@dataclass(frozen=True)
class _Positions:
    start: np.ndarray     # ms: available_at of the OI row that opened it
    end: np.ndarray       # ms: available_at of the bar that liquidated it, or start + expiry (exclusive)
    is_long: np.ndarray
    liq_price: np.ndarray
    amount: np.ndarray    # base units at opening
    log_scale: np.ndarray  # series log_scale at opening
    bin: np.ndarray


@dataclass(frozen=True)
class _Openings:
    """The hypothetical positions of one symbol, grouped: a position is (OI increase row, side, tier),
    and its price, bin and liquidation time depend only on (entry bar, side, tier).

    Sides: 0 long, 1 short. A position's amount is (d_oi * share[side]) * weight[tier] (base units) and
    it counts from the row's available_at until min(liq_time, start + expiry). Position order (the
    order sums run in) is row, then side, then tier.
    """

    start: np.ndarray      # per row: available_at of the OI row (ms), increasing
    d_oi: np.ndarray       # per row: the OI increase (base units)
    log_scale: np.ndarray  # per row: series log_scale at the row
    entry: np.ndarray      # per row: index of its entry bar in the (side, entry, tier) arrays, non-decreasing
    entry_rows: np.ndarray  # per entry bar: its first row, and (last) one past the last row
    share: np.ndarray      # per side: long_share, 1 - long_share
    weight: np.ndarray     # per tier: leverage weight (tiers of weight 0 dropped)
    liq_price: np.ndarray  # (side, entry, tier): USDT
    bin: np.ndarray        # (side, entry, tier): price bin of liq_price
    liq_time: np.ndarray   # (side, entry, tier): available_at of the first bar through liq_price, or _NEVER
    expiry_ms: int


def _from_ms(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Int64).cast(TS)


def _prepare_bars(klines: pl.DataFrame, config: LiqMapConfig) -> pl.DataFrame:
    """One row per bar (symbol, event_time) of `price_interval`, by the kline rule of features.py.

    A bar is known at its available_at (close_time if the frame has no available_at). Of the copies
    of one bar the earliest published wins, then the larger close, high, low, open, close_time,
    volume; a bar published no earlier than a later bar is dropped (`latest_known`).
    """
    need = {"symbol", "event_time", "high", "low", "close"}
    if missing := need - set(klines.columns):
        raise ValueError(f"klines frame lacks columns {sorted(missing)}; got {klines.columns}")
    bars = klines
    if "interval" in bars.columns:
        bars = bars.filter(pl.col("interval") == config.price_interval)
    step = interval_ms(config.price_interval)
    close_ms = ms("close_time") if "close_time" in bars.columns else ms("event_time") + step
    avail = ms("available_at") if "available_at" in bars.columns else close_ms
    ties = [c for c in ("close", "high", "low", "open", "close_time", "volume") if c in bars.columns]
    rows = (bars.select("symbol", ms("event_time").alias("ev"), avail.alias("avail"), *ties)
            .filter(pl.col("ev").is_not_null() & pl.col("avail").is_not_null()))
    rows = first_copies(rows, "ev", ["avail", *ties], [False] + [True] * len(ties))
    return latest_known(rows, "ev").select("symbol", "avail", "high", "low", "close")


def _series(oi: pl.DataFrame, bars: pl.DataFrame) -> _Series:
    oi_v = oi["open_interest"].to_numpy()
    prev = np.concatenate([[oi_v[0]], oi_v[:-1]]) if oi_v.size else oi_v
    # dOI < 0 closes that fraction of every open position (each contract equally likely to close).
    frac_closed = np.where(oi_v < prev, (prev - oi_v) / prev, 0.0)
    return _Series(
        oi_avail=oi["avail"].to_numpy(), oi=oi_v, log_scale=np.cumsum(np.log1p(-frac_closed)),
        bar_avail=bars["avail"].to_numpy(), high=bars["high"].to_numpy(), low=bars["low"].to_numpy(),
        close=bars["close"].to_numpy())


def _first_cross(values: np.ndarray, first: np.ndarray, threshold: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """For each i: the smallest j in [first[i], stop[i]) with values[j] <= threshold[i], else len(values).

    Binary lifting over a sparse table of running minima, with levels up to the longest [first, stop):
    O((n + m) log w), all vectorised.
    """
    n = values.size
    pos = first.astype(np.int64).copy()
    if n == 0 or pos.size == 0:
        return np.full(pos.size, n, dtype=np.int64)
    span = int(np.max(stop - first))
    levels = [values]
    while (1 << len(levels)) <= span:
        prev, half = levels[-1], 1 << (len(levels) - 1)
        levels.append(np.minimum(prev[:-half], prev[half:]))
    for k in range(len(levels) - 1, -1, -1):
        table, width = levels[k], 1 << k
        # no value <= threshold in [pos, pos + width), all before stop: skip the block
        jump = (pos + width <= stop) & (table[np.minimum(pos, table.size - 1)] > threshold)
        pos += np.where(jump, width, 0)
    crossed = (pos < stop) & (values[np.minimum(pos, n - 1)] <= threshold)
    return np.where(crossed, pos, n)


def _opening_rows(s: _Series, config: LiqMapConfig
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The OI rows that open positions (OI rose and a fresh bar prices them): (rows, entry bar of every
    OI row, OI change of every row, leverage tiers, their weights), tiers of weight 0 left out."""
    n_oi = s.oi.size
    d_oi = np.diff(s.oi, prepend=s.oi[:1]) if n_oi else s.oi
    entry_bar = np.searchsorted(s.bar_avail, s.oi_avail, side="right") - 1
    has_bar = entry_bar >= 0
    bar_age = s.oi_avail - s.bar_avail[np.maximum(entry_bar, 0)] if s.bar_avail.size else np.zeros(n_oi)
    # The first row has no previous OI to differ from: positions opened before the series are unknown.
    usable = has_bar & (d_oi > 0) & (bar_age <= config.max_price_age_minutes * MINUTE_MS)
    lev = np.asarray(config.leverage_tiers, dtype=float)
    w = np.asarray(config.leverage_weights, dtype=float)
    keep = w > 0
    return np.nonzero(usable)[0], entry_bar, d_oi, lev[keep], w[keep]


def _openings(s: _Series, config: LiqMapConfig) -> _Openings:
    rows, entry_bar, d_oi, lev, w = _opening_rows(s, config)
    mmr = config.maintenance_margin_rate

    # bars are published in order, so entry bars never decrease along the rows
    bars = entry_bar[rows]
    new_entry = np.ones(rows.size, dtype=bool)
    new_entry[1:] = bars[1:] != bars[:-1]
    entries = bars[new_entry]
    price = s.close[entries][:, None]
    liq = np.stack([price * (1 - 1 / lev + mmr), price * (1 + 1 / lev - mmr)])
    # A bar through the level matters only while some row of the entry bar is younger than expiry:
    # one published later leaves every such position ending at expiry anyway.
    expiry_ms = int(config.expiry_days * DAY_MS)
    last_start = s.oi_avail[rows][np.nonzero(np.append(new_entry[1:], rows.size > 0))[0]]
    first = np.repeat(entries + 1, lev.size)
    stop = np.repeat(np.searchsorted(s.bar_avail, last_start + expiry_ms, side="left"), lev.size)
    cross = np.stack([_first_cross(s.low, first, liq[0].ravel(), stop),
                      _first_cross(-s.high, first, -liq[1].ravel(), stop)]).reshape(liq.shape)
    n_bars = s.bar_avail.size
    liq_time = np.where(cross < n_bars, s.bar_avail[np.minimum(cross, n_bars - 1)], _NEVER) if n_bars else \
        np.full(liq.shape, _NEVER)
    return _Openings(start=s.oi_avail[rows], d_oi=d_oi[rows], log_scale=s.log_scale[rows],
                     entry=np.cumsum(new_entry) - 1, entry_rows=np.append(np.nonzero(new_entry)[0], rows.size),
                     share=np.array([config.long_share, 1 - config.long_share]),
                     weight=w, liq_price=liq, bin=config.bin_index(liq), liq_time=liq_time, expiry_ms=expiry_ms)


def _positions(o: _Openings) -> _Positions:
    """One entry per position with a positive amount, in position order."""
    n_rows, n_t = o.start.size, o.weight.size
    amount = ((o.d_oi[:, None] * o.share[None, :])[:, :, None] * o.weight[None, None, :]).ravel()
    per_row = (n_rows, 2, n_t)

    def per_position(a: np.ndarray) -> np.ndarray:  # (side, entry, tier) -> position order
        return a[:, o.entry, :].transpose(1, 0, 2).ravel()

    nz = amount > 0
    start = np.broadcast_to(o.start[:, None, None], per_row).ravel()[nz]
    return _Positions(start=start, end=np.minimum(per_position(o.liq_time)[nz], start + o.expiry_ms),
                      is_long=np.broadcast_to(np.array([True, False])[None, :, None], per_row).ravel()[nz],
                      liq_price=per_position(o.liq_price)[nz], amount=amount[nz],
                      log_scale=np.broadcast_to(o.log_scale[:, None, None], per_row).ravel()[nz],
                      bin=per_position(o.bin)[nz])


def _symbol_inputs(oi: pl.DataFrame, klines: pl.DataFrame, config: LiqMapConfig
                   ) -> dict[str, tuple[_Series, _Positions]]:
    oi_p, bars_p = prepare_oi(oi), _prepare_bars(klines, config)
    out = {}
    for (symbol,), oi_sym in oi_p.group_by(["symbol"], maintain_order=True):
        bars_sym = bars_p.filter(pl.col("symbol") == symbol)
        s = _series(oi_sym, bars_sym)
        out[symbol] = (s, _positions(_openings(s, config)))
    return out


# ------------------------------------------------------------------ snapshots

def estimate_liquidation_map(oi: pl.DataFrame, klines: pl.DataFrame,
                             config: LiqMapConfig | None = None) -> pl.DataFrame:
    """Snapshots of the estimated liquidation map (rows of `LIQUIDATION_MAP`), one row per non-empty bin.

    `oi`: symbol, available_at, open_interest (base units), optionally event_time and period_minutes
    (rows of the `open_interest` table). `klines`: symbol, event_time (open time), high, low, close,
    optionally available_at, close_time and interval (rows of the `klines` table; only
    `config.price_interval` is used; a bar is known at available_at, else at close_time).
    Snapshot times are the multiples of `snapshot_every_minutes` since the epoch; a snapshot is
    emitted only when its newest OI row and price bar are within the staleness limits.
    """
    config = config or LiqMapConfig()
    frames = [_snapshots(symbol, s, p, config)
              for symbol, (s, p) in _symbol_inputs(oi, klines, config).items()]
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.DataFrame(schema=LIQUIDATION_MAP.polars_schema)
    return pl.concat(frames).select(LIQUIDATION_MAP.names)


def _snapshots(symbol: str, s: _Series, p: _Positions, config: LiqMapConfig) -> pl.DataFrame:
    if p.start.size == 0:
        return pl.DataFrame(schema=LIQUIDATION_MAP.polars_schema)
    cadence = config.snapshot_every_minutes * MINUTE_MS
    max_oi_age = config.max_oi_age_minutes * MINUTE_MS
    first_k = -(-int(p.start.min()) // cadence)
    last_k = (int(s.oi_avail[-1]) + int(max_oi_age)) // cadence
    grid = np.arange(first_k, last_k + 1, dtype=np.int64) * cadence
    if grid.size == 0:
        return pl.DataFrame(schema=LIQUIDATION_MAP.polars_schema)

    oi_idx = np.searchsorted(s.oi_avail, grid, side="right") - 1
    bar_idx = np.searchsorted(s.bar_avail, grid, side="right") - 1
    fresh = ((oi_idx >= 0) & (bar_idx >= 0)
             & (grid - s.oi_avail[np.maximum(oi_idx, 0)] <= max_oi_age)
             & (grid - s.bar_avail[np.maximum(bar_idx, 0)] <= config.max_price_age_minutes * MINUTE_MS))
    log_scale_k = s.log_scale[np.maximum(oi_idx, 0)]
    oi_k = s.oi[np.maximum(oi_idx, 0)]

    k_start = np.searchsorted(grid, p.start, side="left")
    k_end = np.searchsorted(grid, p.end, side="left")
    block = max(1, _BLOCK_DAYS * DAY_MS // cadence)
    # block boundaries on the epoch-anchored grid, so they never depend on where the data starts
    bounds = np.unique(np.concatenate([[0], np.nonzero(np.diff((grid // cadence) // block))[0] + 1,
                                       [grid.size]]))
    parts = []
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        sel = (k_start < c1) & (k_end > c0)
        if not sel.any() or not fresh[c0:c1].any():
            continue
        ks, ke = np.maximum(k_start[sel], c0) - c0, np.minimum(k_end[sel], c1) - c0
        ref = log_scale_k[c0]
        u = p.amount[sel] * np.exp(ref - p.log_scale[sel])
        b0 = int(p.bin[sel].min())
        nb = int(p.bin[sel].max()) - b0 + 1
        b = p.bin[sel] - b0
        ch = np.where(p.is_long[sel], 0, 2)
        kc = c1 - c0
        # channels: 0 long base, 1 long usd, 2 short base, 3 short usd
        vals = np.concatenate([u, u * p.liq_price[sel]])
        chans = np.concatenate([ch, ch + 1])
        flat_s = (np.concatenate([ks, ks]) * nb + np.concatenate([b, b])) * 4 + chans
        flat_e = (np.concatenate([ke, ke]) * nb + np.concatenate([b, b])) * 4 + chans
        size = (kc + 1) * nb * 4
        diff = np.bincount(flat_s, vals, size) - np.bincount(flat_e, vals, size)
        level = np.cumsum(diff.reshape(kc + 1, nb, 4)[:kc], axis=0)
        level *= np.exp(log_scale_k[c0:c1] - ref)[:, None, None]
        tol = (_ZERO_SHARE * oi_k[c0:c1])[:, None]
        long_b = np.where(level[:, :, 0] > tol, level[:, :, 0], 0.0)
        short_b = np.where(level[:, :, 2] > tol, level[:, :, 2], 0.0)
        k_i, bin_i = np.nonzero(((long_b > 0) | (short_b > 0)) & fresh[c0:c1, None])
        if k_i.size == 0:
            continue
        lo, hi = config.bin_edges(bin_i + b0)
        kk = k_i + c0
        parts.append(pl.DataFrame({
            "snapshot_ms": grid[kk],
            "price_bin_low": lo, "price_bin_high": hi,
            "long_liq_notional": long_b[k_i, bin_i],
            "long_liq_notional_usd": np.where(long_b[k_i, bin_i] > 0, level[k_i, bin_i, 1], 0.0),
            "short_liq_notional": short_b[k_i, bin_i],
            "short_liq_notional_usd": np.where(short_b[k_i, bin_i] > 0, level[k_i, bin_i, 3], 0.0),
            "reference_price": s.close[bar_idx[kk]],
            "open_interest": oi_k[kk],
            "oi_available_ms": s.oi_avail[oi_idx[kk]],
        }))
    if not parts:
        return pl.DataFrame(schema=LIQUIDATION_MAP.polars_schema)
    return (pl.concat(parts)
            .with_columns(
                pl.lit(symbol).alias("symbol"),
                _from_ms("snapshot_ms").alias("snapshot_time"),
                _from_ms("oi_available_ms").alias("oi_available_at"),
                pl.lit(config.source).alias("source"))
            .select(LIQUIDATION_MAP.names))


# ------------------------------------------------------------------ per-trade feature

# Trades x price bins of one block of the screening map (float64 cells): bounds its memory.
_SCREEN_CELLS = 2_000_000
# (trade, position) pairs gathered at once when summing bins exactly: bounds that memory.
_PAIR_BUDGET = 4_000_000
# The screening map keeps running totals, whose rounding differs from the exact sum's: a bin whose
# total is within this share of its gross (everything added to it) of the threshold is summed exactly.
_SCREEN_SLACK = 1e-7
# The survival factor of a block's positions relative to its first trade stays within e**this.
_MAX_LOG_SPAN = 300.0


def liq_features_for_trades(trades: pl.DataFrame, oi: pl.DataFrame, klines: pl.DataFrame,
                            atr: pl.DataFrame, config: LiqMapConfig | None = None) -> pl.DataFrame:
    """Per trade: the nearest estimated liquidation cluster in the trade's direction, as of decision_time.

    `trades`: trade_id, symbol, direction ('BULLISH' | 'BEARISH'), decision_time. `atr`: trade_id,
    atr (USDT, the ATR known at decision_time). `oi` and `klines` as for `estimate_liquidation_map`.
    The map is evaluated at exactly decision_time (not the previous snapshot). BEARISH looks for
    long-liquidation clusters below the price (forced selling that fuels a drop); BULLISH for
    short-liquidation clusters above it (forced buying that fuels a squeeze). Columns:
    `FEATURE_SCHEMA`; feature values are NULL when no cluster lies in that direction, when the
    newest OI row is older than `max_oi_age_minutes` or the price older than `max_price_age_minutes`
    (liq_map_time and liq_map_age_minutes are kept so staleness is visible).
    """
    config = config or LiqMapConfig()
    check_trades(trades)
    t = (trades.select(pl.col("trade_id").cast(pl.Utf8), "symbol", "direction", "decision_time")
         .with_row_index("row")
         .join(atr.select(pl.col("trade_id").cast(pl.Utf8), pl.col("atr").cast(pl.Float64)), on="trade_id",
               how="left"))
    oi_by = oi.partition_by("symbol", as_dict=True) if "symbol" in oi.columns else {}
    kl_by = klines.partition_by("symbol", as_dict=True) if "symbol" in klines.columns else {}
    parts = [ts.select("row", "trade_id").hstack(symbol_liq_features(
                 ts, prepare_oi(oi_by.get((symbol,), oi.clear())), kl_by.get((symbol,), klines.clear()), config))
             for (symbol,), ts in t.group_by(["symbol"], maintain_order=True)]
    return pl.concat(parts).sort("row").select(FEATURE_SCHEMA.names()) if parts else \
        pl.DataFrame(schema=FEATURE_SCHEMA)


def check_trades(trades: pl.DataFrame) -> None:
    """Raise ValueError naming the first trade whose direction is not BULLISH or BEARISH (any case)."""
    need = {"trade_id", "symbol", "direction", "decision_time"}
    if missing := need - set(trades.columns):
        raise ValueError(f"trades frame lacks columns {sorted(missing)}; got {trades.columns}")
    direction = pl.col("direction").cast(pl.Utf8).str.to_uppercase()
    bad = trades.filter(~direction.is_in(["BULLISH", "BEARISH"]) | direction.is_null())
    if bad.height:
        raise ValueError(f"direction must be BULLISH or BEARISH; trade {bad['trade_id'][0]!r} has "
                         f"{bad['direction'][0]!r}")


def symbol_liq_features(trades: pl.DataFrame, oi: pl.DataFrame, klines: pl.DataFrame,
                        config: LiqMapConfig) -> pl.DataFrame:
    """`liq_features_for_trades` for one symbol's trades (direction, decision_time, atr), given its
    `prepare_oi` rows and its klines; FEATURE_SCHEMA without trade_id, row for row. Rows published
    after the last decision may be left out of `oi` and `klines`: they change nothing."""
    d_ms = trades.select(ms("decision_time")).to_series().to_numpy()
    want_long = trades.select(pl.col("direction").cast(pl.Utf8).str.to_uppercase() == "BEARISH").to_series()
    columns = [c for c in FEATURE_SCHEMA.names() if c != "trade_id"]
    if oi.height == 0 or d_ms.size == 0:
        return pl.DataFrame([pl.Series(c, [None] * d_ms.size, FEATURE_SCHEMA[c]) for c in columns])
    s = _series(oi, _prepare_bars(klines, config))
    parts = _symbol_features(d_ms, want_long.to_numpy(), s, _openings(s, config), config)
    usable = pl.col("fresh")
    return parts.with_columns(atr=trades["atr"].cast(pl.Float64)).select(*feature_columns(usable)).cast({c: FEATURE_SCHEMA[c] for c in columns})


def _known_at(d: np.ndarray, s: _Series, config: LiqMapConfig
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """At each decision time d (ms): (has OI, has a bar, index of the OI row known, the map's time
    (that row's avail, 0 without one), whether OI and price are fresh enough, the last close)."""
    oi_idx = np.searchsorted(s.oi_avail, d, side="right") - 1
    bar_idx = np.searchsorted(s.bar_avail, d, side="right") - 1
    has_oi, has_bar = oi_idx >= 0, bar_idx >= 0
    oi_i, bar_i = np.maximum(oi_idx, 0), np.maximum(bar_idx, 0)
    map_ms = np.where(has_oi, s.oi_avail[oi_i], 0)
    bar_avail = s.bar_avail[bar_i] if s.bar_avail.size else np.zeros(d.size, dtype=np.int64)
    fresh = (has_oi & has_bar & (d - map_ms <= config.max_oi_age_minutes * MINUTE_MS)
             & (d - bar_avail <= config.max_price_age_minutes * MINUTE_MS))
    price = s.close[bar_i] if s.close.size else np.full(d.size, np.nan)
    return has_oi, has_bar, oi_i, map_ms, fresh, price


def feature_columns(usable: pl.Expr) -> list[pl.Expr]:
    """The feature columns from price, cluster_price, cluster_usd, atr, d_ms and map_ms (NULL unless `usable`)."""
    return [pl.when(usable & (pl.col("atr") > 0))
            .then((pl.col("price") - pl.col("cluster_price")).abs() / pl.col("atr"))
            .alias("distance_to_liq_cluster"),
            pl.when(usable).then(pl.col("cluster_price")).alias("liq_cluster_price"),
            pl.when(usable).then(pl.col("cluster_usd")).alias("liq_cluster_notional_usd"),
            _from_ms("map_ms").alias("liq_map_time"),
            ((pl.col("d_ms") - pl.col("map_ms")) / MINUTE_MS).alias("liq_map_age_minutes")]


def _symbol_features(d: np.ndarray, want_long: np.ndarray, s: _Series, o: _Openings, config: LiqMapConfig
                     ) -> pl.DataFrame:
    """Per trade of one symbol, row for row: d_ms, price, OI, map time, freshness, and the nearest
    cluster's price and notional (NULL when none)."""
    has_oi, has_bar, oi_i, map_ms, fresh, price = _known_at(d, s, config)
    cluster_price, cluster_usd = _nearest_clusters(d, s.log_scale[oi_i], s.oi[oi_i], fresh, want_long, o, config)
    return pl.DataFrame({
        "d_ms": d, "price": np.where(has_bar, price, np.nan),
        "map_ms": map_ms, "has_oi": has_oi, "fresh": fresh,
        "cluster_price": cluster_price, "cluster_usd": cluster_usd,
    }).with_columns(pl.col("price", "cluster_price", "cluster_usd").fill_nan(None),
                    pl.when("has_oi").then(pl.col("map_ms")).alias("map_ms")).drop("has_oi")


@dataclass(frozen=True)
class _Trades:
    """The fresh trades of one side of one symbol, in time order."""

    rows: np.ndarray       # index into the symbol's trades
    d: np.ndarray          # decision time, ms
    log_scale: np.ndarray  # series log_scale of the OI row known at d
    oi: np.ndarray         # that row's OI (base units)


@dataclass(frozen=True)
class _BinIndex:
    """One side's (entry, tier) groups sorted by (bin, entry, tier): the groups of a bin are contiguous."""

    side: int
    bin0: int
    n_bins: int
    key: np.ndarray     # ((bin - bin0) * entries + entry) * tiers + tier, sorted
    entry: np.ndarray   # of each key
    tier: np.ndarray
    row_lo: np.ndarray  # per entry: its first row
    row_hi: np.ndarray  # per entry: one past its last row

    @classmethod
    def of(cls, o: _Openings, side: int) -> _BinIndex:
        bins = o.bin[side]
        n_entries, n_tiers = bins.shape
        bin0 = int(bins.min())
        n_bins = int(bins.max()) - bin0 + 1
        offset = (bins - bin0).ravel()
        # stable: (entry, tier) order kept within a bin; a radix sort when the bins fit 16 bits
        order = np.argsort(offset.astype(np.uint16) if n_bins <= 1 << 16 else offset, kind="stable")
        entry, tier = np.divmod(order, n_tiers)
        return cls(side, bin0, n_bins, (offset[order] * n_entries + entry) * n_tiers + tier, entry, tier,
                   o.entry_rows[:-1], o.entry_rows[1:])


def _nearest_clusters(d: np.ndarray, log_scale_d: np.ndarray, oi_d: np.ndarray, fresh: np.ndarray,
                      want_long: np.ndarray, o: _Openings, config: LiqMapConfig
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per trade: the notional-weighted liquidation price and USD notional of the nearest cluster bin
    on the trade's side as of d (NaN when none or not fresh).

    Nothing of size trades x positions or trades x bins is built. A side's trades are taken in time
    order, in blocks of at most _SCREEN_CELLS trade-bin cells. A block's map at each of its trades
    is screened with running totals (as `_snapshots` does: positions enter and leave as difference
    arrays), grouping the positions of an entry bar and tier that enter and leave between the same
    trades. Then the candidate bins nearest the price are summed exactly, position by position in
    position order, until one reaches the threshold: the same sums, in the same order, as summing
    every bin of every trade.
    """
    price = np.full(d.size, np.nan)
    usd = np.full(d.size, np.nan)
    if o.start.size == 0:
        return price, usd
    for side, want in ((0, True), (1, False)):
        rows = np.nonzero(fresh & (want_long == want))[0]
        if rows.size == 0 or o.share[side] == 0:
            continue
        rows = rows[np.argsort(d[rows], kind="stable")]
        tr = _Trades(rows, d[rows], log_scale_d[rows], oi_d[rows])
        index = _BinIndex.of(o, side)
        k_start = _count_before(tr.d, o.start)  # alive at trade k iff k_start <= k < k_end
        k_expiry = _count_before(tr.d, o.start + o.expiry_ms)
        k_liq = np.searchsorted(tr.d, o.liq_time[side], side="left")
        for c0, c1 in _blocks(tr.log_scale, max(1, _SCREEN_CELLS // index.n_bins)):
            r0 = np.searchsorted(o.start, tr.d[c0] - o.expiry_ms, side="right")
            r1 = np.searchsorted(o.start, tr.d[c1 - 1], side="right")
            if r1 <= r0:
                continue
            candidate = _screen(o, index, tr, c0, c1, slice(r0, r1), k_start[r0:r1], k_expiry[r0:r1], k_liq,
                                config)
            block = _Trades(tr.rows[c0:c1], tr.d[c0:c1], tr.log_scale[c0:c1], tr.oi[c0:c1])
            found, price_k, usd_k = _confirm(block, candidate, o, index, config)
            price[block.rows[found]], usd[block.rows[found]] = price_k, usd_k
    return price, usd


def _count_before(sorted_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """np.searchsorted(sorted_times, times, side="left") for sorted `times`, by counting (no search)."""
    cut = np.searchsorted(times, sorted_times, side="right")
    return np.repeat(np.arange(sorted_times.size + 1), np.diff(cut, prepend=0, append=times.size))


def _blocks(log_scale: np.ndarray, max_trades: int) -> list[tuple[int, int]]:
    """Consecutive [c0, c1) of at most max_trades trades whose survival factors span <= _MAX_LOG_SPAN."""
    out, c0, n = [], 0, log_scale.size
    while c0 < n:
        c1 = min(n, c0 + max_trades)
        # log_scale never increases in time: the first trade past the span ends the block
        c1 = min(c1, max(c0 + 1, int(np.searchsorted(-log_scale[c0:c1], _MAX_LOG_SPAN - log_scale[c0],
                                                      side="right")) + c0))
        out.append((c0, c1))
        c0 = c1
    return out


def _screen(o: _Openings, index: _BinIndex, tr: _Trades, c0: int, c1: int, rows: slice, k_start: np.ndarray,
            k_expiry: np.ndarray, k_liq: np.ndarray, config: LiqMapConfig) -> np.ndarray:
    """(trades c0..c1) x bins: whether the bin may hold a cluster at the trade (a superset of those that do)."""
    kc, n_bins, side = c1 - c0, index.n_bins, index.side
    ks = np.clip(k_start, c0, c1) - c0
    kx = np.clip(k_expiry, c0, c1) - c0
    entry = o.entry[rows]
    # rows of one entry bar that enter and expire between the same trades act as one
    first = np.nonzero(np.concatenate([[True], (entry[1:] != entry[:-1]) | (ks[1:] != ks[:-1])
                                       | (kx[1:] != kx[:-1])]))[0]
    ref = tr.log_scale[c0]
    scaled = np.add.reduceat(o.d_oi[rows] * np.exp(ref - o.log_scale[rows]), first)
    entry, ks, kx = entry[first], ks[first], kx[first]
    ke = np.minimum(np.clip(k_liq[entry], c0, c1) - c0, kx[:, None])
    b = o.bin[side][entry] - index.bin0
    u = (scaled[:, None] * (o.share[side] * o.weight)[None, :]).ravel()
    flat_s = (ks[:, None] * n_bins + b).ravel()
    flat_e = (ke * n_bins + b).ravel()
    size = (kc + 1) * n_bins
    # groups alive per (trade, bin): exact integers, so a bin whose positions all left is no candidate
    alive = np.cumsum((np.bincount(flat_s, minlength=size) - np.bincount(flat_e, minlength=size))
                      .reshape(kc + 1, n_bins)[:kc], axis=0, dtype=np.int32)
    candidate = alive > 0
    if config.cluster_quantile is None:
        added = np.bincount(flat_s, u, size)
        level = (added - np.bincount(flat_e, u, size)).reshape(kc + 1, n_bins)[:kc]
        np.cumsum(level, axis=0, out=level)
        gross = added.reshape(kc + 1, n_bins)[:kc]
        np.cumsum(gross, axis=0, out=gross)
        # level * scale >= thr - slack * gross * scale, with scale = exp(log_scale - ref) > 0
        gross *= -_SCREEN_SLACK
        gross += (config.cluster_min_share_of_oi * tr.oi[c0:c1] / np.exp(tr.log_scale[c0:c1] - ref))[:, None]
        candidate &= level >= gross
    return candidate


def _confirm(tr: _Trades, candidate: np.ndarray, o: _Openings, index: _BinIndex, config: LiqMapConfig
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact sums of candidate bins, nearest the price first (longs: highest bin, shorts: lowest):
    (indices into tr with a cluster, its price, its USD notional)."""
    if config.cluster_quantile is not None:
        # a quantile over all of a trade's bins needs every bin summed exactly
        k, col = np.nonzero(candidate)
        base, usd, n = _exact_bins(tr.d[k], tr.log_scale[k], col, o, index)
        per_bin = pl.DataFrame({"row": k, "bin": col, "base": base, "usd": usd}).filter(pl.Series(n > 0))
        trades = pl.DataFrame({"row": np.arange(tr.rows.size), "direction": "BEARISH" if index.side == 0
                               else "BULLISH", "oi_now": tr.oi})
        picked = _pick_clusters(per_bin, trades, config)
        return picked["row"].to_numpy(), picked["cluster_price"].to_numpy(), picked["cluster_usd"].to_numpy()
    thr = config.cluster_min_share_of_oi * tr.oi
    out_k, out_price, out_usd = [], [], []
    pending = np.nonzero(candidate.any(axis=1))[0]
    n_bins = candidate.shape[1]
    while pending.size:
        cand = candidate[pending]
        col = (n_bins - 1 - np.argmax(cand[:, ::-1], axis=1)) if index.side == 0 else np.argmax(cand, axis=1)
        base, usd, n = _exact_bins(tr.d[pending], tr.log_scale[pending], col, o, index)
        ok = (n > 0) & (base >= thr[pending])
        out_k.append(pending[ok])
        out_price.append(usd[ok] / base[ok])
        out_usd.append(usd[ok])
        pending, col = pending[~ok], col[~ok]
        candidate[pending, col] = False
        pending = pending[candidate[pending].any(axis=1)]
    if not out_k:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
    return np.concatenate(out_k), np.concatenate(out_price), np.concatenate(out_usd)


def _exact_bins(d: np.ndarray, log_scale_d: np.ndarray, col: np.ndarray, o: _Openings, index: _BinIndex
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query (decision d, bin bin0 + col): base-unit and USD sums of the side's positions
    alive at d in the bin, each scaled by the OI decreases between its opening and d, and their
    count. Summed in position order by np.add.reduceat (pairwise): the same floating-point sums
    whatever else is computed alongside."""
    side, n_entries, n_tiers = index.side, o.bin.shape[1], o.bin.shape[2]
    r_lo = np.searchsorted(o.start, d - o.expiry_ms, side="right")
    r_hi = np.searchsorted(o.start, d, side="right")
    e_lo = o.entry[np.minimum(r_lo, o.entry.size - 1)]
    e_hi = np.where(r_hi > r_lo, o.entry[np.maximum(r_hi - 1, 0)] + 1, e_lo)
    g_lo = np.searchsorted(index.key, (col * n_entries + e_lo) * n_tiers, side="left")
    g_hi = np.searchsorted(index.key, (col * n_entries + e_hi) * n_tiers, side="left")
    base, usd, count = np.zeros(d.size), np.zeros(d.size), np.zeros(d.size, dtype=np.int64)
    # at most this many rows per group: bounds a chunk's pairs before they are listed
    per_group = max(1, int((index.row_hi - index.row_lo).max()))
    budget = np.cumsum((g_hi - g_lo) * per_group)
    q0 = 0
    while q0 < d.size:
        done = budget[q0 - 1] if q0 else 0
        q1 = max(q0 + 1, int(np.searchsorted(budget, done + _PAIR_BUDGET, side="right")))
        q, g, _ = _expand(np.arange(q0, q1), g_lo[q0:q1], g_hi[q0:q1])
        entry, tier = index.entry[g], index.tier[g]
        # a row opened in (d - expiry, d] is alive at d until its group's level is traded through
        alive = o.liq_time[side, entry, tier] > d[q]
        q, entry, tier = q[alive], entry[alive], tier[alive]
        # tiers of one entry bar in one bin interleave by row: sort those into position order
        interleaved = bool(np.any((q[1:] == q[:-1]) & (entry[1:] == entry[:-1])))
        q, r, n = _expand(q, np.maximum(index.row_lo[entry], r_lo[q]), np.minimum(index.row_hi[entry], r_hi[q]))
        tier, entry = np.repeat(tier, n), np.repeat(entry, n)
        amount = (o.d_oi[r] * o.share[side]) * o.weight[tier]
        positive = amount > 0
        q, r, tier, entry, amount = q[positive], r[positive], tier[positive], entry[positive], amount[positive]
        if q.size:
            if interleaved:
                order = np.lexsort((tier, r, q))
                q, r, tier, entry, amount = q[order], r[order], tier[order], entry[order], amount[order]
            value = amount * np.exp(log_scale_d[q] - o.log_scale[r])
            first = np.nonzero(np.concatenate([[True], q[1:] != q[:-1]]))[0]
            base[q[first]] = np.add.reduceat(value, first)
            usd[q[first]] = np.add.reduceat(value * o.liq_price[side, entry, tier], first)
            count[q[first]] = np.diff(np.append(first, q.size))
        q0 = q1
    return base, usd, count


def _expand(owner: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The integers lo[i]..hi[i]-1 for each i, flat: (owner[i] of each, the integers, counts per i)."""
    n = np.maximum(hi - lo, 0)
    return np.repeat(owner, n), np.arange(int(n.sum())) + np.repeat(lo - (np.cumsum(n) - n), n), n


def _pick_clusters(per_bin: pl.DataFrame, trades: pl.DataFrame, config: LiqMapConfig) -> pl.DataFrame:
    """Of each trade's bins (row, bin, base, usd), the nearest cluster: row, cluster_price, cluster_usd."""
    bins = per_bin.join(trades.select("row", "direction", "oi_now"), on="row")
    is_cluster = pl.lit(True)
    if config.cluster_min_share_of_oi is not None:
        is_cluster &= pl.col("base") >= config.cluster_min_share_of_oi * pl.col("oi_now")
    if config.cluster_quantile is not None:
        is_cluster &= pl.col("base") >= pl.col("base").quantile(config.cluster_quantile, "linear").over("row")
    return (bins.filter(is_cluster)
            # notional-weighted mean liquidation price of the bin: below the price for longs, above for shorts
            .with_columns((pl.col("usd") / pl.col("base")).alias("cluster_price"))
            .with_columns(pl.when(pl.col("direction") == "BEARISH").then(-pl.col("cluster_price"))
                          .otherwise(pl.col("cluster_price")).alias("_order"))
            .sort("row", "_order")
            .group_by("row", maintain_order=True)
            .agg(pl.col("cluster_price").first(), pl.col("usd").first().alias("cluster_usd")))
