import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from qml_pipeline.research.nulls import random_subsets
from qml_pipeline.store.schemas import TS
from qml_pipeline.trades.metrics import (TradeArrays, apply_timeout_policy, batch_metrics, equity_curve, summarize,
                                         trade_calendar)


def d(y, m, day):
    return datetime(y, m, day, tzinfo=timezone.utc)


TRADES = pl.DataFrame({
    "trade_id": ["A", "B", "C", "D", "E"],
    "symbol": ["X", "X", "Y", "Y", "Y"],
    "outcome": ["WIN", "LOSS", "LOSS", "TIMEOUT", "NOT_FILLED"],
    "decision_time": [d(2023, 1, 1), d(2023, 6, 1), d(2024, 1, 1), d(2024, 3, 1), d(2024, 4, 1)],
    "exit_time": [d(2023, 1, 2), d(2023, 6, 2), d(2024, 1, 3), d(2024, 3, 5), None],
    "r_multiple": [2.0, -1.0, -1.1, 0.5, None],
    "gross_r_multiple": [2.1, -0.9, -1.0, 0.6, None],
    "size": [1.5, 0.5, 1.0, 1.0, 1.0],
}).with_columns(pl.col("decision_time").cast(TS), pl.col("exit_time").cast(TS))
YEARS = 429 / 365.25  # 2023-01-01 .. 2024-03-05


def test_overall_by_hand():
    m = summarize(TRADES).row(0, named=True)
    assert m["scope"] == "overall"
    assert (m["patterns"], m["trades"], m["wins"], m["losses"], m["timeouts"], m["not_filled"]) == (5, 4, 1, 2, 1, 1)
    assert m["win_rate"] == pytest.approx(0.25)
    assert m["expectancy_r"] == pytest.approx(0.1)
    assert m["avg_gross_r"] == pytest.approx(0.2)
    assert m["total_r"] == pytest.approx(0.4)
    assert m["avg_win_r"] == pytest.approx(2.0) and m["avg_loss_r"] == pytest.approx(-1.05)
    assert m["profit_factor"] == pytest.approx(2.5 / 2.1)
    assert m["trades_per_year"] == pytest.approx(4 / YEARS)
    assert m["sharpe_per_trade"] == pytest.approx(0.1 / math.sqrt(6.42 / 3))
    assert m["sharpe_trade_count_dependent"] == pytest.approx(0.1 / math.sqrt(6.42 / 3) * math.sqrt(4 / YEARS))
    # one calendar: 2023-01-01 .. 2024-03-05 = 430 days, R on 4 exit days, 0 on the other 426
    days, mean = 430, 0.4 / 430
    var = (4 + 1 + 1.21 + 0.25 - days * mean ** 2) / (days - 1)
    assert m["calendar_days"] == days
    assert m["sharpe_daily"] == pytest.approx(mean / math.sqrt(var) * math.sqrt(365))
    assert m["max_drawdown_r"] == pytest.approx(2.1)  # cum 2, 1, -0.1, 0.4


def test_size_column_scales_r():
    m = summarize(TRADES, size_col="size").row(0, named=True)
    assert m["expectancy_r"] == pytest.approx((3 - 0.5 - 1.1 + 0.5) / 4)
    assert m["max_drawdown_r"] == pytest.approx(1.6)  # cum 3, 2.5, 1.4, 1.9
    assert m["profit_factor"] == pytest.approx(3.5 / 1.6)


def test_by_year_plus_overall():
    s = summarize(TRADES, by=["year"])
    assert s["scope"].to_list() == ["group", "group", "overall"]
    assert s["year"].to_list() == [2023, 2024, None]
    y23, y24 = s.row(0, named=True), s.row(1, named=True)
    assert (y23["trades"], y23["win_rate"], y23["expectancy_r"], y23["max_drawdown_r"]) == (2, 0.5, 0.5, 1.0)
    assert (y24["patterns"], y24["trades"], y24["wins"]) == (3, 2, 0)
    assert y24["max_drawdown_r"] == pytest.approx(1.1)  # the curve starts at 0
    assert y24["sharpe_trade_count_dependent"] == pytest.approx(-0.3 / math.sqrt(1.28) * math.sqrt(2 / (64 / 365.25)))
    assert y24["sharpe_per_trade"] == pytest.approx(-0.3 / math.sqrt(1.28))
    assert (y23["calendar_days"], y24["calendar_days"]) == (365, 65)  # the calendar's days of each year
    assert s.row(2, named=True)["trades"] == 4


def test_by_symbol():
    s = summarize(TRADES, by=["symbol"])
    x = s.filter(pl.col("symbol") == "X").row(0, named=True)
    assert x["profit_factor"] == pytest.approx(2.0) and x["total_r"] == pytest.approx(1.0)


def test_edge_cases():
    only_win = summarize(TRADES.filter(pl.col("trade_id") == "A")).row(0, named=True)
    assert only_win["profit_factor"] == math.inf
    assert only_win["sharpe_per_trade"] is None and only_win["sharpe_trade_count_dependent"] is None
    assert only_win["sharpe_daily"] is not None  # one trade, but a 2-day calendar with a spread
    assert only_win["max_drawdown_r"] == 0.0
    none_filled = summarize(TRADES.filter(pl.col("trade_id") == "E")).row(0, named=True)
    assert none_filled["trades"] == 0 and none_filled["win_rate"] is None
    assert none_filled["profit_factor"] is None and none_filled["max_drawdown_r"] is None


