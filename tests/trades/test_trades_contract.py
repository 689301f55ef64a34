"""The trade contract: what a user's export must mean, and how each refusal names the thing to fix."""

from datetime import date, datetime, timezone

import polars as pl
import pytest

from qml_pipeline.config import Settings, SettingsError
from qml_pipeline.sources.files import FileInputError
from qml_pipeline.store.schemas import TS
from qml_pipeline.trades.contract import (TRADES, MarketCoverage, TradeInputError, parse_column_map,
                                          read_trade_export, validate_trades)

UTC = timezone.utc
HEADER = "trade_id,symbol,timeframe,direction,decision_time,entry_time,entry_price,stop_price,exit_time,exit_price,r_multiple,outcome"
GOOD = [
    "T1,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00+00:00,100,105,2024-03-02T00:00:00Z,90,2.0,WIN",
    "T2,ETHUSDT,1h,bullish,2024-03-01T10:00:00+02:00,2024-03-01T09:00:00Z,50,48,2024-03-01T11:00:00Z,48,-1.0,LOSS",
    "T3,SOLUSDT,1h,BULLISH,2024-03-05T00:00:00.250Z,,20,19,,,,NOT_FILLED",
]
COVERAGE = MarketCoverage({
    ("BTCUSDT", "1h"): (datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)),
    ("BTCUSDT", "4h"): (datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)),
    ("ETHUSDT", "1h"): (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)),
})
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def write_csv(tmp_path, lines, header=HEADER, name="export.csv"):
    p = tmp_path / name
    p.write_text("\n".join([header, *lines]) + "\n")
    return p


def problem(tmp_path, lines, header=HEADER, **kw) -> TradeInputError:
    kw.setdefault("now", NOW)
    with pytest.raises(TradeInputError) as exc:
        read_trade_export(write_csv(tmp_path, lines, header), **kw)
    return exc.value


def test_good_export(tmp_path):
    df, warnings = read_trade_export(write_csv(tmp_path, GOOD), coverage=COVERAGE, now=NOW)
    assert df.schema == TRADES.polars_schema
    assert df["decision_time"].to_list() == [
        datetime(2024, 3, 1, 8, tzinfo=UTC), datetime(2024, 3, 1, 8, tzinfo=UTC),
        datetime(2024, 3, 5, 0, 0, 0, 250000, tzinfo=UTC)]
    assert df["direction"].to_list() == ["BEARISH", "BULLISH", "BULLISH"]
    assert df["source"].unique().to_list() == ["user_export:export.csv"]
    assert df["entry_time"][2] is None
    assert warnings == ["symbol 'SOLUSDT': 1 trade(s), but the warehouse has no klines for it "
                        "(their context features will be empty)"]
    validate_trades(df)


def test_column_map_and_parquet(tmp_path):
    df = pl.DataFrame({
        "id": ["a"], "symbol": ["BTCUSDT"], "timeframe": ["1h"], "side": ["BEARISH"],
        "decision_time": [datetime(2024, 1, 1, 9, tzinfo=UTC)],
        "entry_price": [10.0], "stop_price": [11.0], "outcome": ["NOT_FILLED"], "notes": ["x"],
    }).with_columns(pl.col("decision_time").dt.convert_time_zone("Europe/Berlin"))
    p = tmp_path / "bt.parquet"
    df.write_parquet(p)
    out, warnings = read_trade_export(p, column_map={"id": "trade_id", "side": "direction"})
    assert out["trade_id"].to_list() == ["a"]
    assert out.schema["decision_time"] == TS
    assert out["decision_time"][0] == datetime(2024, 1, 1, 9, tzinfo=UTC)
    assert warnings == ["ignored 1 column(s) not in the trade contract: ['notes']"]


def test_naive_parquet_timestamps(tmp_path):
    df = pl.DataFrame({"trade_id": ["a"], "symbol": ["BTCUSDT"], "timeframe": ["1h"],
                       "direction": ["BEARISH"], "decision_time": [datetime(2024, 1, 1, 9)],
                       "entry_price": [10.0], "stop_price": [11.0], "outcome": ["NOT_FILLED"]})
    p = tmp_path / "naive.parquet"
    df.write_parquet(p)
    with pytest.raises(TradeInputError, match="timestamps without a time zone .* in 'decision_time'"):
        read_trade_export(p)


