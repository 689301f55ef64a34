"""A small lake holding what the cards read (raw rows, a liquidation map, trades, overlay, model rows, gates)
and the card tables built from it: the fixture of the card table, export and server tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from qml_pipeline.research.overlay import apply_overlay
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from qml_pipeline.view.build import build_context_cards, build_pattern_cards
from qml_pipeline.view.card_store import write_context_cards, write_pattern_cards
from tests.view.test_cards import AS_OF, H, _features, _trades, funding_frame, klines_frame, liq_frame, oi_frame

SOURCE = "synthetic_test"


def raw(table: schemas.Table, df: pl.DataFrame) -> pl.DataFrame:
    """A test frame with the lineage columns a raw table requires."""
    extra = [pl.lit(SOURCE).alias("source")]
    if table is schemas.FUNDING_RATES:
        extra.append(pl.col("event_time").alias("exchange_time"))
    return schemas.conform(table, df.with_columns(extra))


def fill_market(wh: Warehouse) -> None:
    """BTCUSDT: High funding 2 h old, OI +3.2% over 24 h, a long cluster 0.9% below the price (Near);
    ETHUSDT: Negative funding 20 h old (stale), no OI, no liquidation map."""
    funding = funding_frame([("BTCUSDT", AS_OF - 2 * H, 0.00021, 8), ("ETHUSDT", AS_OF - 20 * H, -0.0002, 8)])
    with wh.write("test market") as batch:
        batch.merge(schemas.FUNDING_RATES, raw(schemas.FUNDING_RATES, funding))
        batch.merge(schemas.OPEN_INTEREST, raw(schemas.OPEN_INTEREST, oi_frame("BTCUSDT", [100.0] * 24 + [103.2])))
        batch.merge(schemas.KLINES, raw(schemas.KLINES, pl.concat([klines_frame("BTCUSDT", 96_100.0),
                                                                  klines_frame("ETHUSDT", 3_400.0)])))
        batch.replace_table(schemas.LIQUIDATION_MAP, liq_frame(
            "BTCUSDT", AS_OF - 2 * H, [(95_200.0, 10.0, 0.0), (101_000.0, 0.0, 10.0)], ref=96_000.0))


def fill_research(wh: Warehouse, *, gate_passed: bool = True, auc: float = 0.61) -> None:
    """Three trades (tests.view.test_cards._trades) with the overlay, a model prediction for one, and the gates."""
    trades = _trades().with_columns(
        pl.lit(96_000.0).alias("entry_price"), pl.lit(97_000.0).alias("stop_price"),
        pl.lit(SOURCE).alias("source"))
    overlay = apply_overlay(trades, _features())
    evaluated = AS_OF - timedelta(days=1)
    with wh.write("test research") as batch:
        batch.replace_table(schemas.TRADES, trades)
        batch.replace_table(schemas.CONTEXT_OVERLAY, overlay)
        batch.replace_table(schemas.MODEL_PREDICTIONS, pl.DataFrame(
            {"trade_id": ["a", "b"], "model_version": "m1", "fold": [3, None], "probability": [0.64, None]}))
        batch.replace_table(schemas.MODEL_EVALUATION, pl.DataFrame(
            {"model_version": ["m1"], "scope": ["overall"], "group": ["all"], "model": ["fusion"], "auc": [auc]}))
        batch.replace_table(schemas.RESEARCH_GATES, pl.DataFrame(
            {"gate": ["phase10"], "part": ["win_rate_gain"], "passed": [gate_passed], "gate_passed": [gate_passed],
             "evaluated_at": [evaluated]}, schema_overrides={"evaluated_at": schemas.TS}))


# a day after the newest test trade: the three trades were decided 1, 2 and 3 days before it
PATTERNS_AS_OF = _trades()["decision_time"].max() + timedelta(days=1)


def card_lake(root: Path, *, as_of: datetime = AS_OF, patterns_as_of: datetime = PATTERNS_AS_OF,
              **research) -> Warehouse:
    """The lake with the context cards built as of `as_of` and the pattern cards as of `patterns_as_of`."""
    wh = Warehouse(root)
    fill_market(wh)
    fill_research(wh, **research)
    write_context_cards(wh, build_context_cards(wh, as_of, ["BTCUSDT", "ETHUSDT"]))
    write_pattern_cards(wh, *build_pattern_cards(wh, patterns_as_of))
    return wh
