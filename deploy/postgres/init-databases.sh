#!/usr/bin/env bash
# Runs once, on the first start of an empty PostgreSQL volume (docker-entrypoint-initdb.d):
# one role and one database per consumer, each password from .env (through docker-compose.yml).
#   airflow        Airflow metadata DB (api-server, scheduler, dag-processor, triggerer)
#   celery         Celery result backend (scheduler and workers; workers never see the metadata DB)
#   mlflow         MLflow tracking and model-registry store, and (database mlflow_auth) the users and
#                  grants of its basic-auth app (deploy/mlflow/basic_auth.ini)
set -euo pipefail

for name in airflow celery mlflow; do
  var="$(echo "$name" | tr '[:lower:]' '[:upper:]')_DB_PASSWORD"
  password="${!var:?$var is not set}"
  db="$name"
  [ "$name" = celery ] && db=celery_results
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v role="$name" -v password="$password" -v db="$db" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
SQL
done
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
CREATE DATABASE mlflow_auth OWNER mlflow;
SQL
