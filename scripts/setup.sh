#!/usr/bin/env bash
# Create .venv and install the project with its test and model extras (idempotent, offline-safe
# beyond the package registries). torch is pinned to the CPU wheel this machine holds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (first run takes a few minutes)..."
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev,model]'
  # DuckLake and its catalog scanners from the pinned PyPI packages into DuckDB's extension folder, so the
  # duckdb CLI (scripts/sql.sh) and any new process load them offline
  .venv/bin/python -c "import duckdb; from qml_pipeline.store.warehouse import load_extensions; load_extensions(duckdb.connect())"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
