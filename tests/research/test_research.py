"""Gate bookkeeping and reproducibility of phase 11."""

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from qml_pipeline.research.model_data import ModelConfig
from qml_pipeline.research.gates import GatePart, make_gate
from qml_pipeline.research.phases import GateClosedError, ModelInputs, gate_rows, require_gate, run_phase11

UTC = timezone.utc


def _gate(passed: bool) -> pl.DataFrame:
    result = make_gate("phase 9", [GatePart("min_trades", True, 300.0, 200.0, "300 trades"),
                                   GatePart("issue_share", passed, 0.4, 0.7, "40% of losers, need 70%")])
    return gate_rows("phase9", result)


def test_closed_gate_refuses_with_what_failed() -> None:
    with pytest.raises(GateClosedError, match="40% of losers, need 70%.*QML_OVERRIDE_GATES=1"):
        require_gate(_gate(False), "phase9", override=False)


def test_override_is_reported_not_silent() -> None:
    assert require_gate(_gate(False), "phase9", override=True).startswith("OVERRIDDEN: phase9 gate FAILED")
    assert require_gate(_gate(True), "phase9", override=False) == "phase9 gate passed"


def test_gate_never_evaluated_is_closed() -> None:
    with pytest.raises(GateClosedError, match="not evaluated"):
        require_gate(_gate(True), "phase10", override=False)


def _inputs(n: int = 120, seed: int = 1) -> ModelInputs:
    rng = np.random.default_rng(seed)
    t0 = datetime(2023, 1, 1, tzinfo=UTC)
    times = [t0 + timedelta(hours=12 * i) for i in range(n)]
    z = rng.normal(size=n)
    win = (z + rng.normal(scale=0.5, size=n)) > 0
    context = pl.DataFrame({"trade_id": [f"t{i}" for i in range(n)], "decision_time": times,
                            "direction": ["BULLISH"] * n, "base_confidence": np.full(n, 0.5),
                            "funding_rate_z30d": z, "oi_change_24h": rng.normal(size=n),
                            "funding_rate_change_8h": rng.normal(size=n) * 1e-5, "oi_change_7d": rng.normal(size=n),
                            "oi_percentile_30d": rng.uniform(0, 100, size=n),
                            "distance_to_liq_cluster": pl.Series([None] * n, dtype=pl.Float64)})
    labels = pl.DataFrame({"trade_id": context["trade_id"], "outcome": np.where(win, "WIN", "LOSS"),
                           "r_multiple": np.where(win, 2.0, -1.0), "exit_time": [t + timedelta(hours=6) for t in times]})
    windows = rng.normal(size=(n, 50, 5)).astype(np.float32)
    trades = labels.with_columns(context["decision_time"], direction=pl.lit("BULLISH"), entry_price=pl.lit(100.0),
                                 stop_price=pl.lit(99.0), target_price=pl.lit(102.0),
                                 gross_r_multiple=pl.col("r_multiple"),
                                 base_confidence=pl.Series(np.where(np.arange(n) % 2 == 0, 0.6, 0.4)))
    return ModelInputs(context["trade_id"].to_list(), windows, context, labels, np.full(n, 0.5), trades)


def test_phase11_same_data_and_seed_give_the_same_metrics(tmp_path) -> None:
    config = ModelConfig(epochs=3, seed=7)
    first = run_phase11(_inputs(), tmp_path / "a", config)
    second = run_phase11(_inputs(), tmp_path / "b", config)
    assert first.version == second.version
    assert first.evaluation.equals(second.evaluation)
    assert first.predictions.equals(second.predictions)
    assert (tmp_path / "a" / first.version / "model.json").exists()
    assert first.backtest.equals(second.backtest)


def test_model_probability_backtest_takes_positive_expected_r_trades() -> None:
    from qml_pipeline.research.phases import probability_backtest

    inputs = _inputs(n=8)
    # reward 2R: breakeven win probability 1/3
    oos = pl.DataFrame({"trade_id": inputs.trade_ids, "overlay": [0.6] * 4 + [0.4] * 4,
                        "logistic": [0.5] * 8, "fusion": [0.34, 0.33, 0.9, 0.1, 0.5, 0.2, 0.4, 0.3]})
    bt = probability_backtest(inputs.trades, oos, "v1").filter(pl.col("scope") == "overall")
    trades = dict(zip(bt["variant"], bt["trades"]))
    assert trades == {"baseline": 8, "confidence_filter": 4, "overlay_filter": 4, "logistic_filter": 8,
                      "model_filter": 4}
