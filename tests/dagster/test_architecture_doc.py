"""docs/architecture.md: its asset-graph picture matches the definitions, and it names a writer for every table."""

import re

from dagster_project.definitions import defs
from dagster_project.graph_doc import DOC, mermaid, with_picture
from qml_pipeline.store.schemas import TABLES


def test_committed_picture_matches_the_definitions() -> None:
    text = DOC.read_text()
    assert with_picture(text, mermaid(defs)) == text, "run: python -m dagster_project.graph_doc"
    assert "phase9_gate" in mermaid(defs) and "⛔" in mermaid(defs)


def test_every_table_has_a_named_writer() -> None:
    rows = re.findall(r"^\| ([a-z_, ]+) \| ([^|]+) \|", DOC.read_text().split("## Who writes each table")[1], re.M)
    named = {t.strip() for tables, _ in rows for t in tables.split(",")}
    assert set(TABLES) <= named, set(TABLES) - named
