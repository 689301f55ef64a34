#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$(mktemp -d)}"
exec .venv/bin/python -m pytest -n "${QML_TEST_WORKERS:-2}" -p no:cacheprovider "$@"
