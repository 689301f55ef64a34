#!/usr/bin/env bash
# The cards for a dashboard, as JSON over HTTP, read-only from the warehouse (docs/cards.md):
#   bash scripts/cards_server.sh                 # http://127.0.0.1:8765/cards
#   bash scripts/cards_server.sh --port 9000 --host 0.0.0.0
# QML_WAREHOUSE_DIR / QML_WAREHOUSE_CATALOG / QML_WAREHOUSE_DATA_PATH choose the lake, as for the pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
exec .venv/bin/python -m qml_pipeline.view.serve "$@"
