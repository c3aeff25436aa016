#!/usr/bin/env bash
# The README's first command: install edgefleet into a virtual environment of its own and run
# the main job on embedded defaults (fleet server + embedded broker + console, one local
# device agent, a sample bundle built, signed, published and deployed). Ctrl-C stops
# everything. Data goes to ./demo-data. Arguments go to `fleet-server demo`.
#   EDGEFLEET_VENV   where the environment lives (default: .venv in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${EDGEFLEET_VENV:-.venv}"
PY_BOOT="${PYTHON:-python3}"
"$PY_BOOT" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"edgefleet needs Python 3.11 or newer; {sys.executable} is {sys.version.split()[0]}")
PY
[ -x "$VENV/bin/python" ] || "$PY_BOOT" -m venv "$VENV"
echo "installing edgefleet into $VENV (first run: a minute or two)..." >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e . > "$VENV/install.log" 2>&1 \
  || { cat "$VENV/install.log" >&2; exit 1; }
exec "$VENV/bin/fleet-server" demo --data "${EDGEFLEET_DEMO_DATA:-./demo-data}" "$@"
