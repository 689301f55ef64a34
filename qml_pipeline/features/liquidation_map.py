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

from qml_pipeline.store.schemas import LIQUIDATION_MAP, TS
from qml_pipeline.timeutil import interval_ms

FEATURE_SCHEMA = pl.Schema({
    "trade_id": pl.Utf8,
    "distance_to_liq_cluster": pl.Float64,
    "liq_cluster_price": pl.Float64,
    "liq_cluster_notional_usd": pl.Float64,
    "liq_map_time": TS,
    "liq_map_age_minutes": pl.Float64,
})

_MINUTE_MS = 60_000
_DAY_MS = 86_400_000
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


def _ms(col: str) -> pl.Expr:
    return pl.col(col).cast(TS).dt.epoch("ms")


def _from_ms(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Int64).cast(TS)


def _latest_known(frame: pl.DataFrame, stamp: str) -> pl.DataFrame:
    """Drop rows published no earlier than some later-stamped row of the same symbol.

    "The value known at t" is the row with the latest stamp among rows with available_at <= t
    (features.py), so such a row is never the newest at any time. The rows left have strictly
    increasing available_at in stamp order: a search on available_at finds the value known at t.
    """
    later_min = pl.col("avail").cum_min(reverse=True).shift(-1).over("symbol")
    return (frame.sort("symbol", stamp)
            .filter(later_min.is_null() | (pl.col("avail") < later_min)))


def _prepare_oi(oi: pl.DataFrame) -> pl.DataFrame:
    """One row per (symbol, event_time), by the open-interest rule of features.py.

    OI <= 0 (or missing) is a hole in the data, never a real zero: dropped first. Of the copies of
    one stamp the earliest published wins, then the largest value (then the largest period_minutes),
    so a later re-publication never replaces what a trader saw. Without event_time, available_at is
    the stamp.
    """
    need = {"symbol", "available_at", "open_interest"}
    if missing := need - set(oi.columns):
        raise ValueError(f"open interest frame lacks columns {sorted(missing)}; got {oi.columns}")
    stamp = _ms("event_time") if "event_time" in oi.columns else _ms("available_at")
    period = pl.col("period_minutes") if "period_minutes" in oi.columns else pl.lit(0)
    rows = (oi.select("symbol", stamp.alias("stamp"), _ms("available_at").alias("avail"),
                      pl.col("open_interest").cast(pl.Float64), period.alias("period"))
            .filter(pl.col("open_interest").is_not_null() & (pl.col("open_interest") > 0)
                    & pl.col("stamp").is_not_null() & pl.col("avail").is_not_null())
            .sort(["symbol", "stamp", "avail", "open_interest", "period"],
                  descending=[False, False, False, True, True], nulls_last=True)
            .unique(["symbol", "stamp"], keep="first", maintain_order=True))
    return _latest_known(rows, "stamp").select("symbol", "avail", "open_interest")


def _prepare_bars(klines: pl.DataFrame, config: LiqMapConfig) -> pl.DataFrame:
    """One row per bar (symbol, event_time) of `price_interval`, by the kline rule of features.py.

    A bar is known at its available_at (close_time if the frame has no available_at). Of the copies
    of one bar the earliest published wins, then the larger close, high, low, open, close_time,
    volume; a bar published no earlier than a later bar is dropped (`_latest_known`).
    """
    need = {"symbol", "event_time", "high", "low", "close"}
    if missing := need - set(klines.columns):
        raise ValueError(f"klines frame lacks columns {sorted(missing)}; got {klines.columns}")
    bars = klines
    if "interval" in bars.columns:
        bars = bars.filter(pl.col("interval") == config.price_interval)
    step = interval_ms(config.price_interval)
    close_ms = _ms("close_time") if "close_time" in bars.columns else _ms("event_time") + step
    avail = _ms("available_at") if "available_at" in bars.columns else close_ms
    ties = [c for c in ("close", "high", "low", "open", "close_time", "volume") if c in bars.columns]
    rows = (bars.select("symbol", _ms("event_time").alias("ev"), avail.alias("avail"), *ties)
            .filter(pl.col("ev").is_not_null() & pl.col("avail").is_not_null())
            .sort(["symbol", "ev", "avail", *ties], descending=[False, False, False] + [True] * len(ties),
                  nulls_last=True)
            .unique(["symbol", "ev"], keep="first", maintain_order=True))
    return _latest_known(rows, "ev").select("symbol", "avail", "high", "low", "close")


