#!/usr/bin/env bash
# The local stack, on loopback, no containers: a real MLflow server (SQLite + proxied local
# artifacts), Airflow 3 (api-server, scheduler, dag-processor, triggerer; LocalExecutor on
# SQLite) with the project's DAGs, and optionally a Spark standalone cluster (master +
# worker from the pyspark distribution's spark-class) that spark-submit then targets.
#
#   bash infra/stack.sh up [--spark]      start what is not running, wait for health, print
#                                         URLs, credentials and where the logs are
#   bash infra/stack.sh status            health of each service (exit 1 if one is down)
#   bash infra/stack.sh trigger [DATE]    trigger vqrec_nightly through the REST API, wait
#   bash infra/stack.sh down              stop everything (SIGTERM, then SIGKILL)
#   bash infra/stack.sh logs [NAME]       tail the logs (all, or one service)
#
# State lives in $VQREC_STACK_DIR (default var/stack): logs/, run/ (pids), airflow/,
# mlflow/, spark/, lake/ and stack.env (the ports and URLs of the running stack).
# Ports: VQREC_STACK_{MLFLOW,AIRFLOW,SPARK,SPARK_UI,SPARK_WORKER_UI}_PORT.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"

STACK_DIR="$(realpath -m "${VQREC_STACK_DIR:-var/stack}")"
HOST=127.0.0.1
LOGS="$STACK_DIR/logs" RUN="$STACK_DIR/run"
PY="$REPO/.venv/bin/python"

# A running stack keeps its ports: read them back so status/down/trigger need no flags.
# shellcheck source=/dev/null
if [ -f "$STACK_DIR/stack.env" ]; then source "$STACK_DIR/stack.env"; fi
MLFLOW_PORT="${VQREC_STACK_MLFLOW_PORT:-${MLFLOW_PORT:-5000}}"
AIRFLOW_PORT="${VQREC_STACK_AIRFLOW_PORT:-${AIRFLOW_PORT:-8080}}"
SPARK_PORT="${VQREC_STACK_SPARK_PORT:-${SPARK_PORT:-7077}}"
SPARK_UI_PORT="${VQREC_STACK_SPARK_UI_PORT:-${SPARK_UI_PORT:-8081}}"
SPARK_WORKER_UI_PORT="${VQREC_STACK_SPARK_WORKER_UI_PORT:-${SPARK_WORKER_UI_PORT:-8082}}"
WITH_SPARK="${WITH_SPARK:-0}"

MLFLOW_URL="http://$HOST:$MLFLOW_PORT"
AIRFLOW_URL="http://$HOST:$AIRFLOW_PORT"
SPARK_MASTER="spark://$HOST:$SPARK_PORT"

stack_env() {
  # The stack's own Airflow home, lake and MLflow server; the project defaults for the rest.
  export AIRFLOW_HOME="$STACK_DIR/airflow" VQREC_LAKE="$STACK_DIR/lake"
  source "$REPO/infra/env.sh"
  export MLFLOW_TRACKING_URI="$MLFLOW_URL"
  # On-demand runs (trigger/REST) unless a cron is asked for: see airflow_support.
  export VQREC_NIGHTLY_CRON="${VQREC_NIGHTLY_CRON:-none}"
  export AIRFLOW__CORE__EXECUTOR=LocalExecutor
  export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$AIRFLOW_URL/execution/"
  export AIRFLOW__API__BASE_URL="$AIRFLOW_URL"
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$STACK_DIR/airflow-passwords.json"
  export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$LOGS/airflow-tasks"
  # Parse new or changed DAG files within seconds, not minutes.
  export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
  export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=True
  if [ "$WITH_SPARK" = 1 ]; then
    export AIRFLOW_CONN_SPARK_DEFAULT="{\"conn_type\": \"spark\", \"host\": \"spark://$HOST\", \"port\": $SPARK_PORT}"
  fi
}

is_running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() {  # start NAME CMD...: in its own session, output to logs/NAME.log
  local name=$1; shift
  if is_running "$name"; then echo "  $name already running (pid $(cat "$RUN/$name.pid"))"; return; fi
  setsid "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
  echo "  $name started (pid $!, log $LOGS/$name.log)"
}

wait_for() {  # wait_for NAME SECONDS CHECK...: poll CHECK until it succeeds
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  until "$@" > /dev/null 2>&1; do
    if ! is_running "$name"; then
      echo "$name died while starting; last lines of $LOGS/$name.log:" >&2
      tail -30 "$LOGS/$name.log" >&2; return 1
    fi
    if (( SECONDS - t0 > limit )); then
      echo "$name not healthy after ${limit}s (log: $LOGS/$name.log)" >&2; return 1
    fi
    sleep 2
  done
}

check_mlflow() { curl -fsS "$MLFLOW_URL/health"; }
check_airflow() {
  # The api-server answers and the scheduler and dag-processor heartbeat.
  curl -fsS "$AIRFLOW_URL/api/v2/monitor/health" | "$PY" -c '
import json, sys
h = json.load(sys.stdin)
sys.exit(0 if all(h[k]["status"] == "healthy" for k in ("metadatabase", "scheduler", "dag_processor")) else 1)'
}
check_spark() {
  curl -fsS "http://$HOST:$SPARK_UI_PORT/json/" | "$PY" -c '
import json, sys
sys.exit(0 if json.load(sys.stdin).get("aliveworkers", 0) >= 1 else 1)'
}
check_dags() {  # the DAG files are parsed (the api-server lists vqrec_nightly)
  "$PY" -m vqrec.devtools.stack_client --airflow "$AIRFLOW_URL" --passwords "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" dag vqrec_nightly
}

