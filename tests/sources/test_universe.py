"""Symbols are data: the symbol_universe sensor adds the configured symbols or Binance's USD-M perpetuals (from the
REST fake's exchangeInfo) as dynamic partitions, keeps delisted ones, never removes one, and the daily refresh
covers a new symbol with no code change."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
import pytest

from dagster_project.defs.schedules import refresh_of_instance
from dagster_project.defs.universe import symbol_universe
from dagster_project.partitions import SYMBOLS
from dagster_project.resources import MarketDataResource
from qml_pipeline.config import Settings, SettingsError
from qml_pipeline.sources.universe import binance_usdm_universe, configured_universe
from tests.fake_binance import EXCHANGE_INFO_PATH

UTC = timezone.utc


def evaluate(instance: dg.DagsterInstance, market: MarketDataResource) -> dg.SensorResult | dg.SkipReason:
    """One sensor tick, its partition requests applied to the instance as the daemon does."""
    result = symbol_universe(dg.build_sensor_context(instance=instance, resources={"market": market}))
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_the_configured_universe_is_added_once() -> None:
    instance = dg.DagsterInstance.ephemeral()
    market = MarketDataResource(source="sample", universe="configured", symbols=["BTCUSDT", "ETHUSDT"])
    first = evaluate(instance, market)
    assert isinstance(first, dg.SensorResult)
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [["BTCUSDT", "ETHUSDT"]]
    assert instance.get_dynamic_partitions(SYMBOLS.name) == ["BTCUSDT", "ETHUSDT"]
    again = evaluate(instance, market)
    assert isinstance(again, dg.SkipReason) and "2 symbol(s) from QML_SYMBOLS" in again.skip_message


def test_binance_usdm_adds_perpetuals_keeps_delisted_ones_and_never_removes_a_partition(fake_binance) -> None:
    listed = datetime(2023, 1, 1, tzinfo=UTC)
    fake_binance.add_symbol("BTCUSDT", datetime(2019, 9, 8, tzinfo=UTC))
    fake_binance.add_symbol("ETHUSDT", datetime(2019, 11, 27, tzinfo=UTC))
    fake_binance.add_symbol("LUNAUSDT", listed, status="SETTLING", delivery=datetime(2024, 5, 1, tzinfo=UTC))
    fake_binance.add_symbol("BTCUSDT_250926", listed)
    fake_binance.symbols["BTCUSDT_250926"]["contractType"] = "CURRENT_QUARTER"  # a delivery future
    fake_binance.add_symbol("币安人生USDT", listed)  # listed by Binance, not a usable path or partition key
    instance = dg.DagsterInstance.ephemeral()
    market = MarketDataResource(source="binance", universe="binance_usdm", binance_fapi_url=fake_binance.url)

    result = evaluate(instance, market)
    assert isinstance(result, dg.SensorResult)
    assert instance.get_dynamic_partitions(SYMBOLS.name) == ["BTCUSDT", "ETHUSDT", "LUNAUSDT"]  # listing order
    assert fake_binance.count(EXCHANGE_INFO_PATH) == 1

    # LUNA disappears from exchangeInfo and a new perpetual is listed: one is added, none removed
    del fake_binance.symbols["LUNAUSDT"]
    fake_binance.add_symbol("SOLUSDT", datetime(2024, 6, 1, tzinfo=UTC))
    result = evaluate(instance, market)
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [["SOLUSDT"]]
    assert instance.get_dynamic_partitions(SYMBOLS.name) == ["BTCUSDT", "ETHUSDT", "LUNAUSDT", "SOLUSDT"]
    assert all(isinstance(r, dg.AddDynamicPartitionsRequest) for r in result.dynamic_partitions_requests)

    # the next daily refresh covers the new symbol: the partitions are read when the schedule runs
    runs = refresh_of_instance(instance, "2024-06-02")
    assert runs[-1].tags["dagster/asset_partition_range_end"] == "SOLUSDT|2024"
    assert isinstance(evaluate(instance, market), dg.SkipReason)


def test_universe_from_exchange_info_rows_names_what_it_refuses() -> None:
    rows = {
        "ETHUSDT": {"symbol": "ETHUSDT", "contractType": "PERPETUAL", "status": "TRADING", "onboardDate": 2},
        "BTCUSDT": {"symbol": "BTCUSDT", "contractType": "PERPETUAL", "status": "TRADING", "onboardDate": 1},
        "FTTUSDT": {"symbol": "FTTUSDT", "contractType": "PERPETUAL", "status": "CLOSE", "onboardDate": 3},
        "btc-usdt": {"symbol": "btc-usdt", "contractType": "PERPETUAL", "status": "TRADING", "onboardDate": 4},
        "ETHUSDT_251226": {"symbol": "ETHUSDT_251226", "contractType": "NEXT_QUARTER", "onboardDate": 5},
    }
    universe = binance_usdm_universe(rows)
    assert universe.symbols == ("BTCUSDT", "ETHUSDT", "FTTUSDT")
    assert universe.delisted == ("FTTUSDT",)
    assert len(universe.refused) == 1 and "'btc-usdt' is not a symbol" in universe.refused[0]
    assert "3 symbol(s) from Binance USD-M exchangeInfo; 1 delisted (kept: FTTUSDT); 1 refused" in universe.describe()
    assert configured_universe(["BTCUSDT", "BTCUSDT", "ETHUSDT"]).symbols == ("BTCUSDT", "ETHUSDT")


def test_universe_setting_is_validated() -> None:
    assert Settings.from_env({"QML_UNIVERSE": "binance_usdm", "QML_SOURCE": "binance"}).universe == "binance_usdm"
    with pytest.raises(SettingsError, match="QML_UNIVERSE='all': expected one of"):
        Settings.from_env({"QML_UNIVERSE": "all"})
    with pytest.raises(SettingsError, match="QML_UNIVERSE=binance_usdm needs QML_SOURCE=binance"):
        Settings.from_env({"QML_UNIVERSE": "binance_usdm"})
    with pytest.raises(SettingsError, match="QML_REFRESH_SYMBOLS_PER_RUN=0"):
        Settings.from_env({"QML_REFRESH_SYMBOLS_PER_RUN": "0"})
    assert Settings.from_env({"QML_BINANCE_ARCHIVE_URL": "file:///data/binance"}).binance_archive_url == \
        "file:///data/binance"


def test_the_executor_is_configuration() -> None:
    import dagster as dg

    from dagster_project.executors import configured_executor

    assert configured_executor("default") is None
    assert configured_executor("multiprocess") is dg.multiprocess_executor
    with pytest.raises(ImportError, match="QML_EXECUTOR=k8s needs the dagster-k8s package"):
        configured_executor("k8s")
    with pytest.raises(SettingsError, match="QML_EXECUTOR='spark': expected one of"):
        Settings.from_env({"QML_EXECUTOR": "spark"})
