#!/usr/bin/env bash
# The README's first command: install edgefleet and run the main job on embedded defaults
# (fleet server + embedded broker + console, one local device agent, a sample bundle built,
# signed, published and deployed). Ctrl-C stops everything. Data goes to ./demo-data.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e .
exec fleet-server demo --data "${EDGEFLEET_DEMO_DATA:-./demo-data}" "$@"
