"""Bad input through the Dagster assets: the run fails with the library's readable message (a dg.Failure,
no chained traceback), the contract check names the bar, and nothing stored changes."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from dagster_project.defs.context import liquidations
from dagster_project.defs.raw_market_data import RAW_ASSETS, RAW_CHECKS
from dagster_project.defs.trades import trades
from dagster_project.partitions import range_tags
from dagster_project.resources import (CoinglassResource, MarketDataResource, ResearchResource, TradeSourceResource,
                                       WarehouseResource)
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from tests.dagster_runs import instance_with

UTC = timezone.utc
SAMPLE = Path(__file__).parents[2] / "sample_data"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
DAY = "2024-02-15"


def sample_copy(tmp_path: Path) -> Path:
    """The bundled sample (BTC files only) in tmp_path, to be damaged by a test."""
    root = tmp_path / "sample"
    futures = root / "freqtrade" / "binance" / "futures"
    futures.mkdir(parents=True)
    for f in (SAMPLE / "freqtrade" / "binance" / "futures").glob("BTC_*"):
        shutil.copy(f, futures / f.name)
    shutil.copytree(SAMPLE / "open_interest", root / "open_interest")
    return root


def edit_feather(path: Path, edit) -> None:
    df = pl.read_ipc(path)
    edit(df).with_columns(pl.col("date").cast(df.schema["date"])).write_ipc(path)


def materialize_raw(warehouse: Path, sample: Path, asset: str, refetch: bool = False) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*RAW_ASSETS, *RAW_CHECKS], instance=instance_with(["BTCUSDT"]), raise_on_error=False, run_config=QUIET,
        selection=dg.AssetSelection.assets(asset) | dg.AssetSelection.checks_for_assets(asset),
        resources={"warehouse": WarehouseResource(root=str(warehouse)),
                   "market": MarketDataResource(source="sample", sample_dir=str(sample), refetch=refetch)},
        tags=range_tags("BTCUSDT", DAY, DAY))


def failure_of(result: dg.ExecuteInProcessResult):
    """(description shown in the UI, the error info) of the run's step failure."""
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    data = event.step_failure_data
    assert data.error.cause is None, "a chained traceback would be shown under the message"
    assert data.error.message.startswith("dagster._core.definitions.events.Failure: ")
    return data.user_failure_data.description, data.error


def test_funding_off_the_grid_fails_with_the_readable_message(tmp_path):
    sample = sample_copy(tmp_path)
    assert materialize_raw(tmp_path / "wh", sample, "funding_rates").success
    before = Warehouse(tmp_path / "wh").read(schemas.FUNDING_RATES)
    path = sample / "freqtrade" / "binance" / "futures" / "BTC_USDT_USDT-8h-funding_rate.feather"
    edit_feather(path, lambda df: df.with_columns(
        pl.when(pl.col("date") == datetime(2024, 2, 15, 8, tzinfo=UTC)).then(pl.col("date") + timedelta(minutes=17))
        .otherwise(pl.col("date")).alias("date")))
    result = materialize_raw(tmp_path / "wh", sample, "funding_rates", refetch=True)  # complete: asked to re-read
    assert not result.success
    description, _ = failure_of(result)
    assert description == (
        f"funding_rates BTCUSDT [2024-01-01, 2024-02-01): {path} BTCUSDT: 1 settlement time(s) lie more than 5 "
        "minutes from the hourly settlement grid: 2024-02-15T08:17:00+00:00. That is not millisecond jitter, so "
        "they are not snapped; expected settlements on the hour (e.g. 08:00:00, served as 07:59:59.998 or "
        "08:00:00.005)")
    assert Warehouse(tmp_path / "wh").read(schemas.FUNDING_RATES).equals(before)


def test_two_different_candles_for_one_hour_fail_naming_both_rows(tmp_path):
    sample = sample_copy(tmp_path)
    path = sample / "freqtrade" / "binance" / "futures" / "BTC_USDT_USDT-1h-futures.feather"
    edit_feather(path, lambda df: pl.concat([df, df.filter(pl.col("date") == datetime(2024, 2, 15, 9, tzinfo=UTC))
                                             .with_columns(pl.col("close") * 1.1)]))
    result = materialize_raw(tmp_path / "wh", sample, "klines")
    description, _ = failure_of(result)
    assert description.startswith(f"klines BTCUSDT 1h [2024-01-01, 2024-02-01): {path}: 1 key(s) appear twice with "
                                  "different values")
    assert "rows 19354 and 26391 (date 2024-02-15T09:00:00+00:00): close 52199.2 vs 57419.12" in description
    assert Warehouse(tmp_path / "wh").read(schemas.KLINES).height == 0


def test_an_implausible_bar_fails_the_contract_check_naming_the_bar(tmp_path):
    sample = sample_copy(tmp_path)
    path = sample / "freqtrade" / "binance" / "futures" / "BTC_USDT_USDT-1h-futures.feather"
    spike = pl.col("date") == datetime(2024, 2, 15, 12, tzinfo=UTC)
    edit_feather(path, lambda df: df.with_columns(
        *[pl.when(spike).then(pl.col(c) * 1000).otherwise(pl.col(c)).alias(c) for c in ("open", "high", "low", "close")]))
    result = materialize_raw(tmp_path / "wh", sample, "klines")
    assert not result.success
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "contract")
    assert not check.passed
    description, _ = failure_of(result)
    assert ("BTCUSDT 1h event_time 2024-02-15 12:00:00+00:00 column close: fails 'plausible bar: "
            "|ln(close / previous close)| <= max(50 x its median over 48 bars, 0.5)' (value: 52357300.0)") in description
    assert "row 12" not in description
    assert Warehouse(tmp_path / "wh").read(schemas.KLINES).height == 0


