"""The cards as JSON for a dashboard: a versioned document written on every refresh and served over HTTP.

One shape everywhere (`cards_document`): the file `<warehouse>/exports/cards.json` and every endpoint of the
cards server (serve.py) return it, holding the context cards, the pattern cards or both. Its JSON Schema is
`cards.schema.json` beside this module; `SCHEMA_VERSION` is MAJOR.MINOR: MINOR grows when fields are added
(readers ignore fields they do not know), MAJOR when a field is removed, renamed or changes meaning.
Field by field: docs/cards.md.

Values are the card tables' rows (context_cards, pattern_cards, pattern_card_adjustments): numbers in their
table unit (`unit` says which), each with the text the markdown card and the HTML report show. Times are
ISO 8601 UTC with milliseconds ('2024-03-15T12:00:00.000Z'); a missing or non-finite number is null.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from qml_pipeline.timeutil import UTC, utc_now
from qml_pipeline.view.card_store import RECENT_PATTERN_DAYS, read_latest_context_cards, read_pattern_cards
from qml_pipeline.formats import fmt_usd

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).with_name("cards.schema.json")
EXPORT_FILE = Path("exports") / "cards.json"


def iso(t: datetime | None) -> str | None:
    """'2024-03-15T12:00:00.000Z' (UTC, milliseconds)."""
    if t is None:
        return None
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _num(value: float | int | None) -> float | int | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def _unit(column: str) -> str:
    return schemas.CONTEXT_CARDS.column(column).unit


def context_card_json(r: dict[str, Any]) -> dict[str, Any]:
    """One context_cards row as the dashboard's command bar reads it."""
    return {
        "symbol": r["symbol"], "as_of": iso(r["as_of"]), "built_at": iso(r["built_at"]),
        "price": {"value": _num(r["price"]), "unit": _unit("price"), "text": fmt_usd(r["price"]),
                  "time": iso(r["price_time"]), "age_minutes": _num(r["price_age_minutes"])},
        "funding": {"value": _num(r["funding_rate"]), "unit": r["funding_unit"], "text": r["funding_value"],
                    "status": r["funding_status"], "direction": r["funding_direction"],
                    "age_minutes": _num(r["funding_age_minutes"]), "rule": r["funding_rule"],
                    "event_time": iso(r["funding_event_time"]), "interval_hours": r["funding_interval_hours"],
                    "rate_8h": _num(r["funding_rate_8h"])},
        "oi": {"value": _num(r["oi_change_24h"]), "unit": _unit("oi_change_24h"), "text": r["oi_value"],
               "status": r["oi_status"], "direction": r["oi_direction"], "age_minutes": _num(r["oi_age_minutes"]),
               "rule": r["oi_rule"], "event_time": iso(r["oi_event_time"]),
               "base_event_time": iso(r["oi_24h_event_time"]), "open_interest": _num(r["oi"]),
               "open_interest_unit": _unit("oi"),
               "aggregate": {"value": _num(r["oi_agg_change_24h"]), "unit": _unit("oi_agg_change_24h"),
                             "text": r["oi_agg_value"], "venues": r["oi_agg_venues"]}},
        "liq": {"value": _num(r["liq_cluster_price"]), "unit": _unit("liq_cluster_price"), "text": r["liq_value"],
                "status": r["liq_status"], "direction": r["liq_direction"], "age_minutes": _num(r["liq_age_minutes"]),
                "rule": r["liq_rule"], "snapshot_time": iso(r["liq_snapshot_time"]), "side": r["liq_cluster_side"],
                "distance_pct": _num(r["liq_distance_pct"]), "notional_usd": _num(r["liq_cluster_notional_usd"])},
    }


ADJUSTMENT_FIELDS = ("position", "rule", "applied", "reason", "multiplier", "effect_pct", "effect_text")
PATTERN_FIELDS = tuple(schemas.PATTERN_CARDS.names)


def pattern_card_json(r: dict[str, Any], adjustments: list[dict[str, Any]]) -> dict[str, Any]:
    """One pattern_cards row with its rules (pattern_card_adjustments rows, in card order)."""
    out: dict[str, Any] = {}
    for name in PATTERN_FIELDS:
        value = r[name]
        out[name] = iso(value) if isinstance(value, datetime) else _num(value) if isinstance(value, float) else value
    out["adjustments"] = [{k: _num(a[k]) if isinstance(a[k], float) else a[k] for k in ADJUSTMENT_FIELDS}
                          for a in adjustments]
    return out


def cards_document(*, context: pl.DataFrame | None = None, patterns: pl.DataFrame | None = None,
                   adjustments: pl.DataFrame | None = None, pattern_window_days: float | None = None,
                   generated_at: datetime) -> dict[str, Any]:
    """The export: `context` (context_cards rows) and/or `patterns` with their `adjustments` rows."""
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "generated_at": iso(generated_at)}
    if context is not None:
        doc["context_cards"] = [context_card_json(r) for r in context.iter_rows(named=True)]
    if patterns is not None:
        by_trade: dict[str, list[dict[str, Any]]] = {}
        if adjustments is not None:
            for a in adjustments.sort("trade_id", "position").iter_rows(named=True):
                by_trade.setdefault(a["trade_id"], []).append(a)
        doc["pattern_window_days"] = pattern_window_days
        doc["pattern_cards"] = [pattern_card_json(r, by_trade.get(r["trade_id"], []))
                                for r in patterns.iter_rows(named=True)]
    return doc


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=1, allow_nan=False)


def write_cards_json(path: Path, doc: dict[str, Any]) -> Path:
    """Write `doc` to `path` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(to_json(doc) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_cards_document(con: duckdb.DuckDBPyConnection, *, context: bool = True,
                        pattern_days: float | None = RECENT_PATTERN_DAYS, patterns: bool = True) -> dict[str, Any]:
    """The export read from the lake: the newest context card per symbol and/or the pattern cards decided
    within `pattern_days` before their as_of (None: every card)."""
    cards = adjustments = None
    if patterns:
        cards, adjustments = read_pattern_cards(con, days=pattern_days)
    return cards_document(context=read_latest_context_cards(con) if context else None, patterns=cards,
                          adjustments=adjustments, pattern_window_days=pattern_days, generated_at=utc_now())


def write_cards_export(wh: Warehouse) -> Path:
    """Write `<warehouse>/exports/cards.json` from the card tables: the newest context card per symbol and the
    pattern cards of the last RECENT_PATTERN_DAYS."""
    with contextlib.closing(wh.connect()) as con:
        doc = read_cards_document(con)
    return write_cards_json(wh.root / EXPORT_FILE, doc)


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
