#!/usr/bin/env bash
# Type-checks the five packages with mypy under pyproject.toml's [tool.mypy] (strict on the
# leaf libraries model_bundles, delegates and ota; default checks plus check_untyped_defs on
# device_agent and fleet_server).
# Usage: scripts/check-types.sh [PYTHON]   (the environment that holds mypy and the deps)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
"$PY" -m mypy --config-file pyproject.toml
