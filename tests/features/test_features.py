"""Point-in-time proofs for qml_pipeline.features.point_in_time: a slow pure-Python reference, future-row and
row-order invariance (hypothesis), the seed's worked example, staleness."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from datetime import datetime

import duckdb
import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qml_pipeline.features.point_in_time import (
    FeatureConfig,
    build_trade_context_features,
    feature_null_counts,
)
from qml_pipeline.store.schemas import TS
from qml_pipeline.timeutil import INTERVAL_MS, UTC, to_ms
from qml_pipeline.features.windows import build_ohlcv_windows, load_windows, save_windows

H, M, D = 3_600_000, 60_000, 86_400_000
T0 = to_ms(datetime(2024, 1, 1, tzinfo=UTC))
CFG = FeatureConfig(funding_z_window_days=2, funding_z_min_count=4, oi_change_long_days=2,
                    oi_percentile_window_days=2, oi_percentile_min_points=12)
TS_COLS = {"event_time", "available_at", "close_time", "decision_time"}


# ------------------------------------------------------------------ data

TEXT_COLS = {"symbol", "interval", "timeframe", "direction", "trade_id"}


def _frame(rows: list[dict], cols: list[str]) -> pl.DataFrame:
    data = {c: [r[c] for r in rows] for c in cols}
    types = {c: pl.Int64 if c in TS_COLS else pl.Utf8 if c in TEXT_COLS else pl.Float64 for c in cols}
    df = pl.DataFrame(data, schema_overrides=types, strict=False)
    return df.with_columns(pl.col(c).cast(TS) for c in cols if c in TS_COLS)


FUND_COLS = ["symbol", "event_time", "funding_rate", "funding_interval_hours", "available_at"]
OI_COLS = ["symbol", "event_time", "period_minutes", "open_interest", "available_at"]
KL_COLS = ["symbol", "interval", "event_time", "close_time", "open", "high", "low", "close", "volume",
           "available_at"]
TR_COLS = ["trade_id", "symbol", "timeframe", "direction", "decision_time"]


def connect(data: dict[str, list[dict]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, cols in (("funding_rates", FUND_COLS), ("open_interest", OI_COLS), ("klines", KL_COLS),
                       ("trades", TR_COLS)):
        df = _frame(data[name], cols)
        con.register(f"{name}_df", df)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_df")
    return con


def random_data(seed: int, n_trades: int = 10) -> dict[str, list[dict]]:
    rnd = random.Random(seed)
    span = 6 * D
    funding, oi, klines, trades = [], [], [], []
    # AAA: 8h funding switching to 4h; BBB: 1h; CCC: 8h with a day-long hole
    plans = {"AAA": [(0, 8), (3 * D, 4)], "BBB": [(0, 1)], "CCC": [(0, 8)]}
    for sym, plan in plans.items():
        for i, (start, hours) in enumerate(plan):
            end = plan[i + 1][0] if i + 1 < len(plan) else span
            for ev in range(T0 + start, T0 + end, hours * H):
                if rnd.random() < 0.1 or (sym == "CCC" and T0 + 2 * D <= ev < T0 + 3 * D):
                    continue
                for _ in range(2 if rnd.random() < 0.1 else 1):
                    funding.append({"symbol": sym, "event_time": ev, "funding_interval_hours": hours,
                                        "funding_rate": rnd.choice([0.0001, round(rnd.gauss(1e-4, 2e-4), 6)]),
                                        "available_at": ev + rnd.choice([0, 0, 0, 1000, 5 * M, 10 * H])})
    oi_periods = {"AAA": 15, "BBB": 60, "CCC": 15}
    for sym, period in oi_periods.items():
        level = 1000.0
        for ev in range(T0, T0 + span, period * M):
            if rnd.random() < 0.08 or (sym == "AAA" and T0 + 4 * D <= ev < T0 + 4 * D + 6 * H):
                continue
            level *= math.exp(rnd.gauss(0, 0.01))
            for _ in range(2 if rnd.random() < 0.05 else 1):
                value = 0.0 if rnd.random() < 0.05 else round(level * rnd.choice([1, 1, 1.01]), 3)
                lag = rnd.choice([0, 0, 0, M, 3 * H])
                oi.append({"symbol": sym, "event_time": ev, "period_minutes": period, "open_interest": value,
                               "available_at": ev + period * M + lag})
    for sym in plans:
        for interval in ("1h", "4h"):
            step, price = INTERVAL_MS[interval], 100.0
            for ev in range(T0, T0 + span, step):
                if rnd.random() < 0.04:
                    continue
                for _ in range(2 if rnd.random() < 0.03 else 1):
                    o = price
                    c = round(o * math.exp(rnd.gauss(0, 0.01)), 4)
                    hi, lo = max(o, c) * (1 + rnd.random() * 0.01), min(o, c) * (1 - rnd.random() * 0.01)
                    klines.append({"symbol": sym, "interval": interval, "event_time": ev, "close_time": ev + step,
                                       "open": o, "high": hi, "low": lo, "close": c, "volume": rnd.random() * 10,
                                       "available_at": ev + step + rnd.choice([0, 0, 0, 0, 2 * step])})
                price = c
    for i in range(n_trades):
        t = T0 + D + rnd.randrange(0, span - D)
        if rnd.random() < 0.3:
            t = t // H * H
        trades.append({"trade_id": f"t{i:03d}", "symbol": rnd.choice(list(plans)),
                           "timeframe": rnd.choice(["1h", "4h"]), "direction": rnd.choice(["BULLISH", "BEARISH"]),
                           "decision_time": t})
    return {"funding_rates": funding, "open_interest": oi, "klines": klines, "trades": trades}


# ------------------------------------------------------------------ reference (slow, obvious)

def _dedup(rows: list[dict], key: tuple[str, ...], prefer) -> list[dict]:
    best: dict[tuple, dict] = {}
    for r in rows:
        k = tuple(r[f] for f in key)
        if k not in best or prefer(r) < prefer(best[k]):
            best[k] = r
    return list(best.values())


def _latest_known(rows: list[dict], t: int) -> dict | None:
    known = [r for r in rows if r["available_at"] <= t]
    return max(known, key=lambda r: r["event_time"]) if known else None


def reference(data: dict[str, list[dict]], cfg: FeatureConfig) -> dict[str, dict]:
    fund = _dedup([r for r in data["funding_rates"] if r["funding_rate"] is not None], ("symbol", "event_time"),
                  lambda r: (r["available_at"], -r["funding_rate"], -r["funding_interval_hours"]))
    ois = _dedup([r for r in data["open_interest"] if r["open_interest"] and r["open_interest"] > 0],
                 ("symbol", "event_time"), lambda r: (r["available_at"], -r["open_interest"], -r["period_minutes"]))
    kls = _dedup(data["klines"], ("symbol", "interval", "event_time"),
                 lambda r: (r["available_at"], -r["close"], -r["high"], -r["low"], -r["open"]))

    def funding_at(sym: str, t: int):
        r = _latest_known([f for f in fund if f["symbol"] == sym], t)
        if r is None:
            return None, None, None, None
        age = (t - r["event_time"]) / H
        rate = r["funding_rate"] if age <= cfg.funding_stale_factor * r["funding_interval_hours"] else None
        return rate, r["event_time"], age, r["funding_interval_hours"]

    oi_cache: dict[tuple[str, int], tuple] = {}

    def oi_at(sym: str, t: int):
        if (sym, t) not in oi_cache:
            r = _latest_known([o for o in ois if o["symbol"] == sym], t)
            if r is None:
                oi_cache[sym, t] = (None, None, None, None)
            else:
                age = (t - r["event_time"]) / M
                limit = max(cfg.oi_stale_periods * r["period_minutes"], cfg.oi_stale_min_minutes)
                oi_cache[sym, t] = (r["open_interest"] if age <= limit else None, r["event_time"], age,
                                    r["period_minutes"])
        return oi_cache[sym, t]

    out = {}
    for tr in data["trades"]:
        sym, t = tr["symbol"], tr["decision_time"]
        row: dict = {"symbol": sym, "timeframe": tr["timeframe"], "direction": tr["direction"], "decision_time": t}
        rate, ev, age, ih = funding_at(sym, t)
        row.update(funding_rate=rate, funding_event_time=ev, funding_age_hours=age, funding_interval_hours=ih)
        zw = cfg.funding_z_window_days * D
        window = [f["funding_rate"] for f in fund if f["symbol"] == sym and t - zw < f["available_at"] <= t]
        row["funding_z30d_count"] = len(window)
        row["funding_rate_z30d"] = None
        if rate is not None and len(window) >= cfg.funding_z_min_count:
            sd = statistics.stdev(window)
            if sd > 0:
                row["funding_rate_z30d"] = (rate - statistics.mean(window)) / sd
        prate, pev, page, _ = funding_at(sym, t - cfg.funding_change_hours * H)
        row.update(funding_rate_change_8h=None if rate is None or prate is None else rate - prate,
                   funding_8h_event_time=pev, funding_8h_age_hours=page)
        v0, ev0, age0, p0 = oi_at(sym, t)
        row.update(oi=v0, oi_event_time=ev0, oi_age_minutes=age0, oi_period_minutes=p0)
        for name, back in (("24h", cfg.oi_change_short_hours * H), ("7d", cfg.oi_change_long_days * D)):
            v, e, a, _ = oi_at(sym, t - back)
            row[f"oi_change_{name}"] = None if v0 is None or v is None else (v0 / v - 1) * 100
            row[f"oi_{name}_event_time"], row[f"oi_{name}_age_minutes"] = e, a
        pw = cfg.oi_percentile_window_days * D
        row["oi_percentile_30d"], row["oi_percentile_points"] = None, 0
        if v0 is not None:
            hours = [h for h in range((t - pw) // H * H, t + 1, H) if t - pw < h <= t]
            snaps = [s for s in (oi_at(sym, h)[0] for h in hours) if s is not None]
            row["oi_percentile_points"] = len(snaps)
            if len(snaps) >= cfg.oi_percentile_min_points:
                row["oi_percentile_30d"] = 100.0 * sum(s <= v0 for s in snaps) / len(snaps)
        row.update(distance_to_liq_cluster=None, liq_cluster_size=None)
        step = INTERVAL_MS[tr["timeframe"]]
        bars = sorted((k for k in kls if k["symbol"] == sym and k["interval"] == tr["timeframe"]
                       and k["available_at"] <= t), key=lambda k: k["event_time"])
        row.update(atr=None, atr_pct=None, last_close=None, atr_bar_close_time=None, atr_age_minutes=None)
        if bars:
            last = bars[-1]
            row["atr_bar_close_time"] = last["close_time"]
            row["atr_age_minutes"] = (t - last["close_time"]) / M
            fresh = t - last["close_time"] <= cfg.atr_stale_bars * step
            row["last_close"] = last["close"] if fresh else None
            w = bars[-(cfg.atr_period + 1):]
            if fresh and len(w) == cfg.atr_period + 1 and w[-1]["event_time"] - w[0]["event_time"] == cfg.atr_period * step:
                trs = [max(b["high"], a["close"]) - min(b["low"], a["close"]) for a, b in itertools.pairwise(w)]
                row["atr"] = sum(trs) / len(trs)
                row["atr_pct"] = row["atr"] / last["close"] * 100
        out[tr["trade_id"]] = row
    return out


# ------------------------------------------------------------------ comparison helpers

def as_plain(df: pl.DataFrame) -> dict[str, dict]:
    ts_cols = [c for c, dt in df.schema.items() if isinstance(dt, pl.Datetime)]
    df = df.with_columns(pl.col(c).dt.epoch("ms") for c in ts_cols)
    return {r.pop("trade_id"): r for r in df.iter_rows(named=True)}


def assert_same(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert a.keys() == b.keys()
    for tid, row in a.items():
        for col, va in row.items():
            vb = b[tid][col]
            if isinstance(va, float) and isinstance(vb, (float, int)):
                assert math.isclose(va, vb, rel_tol=1e-7, abs_tol=1e-12), (tid, col, va, vb)
            else:
                assert va == vb, (tid, col, va, vb)


def features(data: dict[str, list[dict]], cfg: FeatureConfig = CFG) -> dict[str, dict]:
    return as_plain(build_trade_context_features(connect(data), cfg))


PROPS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ properties

@PROPS
@given(seed=st.integers(0, 2**32 - 1))
def test_matches_reference(seed: int) -> None:
    data = random_data(seed)
    got = features(data)
    assert_same(got, reference(data, CFG))
    assert len(got) == len(data["trades"])


@PROPS
@given(seed=st.integers(0, 2**32 - 1))
def test_row_order_does_not_matter(seed: int) -> None:
    data = random_data(seed)
    shuffled = {k: random.Random(seed + 1).sample(v, len(v)) for k, v in data.items()}
    assert_same(features(shuffled), features(data))


@PROPS
@given(seed=st.integers(0, 2**32 - 1), n_future=st.integers(1, 60))
def test_future_rows_never_change_a_trade(seed: int, n_future: int) -> None:
    data = random_data(seed, n_trades=6)
    rnd = random.Random(seed)
    victim = rnd.choice(data["trades"])
    t = victim["decision_time"]
    future = {k: list(v) for k, v in data.items()}
    for _ in range(n_future):
        # copies of existing rows (same or earlier stamps, other values) published after t
        src = rnd.choice(["funding_rates", "open_interest", "klines"])
        row = dict(rnd.choice(data[src]))
        row["available_at"] = t + rnd.randrange(1, 3 * D)
        if src == "funding_rates":
            row["funding_rate"] = round(rnd.uniform(-0.003, 0.003), 6)
        elif src == "open_interest":
            row["open_interest"] = rnd.choice([0.0, rnd.uniform(1, 5000)])
            row["event_time"] = rnd.choice([row["event_time"], t, t - 5 * M, t + H])
            row["available_at"] = max(row["available_at"], row["event_time"] + 1)
        else:
            row["close"] = row["close"] * 1.5
            row["high"] = max(row["high"], row["close"])
        future[src].append(row)
    before = features(data)[victim["trade_id"]]
    after = features(future)[victim["trade_id"]]
    assert_same({"x": after}, {"x": before})


# ------------------------------------------------------------------ worked examples

def _ts(s: str) -> int:
    return to_ms(datetime.fromisoformat(s).replace(tzinfo=UTC))


def seed_example(extra_oi: list[dict] | None = None, decision: str = "2025-01-15 14:00") -> dict:
    funding = [{"symbol": "BTCUSDT", "event_time": _ts(f"2025-01-15 {h:02d}:00"), "funding_rate": rate,
                    "funding_interval_hours": 8, "available_at": _ts(f"2025-01-15 {h:02d}:00")}
               for h, rate in ((0, 0.0001), (8, 0.00021), (16, 0.0009))]
    oi = [{"symbol": "BTCUSDT", "event_time": ev, "period_minutes": 5, "open_interest": float(i + 1),
               "available_at": ev + 5 * M}
          for i, ev in enumerate(range(_ts("2025-01-15 13:00"), _ts("2025-01-15 14:00") + 1, 5 * M))]
    trades = [{"trade_id": "seed", "symbol": "BTCUSDT", "timeframe": "1h", "direction": "BEARISH",
                   "decision_time": _ts(decision)}]
    return {"funding_rates": funding, "open_interest": oi + (extra_oi or []), "klines": [], "trades": trades}


def test_seed_example_uses_0800_funding_and_the_1355_oi_row() -> None:
    row = features(seed_example(), FeatureConfig())["seed"]
    assert row["funding_rate"] == 0.00021
    assert row["funding_event_time"] == _ts("2025-01-15 08:00")
    assert row["funding_age_hours"] == 6.0
    # rows stamped 13:00 .. 14:00 hold values 1..13: 13:55 (value 12) is known at 14:00, 14:00 is not
    assert row["oi_event_time"] == _ts("2025-01-15 13:55")
    assert row["oi"] == 12.0
    assert row["oi_age_minutes"] == 5.0


def test_zero_oi_is_missing_not_zero() -> None:
    zero = {"symbol": "BTCUSDT", "event_time": _ts("2025-01-15 13:55"), "period_minutes": 5, "open_interest": 0.0,
                "available_at": _ts("2025-01-15 14:00")}
    data = seed_example()
    data["open_interest"] = [o for o in data["open_interest"] if o["event_time"] != zero["event_time"]] + [zero]
    row = features(data, FeatureConfig())["seed"]
    assert row["oi"] == 11.0 and row["oi_event_time"] == _ts("2025-01-15 13:50")


def test_stale_values_become_null_with_age_kept() -> None:
    row = features(seed_example(decision="2025-01-15 23:00"), FeatureConfig())["seed"]
    # funding of 16:00 is 7h old (limit 12h): fresh; OI last stamped 14:00 is 9h old (limit 2h): stale
    assert row["funding_rate"] == 0.0009
    assert row["oi"] is None and row["oi_age_minutes"] == 9 * 60.0
    assert row["oi_event_time"] == _ts("2025-01-15 14:00")
    late = features(seed_example(decision="2025-01-16 05:00"), FeatureConfig())["seed"]
    assert late["funding_rate"] is None and late["funding_age_hours"] == 13.0
    assert late["funding_rate_change_8h"] is None


def test_null_counts_and_one_row_per_trade_with_duplicates() -> None:
    data = seed_example()
    data["open_interest"] += [dict(o, open_interest=o["open_interest"] + 100) for o in data["open_interest"]]
    data["funding_rates"] += data["funding_rates"]
    df = build_trade_context_features(connect(data), FeatureConfig())
    assert df.height == 1
    assert df["oi"][0] == 112.0  # same stamp and available_at: the larger value wins
    counts = feature_null_counts(df)
    assert counts["distance_to_liq_cluster"] == 1 and counts["funding_rate"] == 0
    assert "trade_id" not in counts


# ------------------------------------------------------------------ OHLCV windows


def _window_data() -> dict:
    klines = []
    for sym in ("AAA", "BBB"):
        for i in range(120):
            if sym == "BBB" and i == 100:
                continue  # a gap: BBB windows crossing bar 100 are incomplete
            ev = T0 + i * H
            p = 100.0 + i
            klines.append({"symbol": sym, "interval": "1h", "event_time": ev, "close_time": ev + H, "open": p,
                               "high": p + 2, "low": p - 1, "close": p + 1, "volume": float(i % 7), "available_at": ev + H})
    trades = [
        {"trade_id": "a_ok", "symbol": "AAA", "timeframe": "1h", "direction": "BULLISH", "decision_time": T0 + 80 * H + 30 * M},
        {"trade_id": "a_edge", "symbol": "AAA", "timeframe": "1h", "direction": "BEARISH", "decision_time": T0 + 60 * H},
        {"trade_id": "a_short", "symbol": "AAA", "timeframe": "1h", "direction": "BEARISH", "decision_time": T0 + 40 * H},
        {"trade_id": "b_gap", "symbol": "BBB", "timeframe": "1h", "direction": "BULLISH", "decision_time": T0 + 110 * H},
        {"trade_id": "b_stale", "symbol": "BBB", "timeframe": "1h", "direction": "BULLISH", "decision_time": T0 + 200 * H},
    ]
    return {"funding_rates": [], "open_interest": [], "klines": klines, "trades": trades}


def test_windows_end_at_last_closed_bar_and_exclude_incomplete(tmp_path) -> None:
    ids, arr = build_ohlcv_windows(connect(_window_data()), bars=50)
    assert ids == ["a_edge", "a_ok"]
    assert arr.shape == (2, 50, 5) and arr.dtype == np.float32
    # a_ok at 80:30 -> last closed bar opened at 79:00 (close 180); a_edge at 60:00 -> bar 59 closed exactly then
    ok = arr[1]
    assert ok[-1, 3] == 0.0
    np.testing.assert_allclose(ok[0, 3], (30 + 1 + 100) / 180 - 1, rtol=1e-6)   # bar 30's close
    np.testing.assert_allclose(arr[0, -1, 0], (159 - 100 + 100) / 160 - 1, rtol=1e-6)
    vols = np.array([i % 7 for i in range(30, 80)], dtype=float)
    np.testing.assert_allclose(ok[:, 4], vols / vols.mean(), rtol=1e-6)
    path = save_windows(tmp_path / "w.npz", ids, arr)
    ids2, arr2 = load_windows(path)
    assert ids2 == ids and np.array_equal(arr2, arr)


def test_view_joins_trades_with_features(tmp_path) -> None:
    from qml_pipeline.store.schemas import TRADE_CONTEXT_FEATURES
    from qml_pipeline.store.schemas import TRADES as trades_table
    from qml_pipeline.store.warehouse import Warehouse

    data = seed_example()
    feats = build_trade_context_features(connect(data), FeatureConfig())
    wh = Warehouse(tmp_path)
    wh.replace_table(TRADE_CONTEXT_FEATURES, feats)
    trades = _frame(data["trades"], TR_COLS)
    for col in trades_table.columns:  # the real contract has more required columns: fill them
        if col.name not in trades.columns and not col.nullable:
            fill = pl.col("decision_time") if col.dtype == TS else pl.lit(
                {pl.Utf8: "x", pl.Boolean: False}.get(col.dtype, 1)).cast(col.dtype)
            trades = trades.with_columns(fill.alias(col.name))
    wh.replace_table(trades_table, trades)
    con = wh.connect()
    out = con.sql("SELECT trade_id, funding_rate, oi, oi_event_time FROM v_trade_context").fetchall()
    assert len(out) == 1 and out[0][0] == "seed" and out[0][1] == 0.00021 and out[0][2] == 12.0


def test_windows_ignore_rows_published_after_decision() -> None:
    data = _window_data()
    ids, arr = build_ohlcv_windows(connect(data), bars=50)
    t = T0 + 80 * H + 30 * M
    future = dict(data, klines=data["klines"] + [
        dict(k, close=k["close"] * 2, high=k["high"] * 2, available_at=t + H)  # republished later
        for k in data["klines"] if k["symbol"] == "AAA" and 40 * H <= k["event_time"] - T0 < 80 * H
    ] + [dict(data["klines"][79], event_time=T0 + 80 * H, close_time=T0 + 81 * H, available_at=T0 + 81 * H)])
    ids2, arr2 = build_ohlcv_windows(connect(future), bars=50)
    assert ids2 == ids and np.array_equal(arr2, arr)


@PROPS
@given(seed=st.integers(0, 2**32 - 1), keep_duplicates=st.booleans())
def test_constant_lag_fast_path_matches_reference(seed: int, keep_duplicates: bool) -> None:
    from qml_pipeline.features.point_in_time import OI_LAG_CONSTANT_SQL

    data = random_data(seed)
    oi, seen = [], set()
    for r in data["open_interest"]:
        if keep_duplicates or (r["symbol"], r["event_time"]) not in seen:
            seen.add((r["symbol"], r["event_time"]))
            oi.append(dict(r, available_at=r["event_time"] + r["period_minutes"] * M))
    data["open_interest"] = oi
    assert connect(data).sql(OI_LAG_CONSTANT_SQL).fetchall()[0][0] is True
    assert_same(features(data), reference(data, CFG))


def test_core_feature_nulls_count_an_absent_feature_as_null_for_every_trade():
    from qml_pipeline.features.point_in_time import CORE_FEATURES, core_feature_nulls

    features = pl.DataFrame({"trade_id": ["a", "b", "c", "d"], "funding_rate": [0.1, None, 0.2, 0.3],
                             **{f: [1.0, 2.0, None, None] for f in CORE_FEATURES[1:-1]}})
    core, sparse = core_feature_nulls(features)
    shares = dict(zip(core["feature"], core["null_share"]))
    assert shares["funding_rate"] == 0.25 and shares["oi_change_24h"] == 0.5 and shares["atr"] == 1.0
    assert sparse == ["atr"]  # over half NULL; exactly half is not
