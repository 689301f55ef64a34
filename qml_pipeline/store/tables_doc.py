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
this page is out of date.

## How it is stored, and why analysts never block the pipeline

- Data: Parquet under `data/<table>/symbol=<SYMBOL>/[interval=<I>/]<YYYY-MM>.parquet` (raw tables,
  one file per symbol and month) or `data/<table>/all.parquet` (derived tables).
- Every write builds the new file beside the old one and renames it into place (atomic on POSIX);
  writers of one file are serialised by a lock file. A run that fails or is killed midway leaves
  every file it had not yet swapped in as it was. Writing a day partition twice gives the same rows
  (only `ingested_at` changes).
- `qml.duckdb` holds views only (over the Parquet globs, plus the SQL in `views/`). The pipeline
  rebuilds it as a new file and renames it into place, so no pipeline write ever takes DuckDB's
  single-writer lock: open it read-only from the duckdb CLI (`duckdb -readonly warehouse/qml.duckdb`)
  or Python (`duckdb.connect("warehouse/qml.duckdb", read_only=True)`) at any time, including during
  a backfill. A session opened before new files arrive still sees them (the views read the globs).
- Formulas, windows and staleness rules of the per-trade features: `docs/features.md`; the
  liquidation model: `docs/liquidation_map.md`; the detector and trade simulation:
  `docs/detector.md`; phases 9 and 10 and the gates: `docs/overlay.md`.
- Time: every timestamp is `TIMESTAMP WITH TIME ZONE`, UTC, millisecond precision. `available_at`
  is the earliest moment a trader could have known a row; features use only rows with
  `available_at <= decision_time`.
"""


def render() -> str:
    parts = [INTRO, "## Tables\n"]
    for table in schemas.TABLES.values():
        parts.append(f"### `{table.name}`\n\n{table.doc}\n\nKey: `({', '.join(table.key)})`"
                     + (f"; partitioned by `symbol`, day of `{table.time_column}`" if table.time_column else "")
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
