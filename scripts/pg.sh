#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on 127.0.0.1 for the tests (and for trying --db by hand).
#
#   eval "$(bash scripts/pg.sh start DIR)"   # initdb into DIR, start on a free port, create a database;
#                                            # prints: export SEMINDEX_TEST_PG_URL=postgresql+psycopg://...
#   bash scripts/pg.sh stop DIR              # stop it and delete DIR
#   bash scripts/pg.sh install               # apt-get install postgresql when its binaries are missing
#
# Works as root (the cluster runs as the 'postgres' user, which initdb requires) or as an
# ordinary user (the cluster runs as that user). Nothing listens anywhere but 127.0.0.1, and
# authentication is 'trust' for local connections only: it is a test cluster, not a server.
# fsync is off (and initdb does not sync): the tests kill clients, never this server, and it makes a
# 2-core box faster.
set -euo pipefail

DB_NAME=${SEMINDEX_PG_DB:-semindex_test}

log() { echo "pg.sh: $*" >&2; }

find_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  fi
  # Debian/Ubuntu keep the server binaries out of PATH, one folder per major version.
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

install_pg() {
  if find_bindir >/dev/null; then return 0; fi
  if [ "$(id -u)" != 0 ]; then
    log "PostgreSQL is not installed and this is not root: install the 'postgresql' package"; exit 1
  fi
  log "installing PostgreSQL with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q </dev/null >&2
  apt-get install -y -q --no-install-recommends postgresql </dev/null >&2
  find_bindir >/dev/null || { log "apt-get installed postgresql but no initdb was found"; exit 1; }
}

free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

as_owner() {
  # run "$@" as the cluster's owner
  if [ "$(id -u)" = 0 ]; then
    if command -v runuser >/dev/null 2>&1; then
      runuser -u postgres -- "$@"
    else
      su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
  else
    "$@"
  fi
}

start() {
  local dir=${1:?usage: pg.sh start DIR}
  install_pg
  local bin; bin=$(find_bindir)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local user=$(id -un)
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" --shell /usr/sbin/nologin postgres
    chown postgres "$dir"
    user=postgres
  fi
  chmod 700 "$dir"
  as_owner "$bin/initdb" -N -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || as_owner "$bin/initdb" -N -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  local port tries=0
  while :; do
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB" \
        >/dev/null 2>&1; then
      break
    fi
    tries=$((tries + 1))
    if [ $tries -ge 3 ]; then cat "$dir/server.log" >&2; log "could not start the cluster"; exit 1; fi
  done
  echo "$port" >"$dir/port"
  "$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE DATABASE $DB_NAME" </dev/null >&2
  local url="postgresql+psycopg://postgres@127.0.0.1:$port/$DB_NAME"
  echo "$url" >"$dir/url"
  log "cluster in $dir on 127.0.0.1:$port (owner $user)"
  echo "export SEMINDEX_TEST_PG_URL=$url"
}

stop() {
  local dir=${1:?usage: pg.sh stop DIR}
  [ -d "$dir" ] || return 0
  if [ -f "$dir/data/postmaster.pid" ]; then
    local bin; bin=$(find_bindir) || true
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  install) install_pg ;;
  *) echo "usage: pg.sh start DIR | stop DIR | install" >&2; exit 2 ;;
esac
