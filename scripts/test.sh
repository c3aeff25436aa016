#!/usr/bin/env bash
# The README's test command: installs what the tests need, checks the architecture, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
lint-imports
ruff check .
python3 -m pytest "$@"