def _series(oi: pl.DataFrame, bars: pl.DataFrame) -> _Series:
    oi_v = oi["open_interest"].to_numpy()
    prev = np.concatenate([[oi_v[0]], oi_v[:-1]]) if oi_v.size else oi_v
    # dOI < 0 closes that fraction of every open position (each contract equally likely to close).
    frac_closed = np.where(oi_v < prev, (prev - oi_v) / prev, 0.0)
    return _Series(
        oi_avail=oi["avail"].to_numpy(), oi=oi_v, log_scale=np.cumsum(np.log1p(-frac_closed)),
        bar_avail=bars["avail"].to_numpy(), high=bars["high"].to_numpy(), low=bars["low"].to_numpy(),
        close=bars["close"].to_numpy())


def _first_cross(values: np.ndarray, first: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """For each i: the smallest j >= first[i] with values[j] <= threshold[i], else len(values).

    Binary lifting over a sparse table of running minima: O((n + m) log n), all vectorised.
    """
    n = values.size
    pos = first.astype(np.int64).copy()
    if n == 0:
        return pos
    levels = [values]
    while (1 << len(levels)) <= n:
        prev, half = levels[-1], 1 << (len(levels) - 1)
        levels.append(np.minimum(prev[:-half], prev[half:]))
    for k in range(len(levels) - 1, -1, -1):
        table, width = levels[k], 1 << k
        ok = pos + width <= n
        idx = np.where(ok, pos, 0)
        jump = ok & (table[np.minimum(idx, table.size - 1)] > threshold)
        pos = np.where(jump, pos + width, pos)
    return np.minimum(pos, n)


def _positions(s: _Series, config: LiqMapConfig) -> _Positions:
    n_oi = s.oi.size
    d_oi = np.diff(s.oi, prepend=s.oi[:1]) if n_oi else s.oi
    entry_bar = np.searchsorted(s.bar_avail, s.oi_avail, side="right") - 1
    has_bar = entry_bar >= 0
    bar_age = s.oi_avail - s.bar_avail[np.maximum(entry_bar, 0)] if s.bar_avail.size else np.zeros(n_oi)
    # The first row has no previous OI to differ from: positions opened before the series are unknown.
    usable = has_bar & (d_oi > 0) & (bar_age <= config.max_price_age_minutes * _MINUTE_MS)
    rows = np.nonzero(usable)[0]
    lev = np.asarray(config.leverage_tiers, dtype=float)
    w = np.asarray(config.leverage_weights, dtype=float)
    keep = w > 0
    lev, w = lev[keep], w[keep]
    n_t = lev.size
    mmr = config.maintenance_margin_rate

    row = np.repeat(rows, 2 * n_t)
    tier = np.tile(np.arange(n_t), 2 * rows.size)
    is_long = np.tile(np.repeat([True, False], n_t), rows.size)
    price = s.close[entry_bar[row]]
    liq = np.where(is_long, price * (1 - 1 / lev[tier] + mmr), price * (1 + 1 / lev[tier] - mmr))
    amount = d_oi[row] * np.where(is_long, config.long_share, 1 - config.long_share) * w[tier]
    nz = amount > 0
    row, is_long, liq, amount = row[nz], is_long[nz], liq[nz], amount[nz]

    first = entry_bar[row] + 1
    cross = np.empty(row.size, dtype=np.int64)
    cross[is_long] = _first_cross(s.low, first[is_long], liq[is_long])
    cross[~is_long] = _first_cross(-s.high, first[~is_long], -liq[~is_long])
    n_bars = s.bar_avail.size
    liq_time = np.where(cross < n_bars, s.bar_avail[np.minimum(cross, n_bars - 1)], _NEVER)
    start = s.oi_avail[row]
    end = np.minimum(liq_time, start + int(config.expiry_days * _DAY_MS))
    return _Positions(start=start, end=end, is_long=is_long, liq_price=liq, amount=amount,
                      log_scale=s.log_scale[row], bin=config.bin_index(liq))


def _symbol_inputs(oi: pl.DataFrame, klines: pl.DataFrame, config: LiqMapConfig
                   ) -> dict[str, tuple[_Series, _Positions]]:
    oi_p, bars_p = _prepare_oi(oi), _prepare_bars(klines, config)
    out = {}
    for (symbol,), oi_sym in oi_p.group_by(["symbol"], maintain_order=True):
        bars_sym = bars_p.filter(pl.col("symbol") == symbol)
        s = _series(oi_sym, bars_sym)
        out[symbol] = (s, _positions(s, config))
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
    cadence = config.snapshot_every_minutes * _MINUTE_MS
    max_oi_age = config.max_oi_age_minutes * _MINUTE_MS
    first_k = -(-int(p.start.min()) // cadence)
    last_k = (int(s.oi_avail[-1]) + int(max_oi_age)) // cadence
    grid = np.arange(first_k, last_k + 1, dtype=np.int64) * cadence
    if grid.size == 0:
        return pl.DataFrame(schema=LIQUIDATION_MAP.polars_schema)

    oi_idx = np.searchsorted(s.oi_avail, grid, side="right") - 1
    bar_idx = np.searchsorted(s.bar_avail, grid, side="right") - 1
    fresh = ((oi_idx >= 0) & (bar_idx >= 0)
             & (grid - s.oi_avail[np.maximum(oi_idx, 0)] <= max_oi_age)
             & (grid - s.bar_avail[np.maximum(bar_idx, 0)] <= config.max_price_age_minutes * _MINUTE_MS))
    log_scale_k = s.log_scale[np.maximum(oi_idx, 0)]
    oi_k = s.oi[np.maximum(oi_idx, 0)]

    k_start = np.searchsorted(grid, p.start, side="left")
    k_end = np.searchsorted(grid, p.end, side="left")
    block = max(1, _BLOCK_DAYS * _DAY_MS // cadence)
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

def liq_features_for_trades(trades: pl.DataFrame, oi: pl.DataFrame, klines: pl.DataFrame,
                            atr: pl.DataFrame, config: LiqMapConfig | None = None) -> pl.DataFrame:
    """Per trade: the nearest estimated liquidation cluster in the trade's direction, as of decision_time.

    `trades`: trade_id, symbol, direction ('BULLISH' | 'BEARISH'), decision_time. `atr`: trade_id,
    atr (USDT, the ATR known at decision_time). The map is evaluated at exactly decision_time (not the
    previous snapshot). BEARISH looks for long-liquidation clusters below the price (forced selling
    that fuels a drop); BULLISH for short-liquidation clusters above it (forced buying that fuels a
    squeeze). Columns: `FEATURE_SCHEMA`; feature values are NULL when no cluster lies in that
    direction, when the newest OI row is older than `max_oi_age_minutes` or the price older than
    `max_price_age_minutes` (liq_map_time and liq_map_age_minutes are kept so staleness is visible).
    """
    config = config or LiqMapConfig()
    need = {"trade_id", "symbol", "direction", "decision_time"}
    if missing := need - set(trades.columns):
        raise ValueError(f"trades frame lacks columns {sorted(missing)}; got {trades.columns}")
    direction = pl.col("direction").cast(pl.Utf8).str.to_uppercase()
    bad = trades.filter(~direction.is_in(["BULLISH", "BEARISH"]) | direction.is_null())
    if bad.height:
        raise ValueError(f"direction must be BULLISH or BEARISH; trade {bad['trade_id'][0]!r} has "
                         f"{bad['direction'][0]!r}")
    t = trades.select(pl.col("trade_id").cast(pl.Utf8), "symbol", direction.alias("direction"),
                      _ms("decision_time").alias("d_ms")).with_row_index("row")
    atr_df = atr.select(pl.col("trade_id").cast(pl.Utf8), pl.col("atr").cast(pl.Float64))

    inputs = _symbol_inputs(oi, klines, config)
    heads, per_bins = [], []
    for (symbol,), ts in t.group_by(["symbol"], maintain_order=True):
        if symbol not in inputs:
            continue
        head, per_bin = _trade_maps(ts, *inputs[symbol], config)
        heads.append(head)
        per_bins.append(per_bin)

    base = t.join(atr_df, on="trade_id", how="left")
    if heads:
        base = base.join(pl.concat(heads), on="row", how="left")
        clusters = _nearest_clusters(pl.concat(per_bins), base, config)
        base = base.join(clusters, on="row", how="left")
    else:
        base = base.with_columns(pl.lit(None, pl.Float64).alias(c) for c in
                                 ("price", "oi_now", "cluster_price", "cluster_usd")).with_columns(
            pl.lit(None, pl.Int64).alias("map_ms"), pl.lit(None, pl.Boolean).alias("fresh"))
    usable = pl.col("fresh").fill_null(False)
    return base.sort("row").select(
        "trade_id",
        pl.when(usable & (pl.col("atr") > 0))
        .then((pl.col("price") - pl.col("cluster_price")).abs() / pl.col("atr"))
        .alias("distance_to_liq_cluster"),
        pl.when(usable).then(pl.col("cluster_price")).alias("liq_cluster_price"),
        pl.when(usable).then(pl.col("cluster_usd")).alias("liq_cluster_notional_usd"),
        _from_ms("map_ms").alias("liq_map_time"),
        ((pl.col("d_ms") - pl.col("map_ms")) / _MINUTE_MS).alias("liq_map_age_minutes"),
    ).cast(dict(FEATURE_SCHEMA))


def _trade_maps(ts: pl.DataFrame, s: _Series, p: _Positions, config: LiqMapConfig
                ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per trade: price, OI, map time, freshness; per trade and bin on its side: alive amounts)."""
    d = ts["d_ms"].to_numpy()
    rows = ts["row"].to_numpy()
    oi_idx = np.searchsorted(s.oi_avail, d, side="right") - 1
    bar_idx = np.searchsorted(s.bar_avail, d, side="right") - 1
    has_oi, has_bar = oi_idx >= 0, bar_idx >= 0
    oi_i, bar_i = np.maximum(oi_idx, 0), np.maximum(bar_idx, 0)
    map_ms = np.where(has_oi, s.oi_avail[oi_i], 0)
    bar_avail = s.bar_avail[bar_i] if s.bar_avail.size else np.zeros(d.size, dtype=np.int64)
    fresh = (has_oi & has_bar & (d - map_ms <= config.max_oi_age_minutes * _MINUTE_MS)
             & (d - bar_avail <= config.max_price_age_minutes * _MINUTE_MS))
    price = s.close[bar_i] if s.close.size else np.full(d.size, np.nan)
    head = pl.DataFrame({
        "row": rows, "price": np.where(has_bar, price, np.nan),
        "oi_now": np.where(has_oi, s.oi[oi_i], np.nan),
        "map_ms": map_ms, "has_oi": has_oi, "fresh": fresh,
    }).with_columns(pl.col("price").fill_nan(None), pl.col("oi_now").fill_nan(None),
                    pl.when("has_oi").then(pl.col("map_ms")).alias("map_ms")).drop("has_oi")

    # positions possibly alive at d: start in (d - expiry, d] (they are sorted by start)
    lo = np.searchsorted(p.start, d - int(config.expiry_days * _DAY_MS), side="right")
    hi = np.searchsorted(p.start, d, side="right")
    hi = np.where(fresh, hi, lo)
    counts = hi - lo
    trade_of = np.repeat(np.arange(d.size), counts)
    offsets = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    pos = np.arange(trade_of.size) + offsets
    want_long = (ts["direction"] == "BEARISH").to_numpy()
    alive = (p.end[pos] > d[trade_of]) & (p.is_long[pos] == want_long[trade_of])
    trade_of, pos = trade_of[alive], pos[alive]
    amount = p.amount[pos] * np.exp(s.log_scale[oi_i[trade_of]] - p.log_scale[pos])
    # Sum per (trade, bin) sequentially in position order: a parallel group-by would sum in a varying
    # order, and the last-bit differences would break "the same inputs give the same feature".
    order = np.lexsort((pos, p.bin[pos], trade_of))
    trade_of, pos, amount = trade_of[order], pos[order], amount[order]
    bins = p.bin[pos]
    new_group = np.ones(trade_of.size, dtype=bool)
    new_group[1:] = (trade_of[1:] != trade_of[:-1]) | (bins[1:] != bins[:-1])
    first = np.nonzero(new_group)[0]
    per_bin = pl.DataFrame({
        "row": rows[trade_of[first]], "bin": bins[first],
        "base": np.add.reduceat(amount, first) if first.size else amount,
        "usd": np.add.reduceat(amount * p.liq_price[pos], first) if first.size else amount,
    })
    return head, per_bin


def _nearest_clusters(per_bin: pl.DataFrame, base: pl.DataFrame, config: LiqMapConfig) -> pl.DataFrame:
    bins = per_bin.join(base.select("row", "direction", "oi_now"), on="row")
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
