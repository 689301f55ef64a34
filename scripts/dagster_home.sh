#!/usr/bin/env bash
# Make DAGSTER_HOME (default: .dagster_home in the project) hold the project's dagster.yaml; prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
home=${DAGSTER_HOME:-$PWD/.dagster_home}
mkdir -p "$home"
cmp -s dagster.yaml "$home/dagster.yaml" || cp dagster.yaml "$home/dagster.yaml"
echo "$home"
