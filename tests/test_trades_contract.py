from datetime import datetime, timezone

import polars as pl
import pytest

from qml_pipeline.store.schemas import TS
from qml_pipeline.trades.contract import TRADES, TradeInputError, read_trade_export

HEADER = "trade_id,symbol,timeframe,direction,decision_time,entry_time,entry_price,stop_price,exit_time,exit_price,r_multiple,outcome"
GOOD = [
    "T1,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00+00:00,100,105,2024-03-02T00:00:00Z,90,2.0,WIN",
    "T2,ETHUSDT,1h,bullish,2024-03-01T10:00:00+02:00,2024-03-01T09:00:00Z,50,48,2024-03-01T11:00:00Z,48,-1.0,LOSS",
    "T3,SOLUSDT,1h,BULLISH,2024-03-05T00:00:00.250Z,,20,19,,,,NOT_FILLED",
]


def write_csv(tmp_path, lines, header=HEADER, name="export.csv"):
    p = tmp_path / name
    p.write_text("\n".join([header, *lines]) + "\n")
    return p


def problem(tmp_path, lines, header=HEADER, **kw) -> TradeInputError:
    with pytest.raises(TradeInputError) as exc:
        read_trade_export(write_csv(tmp_path, lines, header), **kw)
    return exc.value


def test_good_export(tmp_path):
    df, warnings = read_trade_export(write_csv(tmp_path, GOOD), known_symbols={"BTCUSDT", "ETHUSDT"})
    assert df.schema == TRADES.polars_schema
    assert df["decision_time"].to_list() == [
        datetime(2024, 3, 1, 8, tzinfo=timezone.utc), datetime(2024, 3, 1, 8, tzinfo=timezone.utc),
        datetime(2024, 3, 5, 0, 0, 0, 250000, tzinfo=timezone.utc)]
    assert df["direction"].to_list() == ["BEARISH", "BULLISH", "BULLISH"]
    assert df["source"].unique().to_list() == ["user_export:export.csv"]
    assert df["entry_time"][2] is None
    assert warnings == ["symbol 'SOLUSDT': 1 trade(s), but the warehouse has no data for it "
                        "(their context features will be empty)"]


def test_column_map_and_parquet(tmp_path):
    df = pl.DataFrame({
        "id": ["a"], "symbol": ["BTCUSDT"], "timeframe": ["1h"], "side": ["BEARISH"],
        "decision_time": [datetime(2024, 1, 1, 9, tzinfo=timezone.utc)],
        "entry_price": [10.0], "stop_price": [11.0], "outcome": ["NOT_FILLED"], "notes": ["x"],
    }).with_columns(pl.col("decision_time").dt.convert_time_zone("Europe/Berlin"))
    p = tmp_path / "bt.parquet"
    df.write_parquet(p)
    out, warnings = read_trade_export(p, column_map={"id": "trade_id", "side": "direction"})
    assert out["trade_id"].to_list() == ["a"]
    assert out.schema["decision_time"] == TS
    assert out["decision_time"][0] == datetime(2024, 1, 1, 9, tzinfo=timezone.utc)
    assert warnings == ["ignored 1 column(s) not in the trade contract: ['notes']"]


def test_naive_parquet_timestamps(tmp_path):
    df = pl.DataFrame({"trade_id": ["a"], "symbol": ["BTCUSDT"], "timeframe": ["1h"],
                       "direction": ["BEARISH"], "decision_time": [datetime(2024, 1, 1, 9)],
                       "entry_price": [10.0], "stop_price": [11.0], "outcome": ["NOT_FILLED"]})
    p = tmp_path / "naive.parquet"
    df.write_parquet(p)
    with pytest.raises(TradeInputError, match="timestamps without a time zone in 'decision_time'"):
        read_trade_export(p)


def test_misspelled_required_column(tmp_path):
    err = problem(tmp_path, GOOD, header=HEADER.replace("decision_time", "decison_time"))
    assert "missing required column 'decision_time' (did you mean 'decison_time'?)" in str(err)
    assert "column_map={'decison_time': 'decision_time'}" in str(err)


def test_misspelled_optional_column(tmp_path):
    err = problem(tmp_path, GOOD, header=HEADER.replace("exit_price", "exit_prise"))
    assert "unknown column 'exit_prise' (did you mean 'exit_price'?" in str(err)


def test_column_map_naming_absent_column(tmp_path):
    err = problem(tmp_path, GOOD, column_map={"Entry": "entry_price"})
    assert "column_map names column 'Entry', which the file does not have" in str(err)


@pytest.mark.parametrize("row, rule", [
    ("T9,BTCUSDT,4h,SIDEWAYS,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED", "unknown direction"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00,,100,105,,,,NOT_FILLED",
     "timestamps without a time zone in 'decision_time'"),
    ("T9,BTCUSDT,4h,BEARISH,01/03/2024 08:00 +0000,,100,105,,,,NOT_FILLED",
     "timestamps in 'decision_time' that are not ISO-8601"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-01T11:00:00Z,101,-0.2,LOSS",
     "exit_time before entry_time"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T13:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-01T14:00:00Z,101,-0.2,LOSS",
     "decision_time after entry_time"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,95,,,,NOT_FILLED", "stop on the wrong side of entry"),
    ("T9,BTCUSDT,4h,BULLISH,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED", "stop on the wrong side of entry"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,NaN,105,,,,NOT_FILLED", "NaN or non-positive price in 'entry_price'"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-01T14:00:00Z,-3,1,WIN",
     "NaN or non-positive price in 'exit_price'"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,abc,105,,,,NOT_FILLED", "values in 'entry_price' that are not numbers"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,105,,,,MAYBE", "unknown outcome"),
    ("T9,BTCUSDT,4H,BEARISH,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED", "unknown timeframe"),
    ("T1,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED", "duplicate trade_id"),
    (",BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED", "missing value in required column 'trade_id'"),
])
def test_each_bad_row_rule(tmp_path, row, rule):
    err = problem(tmp_path, [*GOOD, row])
    assert len(err.problems) == 1, str(err)
    name, rows = err.problems[0]
    assert rule in name
    assert 4 in rows
    if row.startswith("T9"):
        assert f"{rule}" in str(err) and "row 4 (trade_id 'T9')" in str(err)


def test_all_problems_in_one_error(tmp_path):
    err = problem(tmp_path, [*GOOD,
                             "T9,BTCUSDT,4h,UP,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED",
                             "T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,95,,,,NOT_FILLED"])
    rules = [r for r, _ in err.problems]
    assert any("unknown direction" in r for r in rules)
    assert any("stop on the wrong side" in r for r in rules)
    assert ("duplicate trade_id", [4, 5]) in err.problems
    assert "nothing was read" in str(err)


def test_unsupported_suffix(tmp_path):
    p = tmp_path / "x.xlsx"
    p.write_text("")
    with pytest.raises(TradeInputError, match="unsupported file type"):
        read_trade_export(p)


def test_other_contract_rules_are_reported_the_same_way(tmp_path):
    header = HEADER + ",fees_r"
    lines = [line + ",0.01" for line in GOOD[:2]] + [GOOD[2] + ",-0.5"]
    err = problem(tmp_path, lines, header=header)
    assert len(err.problems) == 1
    rule, rows = err.problems[0]
    assert "fees_r" in rule and rows == [3]
    assert "row 3 (trade_id 'T3')" in str(err)


def test_column_map_onto_an_existing_column(tmp_path):
    err = problem(tmp_path, GOOD, column_map={"exit_price": "entry_price"})
    assert "column_map maps 'exit_price' to 'entry_price', but the file already has 'entry_price'" in str(err)
