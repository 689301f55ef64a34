"""Bad market-data files (Freqtrade data directory, the sample's open-interest CSV): each is refused
naming the file, the line or row, the column, what was seen and what is expected; nothing is absorbed."""

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from qml_pipeline.sources.files import FileInputError
from qml_pipeline.sources.freqtrade import FreqtradeDataDir
from qml_pipeline.sources.funding import FundingTimeError
from qml_pipeline.sources.sample import read_hourly_oi_csv
from qml_pipeline.store import schemas

UTC = timezone.utc
SAMPLE = Path(__file__).parents[2] / "sample_data"
SRC = SAMPLE / "freqtrade" / "binance" / "futures"
ALL = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))
DAY = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
OI_HEADER = "hour_end_ms,sum_open_interest_value,sum_open_interest"


def ft_dir(tmp_path: Path, frames: dict[str, pl.DataFrame] | None = None) -> Path:
    """A Freqtrade data directory in tmp_path: the named frames written as feather files."""
    futures = tmp_path / "binance" / "futures"
    futures.mkdir(parents=True)
    for name, df in (frames or {}).items():
        df.write_ipc(futures / name)
    return futures


def candles(hours: int = 24) -> pl.DataFrame:
    return pl.read_ipc(SRC / "BTC_USDT_USDT-1h-futures.feather").filter(
        pl.col("date") >= DAY[0]).head(hours)


# ---------------------------------------------------------------- Freqtrade files

def test_truncated_feather_names_the_file(tmp_path):
    futures = ft_dir(tmp_path)
    data = (SRC / "BTC_USDT_USDT-1h-futures.feather").read_bytes()
    (futures / "BTC_USDT_USDT-1h-futures.feather").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileInputError) as exc:
        FreqtradeDataDir(tmp_path).klines("BTCUSDT", "1h", *DAY)
    message = str(exc.value)
    assert message.startswith(str(futures / "BTC_USDT_USDT-1h-futures.feather"))
    assert "is not a readable Feather (Arrow IPC) file" in message and "truncated" in message


def test_zero_byte_feather_names_the_file(tmp_path):
    futures = ft_dir(tmp_path)
    (futures / "BTC_USDT_USDT-1h-futures.feather").write_bytes(b"")
    with pytest.raises(FileInputError, match=r"BTC_USDT_USDT-1h-futures\.feather: is empty \(0 bytes\)"):
        FreqtradeDataDir(tmp_path).klines("BTCUSDT", "1h", *DAY)


def test_missing_column_in_a_freqtrade_file(tmp_path):
    ft_dir(tmp_path, {"BTC_USDT_USDT-1h-futures.feather": candles().rename({"close": "Close"})})
    with pytest.raises(FileInputError, match=r"lacks column\(s\) 'close' \(did you mean 'Close'\?\)"):
        FreqtradeDataDir(tmp_path).klines("BTCUSDT", "1h", *DAY)


def test_conflicting_duplicate_candles_are_refused_naming_both_rows(tmp_path):
    df = candles()
    twin = df.slice(5, 1).with_columns(pl.col("close") * 1.1)
    ft_dir(tmp_path, {"BTC_USDT_USDT-1h-futures.feather": pl.concat([df, twin])})
    with pytest.raises(schemas.ConflictingRowsError) as exc:
        FreqtradeDataDir(tmp_path).klines("BTCUSDT", "4h", *DAY)  # the 4h bar would be built from it
    message = str(exc.value)
    assert "BTC_USDT_USDT-1h-futures.feather: 1 key(s) appear twice with different values" in message
    assert "rows 6 and 25 (date 2024-01-01T05:00:00+00:00): close 42272.6 vs 46499.86" in message


def test_identical_duplicate_candles_are_collapsed_and_counted(tmp_path):
    df = candles()
    ft_dir(tmp_path, {"BTC_USDT_USDT-1h-futures.feather": pl.concat([df, df.slice(5, 2)])})
    ft = FreqtradeDataDir(tmp_path)
    assert ft.klines("BTCUSDT", "1h", *DAY).height == 24
    assert ft.identical_duplicates == {"BTC_USDT_USDT-1h-futures.feather": 2}


def test_two_funding_rows_on_one_settlement_are_refused(tmp_path):
    funding = pl.read_ipc(SRC / "BTC_USDT_USDT-8h-funding_rate.feather").head(5)
    second = funding.slice(2, 1).with_columns((pl.col("date") + timedelta(milliseconds=3)).cast(funding.schema["date"]),
                                          pl.col("open") * 2)
    ft_dir(tmp_path, {"BTC_USDT_USDT-8h-funding_rate.feather": pl.concat([funding, second])})
    with pytest.raises(schemas.ConflictingRowsError) as exc:
        FreqtradeDataDir(tmp_path).funding_rates("BTCUSDT", *ALL)
    message = str(exc.value)
    assert "BTC_USDT_USDT-8h-funding_rate.feather BTCUSDT (two rows for one settlement)" in message
    assert "event_time 2021-12-01T16:00:00+00:00" in message and "funding_rate" in message


def test_jittered_repeat_of_one_settlement_is_collapsed(tmp_path):
    funding = pl.read_ipc(SRC / "BTC_USDT_USDT-8h-funding_rate.feather").head(5)
    jittered = funding.slice(2, 1).with_columns((pl.col("date") + timedelta(milliseconds=3)).cast(funding.schema["date"]))
    ft_dir(tmp_path, {"BTC_USDT_USDT-8h-funding_rate.feather": pl.concat([funding, jittered])})
    assert FreqtradeDataDir(tmp_path).funding_rates("BTCUSDT", *ALL).height == 5