def test_a_coinglass_key_with_a_newline_fails_readably_and_is_never_recorded(tmp_path, monkeypatch):
    secret = "0123456789abcdef" + "\n" + "fedcba9876543210"
    monkeypatch.setenv("QML_TEST_BAD_COINGLASS_KEY", secret)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([liquidations], instance=instance, raise_on_error=False, run_config=QUIET,
                            resources={"warehouse": WarehouseResource(root=str(tmp_path)),
                                       "market": MarketDataResource(),
                                       "coinglass": CoinglassResource(api_key=dg.EnvVar("QML_TEST_BAD_COINGLASS_KEY"))})
    description, error = failure_of(result)
    assert description.startswith("Coinglass: COINGLASS_API_KEY holds a control character (U+000A) at position 17 "
                                  "of 33")
    recorded = [str(e) for e in instance.all_logs(result.run_id)] + [error.to_string(), str(result.all_events)]
    for text in recorded:
        assert "0123456789abcdef" not in text and "fedcba9876543210" not in text


# ---------------------------------------------------------------- the trades asset

def _klines(symbol: str, interval_h: int, n: int) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    opens = [t0 + timedelta(hours=interval_h * i) for i in range(n)]
    return schemas.conform(schemas.KLINES, pl.DataFrame({
        "symbol": symbol, "interval": f"{interval_h}h", "event_time": opens,
        "close_time": [t + timedelta(hours=interval_h) for t in opens], "open": close, "high": close * 1.002,
        "low": close * 0.998, "close": close, "volume": 1.0,
        "available_at": [t + timedelta(hours=interval_h) for t in opens], "source": "test"}))


HEADER = "trade_id,symbol,timeframe,direction,decision_time,entry_time,entry_price,stop_price,exit_time,exit_price,r_multiple,outcome"
GOOD = ["T1,BTCUSDT,1h,BEARISH,2024-01-02T08:00:00Z,2024-01-02T12:00:00+00:00,100,105,2024-01-03T00:00:00Z,90,2.0,WIN",
        "T2,BTCUSDT,1h,BULLISH,2024-01-03T10:00:00Z,2024-01-03T11:00:00Z,50,48,2024-01-03T13:00:00Z,48,-1.0,LOSS",
        "T3,BTCUSDT,1h,BULLISH,2024-01-05T00:00:00Z,,20,19,,,,NOT_FILLED"]


@pytest.fixture
def trade_warehouse(tmp_path) -> Path:
    root = tmp_path / "wh"
    Warehouse(root).replace_table(schemas.KLINES, _klines("BTCUSDT", 1, 24 * 30))
    export = tmp_path / "good.csv"
    export.write_text("\n".join([HEADER, *GOOD]) + "\n")
    assert materialize_trades(root, export).success
    return root


def materialize_trades(root: Path, export: Path) -> dg.ExecuteInProcessResult:
    return dg.materialize([trades], raise_on_error=False, run_config=QUIET, instance=dg.DagsterInstance.ephemeral(),
                          resources={"warehouse": WarehouseResource(root=str(root)),
                                     "trade_source": TradeSourceResource(export_path=str(export)),
                                     "research": ResearchResource()})


@pytest.mark.parametrize("lines, expected", [
    ([], "holds a header but no rows: an empty trade export is refused, so nothing stored is replaced by nothing"),
    (["X1,BTCUSDT,1h,BEARISH,2024-01-02T08:00:00Z,,100,105,,,50,WIN"], "[filled_incomplete]"),
    (["X1,BTCUSDT,1h,BEARISH,2024-01-02T08:00:00Z,2024-01-02T12:00:00Z,100,105,2024-01-03T00:00:00Z,90,-1,WIN"],
     "[r_mismatch]"),
    (["X1,BTCUSDT,1h,BEARISH,2018-01-02T08:00:00Z,,100,105,,,,NOT_FILLED"], "[decision_outside_market_data]"),
    (["X1,BTCUSDT,15m,BEARISH,2024-01-02T08:00:00Z,,100,105,,,,NOT_FILLED"], "[timeframe_without_klines]"),
    (["X1,BTCUSDT,1h,BEARISH,2024-01-02T08:00:00Z,,100,inf,,,,NOT_FILLED"], "[not_finite]"),
])
def test_a_refused_export_keeps_the_stored_trades(trade_warehouse, tmp_path, lines, expected):
    before = Warehouse(trade_warehouse).read(schemas.TRADES)
    assert before.height == 3
    export = tmp_path / "bad.csv"
    export.write_text("\n".join([HEADER, *lines]) + "\n")
    result = materialize_trades(trade_warehouse, export)
    assert not result.success
    description, _ = failure_of(result)
    assert expected in description and "bad.csv" in description
    assert Warehouse(trade_warehouse).read(schemas.TRADES).equals(before)
