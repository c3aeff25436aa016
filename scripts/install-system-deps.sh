#!/usr/bin/env bash
# Debian packages the tests need: Mosquitto (second real broker), Chromium (console tests)
# nginx (the caching proxy in front of bundle downloads, tests/scale) and systemd
# (systemd-analyze verify on the unit `device-agent install --systemd` writes); xdelta3 and
# bsdiff for `python -m bench.delta` (no test needs them); PostgreSQL, the registry's second
# engine (tests/db; scripts/postgres-throwaway.sh starts a cluster of it).
set -euo pipefail
need=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # verifies the agent's unit
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)  # tests/db, second engine
command -v xdelta3 >/dev/null 2>&1 || need+=(xdelta3)  # bench.delta's byte-level diffs
command -v bsdiff >/dev/null 2>&1 || need+=(bsdiff)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
