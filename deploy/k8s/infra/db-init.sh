#!/usr/bin/env bash
# Creates one PostgreSQL role and one database per service (the role owns its
# database), or brings them up to date: safe to run again, e.g. after rotating a password.
# Run by PostgreSQL's entrypoint in compose (/docker-entrypoint-initdb.d), by the
# `flotilla-db-init` Job in Kubernetes, or by hand:
#   PGHOST=… PGUSER=postgres PGPASSWORD=… AUTH_DB_PASSWORD=… … deploy/db-init.sh
# Each service's password comes from <SERVICE>_DB_PASSWORD (AUTH_DB_PASSWORD,
# EVENT_BUS_DB_PASSWORD, …); a service without one is skipped with a warning.
# FLOTILLA_DB_PREFIX (default empty) prefixes every role and database name.
set -euo pipefail
prefix=${FLOTILLA_DB_PREFIX:-}
# The converter keeps no database; every other service behind the gateway has its own.
services=(auth media notification posts comments moderation query event_bus)
psql=(psql -v ON_ERROR_STOP=1 -qtA --dbname "${PGDATABASE:-postgres}")
for service in "${services[@]}"; do
  var="$(tr '[:lower:]' '[:upper:]' <<<"$service")_DB_PASSWORD"
  password=${!var:-}
  if [ -z "$password" ]; then
    echo "db-init: $var is not set; skipping $service" >&2
    continue
  fi
  name="$prefix$service"
  # psql variables (:'x' quotes a literal, :"x" an identifier): no value is ever
  # spliced into SQL by the shell.
  "${psql[@]}" -v name="$name" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'name')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'name') \gexec
ALTER ROLE :"name" WITH LOGIN PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'name') \gexec
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
  echo "db-init: role and database $name ready"
done
