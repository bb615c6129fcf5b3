#!/usr/bin/env bash
# The MLflow UI + REST server over the lake's tracking store (the default one that the
# pipeline writes: sqlite:///<lake>/mlflow/mlflow.db, artifacts in <lake>/mlflow/artifacts).
#   bash infra/mlflow_server.sh [port]        (lake: $VQREC_LAKE or ./var/lake)
# One worker (about half the memory of MLflow's default); it is ready when
# `curl localhost:PORT/health` answers OK (seconds on a quiet machine, longer on a busy one).
# Production: point MLFLOW_TRACKING_URI of the pipeline at a shared server that uses
# --artifacts-destination instead (artifacts proxied over HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${1:-5000}"
LAKE="$(realpath -m "${VQREC_LAKE:-var/lake}")"
mkdir -p "$LAKE/mlflow/artifacts"
export PATH="$PWD/.venv/bin:$PATH"
exec mlflow server \
    --backend-store-uri "sqlite:///$LAKE/mlflow/mlflow.db" \
    --default-artifact-root "$LAKE/mlflow/artifacts" \
    --host "${MLFLOW_HOST:-127.0.0.1}" --port "$PORT" --workers 1
