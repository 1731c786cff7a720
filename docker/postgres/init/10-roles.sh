#!/bin/sh
# PostgreSQL's first start (docker-entrypoint-initdb.d): the owner role is
# POSTGRES_USER (the migration connects as it); the services' role gets
# only what `migrate` grants it (APP_DATABASE__SERVICE_ROLE): DML on the
# tables, no DDL. One file in two places, docker/postgres/init/10-roles.sh
# (compose) and docker/k8s/overlays/dev/postgres-roles.sh (kustomize reads
# nothing outside its directory); scripts/lint-deploy fails when they differ.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v role=coupon_app -v password="$PG_SERVICE_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"role";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"role";
SQL
