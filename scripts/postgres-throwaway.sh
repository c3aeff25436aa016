#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests (Debian's packages, /usr/lib/postgresql/*/bin):
#   postgres-throwaway.sh start DIR   initdb into DIR/data on a free port, start it, print its URL
#   postgres-throwaway.sh stop DIR    stop it and remove DIR
# As root the cluster runs as the `postgres` user (initdb refuses root); otherwise as the caller.
# Trust authentication on 127.0.0.1 only, no locale (byte-order text, as SQLite sorts).
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?DIR}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ] && command -v pg_ctl >/dev/null 2>&1; then bin=$(dirname "$(command -v pg_ctl)"); fi
[ -n "$bin" ] || { echo "no PostgreSQL binaries (apt-get install postgresql)" >&2; exit 1; }
# runuser lives in /usr/sbin, which a non-login root PATH may lack
runuser=$(command -v runuser || echo /usr/sbin/runuser)
as_owner() { if [ "$(id -u)" = 0 ]; then "$runuser" -u postgres -- "$@"; else "$@"; fi; }
case "$cmd" in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-locale -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c fsync=off -c full_page_writes=off" start >/dev/null \
    || { cat "$dir/data/server.log" >&2; exit 1; }
  echo "postgresql://postgres@127.0.0.1:$port/postgres"
  ;;
stop)
  if [ -d "$dir/data" ]; then as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$dir"
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
