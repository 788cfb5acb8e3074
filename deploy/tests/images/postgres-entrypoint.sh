#!/bin/sh
# Entrypoint of the local stand-in for postgres:16-alpine (Debian's PostgreSQL, built by
# scripts/docker-test.sh): like the official image, it initialises $PGDATA on first start
# with the superuser $POSTGRES_USER (password $POSTGRES_PASSWORD) and the database
# $POSTGRES_DB, then runs the server as user postgres, listening on every address.
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD: the image refuses to start a server without one}"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /run/postgresql
  chown -R postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  # Set up on a private socket, so that pg_isready (the healthcheck) answers only once the
  # database exists.
  setup="$(mktemp -d)"
  "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses= -c unix_socket_directories=$setup" -w start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    "$bin/psql" -h "$setup" -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -q \
      -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  rmdir "$setup"
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
