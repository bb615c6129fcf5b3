-- Runs once, on the first start of an empty Postgres volume: the MLflow metadata database
-- beside Airflow's (POSTGRES_DB). Owned by the same role; no secret here.
CREATE DATABASE mlflow;
