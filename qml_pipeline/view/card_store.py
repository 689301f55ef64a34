"""The card tables in the warehouse: write one build of the cards, read back what every view renders.

- `context_cards` keeps its history: a build replaces only the rows of its own `as_of`, so what the command
  bar said at any past instant stays queryable.
- `pattern_cards` and `pattern_card_adjustments` are replaced whole, together, in one snapshot.

Reads take a DuckDB connection (a pipeline session, or an analyst's read-only one: the HTTP server), so the
Dagster metadata, the HTML report, the JSON export and the server read the same rows the same way. The
dashboard views they read are defined in warehouse/views/ (docs/cards.md).
"""

from __future__ import annotations

import duckdb
import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse, WriteStats, frame

LATEST_CONTEXT_VIEW = "v_context_cards_latest"
# The window of v_pattern_cards_recent, in days before each card's as_of (a view takes no parameter).
RECENT_PATTERN_DAYS = 7.0
MAX_PATTERN_DAYS = 3650.0

# The pattern cards whose decision_time lies within `days` before their as_of, newest first: the view's query
# with the window as a parameter (v_pattern_cards_recent is this with days = RECENT_PATTERN_DAYS).
PATTERN_CARDS_SINCE_SQL = """
SELECT * FROM pattern_cards
WHERE decision_time >= as_of - to_milliseconds(CAST(round(? * 86400000) AS BIGINT))
ORDER BY decision_time DESC, trade_id DESC
"""


def write_context_cards(wh: Warehouse, rows: pl.DataFrame) -> WriteStats:
    """Store one build of the context cards (every row shares one as_of), replacing only that as_of's rows."""
    as_ofs = rows["as_of"].unique().to_list()
    if len(as_ofs) != 1:
        raise ValueError(f"context cards of one build share one as_of; got {len(as_ofs)}: {as_ofs[:3]}")
    return wh.replace_group(schemas.CONTEXT_CARDS, rows, "as_of", as_ofs[0],
                            message=f"context_cards as of {as_ofs[0]:%Y-%m-%d %H:%M:%S} UTC ({rows.height} symbols)")


def write_pattern_cards(wh: Warehouse, cards: pl.DataFrame, adjustments: pl.DataFrame) -> int | None:
    """Replace the pattern cards and their adjustments together (one snapshot); returns the snapshot id."""
    with wh.write(f"pattern_cards ({cards.height} cards, {adjustments.height} rules)") as batch:
        batch.replace_table(schemas.PATTERN_CARDS, cards)
        batch.replace_table(schemas.PATTERN_CARD_ADJUSTMENTS, adjustments)
    return batch.snapshot_id


def _conformed(table: schemas.Table, df: pl.DataFrame) -> pl.DataFrame:
    return schemas.conform(table, df) if df.height else schemas.empty(table)


def read_latest_context_cards(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Per symbol, its newest context card (the dashboard view), by symbol."""
    return _conformed(schemas.CONTEXT_CARDS, frame(con, f"SELECT * FROM {LATEST_CONTEXT_VIEW} ORDER BY symbol"))


def check_days(days: float) -> float:
    """`days` as a window length; ValueError saying what is allowed."""
    if not isinstance(days, (int, float)) or not 0 < days <= MAX_PATTERN_DAYS:
        raise ValueError(f"days={days!r}: expected a number of days above 0 and at most {MAX_PATTERN_DAYS:g}")
    return float(days)


def read_pattern_cards(con: duckdb.DuckDBPyConnection, days: float | None = RECENT_PATTERN_DAYS,
                       limit: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(pattern_cards rows, their pattern_card_adjustments rows): the cards decided within `days` before their
    as_of (None: every card), newest first, at most `limit` of them."""
    if days is None:
        cards = frame(con, "SELECT * FROM pattern_cards ORDER BY decision_time DESC, trade_id DESC")
    else:
        cards = frame(con, PATTERN_CARDS_SINCE_SQL, [check_days(days)])
    if limit is not None:
        cards = cards.head(limit)
    cards = _conformed(schemas.PATTERN_CARDS, cards)
    con.register("chosen_cards", cards.select("trade_id").to_arrow())
    try:
        adjustments = frame(con, "SELECT a.* FROM pattern_card_adjustments a JOIN chosen_cards USING (trade_id) "
                                 "ORDER BY trade_id, position")
    finally:
        con.unregister("chosen_cards")
    return cards, _conformed(schemas.PATTERN_CARD_ADJUSTMENTS, adjustments)
