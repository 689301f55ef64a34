"""What the venues beside Binance (Bybit, OKX) share behind the MarketSource protocol (sources/ingest.py).

- `grid`: open interest sits on the period's multiples from the epoch (Bybit and OKX stamp 5-minute
  rows at :00, :05, ...); funding has no fixed grid (None: `grid.missing_settlements` steps by the
  interval in force); klines are not read from these venues.
- `coverage`: where the venue has data for a symbol: from `history_start` (the listing, or the
  oldest time the venue still serves: OKX keeps the latest 1,440 open-interest rows per period and
  three months of funding) to the live edge. An open-interest stamp is expected once stamp + period
  + publication lag + `LIVE_EDGE_GRACE` has passed, a settlement once its time + the grace has.
  Outside the coverage an empty answer is complete, so a month older than OKX serves is not a hole.
- `known_gaps`: the known-gaps file's rows for this venue (`grid.read_known_gaps`).
- `notes`: what a reader of the stored rows must know about an answer (rows without a USD value,
  fields the venue left empty), one line each, for the run's metadata.
- `klines`: refused with `NotServedError`: the project's candles are the trades' venue's (Binance).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta

import polars as pl

from qml_pipeline.sources.grid import Coverage, Gap, Grid, KnownGap, gaps_for, read_known_gaps
from qml_pipeline.sources.http_client import HttpClient, VenueRules
from qml_pipeline.sources.venues import Instrument
from qml_pipeline.timeutil import EPOCH, interval_ms, utc_now

# Rows at the live edge are expected only this long after they could first exist: both venues publish
# with a short delay, and Bybit warns of "increased latency" under volatility.
LIVE_EDGE_GRACE = timedelta(minutes=2)


class NotServedError(ValueError):
    """The project does not read this table from this venue."""


class VenueSource:
    """Base of `bybit.BybitSource` and `okx.OkxSource`: a client made with the venue's `rules` (its module's
    `make_client`), throttled by its `path_limits`. `now` is injectable so that the live edge and the
    history depth are testable."""

    name: str
    venue: str
    rules: VenueRules
    # (path prefixes, requests, window in seconds): sliding windows kept by the client
    path_limits: tuple[tuple[tuple[str, ...], int, float], ...] = ()

    def __init__(self, client: HttpClient, oi_publication_lag_s: int = 0, now: Callable[[], datetime] = utc_now,
                 known_gaps_file: str | os.PathLike[str] | None = None):
        if client.rules is not self.rules:
            raise ValueError(f"{type(self).__name__} needs an HttpClient made with {self.venue}.RULES "
                             f"({self.venue}.make_client)")
        self.client = client
        self.oi_publication_lag_s = oi_publication_lag_s
        self.now = now
        self.notes: list[str] = []
        self._known: list[KnownGap] = read_known_gaps(known_gaps_file) if known_gaps_file else []
        self._instruments: dict[str, Instrument] = {}  # by project symbol, fetched once
        for limit in self.path_limits:
            client.set_path_limit(*limit)

    def history_start(self, table: str, symbol: str, variant: str) -> datetime | None:
        """The oldest time the venue serves `table` for `symbol` (None: unbounded)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ MarketSource: what to expect

    def grid(self, table: str, variant: str) -> Grid | None:
        if table == "open_interest":
            return Grid(timedelta(milliseconds=interval_ms(variant)))
        return None

    def coverage(self, table: str, symbol: str, variant: str) -> Coverage:
        if table not in ("open_interest", "funding_rates"):
            return Coverage(None, EPOCH)  # nothing is read from this venue
        end = self.now() - LIVE_EDGE_GRACE
        if table == "open_interest":
            end -= timedelta(milliseconds=interval_ms(variant), seconds=self.oi_publication_lag_s)
        return Coverage(self.history_start(table, symbol, variant), end)

    def known_gaps(self, table: str, symbol: str, variant: str) -> list[Gap]:
        return gaps_for(self._known, self.venue, table, symbol, variant)

    def klines(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        raise NotServedError(
            f"{self.venue}: klines {symbol} {interval} are not read from {self.venue}: the project's candles come "
            f"from Binance, the trades' venue; {self.venue} serves open interest and funding only "
            "(docs/venues.md)")

    # ------------------------------------------------------------------ reporting

    def request_stats(self) -> dict[str, float]:
        return self.client.stats.as_dict()

    def _note(self, what: str, symbol: str, start: datetime, end: datetime, notes: list[str]) -> None:
        self.notes += [f"{self.venue} {what} {symbol} [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}): {n}"
                       for n in notes]
