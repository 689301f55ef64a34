"""Symbol and period mapping between venues, the rows built from a venue's answer, and the venue column's
contract."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from qml_pipeline.sources.venue_frames import funding_frame, open_interest_frame
from qml_pipeline.sources.venues import (
    UnknownSymbolError,
    project_symbol,
    split_symbol,
    venue_period,
    venue_symbol,
)
from qml_pipeline.store import schemas
from qml_pipeline.timeutil import UTC, to_ms

T0 = datetime(2024, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.mark.parametrize("symbol, binance, bybit, okx", [
    ("BTCUSDT", "BTCUSDT", "BTCUSDT", "BTC-USDT-SWAP"),
    ("ETHUSDT", "ETHUSDT", "ETHUSDT", "ETH-USDT-SWAP"),
    ("SOLUSDC", "SOLUSDC", "SOLUSDC", "SOL-USDC-SWAP"),
])
def test_symbol_mapping_round_trips(symbol, binance, bybit, okx):
    assert [venue_symbol(v, symbol) for v in ("binance", "bybit", "okx")] == [binance, bybit, okx]
    assert project_symbol("okx", okx) == project_symbol("bybit", bybit) == project_symbol("binance", binance) == symbol


@pytest.mark.parametrize("venue, name, phrase", [
    ("okx", "BTCUSD", "QUOTE in ('USDT', 'USDC')"),
    ("bybit", "USDT", "QUOTE in"),
    ("okx", "1000PEPEUSDT", "multiplier-prefixed"),
])
def test_unmappable_symbol_names_venue_and_symbol(venue, name, phrase):
    with pytest.raises(UnknownSymbolError) as exc:
        venue_symbol(venue, name)
    assert str(exc.value).startswith(f"{venue}: unknown symbol {name!r}") and phrase in str(exc.value)
    assert exc.value.venue == venue and exc.value.symbol == name


def test_okx_id_that_is_not_a_swap_is_refused():
    with pytest.raises(UnknownSymbolError, match="okx: unknown symbol 'BTC-USDT-240628'"):
        project_symbol("okx", "BTC-USDT-240628")
    assert split_symbol("okx", "DOGEUSDT") == ("DOGE", "USDT")


def test_unknown_venue():
    with pytest.raises(ValueError, match="unknown venue 'kraken'"):
        venue_symbol("kraken", "BTCUSDT")


def test_periods_per_venue():
    assert venue_period("bybit", "5m") == "5min" and venue_period("bybit", "1d") == "1d"
    assert venue_period("okx", "1h") == "1H" and venue_period("okx", "1d") == "1Dutc"
    assert venue_period("binance", "12h") == "12h"
    with pytest.raises(ValueError, match=r"bybit serves open interest for periods \['5m', '15m', '30m', '1h', '4h', "
                                         r"'1d'\] \(Binance notation\); got '12h'"):
        venue_period("bybit", "12h")


def _oi(venue: str = "okx") -> pl.DataFrame:
    return open_interest_frame(venue, f"{venue}_rest", "BTCUSDT", 3_600_000, [to_ms(T0), to_ms(T0 + H)],
                               [100.0, 101.0], [6e6, None], T0, T0 + 2 * H, T0 + 3 * H, 0)


def test_venue_rows_meet_the_table_contract_and_unknown_venues_fail_it():
    df = _oi()
    assert df.columns == schemas.OPEN_INTEREST.names and df["venue"].to_list() == ["okx", "okx"]
    schemas.validate(schemas.OPEN_INTEREST, df)
    with pytest.raises(schemas.ValidationError) as exc:
        schemas.validate(schemas.OPEN_INTEREST, df.with_columns(pl.lit("kraken").alias("venue")))
    failures = exc.value.failures
    assert failures["column"].unique().to_list() == ["venue"] and failures["failure_case"].to_list() == ["kraken"] * 2
    assert "isin(['binance', 'bybit', 'okx'])" in str(exc.value)
    # a frame without the column (the Binance readers, the archive, the sample) is Binance's
    assert schemas.conform(schemas.OPEN_INTEREST, df.drop("venue"))["venue"].unique().to_list() == ["binance"]


def test_same_stamp_on_two_venues_is_two_rows():
    both = pl.concat([_oi("okx"), _oi("bybit")])
    schemas.validate(schemas.OPEN_INTEREST, both)  # the key starts with the venue
    with pytest.raises(schemas.ValidationError, match="one row per key"):
        schemas.validate(schemas.OPEN_INTEREST, pl.concat([_oi("okx"), _oi("okx")]))


def test_oi_frame_keeps_first_of_duplicate_stamps_and_range_only():
    df = open_interest_frame("bybit", "bybit_rest", "BTCUSDT", 3_600_000,
                             [to_ms(T0 - H), to_ms(T0), to_ms(T0), to_ms(T0 + 2 * H)], [1.0, 2.0, 3.0, 4.0],
                             [None] * 4, T0, T0 + 2 * H, T0 + 5 * H, 30)
    assert df["event_time"].to_list() == [T0] and df["open_interest"].to_list() == [2.0]
    assert df["available_at"].to_list() == [T0 + H + timedelta(seconds=30)]


def test_funding_frame_snaps_jitter_and_derives_intervals():
    served = [to_ms(T0 - 4 * H) + 3, to_ms(T0) - 2, to_ms(T0 + 4 * H) + 1]
    df = funding_frame("okx", "okx_rest", "BTCUSDT", served, [0.0001, 0.0002, 0.0003], T0, T0 + 8 * H,
                       T0 + 9 * H, None)
    assert df["event_time"].to_list() == [T0, T0 + 4 * H]
    assert [to_ms(t) for t in df["exchange_time"]] == served[1:]
    assert df["funding_interval_hours"].to_list() == [4, 4] and df["venue"].to_list() == ["okx", "okx"]
    schemas.validate(schemas.FUNDING_RATES, df)
