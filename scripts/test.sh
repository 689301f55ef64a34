#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report test renders in headless Chromium (Debian's package), installed here when missing.
if ! command -v chromium >/dev/null && [ "${QML_SKIP_BROWSER_TESTS:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the report test..."
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: run 'sudo apt-get install -y chromium' or set QML_SKIP_BROWSER_TESTS=1" >&2
  fi
fi
export DAGSTER_HOME="${DAGSTER_HOME:-$(mktemp -d)}"
exec .venv/bin/python -m pytest -n "${QML_TEST_WORKERS:-2}" -p no:cacheprovider "$@"
