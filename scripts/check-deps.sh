#!/usr/bin/env bash
# Fails when an imported third-party module is not declared in pyproject.toml (deptry).
#   pass 1: the five packages against [project] dependencies; importing a `test`-extra
#           package from product code is an error (DEP004), and so is relying on a
#           dependency's own dependency (DEP003)
#   pass 2: tests/ and bench/ against the dependencies plus the `test` extra
# Usage: scripts/check-deps.sh [PYTHON]   (the environment that holds deptry)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
echo "deptry: the packages against the runtime dependencies"
"$PY" -m deptry . --config pyproject.toml \
  --extend-exclude '(tests|bench|scripts|build|dist)/' \
  --optional-dependencies-dev-groups test
echo "deptry: tests/ and bench/ against the dependencies and the test extra"
"$PY" -m deptry . --config pyproject.toml \
  --exclude '\.venv.*|\.git|build|dist|scripts' \
  --extend-exclude '(device_agent|fleet_server|model_bundles|delegates|ota)/' \
  --ignore DEP002
