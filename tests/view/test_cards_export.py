"""The cards as a dashboard reads them: the versioned JSON export against its JSON Schema, every table column
in it, the same values in the JSON, the markdown card and the HTML report, and the read-only HTTP server."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import polars as pl
import pytest

from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from qml_pipeline.view.build import build_context_cards, latest_context_cards, recent_pattern_cards
from qml_pipeline.view.card_store import write_context_cards
from qml_pipeline.formats import fmt_age, fmt_usd
from qml_pipeline.view.card_text import context_cards_markdown, pattern_cards_markdown
from qml_pipeline.view.export import (EXPORT_FILE, SCHEMA_VERSION, cards_document, context_card_json,
                                      load_schema, pattern_card_json, write_cards_export)
from qml_pipeline.view.report import write_report
from qml_pipeline.view.serve import CardsApp, make_server
from tests.card_lake import card_lake
from tests.view.test_cards import AS_OF, H

TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    """Context cards as of AS_OF; pattern cards as of a day after the newest trade (all three in the 7 days)."""
    return card_lake(tmp_path_factory.mktemp("cards"))


@pytest.fixture(scope="module")
def exported(lake: Warehouse) -> dict:
    path = write_cards_export(lake)
    assert path == lake.root / EXPORT_FILE
    return json.loads(path.read_text(encoding="utf-8"))


def test_export_validates_against_its_schema_and_names_its_version(exported: dict):
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(exported, schema, format_checker=jsonschema.FormatChecker())
    assert exported["schema_version"] == SCHEMA_VERSION == schema["properties"]["schema_version"]["const"]
    assert [c["symbol"] for c in exported["context_cards"]] == ["BTCUSDT", "ETHUSDT"]
    assert [c["trade_id"] for c in exported["pattern_cards"]] == ["a", "b", "c"]
    assert exported["pattern_window_days"] == 7
    assert TIME.match(exported["generated_at"])
    btc = exported["context_cards"][0]
    assert btc["as_of"] == "2026-01-15T14:00:00.000Z"
    assert btc["funding"] == {
        "value": 0.00021, "unit": "fraction per 8h", "text": "+0.021% / 8h", "status": "High", "direction": "up",
        "age_minutes": 120.0, "rule": "8h-equivalent rate >= funding_high_8h (+0.0200%/8h)",
        "event_time": "2026-01-15T12:00:00.000Z", "interval_hours": 8, "rate_8h": 0.00021}
    assert btc["oi"]["unit"] == "percent" and btc["oi"]["open_interest_unit"] == "base asset (e.g. BTC)"
    assert btc["liq"]["direction"] == "down" and btc["liq"]["side"] == "long" and btc["liq"]["text"] == "$95.2K"
    eth = exported["context_cards"][1]
    assert eth["oi"] == {"value": None, "unit": "percent", "text": None, "status": "missing", "direction": None,
                         "age_minutes": None, "rule": eth["oi"]["rule"], "event_time": None,
                         "base_event_time": None, "open_interest": None, "open_interest_unit": "base asset (e.g. BTC)",
                         "aggregate": {"value": None, "unit": "percent", "text": None, "venues": None}}
    a = exported["pattern_cards"][0]
    assert [(x["rule"], x["applied"], x["effect_text"]) for x in a["adjustments"]] == [
        ("funding", True, "+20%"), ("oi", True, "+10%"), ("liq", True, "+5%")]
    assert a["model_probability"] == 0.64 and a["model_text"] == "64% (model m1)"


def _schema_rejects(doc: dict) -> bool:
    try:
        jsonschema.validate(doc, load_schema())
    except jsonschema.ValidationError:
        return True
    return False


def test_the_schema_is_strict_about_what_a_dashboard_relies_on(exported: dict):
    bad = json.loads(json.dumps(exported))
    bad["context_cards"][0]["funding"]["status"] = "Hot"
    assert _schema_rejects(bad)
    bad = json.loads(json.dumps(exported))
    bad["context_cards"][0]["funding"]["extra"] = 1  # a new field needs a new schema version
    assert _schema_rejects(bad)
    bad = json.loads(json.dumps(exported))
    del bad["pattern_cards"][0]["adjustments"][0]["reason"]
    assert _schema_rejects(bad)
    bad = json.loads(json.dumps(exported))
    bad["context_cards"][0]["as_of"] = "2026-01-15 14:00"
    assert _schema_rejects(bad)
    bad = json.loads(json.dumps(exported))
    bad["schema_version"] = "2.0"
    assert _schema_rejects(bad)


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def _sentinel_row(table: schemas.Table) -> dict:
    """A row whose every column holds a value no other column holds."""
    row: dict[str, object] = {}
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for i, c in enumerate(table.columns):
        if c.dtype == schemas.TS:
            row[c.name] = t0 + timedelta(minutes=i)
        elif c.dtype == pl.Utf8:
            row[c.name] = f"sentinel-{c.name}"
        elif c.dtype == pl.Boolean:
            row[c.name] = True
        elif c.dtype.is_integer():
            row[c.name] = 1000 + i
        else:
            row[c.name] = 0.5 + i
    return row


@pytest.mark.parametrize("table", [schemas.CONTEXT_CARDS, schemas.PATTERN_CARDS, schemas.PATTERN_CARD_ADJUSTMENTS],
                         ids=lambda t: t.name)
def test_every_column_of_the_card_tables_reaches_the_json(table: schemas.Table):
    row = _sentinel_row(table)
    if table is schemas.CONTEXT_CARDS:
        doc = context_card_json(row)
    elif table is schemas.PATTERN_CARDS:
        doc = pattern_card_json(row, [])
    else:
        doc = pattern_card_json(_sentinel_row(schemas.PATTERN_CARDS), [row])["adjustments"][0]
    leaves = _leaves(doc)
    for name, value in row.items():
        if table is schemas.PATTERN_CARD_ADJUSTMENTS and name == "trade_id":
            continue  # the adjustment sits inside its card
        shown = f"{value:%Y-%m-%dT%H:%M:%S}.000Z" if isinstance(value, datetime) else value
        assert shown in leaves, f"{table.name}.{name} is not in the JSON export: add it (and bump SCHEMA_VERSION)"


def test_no_nan_or_local_time_reaches_the_json():
    row = _sentinel_row(schemas.CONTEXT_CARDS) | {"price": float("nan"), "oi": float("inf")}
    doc = cards_document(context=pl.DataFrame([row]), generated_at=AS_OF)
    assert doc["context_cards"][0]["price"]["value"] is None and doc["context_cards"][0]["oi"]["open_interest"] is None
    local = datetime(2026, 1, 15, 15, 0, tzinfo=timezone(timedelta(hours=1)))
    assert cards_document(generated_at=local)["generated_at"] == "2026-01-15T14:00:00.000Z"


# ---------------------------------------------------------------- one row -> the same values everywhere

class CardsHTML(HTMLParser):
    """The report's cards as text: context cards per symbol (label -> value, chip, age) and pattern cards."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.symbol: str | None = None
        self.context: dict[str, dict[str, dict[str, str]]] = {}
        self.patterns: list[dict[str, object]] = []
        self._label: str | None = None

    def handle_starttag(self, tag, attrs):
        classes = dict(attrs).get("class", "") or ""
        self.stack.append(classes)
        if "pattern" in classes.split():
            self.patterns.append({"text": [], "items": []})

    def handle_endtag(self, tag):
        self.stack.pop()

    def handle_data(self, data):
        cls = self.stack[-1] if self.stack else ""
        text = data.strip()
        if not text:
            return
        if self.stack and any("symbol-row" in c for c in self.stack) and len(self.stack) >= 2 and \
                self.stack[-1] == "" and "symbol-row" in self.stack[-2]:
            self.symbol = text.split(" · ")[0]
            self.context[self.symbol] = {}
        elif cls == "label":
            self._label = text
            self.context[self.symbol][text] = {}
        elif cls == "value":
            self.context[self.symbol][self._label]["value"] = text
        elif cls.startswith("chip"):
            self.context[self.symbol][self._label]["chip"] = text
        elif cls == "age":
            self.context[self.symbol][self._label]["age"] = text
        elif self.patterns and any(c.split()[:2] == ["card", "pattern"] for c in self.stack):
            self.patterns[-1]["text"].append(text)


