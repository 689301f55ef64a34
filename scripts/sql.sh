#!/usr/bin/env bash
# A DuckDB SQL session on the warehouse, attached READ_ONLY (it never blocks or changes a pipeline write).
#   bash scripts/sql.sh                      # interactive; the tables and views are in the default catalog
#   bash scripts/sql.sh -c "SELECT symbol, count(*) FROM klines GROUP BY ALL"
# QML_WAREHOUSE_DIR / QML_WAREHOUSE_CATALOG / QML_WAREHOUSE_DATA_PATH choose the lake, as for the pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
init=$(mktemp)
trap 'rm -f "$init"' EXIT
.venv/bin/python -m qml_pipeline.store.sql > "$init"
.venv/bin/duckdb -init "$init" "$@"
