from datetime import timedelta

import polars as pl
import pytest

from tests import realdata
from qml_pipeline.trades.detector import detect_patterns
from qml_pipeline.store.schemas import TS
from qml_pipeline.trades.simulate import SimulationConfig, reference_trades, simulate_trades
from qml_pipeline.trades.contract import TRADES
from tests.synthetic import T0, bars_from_closes, ohlc_bars
from tests.trades.test_detector import BEARISH

DECISION = T0 + timedelta(hours=5)
NO_FEES = SimulationConfig(entry_fee_bps=0, exit_fee_bps=0)


def pattern(direction: str, entry: float, stop: float, target: float, head: float | None = None):
    return pl.DataFrame({
        "symbol": ["TESTUSDT"], "timeframe": ["1h"], "direction": [direction],
        "decision_time": [DECISION], "entry_price": [entry], "stop_price": [stop],
        "target_price": [target], "head_price": [head if head is not None else stop],
        "base_confidence": [0.5],
    }).with_columns(pl.col("decision_time").cast(TS))


# Five bars before the decision (they must be ignored) then the given bars.
def bars(*rows, pre=(100, 100, 100, 100)):
    return ohlc_bars([pre] * 5 + list(rows))


SHORT = pattern("BEARISH", entry=100, stop=110, target=80, head=108)
LONG = pattern("BULLISH", entry=100, stop=90, target=120, head=92)


def sim(p, k, cfg=NO_FEES, funding=None):
    return simulate_trades(p, k, funding, cfg).row(0, named=True)


def test_fill_then_target_short():
    k = bars((95, 96, 94, 95), (95, 101, 94, 99), (99, 99, 85, 86), (86, 87, 79, 80))
    t = sim(SHORT, k, cfg=SimulationConfig(fill_timeout_bars=5, max_hold_bars=10))
    assert t["outcome"] == "WIN"
    assert t["entry_time"] == T0 + timedelta(hours=6) and t["exit_time"] == T0 + timedelta(hours=9)
    assert t["exit_price"] == 80 and t["gross_r_multiple"] == pytest.approx(2.0)
    assert t["fees_r"] == pytest.approx((100 * 2 + 80 * 5) / 1e4 / 10)
    assert t["r_multiple"] == pytest.approx(2.0 - t["fees_r"])
    assert t["trade_id"] == "TESTUSDT-1h-BEAR-20240101T0500"


def test_bars_before_decision_are_ignored():
    k = bars((95, 96, 94, 95), pre=(100, 130, 70, 100))  # pre-decision bars touch everything
    out = simulate_trades(SHORT, k, None, SimulationConfig(fill_timeout_bars=1))
    assert out["outcome"].to_list() == ["NOT_FILLED"] and out["entry_time"][0] is None


def test_not_filled_and_pending():
    k = bars(*[(95, 96, 94, 95)] * 3)
    assert sim(SHORT, k, SimulationConfig(fill_timeout_bars=3))["outcome"] == "NOT_FILLED"
    assert simulate_trades(SHORT, k, None, SimulationConfig(fill_timeout_bars=4)).height == 0


def test_stop_first_on_ambiguous_bar():
    k = bars((99, 100, 98, 99), (99, 121, 79, 100))
    t = sim(SHORT, k)
    assert t["outcome"] == "LOSS" and t["exit_price"] == 110 and t["gross_r_multiple"] == -1.0


def test_fill_bar_touching_stop_is_a_loss_and_target_on_fill_bar_does_not_count():
    assert sim(SHORT, bars((96, 111, 95, 105)))["outcome"] == "LOSS"
    # the fill bar reaches the target too, but the order inside the bar is unknown
    t = sim(SHORT, bars((96, 101, 79, 90), (90, 111, 89, 110)))
    assert t["outcome"] == "LOSS"


def test_gap_through_stop_exits_at_open():
    t = sim(LONG, bars((101, 102, 99, 101), (85, 86, 84, 85)))
    assert t["outcome"] == "LOSS" and t["exit_price"] == 85 and t["gross_r_multiple"] == -1.5


def test_invalidation_before_fill():
    # an entry beyond the head (not produced by the detector) makes the rule reachable
    p = pattern("BEARISH", entry=100, stop=110, target=80, head=97)
    t = sim(p, bars((95, 98, 94, 97.5), (97, 101, 96, 99)))
    assert t["outcome"] == "INVALIDATED" and t["r_multiple"] is None


