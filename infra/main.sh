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
log="$AIRFLOW_HOME/last_nightly.log"
echo "vqrec_nightly $DATE on the demo: about 10-20 min on 2 cores; Airflow's full log: $log"
# Airflow's output goes to the log; a line per task (start, end, wall time, key figure)
# comes to the terminal (vqrec.devtools.progress follows the log until the run exits).
airflow dags test vqrec_nightly "$DATE" > "$log" 2>&1 &
dag=$!
python -m vqrec.devtools.progress --log "$log" --lake "$VQREC_LAKE" --pid "$dag" || true
if ! wait "$dag"; then
  tail -60 "$log"
  echo "vqrec_nightly FAILED (full log: $log)" >&2
  exit 1
fi
python -m vqrec.mlops.report --lake "$VQREC_LAKE" --elapsed "$(( $(date +%s) - start ))" \
  --log "$log"