def _markdown_cells(md: str, symbol: str) -> list[list[str]]:
    block = md.split(f"**{symbol}**", 1)[1].split("\n\n**", 1)[0]
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and ":---" not in ln]
    return [[c.strip() for c in r.strip("|").split(" | ")] for r in rows[1:]]  # values, statuses, ages


def test_a_dashboard_reading_the_json_sees_what_the_markdown_and_the_report_show(lake: Warehouse, exported: dict,
                                                                                 tmp_path: Path):
    rows = latest_context_cards(lake)
    patterns = recent_pattern_cards(lake)
    md_context, md_patterns = context_cards_markdown(rows), pattern_cards_markdown(patterns)
    report = write_report(tmp_path, context_cards=rows, pattern_cards=patterns).read_text(encoding="utf-8")
    parsed = CardsHTML()
    parsed.feed(report)
    labels = {"funding": "FUNDING", "oi": "OI 24h", "liq": "LIQ"}
    checked = 0
    for card in exported["context_cards"]:
        symbol = card["symbol"]
        values, statuses, ages = _markdown_cells(md_context, symbol)
        html_cards = parsed.context[symbol]
        assert f"{symbol}" in md_context and f"as of {card['as_of'][:10]} {card['as_of'][11:16]} UTC" in md_context
        for i, (key, label) in enumerate(labels.items()):
            j, h = card[key], html_cards[label]
            # the value: JSON text == markdown cell == HTML value, and the number behind it formats to that text
            text = j["text"]
            if key == "oi" and j["aggregate"]["text"]:  # the OI card shows the change across venues beside it
                text = " · ".join(t for t in (text, f"all venues {j['aggregate']['text']}") if t)
            assert values[i] == (text or "no data")
            assert h["value"] == (text or "—")
            if j["value"] is not None:
                expected = {"funding": lambda c: f"{c['value'] * 100:+.3f}% / {c['interval_hours']}h",
                            "oi": lambda c: f"{c['value']:+.1f}%", "liq": lambda c: fmt_usd(c["value"])}[key](j)
                assert j["text"] == expected
            # the status word and the age
            if j["status"] in ("High", "Neutral", "Low", "Negative", "Rising", "Flat", "Falling", "stale"):
                assert statuses[i].endswith(j["status"]) and h["chip"].startswith(j["status"])
            if j["status"] in ("Near", "Far"):
                arrow = {"down": "↓", "up": "↑"}[j["direction"]]
                assert statuses[i].startswith(f"{arrow} {j['status']}") and h["chip"].startswith(f"{arrow} {j['status']}")
            if j["status"] == "missing":
                assert statuses[i] == "· missing" and h["chip"] == "no data"
            age = fmt_age(j["age_minutes"])
            assert ages[i] == (f"{age} old" if age else "—")
            assert h["age"].endswith(f"{age} old" if age else "no data")
            checked += 1
        price = card["price"]["text"]
        assert price == fmt_usd(card["price"]["value"]) and f"price {price}" in md_context
    assert checked == 6
    assert re.search(r'title="8h-equivalent rate &gt;= funding_high_8h \(\+0\.0200%/8h\)"', report)
    cards_html = parsed.patterns
    assert len(cards_html) == len(exported["pattern_cards"]) == 3
    for j, h in zip(exported["pattern_cards"], cards_html):
        text = " ".join(h["text"])
        block = md_patterns.split(f"`{j['trade_id']}`", 1)[1].split("####", 1)[0]
        assert j["title"] in text and f"#### {j['title']}" in md_patterns
        assert j["base_confidence_text"] == (f"{j['base_confidence'] * 100:.0f}%" if j["base_confidence"] is not None
                                             else "n/a")
        assert f"Base Confidence: {j['base_confidence_text']}" in text
        assert f"Base confidence: **{j['base_confidence_text']}**" in block
        for a in j["adjustments"]:
            if a["applied"]:
                assert a["effect_text"] == f"{a['effect_pct']:+.1f}%".replace(".0%", "%")
                assert f"• {a['reason']} {a['effect_text']}" in text
                assert f"{a['reason']} **{a['effect_text']}**" in block
            else:
                assert a["reason"] in text and a["reason"] in block
        assert f"ADJUSTED CONFIDENCE: {j['adjusted_confidence_text']}" in text
        assert f"**ADJUSTED CONFIDENCE: {j['adjusted_confidence_text']}**" in block
        if j["model_text"]:
            assert j["model_text"] == f"{j['model_probability'] * 100:.0f}% (model {j['model_version']})"
            assert f"MODEL PROBABILITY: {j['model_text']}" in text and f"**{j['model_text']}**" in block
        else:
            assert j["model_gate"] in text and f"not shown ({j['model_gate']})" in block


