#!/usr/bin/env bash
# Idempotent Airflow setup: migrate the metadata DB AIRFLOW__DATABASE__SQL_ALCHEMY_CONN names
# (SQLite under $AIRFLOW_HOME by default; PostgreSQL on the local stack) and create
# the gpu pool the GPU stages are routed to. Source infra/env.sh first.
set -euo pipefail
mkdir -p "$AIRFLOW_HOME"
airflow db migrate > "$AIRFLOW_HOME/db_migrate.log" 2>&1 || {
  tail -30 "$AIRFLOW_HOME/db_migrate.log"; exit 1; }
airflow pools set gpu "${VQREC_GPU_SLOTS:-1}" "GPU stages: codes, pretrain, finetune" > /dev/null
