# Sourced by the README's two commands: makes sure $VENV holds a virtual environment of a
# supported Python (3.11+), created with $PYTHON (default python3) when it is missing.
#   EDGEFLEET_VENV   where the environment lives (default: .venv in the checkout)
VENV="${EDGEFLEET_VENV:-.venv}"
PY_BOOT="${PYTHON:-python3}"
"$PY_BOOT" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"edgefleet needs Python 3.11 or newer; {sys.executable} is {sys.version.split()[0]}")
PY
[ -x "$VENV/bin/python" ] || "$PY_BOOT" -m venv "$VENV"
VENV="$(cd "$VENV" && pwd)"
