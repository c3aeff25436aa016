#!/usr/bin/env bash
# The README's test command. It installs what the tests need into a virtual environment of
# its own (never the system Python's packages), checks the dependency declarations and the
# architecture, then runs pytest. Arguments go to pytest.
#   EDGEFLEET_VENV   where the environment lives (default: .venv in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
VENV="${EDGEFLEET_VENV:-.venv}"
PY_BOOT="${PYTHON:-python3}"
"$PY_BOOT" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"edgefleet needs Python 3.11 or newer; {sys.executable} is {sys.version.split()[0]}")
PY
[ -x "$VENV/bin/python" ] || "$PY_BOOT" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
export PATH="$PWD/$VENV/bin:$PATH"
# Every import is declared: runtime imports in [project] dependencies, test imports in the
# `test` extra (scripts/check-deps.sh documents the two passes).
bash scripts/check-deps.sh "$PY"
"$VENV/bin/lint-imports"
"$VENV/bin/ruff" check .
"$PY" -m pytest "$@"