def test_funding_off_the_grid_names_symbol_and_time(tmp_path):
    funding = pl.read_ipc(SRC / "BTC_USDT_USDT-8h-funding_rate.feather").head(3)
    funding = funding.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(pl.col("date") + timedelta(minutes=17))
                                   .otherwise(pl.col("date")).alias("date"))
    ft_dir(tmp_path, {"BTC_USDT_USDT-8h-funding_rate.feather": funding})
    with pytest.raises(FundingTimeError) as exc:
        FreqtradeDataDir(tmp_path).funding_rates("BTCUSDT", *ALL)
    assert "BTCUSDT: 1 settlement time(s) lie more than 5 minutes from the hourly settlement grid: " \
           "2021-12-01T08:17:00+00:00" in str(exc.value)


def test_inf_high_and_a_bar_far_from_its_neighbours_fail_the_contract_by_name(tmp_path):
    df = candles().with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(float("inf")).otherwise(pl.col("high")).alias("high")).with_columns(
        *[pl.when(pl.int_range(pl.len()) == 12).then(pl.col(c) * 1000).otherwise(pl.col(c)).alias(c)
          for c in ("open", "high", "low", "close")])
    ft_dir(tmp_path, {"BTC_USDT_USDT-1h-futures.feather": df})
    k = FreqtradeDataDir(tmp_path).klines("BTCUSDT", "1h", *DAY)
    with pytest.raises(schemas.ValidationError) as exc:
        schemas.validate(schemas.KLINES, k)
    message = str(exc.value)
    assert "BTCUSDT 1h event_time 2024-01-01 03:00:00+00:00 column high: fails 'finite number' (value: inf)" in message
    assert "BTCUSDT 1h event_time 2024-01-01 12:00:00+00:00 column close: fails 'plausible bar: " \
           "|ln(close / previous close)| <= max(50 x its median over 48 bars, 0.5)'" in message


def test_plausibility_thresholds_are_configurable():
    k = FreqtradeDataDir(SAMPLE / "freqtrade").klines("BTCUSDT", "1h", *DAY)
    jumpy = k.with_columns(pl.when(pl.int_range(pl.len()) == 12).then(pl.col("close") * 1.05)
                           .otherwise(pl.col("close")).alias("close"),
                           pl.when(pl.int_range(pl.len()) == 12).then(pl.col("high") * 1.05)
                           .otherwise(pl.col("high")).alias("high"))
    assert schemas.validation_failures(schemas.KLINES, jumpy).height == 0  # +5% is a market move
    strict = schemas.BarPlausibility(factor=5, min_log_move=0.01, window=24)
    failures = schemas.validation_failures(schemas.KLINES, jumpy, plausibility=strict)
    assert "BTCUSDT 1h event_time 2024-01-01 12:00:00+00:00" in failures["row"].to_list()


def test_the_bundled_real_klines_pass_the_plausibility_check():
    ft = FreqtradeDataDir(SAMPLE / "freqtrade")
    for symbol in ft.symbols():
        for interval in ("1h", "4h", "1d"):
            assert schemas.validation_failures(schemas.KLINES, ft.klines(symbol, interval, *ALL)).height == 0


# ---------------------------------------------------------------- the sample's open-interest CSV

def oi_file(tmp_path: Path, text: str | bytes, name: str = "BTCUSDT-binance-oi-1h-x.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty (0 bytes)"),
    (OI_HEADER + "\n", "holds a header but no rows"),
    ("hour_end_ms,sum_open_interest\n1638320400000,59287.999\n",
     "an hourly open-interest file lacks column(s) 'sum_open_interest_value'"),
    (OI_HEADER + "\n1638320400000,3416622719.65,59287.999\n1638324000000,3388647886.55,n/a\n",
     "(line 3, column 'sum_open_interest'): 1 values that are not numbers (line 3); seen 'n/a'; expected a number"),
    ("hour_end_ms,sum_open_interest_value,sum_open_interest,note\n1638320400000,3416622719.65,59287.999,Z\xfcrich\n"
     .encode("latin-1"), "(line 2): is not UTF-8 text: byte 0xFC, byte 40 of the line, cannot be decoded (it looks "
                         "Latin-1"),
    (OI_HEADER + "\n20211201,3416622719.65,59287.999\n", "numbers that are not epoch times"),
    (OI_HEADER + "\n1638320400000,3416622719.65,59287.999\n1638320400000,3416622719.65,59288.5\n",
     "lines 2 and 3 (hour_end 2021-12-01T01:00:00+00:00): sum_open_interest 59287.999 vs 59288.5"),
])
def test_bad_open_interest_files_are_named(tmp_path, content, expected):
    p = oi_file(tmp_path, content)
    with pytest.raises((FileInputError, schemas.ConflictingRowsError)) as exc:
        read_hourly_oi_csv(p, "BTCUSDT")
    assert str(p) in str(exc.value) and expected in str(exc.value), str(exc.value)


def test_semicolon_and_decimal_comma_open_interest_is_read(tmp_path):
    p = oi_file(tmp_path, "hour_end_ms;sum_open_interest_value;sum_open_interest\n"
                          "1638320400000;3416622719,65;59287,999\n1638324000;3388647886,55;59369,448\n")
    oi = read_hourly_oi_csv(p, "BTCUSDT")
    assert oi["open_interest"].to_list() == [59287.999, 59369.448]  # epoch ms and epoch s alike
    assert oi["available_at"].to_list() == [datetime(2021, 12, 1, 1, tzinfo=UTC), datetime(2021, 12, 1, 2, tzinfo=UTC)]


def test_the_bundled_open_interest_file_still_reads(tmp_path):
    src = next((SAMPLE / "open_interest").glob("*.csv"))
    shutil.copy(src, tmp_path / src.name)
    assert read_hourly_oi_csv(tmp_path / src.name, "BTCUSDT").height == 26413