cmd_up() {
  mkdir -p "$LOGS" "$RUN" "$STACK_DIR/mlflow/artifacts" "$STACK_DIR/spark/work"
  bash "$REPO/infra/setup_venv.sh"
  stack_env
  cat > "$STACK_DIR/stack.env" <<EOF
MLFLOW_PORT=$MLFLOW_PORT
AIRFLOW_PORT=$AIRFLOW_PORT
SPARK_PORT=$SPARK_PORT
SPARK_UI_PORT=$SPARK_UI_PORT
SPARK_WORKER_UI_PORT=$SPARK_WORKER_UI_PORT
WITH_SPARK=$WITH_SPARK
EOF
  bash "$REPO/infra/demo_data.sh"
  # The admin password: generated once, kept out of the repo (var/ is ignored), mode 600.
  local pwfile="$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
  if [ ! -s "$pwfile" ]; then
    (umask 077; "$PY" -c 'import json, secrets; print(json.dumps({"admin": secrets.token_urlsafe(12)}))' > "$pwfile")
  fi
  bash "$REPO/infra/airflow_init.sh"

  echo "starting the stack in $STACK_DIR"
  start mlflow mlflow server --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STACK_DIR/mlflow/mlflow.db" \
    --artifacts-destination "$STACK_DIR/mlflow/artifacts"
  if [ "$WITH_SPARK" = 1 ]; then
    export SPARK_LOG_DIR="$LOGS" SPARK_WORKER_DIR="$STACK_DIR/spark/work" SPARK_LOCAL_DIRS="$STACK_DIR/spark/tmp"
    start spark-master spark-class org.apache.spark.deploy.master.Master \
      --host "$HOST" --port "$SPARK_PORT" --webui-port "$SPARK_UI_PORT"
    start spark-worker spark-class org.apache.spark.deploy.worker.Worker \
      --host "$HOST" --webui-port "$SPARK_WORKER_UI_PORT" \
      --cores "${VQREC_STACK_SPARK_CORES:-2}" --memory "${VQREC_STACK_SPARK_MEMORY:-6g}" "$SPARK_MASTER"
  fi
  start airflow-api-server airflow api-server --host "$HOST" --port "$AIRFLOW_PORT" --workers 1
  start airflow-scheduler airflow scheduler
  start airflow-dag-processor airflow dag-processor
  start airflow-triggerer airflow triggerer

  echo "waiting for health checks"
  wait_for mlflow 120 check_mlflow
  if [ "$WITH_SPARK" = 1 ]; then wait_for spark-worker 120 check_spark; fi
  wait_for airflow-api-server 180 check_airflow
  wait_for airflow-dag-processor 180 check_dags
  cmd_status
  cat <<EOF

The stack is up.
  Airflow UI/REST  $AIRFLOW_URL   user admin, password $("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$pwfile")
  MLflow UI/REST   $MLFLOW_URL
EOF
  if [ "$WITH_SPARK" = 1 ]; then
    echo "  Spark master     $SPARK_MASTER   (UI http://$HOST:$SPARK_UI_PORT; spark_default points here)"
  else
    echo "  Spark            local[2] inside each spark-submit (up --spark for a standalone cluster)"
  fi
  cat <<EOF
  Lake             $VQREC_LAKE
  Logs             $LOGS   (bash infra/stack.sh logs [NAME])
Run the nightly now: bash infra/stack.sh trigger [YYYY-MM-DD]; stop: bash infra/stack.sh down
EOF
}

health() {  # health PIDFILE LABEL CHECK: report CHECK for a service that was started
  [ -f "$1" ] || return 0
  if "$3" > /dev/null 2>&1; then printf '  %-22s ok\n' "$2"; return 0; fi
  printf '  %-22s FAILING\n' "$2"; return 1
}

cmd_status() {
  local bad=0 name
  for name in mlflow spark-master spark-worker airflow-api-server airflow-scheduler \
      airflow-dag-processor airflow-triggerer; do
    if [ -f "$RUN/$name.pid" ]; then
      if is_running "$name"; then printf '  %-22s running (pid %s)\n' "$name" "$(cat "$RUN/$name.pid")"
      else printf '  %-22s DOWN (see %s)\n' "$name" "$LOGS/$name.log"; bad=1; fi
    fi
  done
  health "$RUN/mlflow.pid" "mlflow health" check_mlflow || bad=1
  health "$RUN/airflow-api-server.pid" "airflow health" check_airflow || bad=1
  health "$RUN/spark-master.pid" "spark workers" check_spark || bad=1
  return $bad
}

cmd_down() {
  local name pid
  for name in airflow-triggerer airflow-dag-processor airflow-scheduler airflow-api-server \
      spark-worker spark-master mlflow; do
    [ -f "$RUN/$name.pid" ] || continue
    pid=$(cat "$RUN/$name.pid")
    # Each service was started in its own session: signal the whole group (workers,
    # gunicorn/uvicorn children, task processes).
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$RUN/$name.pid"
    echo "  $name stopped"
  done
  rm -f "$STACK_DIR/stack.env"
}

cmd_trigger() {
  stack_env
  "$PY" -m vqrec.devtools.stack_client --airflow "$AIRFLOW_URL" \
    --passwords "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" \
    trigger vqrec_nightly --date "${1:-$(date -u +%Y-%m-%d)}" --wait
}

cmd_logs() {
  if [ -n "${1:-}" ]; then tail -n 100 -f "$LOGS/$1.log"; else tail -n 20 -f "$LOGS"/*.log; fi
}

action="${1:-}"; shift || true
case "$action" in
  up)
    [ "${1:-}" = "--spark" ] && WITH_SPARK=1
    cmd_up ;;
  status) cmd_status ;;
  down) cmd_down ;;
  trigger) cmd_trigger "$@" ;;
  logs) cmd_logs "$@" ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
