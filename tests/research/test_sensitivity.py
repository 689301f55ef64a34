"""Sensitivity runs (OI lag, timeouts, thresholds, regimes), regimes from candles, and the report's
'what this evidence can and cannot say'."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from qml_pipeline.research.evidence import evidence
from qml_pipeline.research.phases import Phase10Settings, gate_rows, run_phase9, run_phase10
from qml_pipeline.research.regimes import trade_regimes
from qml_pipeline.research.sensitivity import (
    SensitivityInputs,
    features_with_oi_lag,
    regime_sensitivity,
    sensitivity_plot,
    threshold_sensitivity,
    timeout_sensitivity,
)
from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import TS
from tests.synthetic import context_trade_set

FAST = Phase10Settings(n_resamples=100, n_null=200)
T0 = datetime(2023, 1, 1, tzinfo=UTC)


def hourly_klines(start: datetime, hours: int, seed: int = 0, symbol: str = "BTCUSDT") -> pl.DataFrame:
    close = 20_000 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.004, hours)))
    opens = [start + timedelta(hours=h) for h in range(hours)]
    return pl.DataFrame({
        "symbol": [symbol] * hours, "interval": ["1h"] * hours, "event_time": opens,
        "close_time": [t + timedelta(hours=1) for t in opens], "open": close, "high": close * 1.001,
        "low": close * 0.999, "close": close, "volume": np.ones(hours),
        "available_at": [t + timedelta(hours=1) for t in opens],
    }).with_columns(pl.col("event_time", "close_time", "available_at").cast(TS))


def test_oi_lag_recomputes_the_oi_features_from_later_rows():
    """Hourly OI rows known one hour after their stamp: a decision at 13:00 sees the 12:00 row; with
    60 s more lag it sees the 11:00 row (the sample's hourly OI makes every lag under an hour alike)."""
    stamps = [T0 - timedelta(days=9) + timedelta(hours=h) for h in range(9 * 24 + 14)]
    oi = pl.DataFrame({"symbol": "BTCUSDT", "event_time": stamps, "period_minutes": 60,
                       "open_interest": [1000.0 + i for i in range(len(stamps))],
                       "open_interest_value": 1.0, "available_at": [s + timedelta(hours=1) for s in stamps],
                       "source": "synthetic", "ingested_at": T0}).with_columns(
        pl.col("event_time", "available_at", "ingested_at").cast(TS), pl.col("period_minutes").cast(pl.Int32))
    trades = pl.DataFrame({"trade_id": ["a"], "symbol": ["BTCUSDT"], "timeframe": ["1h"], "direction": ["BEARISH"],
                           "decision_time": [T0 + timedelta(hours=13)]}).with_columns(pl.col("decision_time").cast(TS))
    stored = pl.DataFrame({"trade_id": ["a"], "funding_rate": [0.0001], "oi_change_24h": [99.0]})
    klines, funding = schemas.empty(schemas.KLINES), schemas.empty(schemas.FUNDING_RATES)
    now = features_with_oi_lag(trades, stored, klines, funding, oi, 0)
    later = features_with_oi_lag(trades, stored, klines, funding, oi, 60)
    assert now["oi_event_time"][0] == T0 + timedelta(hours=12)
    assert later["oi_event_time"][0] == T0 + timedelta(hours=11)
    assert now["oi_change_24h"][0] != later["oi_change_24h"][0] != 99.0
    assert now["funding_rate"][0] == 0.0001   # other features kept as stored
    assert oi["available_at"][0] == stamps[0] + timedelta(hours=1)  # the frame itself is untouched


def test_regimes_are_known_at_decision_time():
    klines = hourly_klines(T0 - timedelta(days=400), 24 * 430)
    trades = pl.DataFrame({"trade_id": ["early", "late"], "symbol": ["BTCUSDT"] * 2,
                           "decision_time": [T0 - timedelta(days=380), T0 + timedelta(days=10, hours=5)]}
                          ).with_columns(pl.col("decision_time").cast(TS))
    r = {row["trade_id"]: row for row in trade_regimes(klines, trades).iter_rows(named=True)}
    assert r["early"]["regime"] == "unknown"      # 20 days of history
    late = r["late"]
    assert late["regime"] in {f"{t} / {v} vol" for t in ("up", "down") for v in ("low", "mid", "high")}
    # the day used closed before the decision: the decision's own day is not known yet
    assert late["regime_day"].date() == (T0 + timedelta(days=9)).date()
    # appending the future does not change a past regime
    more = trade_regimes(hourly_klines(T0 - timedelta(days=400), 24 * 460), trades)
    assert more.filter(pl.col("trade_id") == "late")["regime"][0] == late["regime"]


@pytest.fixture(scope="module")
def context_set():
    trades, features = context_trade_set(240, context_effect=True, seed=4)
    # three profitable timeouts among the losers
    timeouts = trades.filter(pl.col("outcome") == "LOSS")["trade_id"].head(3).to_list()
    trades = trades.with_columns(
        pl.when(pl.col("trade_id").is_in(timeouts)).then(pl.lit("TIMEOUT")).otherwise(pl.col("outcome")).alias("outcome"),
        pl.when(pl.col("trade_id").is_in(timeouts)).then(0.3).otherwise(pl.col("r_multiple")).alias("r_multiple"))
    return SensitivityInputs(trades, features, phase10=FAST)


def test_timeout_sensitivity_reports_each_policy(context_set, tmp_path):
    rows = timeout_sensitivity(context_set)
    assert rows["setting"].unique(maintain_order=True).to_list() == ["loss", "exclude", "r_sign"]
    n = {r["setting"]: r["value"] for r in rows.filter(pl.col("part") == "min_trades").iter_rows(named=True)}
    assert n == {"loss": 240.0, "exclude": 237.0, "r_sign": 240.0}
    assert set(rows["gate"]) == {"phase9", "phase10", "phase9_features"}
    assert schemas.conform(schemas.SENSITIVITY_TIMEOUTS, rows).height == rows.height
    png = sensitivity_plot(rows, tmp_path / "t.png", "timeouts")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threshold_sensitivity_judges_default_and_tuned_on_the_later_trades(context_set):
    rows = threshold_sensitivity(context_set)
    assert rows["setting"].unique(maintain_order=True).to_list() == ["default", "tuned"]
    phase10 = rows.filter((pl.col("gate") == "phase10") & (pl.col("part") == "win_rate_gain"))
    assert phase10.height == 2 and phase10["n"].n_unique() == 1   # the same judging trades


def test_regime_sensitivity_per_year_and_regime(context_set, tmp_path):
    klines = hourly_klines(T0 - timedelta(days=400), 24 * 560, seed=3)
    rows = regime_sensitivity(context_set, klines)
    settings = rows["setting"].unique(maintain_order=True).to_list()
    assert settings[0] == "year 2023" and any("vol" in s for s in settings)
    fuel = rows.filter((pl.col("gate") == "phase9_features") & (pl.col("part") == "funding_fuel_8h"))
    assert fuel.height == len(settings) and fuel["mde"].drop_nulls().len() == len(settings)
    assert rows.filter(pl.col("part") == "min_trades")["value"].sum() == 240 * 2   # each trade in one year, one regime
    sensitivity_plot(rows, tmp_path / "r.png", "regimes")


def test_evidence_sentences_quote_controls_nulls_power_and_clusters():
    trades, features = context_trade_set(300, context_effect=False, seed=0)
    p9 = run_phase9(trades, features, None)
    p10 = run_phase10(trades, features, None, FAST)
    gates = pl.concat([gate_rows("phase9", p9.gate), gate_rows("phase10", p10.gate)])
    sens = timeout_sensitivity(SensitivityInputs(trades, features, phase10=FAST), ("loss", "exclude"))
    ev = evidence(gates, p10.differences, p9.stats, p9.issue_sensitivity, {"timeout policy": sens, "regime": None})
    text = " ".join(ev.can + ev.cannot)
    assert "of winners had an identifiable context issue" in text
    assert "come from the confidence threshold alone" in text
    assert "trade-count-dependent Sharpe" in text and "clusters" in text
    assert "cannot be ruled out" in text and "No regime sensitivity run is stored" in text
    assert "Timeout policy (2 settings)" in text
    assert ev.parts is not None and {"null_p95", "mde", "ci_low_independent"} <= set(ev.parts.columns)
    assert evidence(None).cannot == ["No gate has been evaluated yet."]
