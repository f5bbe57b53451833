#!/usr/bin/env bash
# Start a throw-away PostgreSQL server (Debian's `postgresql` package) on loopback in a temp directory,
# create role and database `hgsearch`, and print `HGSEARCH_TEST_POSTGRES=<url>` and `PGDATA=<dir>` on
# stdout for the caller to eval. `.ci/postgres.sh stop "$PGDATA"` stops it and removes the directory.
# Installs the package when missing (apt-get, sudo when not root). Log goes to $PGDATA/server.log.
set -euo pipefail
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  $sudo apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

# initdb refuses to run as root: then the server runs as the `postgres` user the package created.
as=()
if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); fi

if [ "${1:-}" = stop ]; then
  "${as[@]}" "$bin/pg_ctl" -D "$2" -m fast -w stop >&2 || true
  rm -rf "$2"
  exit 0
fi

data=$(mktemp -d /tmp/hgsearch-pg.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$data"
chmod 700 "$data"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"${as[@]}" "$bin/initdb" -D "$data" -U postgres -A trust --no-instructions >&2
# Loopback only, socket in the data directory (no /var/run/postgresql needed), enough connections
# for several workers each holding a small SQLAlchemy pool.
"${as[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c max_connections=200" start >&2
"${as[@]}" "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -q \
  -c "CREATE ROLE hgsearch LOGIN PASSWORD 'hgsearch'" -c "CREATE DATABASE hgsearch OWNER hgsearch" >&2

echo "HGSEARCH_TEST_POSTGRES=postgresql://hgsearch:hgsearch@127.0.0.1:$port/hgsearch"
echo "PGDATA=$data"