# ---------------------------------------------------------------- the HTTP server

@pytest.fixture(scope="module")
def server(lake: Warehouse):
    srv = make_server(CardsApp(lake.root), port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_serves_the_export_shapes_from_the_lake(server: str, exported: dict):
    schema = load_schema()
    status, everything = _get(f"{server}/cards")
    assert status == 200
    jsonschema.validate(everything, schema)
    assert {k: v for k, v in everything.items() if k != "generated_at"} == \
        {k: v for k, v in exported.items() if k != "generated_at"}
    status, latest = _get(f"{server}/cards/context/latest")
    assert status == 200 and set(latest) == {"schema_version", "generated_at", "context_cards"}
    assert latest["context_cards"] == exported["context_cards"]
    jsonschema.validate(latest, schema)
    status, two = _get(f"{server}/cards/patterns?days=2")
    assert status == 200 and "context_cards" not in two and two["pattern_window_days"] == 2
    assert [c["trade_id"] for c in two["pattern_cards"]] == ["a", "b"]
    jsonschema.validate(two, schema)
    assert _get(f"{server}/cards/patterns")[1]["pattern_window_days"] == 7
    assert _get(f"{server}/cards/schema") == (200, schema)


@pytest.mark.parametrize("path,status,message", [
    ("/cards/patterns?days=0", 400, "query parameter days='0': expected a number of days above 0"),
    ("/cards/patterns?days=abc", 400, "query parameter days='abc'"),
    ("/cards/patterns?days=nan", 400, "days='nan'"),
    ("/cards/nothing", 404, "no such path '/cards/nothing'"),
])
def test_server_refuses_bad_requests_by_name(server: str, path: str, status: int, message: str):
    got, body = _get(server + path)
    assert got == status and message in body["error"]


def test_server_without_a_warehouse_says_so_and_creates_nothing(tmp_path: Path):
    app = CardsApp(tmp_path / "nowhere")
    status, body = app.handle("/cards/context/latest")
    assert status == 503 and "no warehouse at" in json.loads(body)["error"]
    assert not (tmp_path / "nowhere").exists()


def test_server_reads_each_new_build_without_a_restart(tmp_path: Path):
    wh = card_lake(tmp_path)
    app = CardsApp(wh.root)
    first = json.loads(app.handle("/cards/context/latest")[1])["context_cards"]
    assert [c["as_of"] for c in first] == ["2026-01-15T14:00:00.000Z"] * 2
    write_context_cards(wh, build_context_cards(wh, AS_OF + H, ["BTCUSDT", "ETHUSDT"]))
    later = json.loads(app.handle("/cards/context/latest")[1])["context_cards"]
    assert [c["as_of"] for c in later] == ["2026-01-15T15:00:00.000Z"] * 2
    assert later[0]["funding"]["age_minutes"] == first[0]["funding"]["age_minutes"] + 60