def test_equity_curve():
    c = equity_curve(TRADES)
    assert c["trade_id"].to_list() == ["A", "B", "C", "D"]
    assert c["cum_r"].to_list() == pytest.approx([2.0, 1.0, -0.1, 0.4])
    assert c["drawdown_r"].to_list() == pytest.approx([0.0, 1.0, 2.1, 1.6])
    assert equity_curve(TRADES, size_col="size")["cum_r"].to_list() == pytest.approx([3.0, 2.5, 1.4, 1.9])


def test_daily_sharpe_sums_a_days_exits_and_keeps_the_given_calendar():
    same_day = TRADES.with_columns(pl.lit(datetime(2023, 1, 2, tzinfo=timezone.utc)).cast(TS).alias("exit_time"),
                                   pl.lit(datetime(2023, 1, 1, tzinfo=timezone.utc)).cast(TS).alias("decision_time"))
    m = summarize(same_day, calendar=(date(2023, 1, 1), date(2023, 1, 10))).row(0, named=True)
    # one exit day with 0.4 R on a 10-day calendar
    mean, var = 0.04, (0.16 - 10 * 0.04 ** 2) / 9
    assert m["calendar_days"] == 10 and m["sharpe_daily"] == pytest.approx(mean / math.sqrt(var) * math.sqrt(365))
    assert trade_calendar(TRADES) == (date(2023, 1, 1), date(2024, 3, 5))


def test_timeout_policy_is_explicit():
    assert apply_timeout_policy(TRADES, "loss").equals(TRADES)
    assert "TIMEOUT" not in apply_timeout_policy(TRADES, "exclude")["outcome"].to_list()
    assert apply_timeout_policy(TRADES, "r_sign")["outcome"].to_list() == ["WIN", "LOSS", "LOSS", "WIN", "NOT_FILLED"]
    assert summarize(apply_timeout_policy(TRADES, "r_sign"))["win_rate"][0] == 0.5
    with pytest.raises(ValueError, match="timeout policy"):
        apply_timeout_policy(TRADES, "win")


def _many(n: int = 300, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    t0 = datetime(2022, 1, 1, tzinfo=timezone.utc)
    start = [t0 + timedelta(hours=int(h)) for h in np.sort(rng.integers(0, 24 * 700, n))]
    win = rng.random(n) < 0.22
    return pl.DataFrame({
        "trade_id": [f"t{i}" for i in range(n)], "outcome": np.where(win, "WIN", np.where(rng.random(n) < 0.1, "TIMEOUT", "LOSS")),
        "decision_time": start, "exit_time": [s + timedelta(hours=int(h)) for s, h in zip(start, rng.integers(1, 60, n))],
        "r_multiple": np.where(win, 2.0, -1.0) + rng.normal(0, 0.1, n), "gross_r_multiple": rng.normal(size=n),
        "size": rng.uniform(0.5, 1.5, n),
    }).with_columns(pl.col("decision_time", "exit_time").cast(TS))


def test_batch_metrics_equal_summarize_for_subsets_sizes_and_repeats():
    trades = _many()
    calendar = trade_calendar(trades)
    arrays = TradeArrays.from_frame(trades, calendar)
    names = ("trades", "win_rate", "expectancy_r", "sharpe_per_trade", "sharpe_daily", "sharpe_trade_count_dependent")
    keep = np.random.default_rng(1).random(arrays.n) < 0.4
    twice = np.where(np.arange(arrays.n) % 7 == 0, 2.0, 1.0)
    repeated = pl.concat([trades, trades.filter(pl.int_range(pl.len()) % 7 == 0).with_columns(
        pl.col("trade_id") + "_again")])
    cases = [(np.ones(arrays.n), None, summarize(trades, calendar=calendar)),
             (keep.astype(float), None, summarize(trades.filter(pl.Series(keep)), calendar=calendar)),
             (np.ones(arrays.n), trades["size"].to_numpy(), summarize(trades, size_col="size", calendar=calendar)),
             (twice, None, summarize(repeated, calendar=calendar))]
    for weights, size, expected in cases:
        got = batch_metrics(arrays, weights[None, :], size)
        row = expected.row(0, named=True)
        for name in names:
            assert got[name][0] == pytest.approx(row[name], rel=1e-9), name


def test_trading_less_at_random_moves_the_trade_count_sharpes_not_the_per_trade_one():
    """Why the gate compares per-trade Sharpes (docs/overlay.md): a random half of a losing set keeps
    its per-trade Sharpe on average, while the trade-count and the daily Sharpe move towards 0."""
    trades = _many(600, seed=3)
    arrays = TradeArrays.from_frame(trades)
    full = batch_metrics(arrays, np.ones((1, arrays.n)))
    half = batch_metrics(arrays, random_subsets(arrays.n, arrays.n // 2, 2000, seed=4))
    assert full["sharpe_per_trade"][0] < 0
    assert np.mean(half["sharpe_per_trade"]) == pytest.approx(full["sharpe_per_trade"][0], rel=0.05)
    for name in ("sharpe_trade_count_dependent", "sharpe_daily"):
        assert np.mean(half[name]) / full[name][0] == pytest.approx(1 / math.sqrt(2), abs=0.06), name
