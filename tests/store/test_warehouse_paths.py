"""A warehouse directory whose name holds glob characters (QML_WAREHOUSE_DIR=.../wh[1]) is written and read
back like any other: paths are not globs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse

UTC = timezone.utc


def _klines(n: int = 6) -> pl.DataFrame:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    opens = [t0 + timedelta(hours=i) for i in range(n)]
    return schemas.conform(schemas.KLINES, pl.DataFrame({
        "symbol": ["BTCUSDT"] * n, "interval": ["1h"] * n, "event_time": opens,
        "close_time": [t + timedelta(hours=1) for t in opens], "open": [100.0] * n, "high": [101.0] * n,
        "low": [99.0] * n, "close": [100.5] * n, "volume": [1.0] * n,
        "available_at": [t + timedelta(hours=1) for t in opens], "source": ["test"] * n,
    }))


# The old Parquet warehouse passed its directory to read_parquet as a glob ('[1]' a character class:
# "No files found"); the lake's catalog and data path are never globbed.
@pytest.mark.parametrize("name", ["wh[1]", "wh*", "wh?x", "wh{a,b}"])
def test_warehouse_in_a_directory_named_with_glob_characters(tmp_path, name):
    wh = Warehouse(tmp_path / name)
    wh.replace_table(schemas.KLINES, _klines())
    got = wh.read(schemas.KLINES, symbol="BTCUSDT")
    assert got.height == 6
    assert got.drop("ingested_at").equals(_klines().drop("ingested_at"))
