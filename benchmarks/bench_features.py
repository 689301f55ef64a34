"""Benchmark of build_trade_context_features on synthetic data (not a test).

    .venv/bin/python benchmarks/bench_features.py                 # 100k trades, 50 symbols, 4 years
    .venv/bin/python benchmarks/bench_features.py --trades 2000 --symbols 4 --years 0.5 --check
    .venv/bin/python benchmarks/bench_features.py --messy --skip-pandas   # 1% of OI rows out of order

Prints: wall time of the feature build, its peak RSS, the ratio to one bare DuckDB ASOF JOIN lookup
of OI at decision time on the same data, and the ratio to a pandas merge_asof implementation of the
same features. --check also compares the pandas result with the SQL result column by column.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from typing import Self

from qml_pipeline.features.point_in_time import (
    OI_LAG_CONSTANT_SQL,
    FeatureConfig,
    build_trade_context_features,
)

H, M, D = 3_600_000, 60_000, 86_400_000
START = "2021-01-01"
RUNS = 3


class PeakRSS:
    """Samples this process's RSS every 20 ms while active."""

    def __init__(self) -> None:
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self) -> Self:
        self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def generate(con: duckdb.DuckDBPyConnection, n_trades: int, n_symbols: int, years: float,
             messy: bool = False) -> None:
    n5 = int(years * 365 * 288)
    n1h = n5 // 12
    con.execute(f"""
        CREATE TABLE open_interest AS
        SELECT 'S' || lpad(s::VARCHAR, 3, '0') AS symbol,
               TIMESTAMPTZ '{START}' + to_minutes(5 * i) AS event_time, 5 AS period_minutes,
               CASE WHEN hash(s, i) % 2000 = 0 THEN 0.0
                    ELSE 1e5 * (1 + s) * (1.5 + sin(i / 5000.0 + s) * 0.4 + (hash(i, s) % 1000)::INTEGER / 1e5) END
                   AS open_interest,
               NULL::DOUBLE AS open_interest_value,
               TIMESTAMPTZ '{START}' + to_minutes(5 * i + 5)
                   + CASE WHEN {messy} AND hash(s, i, 3) % 100 = 0 THEN INTERVAL 7 MINUTE ELSE INTERVAL 0 MINUTE END
                   AS available_at
        FROM range({n_symbols}) a(s), range({n5}) b(i)
        WHERE hash(s, i, 7) % 500 <> 0                                     -- scattered gaps
    """)
    con.execute(f"""
        CREATE TABLE funding_rates AS
        WITH sym AS (SELECT s, CASE WHEN s % 10 = 1 THEN 4 WHEN s % 25 = 2 THEN 1 ELSE 8 END AS h
                     FROM range({n_symbols}) a(s))
        SELECT 'S' || lpad(s::VARCHAR, 3, '0') AS symbol, TIMESTAMPTZ '{START}' + to_hours(h * i) AS event_time,
               round(1e-4 + sin(i / 30.0 + s) * 2e-4 + ((hash(s, i) % 100)::INTEGER - 50) / 1e6, 6) AS funding_rate,
               h::SMALLINT AS funding_interval_hours,
               TIMESTAMPTZ '{START}' + to_hours(h * i) AS available_at
        FROM sym, range(({n1h} // h)::BIGINT) b(i)
    """)
    con.execute(f"""
        CREATE TABLE klines AS
        WITH b AS (SELECT s, i, 100 * (1 + s) * (1.5 + sin(i / 400.0 + s) * 0.4) AS c FROM range({n_symbols}) a(s), range({n1h}) b(i))
        SELECT 'S' || lpad(s::VARCHAR, 3, '0') AS symbol, '1h' AS interval,
               TIMESTAMPTZ '{START}' + to_hours(i) AS event_time, TIMESTAMPTZ '{START}' + to_hours(i + 1) AS close_time,
               c * 0.999 AS open, c * 1.004 AS high, c * 0.995 AS low, c AS close, 10.0 + i % 17 AS volume,
               TIMESTAMPTZ '{START}' + to_hours(i + 1) AS available_at
        FROM b
    """)
    span_ms = int(years * 365 * D) - 31 * D
    con.execute(f"""
        CREATE TABLE trades AS
        SELECT 'T' || lpad(i::VARCHAR, 7, '0') AS trade_id, 'S' || lpad((hash(i, 1) % {n_symbols})::VARCHAR, 3, '0') AS symbol,
               '1h' AS timeframe, CASE WHEN i % 2 = 0 THEN 'BULLISH' ELSE 'BEARISH' END AS direction,
               TIMESTAMPTZ '{START}' + INTERVAL 31 DAY + to_milliseconds((hash(i, 2) % {span_ms})::BIGINT) AS decision_time
        FROM range({n_trades}) t(i)
    """)


