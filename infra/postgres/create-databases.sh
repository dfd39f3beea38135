#!/bin/sh
# First start of the PostgreSQL container: one database each for Prefect and MLflow.
set -eu
for database in prefect mlflow; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE $database"
done
