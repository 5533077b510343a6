#!/bin/sh
# Entrypoint of the mnist-search and mlflow images. The database password arrives as a file
# (a compose secret, POSTGRES_PASSWORD_FILE); it is handed to libpq as PGPASSWORD inside the
# process, so that no URL, command line or `docker inspect` shows it.
set -eu
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  if [ ! -f "$POSTGRES_PASSWORD_FILE" ] || [ ! -s "$POSTGRES_PASSWORD_FILE" ]; then
    echo "error: POSTGRES_PASSWORD_FILE $POSTGRES_PASSWORD_FILE is missing or empty (create secrets/postgres_password; see the README)" >&2
    exit 2
  fi
  PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
  export PGPASSWORD
fi
exec "$@"