def bare_asof(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The yardstick: one column (OI known at decision time, by available_at) for every trade."""
    return con.sql("""
        SELECT t.trade_id, o.open_interest AS oi FROM trades t
        ASOF LEFT JOIN open_interest o ON o.symbol = t.symbol AND o.available_at <= t.decision_time
    """).pl()


# ------------------------------------------------------------------ pandas merge_asof version

def _dedup_known(df: pd.DataFrame, value: str, by: list[str]) -> pd.DataFrame:
    df = df.sort_values([*by, "event_time", "available_at", value], ascending=[True] * (len(by) + 2) + [False])
    df = df.drop_duplicates([*by, "event_time"], keep="first")
    rev = df.iloc[::-1]
    nxt = rev.groupby(by, sort=False)["available_at"].cummin().groupby([rev[b] for b in by]).shift(1).iloc[::-1]
    keep = nxt.isna() | (df["available_at"] < nxt)
    return df.assign(_all=True), df[keep.to_numpy()]


def _asof(trades: pd.DataFrame, right: pd.DataFrame, at: str, by: str | list[str]) -> pd.DataFrame:
    left = trades.assign(**{at: trades[at].astype("datetime64[ns, UTC]")}).sort_values(at)
    right = right.assign(available_at=right["available_at"].astype("datetime64[ns, UTC]"))
    out = pd.merge_asof(left, right.sort_values("available_at"), left_on=at, right_on="available_at",
                        by=by, direction="backward", allow_exact_matches=True)
    return out.set_index("trade_id")


def pandas_features(con: duckdb.DuckDBPyConnection, cfg: FeatureConfig) -> pd.DataFrame:
    tr = con.sql("SELECT trade_id, symbol, timeframe, decision_time FROM trades").df()
    fr = con.sql("SELECT symbol, event_time, funding_rate, funding_interval_hours, available_at "
                 "FROM funding_rates").df()
    oi = con.sql("SELECT symbol, event_time, period_minutes, open_interest, available_at FROM open_interest "
                 "WHERE open_interest > 0").df()
    kl = con.sql("SELECT symbol, interval, event_time, close_time, high, low, close, available_at FROM klines").df()
    out = tr.set_index("trade_id").sort_index()
    tr.set_index("trade_id")["decision_time"]

    # funding: value now and 8h ago, z-score from cumulative sums over 30 days
    fr_all, fr_known = _dedup_known(fr, "funding_rate", ["symbol"])
    fr_known = fr_known[["symbol", "event_time", "funding_rate", "funding_interval_hours", "available_at"]]
    for name, back in (("now", pd.Timedelta(0)), ("8h", pd.Timedelta(hours=cfg.funding_change_hours))):
        q = tr.assign(at=tr["decision_time"] - back)[["trade_id", "symbol", "at"]]
        m = _asof(q, fr_known, "at", "symbol")
        age = (m["at"] - m["event_time"]) / pd.Timedelta(hours=1)
        rate = m["funding_rate"].where(age <= cfg.funding_stale_factor * m["funding_interval_hours"])
        out[f"funding_rate_{name}"], out[f"funding_event_{name}"], out[f"funding_age_{name}"] = rate, m["event_time"], age
        if name == "now":
            out["funding_interval_hours"] = m["funding_interval_hours"]
    cum = fr_all.drop(columns="_all").sort_values(["symbol", "available_at"])
    g = cum.groupby("symbol")["funding_rate"]
    cum = cum.assign(c_n=g.cumcount() + 1, c_s=g.cumsum(), c_q=(cum["funding_rate"] ** 2).groupby(cum["symbol"]).cumsum())
    cum = cum[["symbol", "available_at", "c_n", "c_s", "c_q"]]
    hi = _asof(tr[["trade_id", "symbol", "decision_time"]], cum, "decision_time", "symbol")
    lo = _asof(tr.assign(at=tr["decision_time"] - pd.Timedelta(days=cfg.funding_z_window_days))[["trade_id", "symbol", "at"]],
               cum, "at", "symbol")
    n = hi["c_n"].fillna(0) - lo["c_n"].fillna(0).reindex(hi.index)
    s = hi["c_s"].fillna(0) - lo["c_s"].fillna(0).reindex(hi.index)
    q2 = hi["c_q"].fillna(0) - lo["c_q"].fillna(0).reindex(hi.index)
    var = (q2 - s * s / n) / (n - 1)
    sd = np.sqrt(var.clip(lower=0))
    z = (out["funding_rate_now"] - s / n) / sd
    out["funding_rate_z30d"] = z.where((n >= cfg.funding_z_min_count) & (sd > 0))
    out["funding_rate_change_8h"] = out["funding_rate_now"] - out["funding_rate_8h"]

    # open interest: now, 24h and 7d ago; percentile among hourly snapshots
    _, oi_known = _dedup_known(oi, "open_interest", ["symbol"])
    oi_known = oi_known[["symbol", "event_time", "period_minutes", "open_interest", "available_at"]]

    def oi_at(q: pd.DataFrame) -> pd.DataFrame:
        m = _asof(q, oi_known, "at", "symbol")
        age = (m["at"] - m["event_time"]) / pd.Timedelta(minutes=1)
        limit = np.maximum(cfg.oi_stale_periods * m["period_minutes"], cfg.oi_stale_min_minutes)
        return m.assign(v=m["open_interest"].where(age <= limit), age=age)

    for name, back in (("now", pd.Timedelta(0)), ("24h", pd.Timedelta(hours=cfg.oi_change_short_hours)),
                       ("7d", pd.Timedelta(days=cfg.oi_change_long_days))):
        m = oi_at(tr.assign(at=tr["decision_time"] - back)[["trade_id", "symbol", "at"]])
        out[f"oi_{name}"], out[f"oi_event_{name}"], out[f"oi_age_{name}"] = m["v"], m["event_time"], m["age"]
    out["oi_change_24h"] = (out["oi_now"] / out["oi_24h"] - 1) * 100
    out["oi_change_7d"] = (out["oi_now"] / out["oi_7d"] - 1) * 100
    pw = cfg.oi_percentile_window_days * 24
    pct = pd.Series(np.nan, index=out.index)
    for sym, trs in tr.groupby("symbol"):
        t_h = trs["decision_time"].astype("datetime64[ms, UTC]").astype("int64")
        first = ((t_h.min() - pw * H) // H + 1) * H
        hours = np.arange(first, t_h.max() + 1, H)
        grid = pd.DataFrame({"trade_id": np.arange(len(hours)).astype(str), "symbol": sym,
                             "at": pd.to_datetime(hours, unit="ms", utc=True)})
        snap = oi_at(grid).sort_values("at")["v"].to_numpy()
        padded = np.concatenate([np.full(pw - 1, np.nan), snap])
        idx = ((t_h.to_numpy() - first) // H)  # last grid hour <= t
        win = np.lib.stride_tricks.sliding_window_view(padded, pw)[idx]
        v0 = out.loc[trs["trade_id"], "oi_now"].to_numpy()
        valid = ~np.isnan(win)
        cnt = valid.sum(axis=1)
        le = (win <= v0[:, None]).sum(axis=1)
        p = np.where((cnt >= cfg.oi_percentile_min_points) & ~np.isnan(v0), 100.0 * le / np.maximum(cnt, 1), np.nan)
        pct.loc[trs["trade_id"].to_numpy()] = p
    out["oi_percentile_30d"] = pct

    # ATR(14) over the trade's timeframe
    kl_all, _ = _dedup_known(kl, "close", ["symbol", "interval"])
    kl_all = kl_all.drop(columns="_all").sort_values(["symbol", "interval", "event_time"])
    gk = kl_all.groupby(["symbol", "interval"], sort=False)
    prev = gk["close"].shift(1)
    kl_all["tr"] = np.maximum(kl_all["high"], prev) - np.minimum(kl_all["low"], prev)
    p = cfg.atr_period
    kl_all["atr"] = gk["tr"].rolling(p, min_periods=p).mean().reset_index(level=[0, 1], drop=True)
    kl_all["span"] = kl_all["event_time"] - gk["event_time"].shift(p)
    kl_all["av_ns"] = kl_all["available_at"].astype("datetime64[ns, UTC]").astype("int64")
    kl_all["w_av"] = gk["av_ns"].rolling(p + 1, min_periods=1).max().reset_index(level=[0, 1], drop=True)
    _, kl_known = _dedup_known(kl_all, "close", ["symbol", "interval"])
    kl_known = kl_known.rename(columns={"interval": "timeframe"}).drop(columns="_all", errors="ignore")
    m = _asof(tr[["trade_id", "symbol", "timeframe", "decision_time"]],
              kl_known[["symbol", "timeframe", "event_time", "close_time", "close", "atr", "span", "w_av", "available_at"]],
              "decision_time", ["symbol", "timeframe"])
    step = pd.to_timedelta(m["timeframe"].map({"1h": H, "4h": 4 * H}), unit="ms")
    fresh = (m["decision_time"] - m["close_time"]) <= cfg.atr_stale_bars * step
    ok = fresh & (m["span"] == p * step) & (m["w_av"] <= m["decision_time"].astype("int64"))
    out["atr"] = m["atr"].where(ok)
    out["last_close"] = m["close"].where(fresh)
    out["atr_pct"] = out["atr"] / out["last_close"] * 100
    return out.sort_index()


def check(sql: pl.DataFrame, pdf: pd.DataFrame) -> None:
    s = sql.to_pandas().set_index("trade_id").sort_index()
    pairs = {"funding_rate": "funding_rate_now", "funding_rate_change_8h": "funding_rate_change_8h",
             "funding_rate_z30d": "funding_rate_z30d", "oi": "oi_now", "oi_change_24h": "oi_change_24h",
             "oi_change_7d": "oi_change_7d", "oi_percentile_30d": "oi_percentile_30d", "atr": "atr",
             "atr_pct": "atr_pct"}
    for a, b in pairs.items():
        x, y = s[a].astype(float).to_numpy(), pdf[b].astype(float).to_numpy()
        same = np.isclose(x, y, rtol=1e-6, atol=1e-9, equal_nan=True)
        print(f"  check {a:24s} mismatches: {(~same).sum()} of {len(x)} (NULL sql {np.isnan(x).sum()}, pandas {np.isnan(y).sum()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trades", type=int, default=100_000)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--years", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="3GB", help="DuckDB memory_limit (it spills beyond it)")
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--messy", action="store_true",
                    help="publish 1%% of OI rows 7 min late (out of order)")
    ap.add_argument("--check", action="store_true", help="compare the pandas result with the SQL result")
    args = ap.parse_args()

    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}; SET preserve_insertion_order = false; SET TimeZone = 'UTC'; "
                f"SET memory_limit = '{args.memory_limit}'")
    t0 = time.perf_counter()
    generate(con, args.trades, args.symbols, args.years, args.messy)
    sizes = {n: con.sql(f"SELECT count(*) FROM {n}").fetchall()[0][0]
             for n in ("trades", "open_interest", "funding_rates", "klines")}
    lag_constant = con.sql(OI_LAG_CONSTANT_SQL).fetchall()[0][0]
    print(f"OI publication lag constant per symbol: {'yes' if lag_constant else 'no (out-of-order rows)'}")
    print(f"data: {sizes} generated in {time.perf_counter() - t0:.1f} s")
    gc.collect()
    base_rss = psutil.Process().memory_info().rss

    cfg = FeatureConfig()
    bare_times, wall_times = [], []
    with PeakRSS() as mem:
        for _ in range(RUNS):  # interleaved, best of RUNS each: the machine is shared and noisy
            t0 = time.perf_counter()
            bare_asof(con)
            bare_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            feats = build_trade_context_features(con, cfg)
            wall_times.append(time.perf_counter() - t0)
    bare, wall = min(bare_times), min(wall_times)
    nulls = {c: feats[c].null_count() for c in ("funding_rate_z30d", "oi", "oi_change_24h", "oi_change_7d",
                                               "oi_percentile_30d", "atr")}
    print(f"features: {feats.height} rows x {feats.width} columns; NULLs {nulls}")
    print(f"wall time (whole feature table, best of {RUNS}): {wall:.2f} s (runs: {', '.join(f'{w:.2f}' for w in wall_times)})")
    print(f"peak RSS during the builds: {mem.peak / 2**30:.2f} GiB (process RSS before: {base_rss / 2**30:.2f} GiB; "
          f"goal < 4 GiB)")
    print(f"bare DuckDB ASOF JOIN (OI at decision time, best of {RUNS}): {bare:.2f} s "
          f"(runs: {', '.join(f'{b:.2f}' for b in bare_times)}); "
          f"ratio whole/bare = {wall / bare:.2f}x (goal <= 5x)")
    if not args.skip_pandas:
        t0 = time.perf_counter()
        pdf = pandas_features(con, cfg)
        pwall = time.perf_counter() - t0
        print(f"pandas merge_asof implementation: {pwall:.2f} s; DuckDB is {pwall / wall:.2f}x faster (goal >= 3x)")
        if args.check:
            check(feats, pdf)
    print(f"process max RSS (getrusage, whole run incl. data generation and pandas): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
