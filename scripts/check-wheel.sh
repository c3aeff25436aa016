#!/usr/bin/env bash
# Proves the declared dependencies are enough: builds the wheel, installs it with
# --no-cache-dir into a brand-new virtual environment (nothing from this checkout or the
# system Python visible), runs each command's --help, then a real `fleet-server serve` whose
# health route must answer, and a real `device-agent delegates` probe.
# Usage: scripts/check-wheel.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY_BOOT="${1:-python3}"
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
echo "check-wheel: building the wheel"
quiet() { "$@" > "$work/step.log" 2>&1 || { cat "$work/step.log" >&2; exit 1; }; }
quiet "$PY_BOOT" -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/dist" .
"$PY_BOOT" -m venv "$work/venv"
V="$work/venv/bin"
echo "check-wheel: installing $(basename "$work"/dist/*.whl) into a new venv (--no-cache-dir)"
quiet "$V/python" -m pip install -q --disable-pip-version-check --no-cache-dir "$work"/dist/*.whl
"$V/python" -c "import fleet_server, device_agent, model_bundles, delegates, ota"
cd "$work"   # away from the checkout: only the installed wheel can be imported
for cmd in fleet-server device-agent model-bundle; do
  "$V/$cmd" --help > /dev/null
  echo "check-wheel: $cmd --help ok"
done
"$V/device-agent" delegates > /dev/null
"$V/model-bundle" keygen --out "$work/keys" > /dev/null
echo "check-wheel: device-agent delegates, model-bundle keygen ok"
"$V/fleet-server" serve --data "$work/data" --port 0 --mqtt-port 0 > "$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 150); do
  if [ -f "$work/data/ports.json" ]; then
    if "$V/python" - "$work/data/ports.json" <<'PY' 2>/dev/null
import json, os, ssl, sys, urllib.request
url = json.load(open(sys.argv[1]))["http_url"].rstrip("/") + "/api/v1/health"
ca = os.path.join(os.path.dirname(sys.argv[1]), "ca", "bundle.pem")  # the fleet CA (TLS default)
ctx = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
body = json.load(urllib.request.urlopen(url, timeout=2, context=ctx))
assert body.get("status") == "ok", body
print(f"check-wheel: fleet-server serve answers {url}: {body}")
login = urllib.request.urlopen(url.replace("/api/v1/health", "/console/login"), timeout=5, context=ctx)
assert login.status == 200 and b"<form" in login.read(), "console login page did not render"
print("check-wheel: the console's login page renders (templates are in the wheel)")
chart = urllib.request.urlopen(url.replace("/api/v1/health", "/console/static/vendor/uPlot.iife.min.js"), timeout=5, context=ctx)
assert chart.status == 200 and len(chart.read()) > 10_000, "the vendored chart library is not in the wheel"
print("check-wheel: the vendored chart library is served (static files are in the wheel)")
PY
    then exit 0; fi
  fi
  kill -0 "$server_pid" 2>/dev/null || { echo "check-wheel: fleet-server serve exited:" >&2; cat "$work/serve.log" >&2; exit 1; }
  sleep 0.2
done
echo "check-wheel: fleet-server serve did not answer its health route in 30 s:" >&2
cat "$work/serve.log" >&2
exit 1