def test_timeout_exits_at_close():
    k = bars((101, 102, 99, 101), (101, 105, 95, 103), (103, 104, 96, 102))
    t = sim(LONG, k, SimulationConfig(max_hold_bars=3, entry_fee_bps=0, exit_fee_bps=0))
    assert t["outcome"] == "TIMEOUT" and t["exit_price"] == 102
    assert t["exit_time"] == T0 + timedelta(hours=8) and t["gross_r_multiple"] == pytest.approx(0.2)
    assert simulate_trades(LONG, k, None, SimulationConfig(max_hold_bars=4)).height == 0


def funding_rows(*times_rates):
    return pl.DataFrame({"symbol": ["TESTUSDT"] * len(times_rates),
                         "event_time": [T0 + timedelta(hours=h) for h, _ in times_rates],
                         "funding_rate": [r for _, r in times_rates],
                         "mark_price": [None] * len(times_rates)}).with_columns(
        pl.col("event_time").cast(TS), pl.col("mark_price").cast(pl.Float64))


@pytest.mark.parametrize("p, sign", [(LONG, 1.0), (SHORT, -1.0)])
def test_funding_longs_pay_shorts_receive(p, sign):
    # fill bar opens 05:00, exit bar opens 08:00 (timeout after 4 bars at its close)
    k = bars((100, 100.5, 99.5, 100), (100, 101, 99, 100), (100, 101, 99, 100), (104, 105, 103, 104))
    f = funding_rows((5, 0.01), (6, 0.001), (8, 0.002), (9, 0.05))
    t = sim(p, k, SimulationConfig(max_hold_bars=4, entry_fee_bps=0, exit_fee_bps=0), funding=f)
    # counted: 06:00 (bar open 100) and 08:00 (bar open 104); not 05:00 (the fill bar's open) nor 09:00
    paid = 0.001 * 100 + 0.002 * 104
    assert t["funding_r"] == pytest.approx(sign * paid / 10)
    assert t["r_multiple"] == pytest.approx(t["gross_r_multiple"] - t["funding_r"])


def test_detector_to_simulation_synthetic():
    k = bars_from_closes(BEARISH)
    trades = simulate_trades(detect_patterns(k), k, None, SimulationConfig(fill_timeout_bars=5))
    assert trades.schema == TRADES.polars_schema
    assert trades["outcome"].to_list() == ["NOT_FILLED"]  # price never came back to LS


@pytest.mark.skipif(not realdata.available(), reason="bundled real data not present")
def test_reference_trades_real_data():
    klines = pl.concat([realdata.klines(s, i) for s in ("BTCUSDT", "ETHUSDT") for i in ("1h", "4h")],
                       how="diagonal_relaxed")
    funding = pl.concat([realdata.funding(s) for s in ("BTCUSDT", "ETHUSDT")])
    trades = reference_trades(klines, funding, ["1h", "4h"])
    assert trades.schema == TRADES.polars_schema
    assert trades["trade_id"].is_unique().all()
    filled = trades.filter(pl.col("r_multiple").is_not_null())
    assert filled.height >= 200
    counts = dict(trades.group_by("symbol", "timeframe").len().select(
        pl.concat_str("symbol", "timeframe", separator="-"), "len").iter_rows())
    assert set(counts) == {"BTCUSDT-1h", "BTCUSDT-4h", "ETHUSDT-1h", "ETHUSDT-4h"}
    assert (filled["entry_time"] >= filled["decision_time"]).all()
    assert (filled["exit_time"] >= filled["entry_time"]).all()
    # BEARISH trades receive funding when rates are positive (as they mostly were): net cost < 0
    shorts = filled.filter(pl.col("direction") == "BEARISH")
    assert shorts["funding_r"].sum() < 0 < filled.filter(pl.col("direction") == "BULLISH")["funding_r"].sum()


@pytest.mark.skipif(not realdata.available(), reason="bundled real data not present")
def test_reference_trades_in_worker_processes_equal_the_serial_ones():
    klines = pl.concat([realdata.klines(s, i) for s in ("BTCUSDT", "ETHUSDT") for i in ("1h", "4h")],
                       how="diagonal_relaxed").filter(pl.col("event_time").dt.year() == 2024)
    funding = pl.concat([realdata.funding(s) for s in ("BTCUSDT", "ETHUSDT")])
    serial = reference_trades(klines, funding, ["1h", "4h"], workers=1)
    assert serial.height > 50
    assert reference_trades(klines, funding, ["1h", "4h"], workers=2).equals(serial)
