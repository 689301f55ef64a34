"""Settings are validated when they load: one message lists every problem, naming the variable."""

import subprocess
import sys
from pathlib import Path

import pytest

from qml_pipeline.config import Settings, SettingsError
from qml_pipeline.store.schemas import BarPlausibility

ROOT = Path(__file__).parent.parent


def test_defaults_load():
    s = Settings.from_env({})
    assert s.symbols == ("BTCUSDT", "ETHUSDT") and s.column_map() == {}
    assert s.bar_plausibility() == BarPlausibility()


def test_every_problem_in_one_message():
    env = {"QML_SYMBOLS": "BTCUSDT,../../etc,BTC\"USDT", "QML_KLINE_INTERVALS": "1h,15x",
           "QML_TRADE_TIMEFRAMES": "4H", "QML_OI_PERIOD": "7m", "QML_MODEL_EPOCHS": "many",
           "QML_FUNDING_RATE_CAP": "nan", "QML_OVERRIDE_GATES": "maybe", "QML_START_DATE": "01/12/2021",
           "QML_SOURCE": "bybit", "QML_BAR_OUTLIER_FACTOR": "0.5", "QML_BINANCE_FAPI_URL": "fapi.binance.com",
           "QML_TRADES_COLUMN_MAP": "Entry=entry_prise,Side,A=direction,B=direction"}
    with pytest.raises(SettingsError) as exc:
        Settings.from_env(env)
    message = str(exc.value)
    assert message.startswith(f"{len(exc.value.problems)} setting(s) are wrong")
    expected = [
        "QML_SYMBOLS: '../../etc' is not a symbol: expected 2 to 30 capital letters or digits (^[A-Z0-9]{2,30}$)",
        "QML_SYMBOLS: 'BTC\"USDT' is not a symbol",
        "QML_KLINE_INTERVALS: ['15x'] not interval(s)",
        "QML_TRADE_TIMEFRAMES: ['4H'] not interval(s)",
        "QML_OI_PERIOD='7m': expected one of",
        "QML_MODEL_EPOCHS='many': expected a whole number",
        "QML_FUNDING_RATE_CAP=nan: expected a fraction per interval",
        "QML_OVERRIDE_GATES='maybe': expected one of",
        "QML_START_DATE='01/12/2021': expected a date as YYYY-MM-DD",
        "QML_SOURCE='bybit': expected one of ['sample', 'binance']",
        "QML_BAR_OUTLIER_FACTOR=0.5: expected a multiple of the median move above 1",
        "QML_BINANCE_FAPI_URL='fapi.binance.com': expected an http(s) URL",
        "QML_TRADES_COLUMN_MAP: 'Side' lacks '='",
        "QML_TRADES_COLUMN_MAP: 'Entry' is mapped to 'entry_prise', which is not a trade contract column "
        "(did you mean 'entry_price'?)",
        "QML_TRADES_COLUMN_MAP: ['A', 'B'] are all mapped to 'direction'",
    ]
    for part in expected:
        assert part in message, part
    assert len(exc.value.problems) == len(expected)


def test_empty_and_repeated_symbols():
    with pytest.raises(SettingsError, match="QML_SYMBOLS is empty"):
        Settings(symbols=())
    with pytest.raises(SettingsError, match=r"QML_SYMBOLS names \['BTCUSDT'\] more than once"):
        Settings(symbols=("BTCUSDT", "BTCUSDT"))


def test_a_bad_symbol_stops_the_definitions_loading_with_the_settings_message(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "QML_SYMBOLS": "BTCUSDT,../../etc",
           "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", "import dagster_project.definitions"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "qml_pipeline.config.SettingsError: 1 setting(s) are wrong" in proc.stderr
    assert "QML_SYMBOLS: '../../etc' is not a symbol" in proc.stderr
