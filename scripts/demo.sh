#!/usr/bin/env bash
# Set up .venv (if needed) and run the main job offline on the bundled sample into a fresh warehouse.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -W ignore -m dagster_project.demo "$@"