def test_unambiguous_times_are_accepted(tmp_path):
    """Epoch milliseconds and seconds, a '+00' offset, a space for 'T', and a Parquet Date."""
    lines = ["A,BTCUSDT,1h,BEARISH,1709280000000,,100,105,,,,NOT_FILLED",
             "B,BTCUSDT,1h,BEARISH,1709280000,,100,105,,,,NOT_FILLED",
             "C,BTCUSDT,1h,BEARISH,2024-03-01 08:00:00+00,,100,105,,,,NOT_FILLED"]
    df, _ = read_trade_export(write_csv(tmp_path, lines), now=NOW)
    assert df["decision_time"].to_list() == [datetime(2024, 3, 1, 8, tzinfo=UTC)] * 3
    p = tmp_path / "dates.parquet"
    pl.DataFrame({"trade_id": ["a"], "symbol": ["BTCUSDT"], "timeframe": ["1d"], "direction": ["BEARISH"],
                  "decision_time": [date(2024, 3, 1)], "entry_price": [10.0], "stop_price": [11.0],
                  "outcome": ["NOT_FILLED"]}).write_parquet(p)
    df, _ = read_trade_export(p, now=NOW)
    assert df["decision_time"][0] == datetime(2024, 3, 1, tzinfo=UTC)


def test_an_epoch_too_small_to_tell_is_named(tmp_path):
    err = problem(tmp_path, ["A,BTCUSDT,1h,BEARISH,20240301,,100,105,,,,NOT_FILLED"])
    p = err.problem("unreadable_time")
    assert "not epoch times" in p.message and "'decision_time'" in p.message
    assert p.rows == [1] and p.seen[1] == "decision_time='20240301'"


def test_misspelled_required_column(tmp_path):
    err = problem(tmp_path, GOOD, header=HEADER.replace("decision_time", "decison_time"))
    assert "missing required column 'decision_time' (did you mean 'decison_time'?" in str(err)
    assert "column_map={'decison_time': 'decision_time'}" in str(err)


def test_misspelled_optional_column(tmp_path):
    err = problem(tmp_path, GOOD, header=HEADER.replace("exit_price", "exit_prise"))
    assert "unknown column 'exit_prise' (did you mean 'exit_price'?" in str(err)


def test_column_map_naming_absent_column(tmp_path):
    err = problem(tmp_path, GOOD, column_map={"Entry": "entry_price"})
    assert "column_map names column 'Entry', which the file does not have" in str(err)


def test_column_map_onto_an_existing_column(tmp_path):
    err = problem(tmp_path, GOOD, column_map={"exit_price": "entry_price"})
    assert "column_map maps 'exit_price' to 'entry_price', but the file already has 'entry_price'" in str(err)


def test_column_map_target_typo_suggests_the_contract_column_not_the_typo(tmp_path):
    header = HEADER.replace("entry_price", "Entry")
    err = problem(tmp_path, GOOD, header=header, column_map={"Entry": "entry_prise"})
    assert err.rules() == ["column_map"]
    assert ("'Entry' is mapped to 'entry_prise', which is not a trade contract column (did you mean "
            "'entry_price'?)") in str(err)
    assert "{'entry_prise'" not in str(err)


def test_column_map_two_sources_for_one_target(tmp_path):
    header = HEADER.replace("entry_price", "Entry") + ",Price"
    err = problem(tmp_path, [g + ",1" for g in GOOD], header=header,
                  column_map={"Entry": "entry_price", "Price": "entry_price"})
    assert "['Entry', 'Price'] are all mapped to 'entry_price'" in str(err)


def test_column_map_setting_lists_every_problem_in_one_message():
    mapping, problems = parse_column_map("Entry=entry_price,Side,A=direction,B=direction,X=exit_prise")
    assert mapping["Entry"] == "entry_price"
    assert len(problems) == 3
    with pytest.raises(SettingsError) as exc:
        Settings(trades_column_map="Side,A=direction,B=direction")
    assert str(exc.value).count("QML_TRADES_COLUMN_MAP") == 2
    assert "'Side' lacks '='" in str(exc.value)


