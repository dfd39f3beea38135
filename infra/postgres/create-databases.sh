#!/bin/sh
# First start of the PostgreSQL container: one database each for Prefect, MLflow and MLflow's users.
set -eu
for database in prefect mlflow mlflow_auth; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE $database"
done
