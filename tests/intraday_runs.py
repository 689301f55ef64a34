"""Running the intraday refresh in process against the fake Binance with a movable clock (tests and
benchmarks/bench_intraday.py): what the `intraday_refresh` schedule asks for, executed as its run would be."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg

import qml_pipeline.sources.binance as binance_source
import qml_pipeline.view.build as view_build
from dagster_project.defs.context import liquidation_map
from dagster_project.defs.raw_market_data import RAW_ASSETS
from dagster_project.defs.schedules import intraday_requests
from dagster_project.defs.view import context_cards, pattern_cards
from dagster_project.partitions import SYMBOLS, sync_symbols
from dagster_project.resources import MarketDataResource, WarehouseResource
from tests.fake_binance import FakeBinance

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
FIVE_MIN = timedelta(minutes=5)
INTERVALS = ("1h", "4h")


class Clock:
    """The one 'now' of a test: the Binance source, the cards' as_of and their build time read it."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@contextlib.contextmanager
def live_edge(clock: Clock) -> Iterator[None]:
    """The live source path on `clock` (run_intraday's market resource names the symbols and the source)."""

    class ClockedBinanceSource(binance_source.BinanceSource):
        def __init__(self, *args, **kwargs):
            kwargs["now"] = clock
            super().__init__(*args, **kwargs)

    saved = [(binance_source, "BinanceSource", binance_source.BinanceSource), (view_build, "utc_now", view_build.utc_now)]
    binance_source.BinanceSource = ClockedBinanceSource
    view_build.utc_now = clock
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def feed(fake: FakeBinance, symbols: Sequence[str], start: datetime, end: datetime) -> None:
    """Add to the fake what Binance publishes in [start, end): 5-minute OI stamps and 8-hourly funding
    settlements (klines are added ahead of time by `listed`: the client drops bars still forming)."""
    oi = (end - start) // FIVE_MIN
    settle = start + (-(start - datetime(2000, 1, 1, tzinfo=start.tzinfo)) % timedelta(hours=8))
    for symbol in symbols:
        if oi:
            fake.add_oi(symbol, "5m", start, oi)
        if settle < end:
            fake.add_funding(symbol, settle, (end - settle - timedelta(milliseconds=1)) // timedelta(hours=8) + 1)


def listed(fake: FakeBinance, symbols: Sequence[str], start: datetime, until: datetime) -> None:
    """`symbols` listed at `start`, with klines from `start` to `until` (the future part is dropped as forming)."""
    fake.set_funding_info({s: 8 for s in symbols})
    for symbol in symbols:
        fake.add_symbol(symbol, start)
        fake.add_klines(symbol, "1h", start, (until - start) // timedelta(hours=1))
        fake.add_klines(symbol, "4h", start, (until - start) // timedelta(hours=4))


def run_intraday(root: Path, url: str, instance: dg.DagsterInstance, scheduled: datetime, symbols: Sequence[str],
                 *, refresh_minutes: int = 15, overlap_minutes: int = 60) -> list[dg.ExecuteInProcessResult]:
    """The runs the schedule asks for at `scheduled`, each executed in process like the intraday job (one
    process, assets in order)."""
    sync_symbols(instance, symbols)
    requests = intraday_requests(scheduled, symbols, instance.get_dynamic_partitions(SYMBOLS.name),
                                 refresh_minutes, overlap_minutes)
    market = MarketDataResource(source="binance", binance_fapi_url=url, binance_archive_url=url, oi_period="5m",
                                symbols=list(symbols), kline_intervals=list(INTERVALS))
    results = []
    for request in requests:
        results.append(dg.materialize(
            [*RAW_ASSETS, liquidation_map, context_cards, pattern_cards], instance=instance,
            selection=dg.AssetSelection.assets(*request.asset_selection),
            resources={"warehouse": WarehouseResource(root=str(root)), "market": market},
            tags=request.tags, raise_on_error=False, run_config=QUIET))
    return results
