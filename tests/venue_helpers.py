"""Measuring a venue source's answer the way the ingest does: the grid and coverage it declares."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from types import ModuleType

import polars as pl

from qml_pipeline.sources.ingest import MarketSource, Window, missing_stamps
from qml_pipeline.store import schemas


def missing(source: MarketSource, frame: pl.DataFrame, table: str, symbol: str, start: datetime, end: datetime,
            variant: str = "") -> list[datetime]:
    """Stamps of [start, end) that `source` should fill (its grid within its coverage) and `frame` lacks."""
    window = Window(schemas.TABLES[table], symbol, start, end, variant)
    return missing_stamps(source, window, frame).to_list()


def expected_stamps(source: MarketSource, table: str, symbol: str, start: datetime, end: datetime,
                    variant: str) -> int:
    """How many grid stamps of [start, end) the source's coverage expects."""
    return source.grid(table, variant).stamps(*source.coverage(table, symbol, variant).clip(start, end)).len()


def make_venue_reader(venue: ModuleType, source: Callable, fake, fake_time, now: datetime, lag_s: int, seed: int,
                      **kw):
    """A venue source over its module's client (`venue.make_client`) against a fake server, on fake time."""
    client = venue.make_client(fake.url, sleep=fake_time.sleep, clock=fake_time.clock, rng=random.Random(seed),
                               timeout_s=(2, 5), **kw)
    return source(client, oi_publication_lag_s=lag_s, now=lambda: now)
