import math
from datetime import datetime, timezone

import polars as pl
import pytest

from qml_pipeline.trades.metrics import equity_curve, summarize
from qml_pipeline.store.schemas import TS


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
    assert m["sharpe"] == pytest.approx(0.1 / math.sqrt(6.42 / 3) * math.sqrt(4 / YEARS))
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
    assert y24["sharpe"] == pytest.approx(-0.3 / math.sqrt(1.28) * math.sqrt(2 / (64 / 365.25)))
    assert s.row(2, named=True)["trades"] == 4


def test_by_symbol():
    s = summarize(TRADES, by=["symbol"])
    x = s.filter(pl.col("symbol") == "X").row(0, named=True)
    assert x["profit_factor"] == pytest.approx(2.0) and x["total_r"] == pytest.approx(1.0)


def test_edge_cases():
    only_win = summarize(TRADES.filter(pl.col("trade_id") == "A")).row(0, named=True)
    assert only_win["profit_factor"] == math.inf
    assert only_win["sharpe"] is None and only_win["max_drawdown_r"] == 0.0
    none_filled = summarize(TRADES.filter(pl.col("trade_id") == "E")).row(0, named=True)
    assert none_filled["trades"] == 0 and none_filled["win_rate"] is None
    assert none_filled["profit_factor"] is None and none_filled["max_drawdown_r"] is None


def test_equity_curve():
    c = equity_curve(TRADES)
    assert c["trade_id"].to_list() == ["A", "B", "C", "D"]
    assert c["cum_r"].to_list() == pytest.approx([2.0, 1.0, -0.1, 0.4])
    assert c["drawdown_r"].to_list() == pytest.approx([0.0, 1.0, 2.1, 1.6])
    assert equity_curve(TRADES, size_col="size")["cum_r"].to_list() == pytest.approx([3.0, 2.5, 1.4, 1.9])
