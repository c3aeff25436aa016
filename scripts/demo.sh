#!/usr/bin/env bash
# The README's first command: install edgefleet into a virtual environment of its own and run
# the main job on embedded defaults (fleet server + embedded broker + console, one local
# device agent, a sample bundle built, signed, published and deployed). Ctrl-C stops
# everything. Data goes to ./demo-data. Arguments go to `fleet-server demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
echo "installing edgefleet into $VENV (first run: a minute or two)..." >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e . > "$VENV/install.log" 2>&1 \
  || { cat "$VENV/install.log" >&2; exit 1; }
exec "$VENV/bin/fleet-server" demo --data "${EDGEFLEET_DEMO_DATA:-./demo-data}" "$@"
