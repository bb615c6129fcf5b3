#!/usr/bin/env bash
# The README's main-job command: on a fresh machine, install, generate the demo data, and
# run the vqrec_nightly DAG end to end through Airflow (`airflow dags test`, SQLite metadata,
# local Spark via spark-submit, local MLflow store in the lake), then say where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup_venv.sh
source infra/env.sh
DATE="${1:-$(date -u +%Y-%m-%d)}"
start=$(date +%s)

bash infra/demo_data.sh
bash infra/airflow_init.sh
airflow dags test vqrec_nightly "$DATE" > "$AIRFLOW_HOME/last_nightly.log" 2>&1 || {
  tail -60 "$AIRFLOW_HOME/last_nightly.log"
  echo "vqrec_nightly FAILED (full log: $AIRFLOW_HOME/last_nightly.log)" >&2
  exit 1
}
python -m vqrec.mlops.report --lake "$VQREC_LAKE" --elapsed "$(( $(date +%s) - start ))" \
  --log "$AIRFLOW_HOME/last_nightly.log"
