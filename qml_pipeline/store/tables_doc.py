"""Write warehouse/README.md from the table contracts (run: python -m qml_pipeline.store.tables_doc)."""

from __future__ import annotations

import sys
from pathlib import Path

from qml_pipeline.config import PROJECT_ROOT
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import VIEWS_DIR

DOC_PATH = PROJECT_ROOT / "warehouse" / "README.md"

INTRO = """# The warehouse

Generated from `qml_pipeline/store/schemas.py` by `python -m qml_pipeline.store.tables_doc`; a test fails when
this page is out of date. How the lake works (snapshots, revisions, restore, maintenance, the team
configuration): [`docs/warehouse.md`](../docs/warehouse.md).

## How it is stored

- A DuckLake lake: the catalog `catalog.sqlite` (or a PostgreSQL database) and Parquet data files under `data/`,
  tables with a symbol and a time partitioned by symbol and year. Every write is one ACID snapshot whose commit
  message and extra info name the Dagster run, asset and partitions.
- Raw tables (`revision` column) only grow: a source's answer is merged by key, rows it did not return stay, a
  differing re-publication becomes a new revision known no earlier than it was ingested. Derived tables are
  replaced whole per run.
- Analysts attach the lake read-only and never block the pipeline: `bash scripts/sql.sh` (DuckDB CLI) or, in
  Python, `qml_pipeline.store.warehouse.open_read_only("warehouse")`.
- Formulas, windows and staleness rules of the per-trade features: `docs/features.md`; the liquidation model:
  `docs/liquidation_map.md`; the detector and trade simulation: `docs/detector.md`; phases 9 and 10 and the
  gates: `docs/overlay.md`.
- Time: every timestamp is `TIMESTAMP WITH TIME ZONE`, UTC, millisecond precision. `available_at` is the
  earliest moment a trader could have known a row; features use only rows with `available_at <= decision_time`.
"""


def render() -> str:
    parts = [INTRO, "## Tables\n"]
    for table in schemas.TABLES.values():
        key = f"Key: `({', '.join(table.key)})`" + (" plus `revision`" if table.revisioned else "")
        files = ("; files partitioned by `symbol` and year of " + f"`{table.time_column}`"
                 if table.time_column and "symbol" in table.names else "")
        parts.append(f"### `{table.name}`\n\n{table.doc}\n\n{key}{files}"
                     + "\n\n| column | type | unit | meaning |\n|---|---|---|---|")
        for c in table.columns:
            null = " (nullable)" if c.nullable else ""
            parts.append(f"| `{c.name}` | {c.duckdb_type}{null} | {c.unit} | {c.doc} |")
        parts.append("")
    views = sorted(VIEWS_DIR.glob("*.sql")) if VIEWS_DIR.exists() else []
    if views:
        parts.append("## Views (`warehouse/views/`)\n")
        for path in views:
            comment = [ln[2:].strip() for ln in path.read_text().splitlines() if ln.startswith("--")]
            parts.append(f"- `{path.name}`: " + " ".join(comment))
        parts.append("")
    return "\n".join(parts)


def main() -> int:
    DOC_PATH.write_text(render())
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
