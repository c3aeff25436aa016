#!/usr/bin/env bash
# Run the OpenVINO EP tests in their own venv: onnxruntime-openvino replaces the
# `onnxruntime` module of the plain wheel, so the two cannot share an environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-openvino
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q onnxruntime-openvino
# the project without its dependencies (they name onnxruntime), then its other deps
"$PY" -m pip install -q --no-deps -e .
"$PY" - <<'PY' > "$VENV/deps.txt"
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.replace(" ", "").lower().startswith("onnxruntime")))
PY
"$PY" -m pip install -q -r "$VENV/deps.txt" pytest pytest-timeout
"$PY" -c "import onnxruntime as o; p = o.get_available_providers(); print(o.__version__, p); assert 'OpenVINOExecutionProvider' in p"
exec "$PY" -m pytest -q -p no:cacheprovider -m openvino tests/delegates "$@"