# Rows appended after GOOD are row 4.
@pytest.mark.parametrize("row, rule, message", [
    ("T9,BTCUSDT,4h,SIDEWAYS,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED", "unknown_direction", "unknown direction"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00,,100,105,,,,NOT_FILLED", "unreadable_time",
     "timestamps without a time zone"),
    ("T9,BTCUSDT,4h,BEARISH,01/03/2024 08:00 +0000,,100,105,,,,NOT_FILLED", "unreadable_time",
     "timestamps that are not ISO-8601"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-01T11:00:00Z,105,-1,LOSS",
     "exit_before_entry", "exit_time before entry_time"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T13:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-01T14:00:00Z,105,-1,LOSS",
     "entry_before_decision", "decision_time after entry_time"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,95,,,,NOT_FILLED", "stop_side", "stop on the wrong side"),
    ("T9,BTCUSDT,4h,BULLISH,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED", "stop_side", "stop on the wrong side"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,NaN,105,,,,NOT_FILLED", "not_finite", "'entry_price' that is not finite"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,inf,,,,NOT_FILLED", "not_finite", "'stop_price' that is not finite"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,1e400,,,,NOT_FILLED", "not_finite", "'stop_price' that is not finite"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-02T00:00:00Z,90,NaN,WIN",
     "not_finite", "'r_multiple' that is not finite"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-01T14:00:00Z,-3,1,WIN",
     "price_not_positive", "'exit_price' that is not positive"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,abc,105,,,,NOT_FILLED", "unreadable_number",
     "values that are not numbers in 'entry_price'"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,105,,,,MAYBE", "unknown_outcome", "unknown outcome"),
    ("T9,BTCUSDT,4H,BEARISH,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED", "unknown_timeframe", "unknown timeframe"),
    ("T1,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED", "duplicate_trade_id", "duplicate trade_id"),
    (",BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED", "missing_value",
     "missing value in required column 'trade_id'"),
    # a NOT_FILLED row relabelled WIN with r +50 and no entry or exit
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,105,,,50,WIN", "filled_incomplete",
     "entry_time, exit_time, exit_price and r_multiple are all required"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,,,,NOT_FILLED", "unfilled_has_fill",
     "NOT_FILLED or INVALIDATED trade never filled"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,105,,,1.5,INVALIDATED", "unfilled_has_fill",
     "r_multiple empty or 0"),
    # a WIN with r = -1 whose prices say +2
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-02T00:00:00Z,90,-1,WIN",
     "r_mismatch", "r_multiple differs from the gross result"),
    # a stopped-out trade relabelled WIN (its r agrees with its prices, its outcome does not)
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-02T00:00:00Z,105,-1,WIN",
     "win_not_positive", "a WIN (target hit) must have a positive gross result"),
    ("T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-02T00:00:00Z,90,2,LOSS",
     "loss_not_negative", "a LOSS (stop hit) must have a negative gross result"),
])
def test_each_bad_row_rule(tmp_path, row, rule, message):
    err = problem(tmp_path, [*GOOD, row])
    assert err.rules() == [rule], str(err)
    p = err.problems[0]
    assert message in p.message, p.message
    assert 4 in p.rows
    if row.startswith("T9"):
        assert "row 4 (trade_id 'T9')" in str(err)
    assert f"[{rule}]" in str(err)


def test_breaking_rows_show_the_values_seen(tmp_path):
    err = problem(tmp_path, [*GOOD, "T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,"
                             "2024-03-02T00:00:00Z,90,-1,WIN"])
    assert err.problem("r_mismatch").seen[4] == (
        "outcome=WIN, r_multiple=-1.0, expected_r=2.0, fees_r=NULL, funding_r=NULL")


def test_rules_needing_optional_columns(tmp_path):
    header = HEADER + ",target_price,gross_r_multiple,fees_r,funding_r"
    good_tail = ",80,2.0,0.01,0.0"
    rows = [GOOD[0] + good_tail,
            # BULLISH with its target below entry
            "A,BTCUSDT,4h,BULLISH,2024-03-01T08:00:00Z,,100,95,,,,NOT_FILLED,90,,,",
            "B,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED,1e400,,,",
            "C,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-02T00:00:00Z,90,2,WIN,80,2,inf,0",
            "D,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-02T00:00:00Z,90,2.5,WIN,80,2.5,0,0",
            "E,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,2024-03-01T12:00:00Z,100,105,2024-03-02T00:00:00Z,90,1.8,WIN,80,2,0.1,0"]
    err = problem(tmp_path, rows, header=header)
    found = {(p.rule, tuple(p.rows)) for p in err.problems}
    assert ("target_side", (2,)) in found
    assert ("not_finite", (3,)) in found and "'target_price'" in str(err)
    assert ("not_finite", (4,)) in found and "'fees_r'" in str(err)
    assert ("gross_r_mismatch", (5,)) in found
    # itemised costs leave only the rounding tolerance: 2 - 0.1 - 0 = 1.9, not 1.8
    assert ("r_mismatch", (6,)) in found
    assert len(found) == 5, str(err)


def test_outside_the_market_data_in_the_future_or_without_klines(tmp_path):
    rows = ["A,BTCUSDT,4h,BEARISH,2018-03-01T08:00:00Z,,100,105,,,,NOT_FILLED",
            "B,BTCUSDT,4h,BEARISH,2030-03-01T08:00:00Z,,100,105,,,,NOT_FILLED",
            "C,BTCUSDT,15m,BEARISH,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED",
            "D,ETHUSDT,1h,BEARISH,2023-12-31T08:00:00Z,,100,105,,,,NOT_FILLED"]
    err = problem(tmp_path, rows, coverage=COVERAGE)
    found = {p.rule: p for p in err.problems}
    assert found["decision_outside_market_data"].rows == [1, 2, 4]
    assert found["decision_outside_market_data"].seen[1] == (
        "decision_time=2018-03-01T08:00:00+00:00, klines=2023-01-01T00:00+00:00 .. 2024-06-01T00:00+00:00")
    assert found["time_in_future"].rows == [2]
    assert found["timeframe_without_klines"].rows == [3]
    assert "stored timeframes=1h, 4h" in found["timeframe_without_klines"].seen[3]


