#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the tests: Debian's `postgresql` package, a new data directory under
# a temporary folder, listening on 127.0.0.1 on a free port, password (SCRAM) authentication for TCP. Run as root
# it starts the server as the unprivileged `postgres` user (PostgreSQL refuses to run as root).
#
#   scripts/pg.sh start DIR   prints the `export` lines the tests read (MODELMIRROR_TEST_PG_URL, _PASSWORD)
#   scripts/pg.sh stop DIR    stops the server and removes DIR
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "error: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install postgresql" >&2
  exit 1
fi
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
start)
  dir=$2
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
  password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  printf '%s\n' "$password" > "$dir/pw"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir/pw"; fi
  as_owner "$bin/initdb" -D "$dir/data" -U modelmirror --pwfile="$dir/pw" -A scram-sha-256 \
    --auth-local=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; echo "error: initdb failed (log above)" >&2; exit 1; }
  # A free port: the kernel picks one, then the server takes it (a race with another program is possible but
  # rare; the start fails loudly then).
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000)))
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null \
    || { cat "$dir/server.log" >&2; echo "error: PostgreSQL did not start (log above)" >&2; exit 1; }
  echo "export MODELMIRROR_TEST_PG_URL=postgresql://modelmirror@127.0.0.1:$port/postgres"
  echo "export MODELMIRROR_TEST_PG_PASSWORD=$password"
  echo "export MODELMIRROR_TEST_PG_DATA=$dir/data"
  ;;
stop)
  dir=$2
  if [ -d "$dir/data" ]; then as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: scripts/pg.sh start|stop DIR" >&2
  exit 2
  ;;
esac
