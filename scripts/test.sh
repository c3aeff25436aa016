#!/usr/bin/env bash
# The README's test command. It installs what the tests need into a virtual environment of
# its own (never the system Python's packages), checks the dependency declarations and the
# architecture, then runs pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
source scripts/venv.sh
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
export PATH="$VENV/bin:$PATH"
# KServe's v2 REST client, for tests/device_agent/test_oip_kserve_client.py, in a venv of its
# own beside this one: the kserve SDK pins psutil<6 and amqtt (the embedded broker) needs >=7.
KSERVE_VENV="$VENV-kserve"
[ -x "$KSERVE_VENV/bin/python" ] || "$PY" -m venv "$KSERVE_VENV"
"$KSERVE_VENV/bin/python" -c "import kserve" 2>/dev/null \
  || "$KSERVE_VENV/bin/python" -m pip install -q --disable-pip-version-check 'kserve>=0.21,<0.22'
export EDGEFLEET_KSERVE_PYTHON="$KSERVE_VENV/bin/python"
# Every import is declared: runtime imports in [project] dependencies, test imports in the
# `test` extra (scripts/check-deps.sh documents the two passes).
bash scripts/check-deps.sh "$PY"
"$VENV/bin/lint-imports"
"$VENV/bin/ruff" check .
bash scripts/check-types.sh "$PY"
# Two xdist workers (EDGEFLEET_TEST_WORKERS; `-n 0` among the arguments runs serially), a
# module at a time so that module-scoped fixtures are made once, the longest modules first
# (tests/conftest.py orders them by tests/module_durations.json).
"$PY" -m pytest -n "${EDGEFLEET_TEST_WORKERS:-2}" --dist loadscope --no-loadscope-reorder "$@"