def test_all_problems_in_one_error(tmp_path):
    err = problem(tmp_path, [*GOOD,
                             "T9,BTCUSDT,4h,UP,2024-03-01T08:00:00Z,,100,105,,,,NOT_FILLED",
                             "T9,BTCUSDT,4h,BEARISH,2024-03-01T08:00:00Z,,100,95,,,,NOT_FILLED"])
    assert set(err.rules()) == {"unknown_direction", "stop_side", "duplicate_trade_id"}
    assert err.problem("duplicate_trade_id").rows == [4, 5]
    assert "nothing was read and the stored trades are unchanged" in str(err)


def test_semicolon_separator_and_decimal_comma_are_read(tmp_path):
    lines = ["T1;BTCUSDT;4h;BEARISH;2024-03-01T08:00:00Z;2024-03-01T12:00:00Z;100,5;105,25;2024-03-02T00:00:00Z;90;2,2;WIN",
             "T3;SOLUSDT;1h;BULLISH;2024-03-05T00:00:00Z;;20;19;;;;NOT_FILLED"]
    df, _ = read_trade_export(write_csv(tmp_path, lines, header=HEADER.replace(",", ";")), now=NOW)
    assert df["entry_price"][0] == 100.5 and df["stop_price"][0] == 105.25 and df["r_multiple"][0] == 2.2


def test_decimal_comma_file_with_a_dotted_number_names_it(tmp_path):
    lines = [";".join(line.split(",")) for line in GOOD] + ["T4;BTCUSDT;4h;BEARISH;2024-03-01T08:00:00Z;;1.000,5;1.100;;;;NOT_FILLED"]
    lines[0] = lines[0].replace(";100;", ";100,0;")
    err = problem(tmp_path, lines, header=HEADER.replace(",", ";"))
    p = err.problem("unreadable_number")
    assert "numbers holding '.' in a decimal-comma file" in p.message and "'entry_price'" in str(err)
    assert 4 in p.rows


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty (0 bytes)"),
    ((HEADER + "\n").encode(), "holds a header but no rows: an empty trade export is refused"),
    ((HEADER + "\n" + GOOD[0].replace("T1", "T\xe9") + "\n").encode("latin-1"),
     "(line 2): is not UTF-8 text: byte 0xE9"),
])
def test_file_level_refusals_name_the_file(tmp_path, content, expected):
    p = tmp_path / "export.csv"
    p.write_bytes(content)
    with pytest.raises(FileInputError) as exc:
        read_trade_export(p)
    assert str(exc.value).startswith(str(p)) and expected in str(exc.value)


def test_corrupt_parquet_is_named(tmp_path):
    p = tmp_path / "export.parquet"
    pl.DataFrame({"trade_id": ["a"] * 100}).write_parquet(p)
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(FileInputError, match=r"export\.parquet: is not a readable Parquet file"):
        read_trade_export(p)


def test_unsupported_suffix(tmp_path):
    p = tmp_path / "x.xlsx"
    p.write_text("x")
    with pytest.raises(FileInputError, match="unsupported file type '.xlsx'"):
        read_trade_export(p)


def test_the_reference_detector_trades_meet_the_same_rules():
    bad = pl.DataFrame({
        "trade_id": ["a"], "symbol": ["BTCUSDT"], "timeframe": ["1h"], "direction": ["BEARISH"],
        "decision_time": [datetime(2024, 1, 1, tzinfo=UTC)], "entry_price": [100.0], "stop_price": [105.0],
        "target_price": [110.0], "outcome": ["NOT_FILLED"], "source": ["reference_detector"]})
    bad = bad.with_columns([pl.lit(None, dtype=c.dtype).alias(c.name) for c in TRADES.columns if c.name not in bad.columns])
    bad = bad.select([pl.col(c.name).cast(c.dtype) for c in TRADES.columns])
    import pandera.polars as pa
    with pytest.raises(pa.errors.SchemaErrors, match="target_side"):
        validate_trades(bad)


def test_every_rule_is_documented_with_its_message():
    import re
    from pathlib import Path

    import qml_pipeline.trades.contract as contract

    source = Path(contract.__file__).read_text()
    names = set(re.findall(r'(?:RowRule|Problem)\(\s*"([a-z_]+)"', source)) | {"unreadable_time", "unreadable_number"}
    doc = (Path(__file__).parents[2] / "docs" / "input_errors.md").read_text()
    assert len(names) >= 25
    for name in names:
        assert f"| `{name}`" in doc or f"`{name}` /" in doc or f"/ `{name}`" in doc, name
    for rule in contract.ROW_RULES:
        assert rule.message.split(" (")[0].replace("|", "\\|") in doc, rule.name
