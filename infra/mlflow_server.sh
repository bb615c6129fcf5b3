#!/usr/bin/env bash
# The MLflow UI + REST server over the lake's tracking store (the default one that the
# pipeline writes: sqlite:///<lake>/mlflow/mlflow.db, artifacts in <lake>/mlflow/artifacts).
#   bash infra/mlflow_server.sh [port]        (lake: $VQREC_LAKE or ./var/lake)
# One worker instead of MLflow's default four (one person's UI needs no more, at a fraction
# of the memory); it is ready when `curl 127.0.0.1:PORT/health` answers OK: poll that, the
# time to it depends on the machine's load.
# This is the store infra/main.sh writes. The local stack (infra/stack.sh, docs/STACK.md)
# runs its own server on PostgreSQL at the URL `stack.sh up` prints; production
# (infra/compose) one on PostgreSQL with S3 artifacts, proxied over HTTP
# (--artifacts-destination), which the pipeline reaches through MLFLOW_TRACKING_URI.
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
