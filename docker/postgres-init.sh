#!/bin/sh
# Separate databases (and owners) for Airflow's metadata, MLflow's backend store and the live feedback.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE USER airflow WITH PASSWORD '${AIRFLOW_DB_PASSWORD}';
CREATE DATABASE airflow OWNER airflow;
CREATE USER mlflow WITH PASSWORD '${MLFLOW_DB_PASSWORD}';
CREATE DATABASE mlflow OWNER mlflow;
CREATE USER bookrec WITH PASSWORD '${BOOKREC_DB_PASSWORD}';
CREATE DATABASE bookrec OWNER bookrec;
SQL
