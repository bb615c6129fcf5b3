#!/usr/bin/env bash
# The local stack, on loopback, no containers, in the production topology (docs/STACK.md):
# Airflow 3 (api-server, scheduler, dag-processor, triggerer) with the CeleryExecutor, Redis
# as broker, its metadata and Celery results on PostgreSQL, a Celery worker for the default
# queue and one for queue "gpu"; an MLflow server on PostgreSQL (artifacts proxied to a
# local folder); a Spark standalone master + worker that spark-submit targets.
# PostgreSQL and Redis must already run (127.0.0.1:5432, user postgres; 127.0.0.1:6379):
# `up` checks them first and says how to start an absent one.
#
#   bash infra/stack.sh up [--embedded]   start what is not running, wait for health, print
#                                         URLs, credentials and where the logs are;
#                                         --embedded: SQLite + LocalExecutor + spark-submit on
#                                         local[2], no PostgreSQL/Redis (a laptop without them)
#   bash infra/stack.sh check             are PostgreSQL and Redis there? (exit 3 if not)
#   bash infra/stack.sh status            health of each service (exit 1 if one is down)
#   bash infra/stack.sh trigger [DATE]    trigger vqrec_nightly through the REST API, wait
#   bash infra/stack.sh down [--purge]    stop everything (SIGTERM, then SIGKILL); --purge
#                                         also drops the stack's databases and broker keys
#                                         and deletes its Airflow home, lake and MLflow store
#   bash infra/stack.sh logs [NAME]       tail the logs (all, or one service)
#
# State lives in $VQREC_STACK_DIR (default var/stack): logs/, run/ (pids), airflow/,
# mlflow/, spark/, lake/ and stack.env (the ports and URLs of the running stack); the
# databases vqrec_airflow_<id> and vqrec_mlflow_<id>, where <id> is derived from that folder,
# so two stacks (a developer's and the test's) never share one.
# Ports: VQREC_STACK_{MLFLOW,AIRFLOW,SPARK,SPARK_UI,SPARK_WORKER_UI,WORKER_LOG,TRIGGERER_LOG}_PORT.
# Services: VQREC_STACK_PG_{HOST,PORT,USER} (a password: PGPASSWORD or ~/.pgpass) and
# VQREC_STACK_REDIS_URL.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"

STACK_DIR="$(realpath -m "${VQREC_STACK_DIR:-var/stack}")"
HOST=127.0.0.1
LOGS="$STACK_DIR/logs" RUN="$STACK_DIR/run"
PY="$REPO/.venv/bin/python"

# A running stack keeps its ports and topology: read them back so status/down/trigger need
# no flags.
# shellcheck source=/dev/null
if [ -f "$STACK_DIR/stack.env" ]; then source "$STACK_DIR/stack.env"; fi
MLFLOW_PORT="${VQREC_STACK_MLFLOW_PORT:-${MLFLOW_PORT:-5000}}"
AIRFLOW_PORT="${VQREC_STACK_AIRFLOW_PORT:-${AIRFLOW_PORT:-8080}}"
SPARK_PORT="${VQREC_STACK_SPARK_PORT:-${SPARK_PORT:-7077}}"
SPARK_UI_PORT="${VQREC_STACK_SPARK_UI_PORT:-${SPARK_UI_PORT:-8081}}"
SPARK_WORKER_UI_PORT="${VQREC_STACK_SPARK_WORKER_UI_PORT:-${SPARK_WORKER_UI_PORT:-8082}}"
WORKER_LOG_PORT="${VQREC_STACK_WORKER_LOG_PORT:-${WORKER_LOG_PORT:-8793}}"
TRIGGERER_LOG_PORT="${VQREC_STACK_TRIGGERER_LOG_PORT:-${TRIGGERER_LOG_PORT:-8794}}"
TOPOLOGY="${TOPOLOGY:-production}"

MLFLOW_URL="http://$HOST:$MLFLOW_PORT"
AIRFLOW_URL="http://$HOST:$AIRFLOW_PORT"
SPARK_MASTER="spark://$HOST:$SPARK_PORT"

# The stack's own databases and broker keys, named after its folder.
STACK_ID="$(printf '%s' "$STACK_DIR" | sha1sum | cut -c1-8)"
PG_HOST="${VQREC_STACK_PG_HOST:-127.0.0.1}" PG_PORT="${VQREC_STACK_PG_PORT:-5432}"
PG_USER="${VQREC_STACK_PG_USER:-postgres}"
PG="$PG_USER@$PG_HOST:$PG_PORT"
AIRFLOW_DB="vqrec_airflow_$STACK_ID" MLFLOW_DB="vqrec_mlflow_$STACK_ID"
REDIS_URL="${VQREC_STACK_REDIS_URL:-redis://127.0.0.1:6379/0}"
BROKER_PREFIX="vqrec_$STACK_ID:"

# Every service either topology may start (the embedded one: no Spark, no workers).
SERVICES="mlflow spark-master spark-worker airflow-api-server airflow-scheduler
  airflow-dag-processor airflow-triggerer airflow-worker airflow-worker-gpu"

stack_env() {
  # The stack's own Airflow home, lake and MLflow server; the project defaults for the rest.
  export AIRFLOW_HOME="$STACK_DIR/airflow" VQREC_LAKE="$STACK_DIR/lake"
  source "$REPO/infra/env.sh"
  export MLFLOW_TRACKING_URI="$MLFLOW_URL"
  # On-demand runs (trigger/REST) unless a cron is asked for: see airflow_support.
  export VQREC_NIGHTLY_CRON="${VQREC_NIGHTLY_CRON:-none}"
  export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$AIRFLOW_URL/execution/"
  export AIRFLOW__API__BASE_URL="$AIRFLOW_URL"
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$STACK_DIR/airflow-passwords.json"
  # Every process of the stack writes task logs into one folder, so the api-server reads
  # them from disk; the log servers get the stack's own ports (two stacks can run at once).
  export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$LOGS/airflow-tasks"
  export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$WORKER_LOG_PORT"
  export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT="$TRIGGERER_LOG_PORT"
  # The api-server's first execution-API call (a task's start) took 34 s on a loaded 2-core
  # machine: past the 5-s default, every retry times out too and the task fails its try.
  export AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT="${AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT:-60}"
  # Parse new or changed DAG files within seconds, not minutes.
  export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
  export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=True
  if [ "$TOPOLOGY" = production ]; then production_env; else
    export AIRFLOW__CORE__EXECUTOR=LocalExecutor
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
  fi
}

production_env() {
  # What infra/compose/compose.yaml sets, pointed at the services on this machine.
  export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://$PG/$AIRFLOW_DB"
  export AIRFLOW__CELERY__BROKER_URL="$REDIS_URL"
  export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql://$PG/$AIRFLOW_DB"
  # Celery's Redis keys (queues "default" and "gpu") carry the stack's prefix: a worker of
  # another stack on the same Redis never takes this stack's tasks.
  export AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX="$BROKER_PREFIX"
  # Redelivery after 24 h without an ack: longer than the longest task (pretrain, 6 h).
  export AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT=86400
  export AIRFLOW_CONN_SPARK_DEFAULT="{\"conn_type\": \"spark\", \"host\": \"spark://$HOST\", \"port\": $SPARK_PORT}"
}

mlflow_store() {  # the MLflow server's backend store URI
  if [ "$TOPOLOGY" = production ]; then echo "postgresql://$PG/$MLFLOW_DB"
  else echo "sqlite:///$STACK_DIR/mlflow/mlflow.db"; fi
}

# --- PostgreSQL and Redis: present? (a laptop may have neither)

psql_admin() { psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
redis() { redis-cli -u "$REDIS_URL" "$@"; }

check_postgres() {
  if ! command -v pg_isready > /dev/null || ! command -v psql > /dev/null; then
    echo "PostgreSQL client tools (pg_isready, psql) are not installed."
    echo "    Debian/Ubuntu: apt-get install postgresql   (server and clients)"
    return 1
  fi
  if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
    echo "PostgreSQL is not answering on $PG_HOST:$PG_PORT (pg_isready). Start it:"
    echo "    Debian/Ubuntu: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start"
    echo "    (not installed: apt-get install postgresql; macOS: brew services start postgresql@16)"
    echo "    a container: docker run -d -p 127.0.0.1:$PG_PORT:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16"
    return 1
  fi
  if ! psql_admin -c 'SELECT 1' > /dev/null 2>&1; then
    echo "PostgreSQL answers on $PG_HOST:$PG_PORT but user $PG_USER cannot log in:"
    echo "    allow it (trust for 127.0.0.1 in pg_hba.conf) or export PGPASSWORD / use ~/.pgpass"
    return 1
  fi
}

check_redis() {
  if ! command -v redis-cli > /dev/null; then
    echo "redis-cli is not installed.  Debian/Ubuntu: apt-get install redis-server"
    return 1
  fi
  if [ "$(redis ping 2> /dev/null)" != PONG ]; then
    echo "Redis is not answering at $REDIS_URL (redis-cli ping). Start it:"
    local port="${REDIS_URL##*:}"; port="${port%%/*}"
    echo "    redis-server --daemonize yes --bind 127.0.0.1 --port $port   (apt-get install redis-server)"
    echo "    a container: docker run -d -p 127.0.0.1:$port:6379 redis:7"
    return 1
  fi
}

cmd_check() {  # exit 3 (and say which, and how to start it) when a service is absent
  local absent=0
  check_postgres || absent=1
  check_redis || absent=1
  if [ "$absent" = 1 ]; then
    echo "The stack needs PostgreSQL and Redis (docs/STACK.md); without them:" \
      "bash infra/stack.sh up --embedded (SQLite, LocalExecutor)."
    return 3
  fi
  echo "PostgreSQL $PG_HOST:$PG_PORT and Redis $REDIS_URL answer."
}

create_databases() {
  local db
  for db in "$AIRFLOW_DB" "$MLFLOW_DB"; do
    if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
      psql_admin -c "CREATE DATABASE $db"
      echo "  created database $db"
    fi
  done
}

purge_services() {  # drop the stack's databases and broker keys, where the services answer
  local db key n=0
  if command -v pg_isready > /dev/null && pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
    for db in $(psql_admin -c "SELECT datname FROM pg_database
        WHERE datname IN ('$AIRFLOW_DB', '$MLFLOW_DB')"); do
      psql_admin -c "DROP DATABASE $db WITH (FORCE)"
      echo "  dropped database $db"
    done
  fi
  if command -v redis-cli > /dev/null && [ "$(redis ping 2> /dev/null)" = PONG ]; then
    for key in $(redis --scan --pattern "$BROKER_PREFIX*"); do redis del "$key" > /dev/null; n=$((n + 1)); done
    if [ "$n" -gt 0 ]; then echo "  deleted $n broker keys $BROKER_PREFIX*"; fi
  fi
}

# --- processes

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
check_workers() {  # both Celery workers answer a ping on the broker, with their queues
  airflow celery list-workers -o json 2> /dev/null | "$PY" -c '
import json, sys
queues = {q for w in json.load(sys.stdin) for q in w["queues"]}
sys.exit(0 if {"default", "gpu"} <= queues else 1)'
}
check_dags() {  # the DAG files are parsed (the api-server lists vqrec_nightly)
  "$PY" -m vqrec.devtools.stack_client --airflow "$AIRFLOW_URL" --passwords "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" dag vqrec_nightly
}

announce() {  # what `up` creates and where, before it creates anything
  cat <<EOF
The vqrec local stack in $STACK_DIR ($TOPOLOGY topology). It creates its own state, empty
on the first up and kept across down/up until \`down --purge\` (not infra/main.sh's var/):
  Airflow home     $STACK_DIR/airflow
  Airflow metadata ${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN}
  MLflow store     $(mlflow_store)   artifacts $STACK_DIR/mlflow/artifacts
  lake             $VQREC_LAKE   (raw input: $VQREC_RAW_ROOT)
EOF
  if [ "$TOPOLOGY" = production ]; then
    cat <<EOF
  Celery broker    $REDIS_URL   keys $BROKER_PREFIX*; results in the Airflow database
It will serve Airflow on $AIRFLOW_URL, MLflow on $MLFLOW_URL, Spark on $SPARK_MASTER
(UI http://$HOST:$SPARK_UI_PORT); Celery workers for queues default and gpu.
EOF
  else
    echo "It will serve Airflow on $AIRFLOW_URL and MLflow on $MLFLOW_URL (LocalExecutor, local[2] Spark)."
  fi
}

write_stack_env() {
  cat > "$STACK_DIR/stack.env" <<EOF
TOPOLOGY=$TOPOLOGY
MLFLOW_PORT=$MLFLOW_PORT
AIRFLOW_PORT=$AIRFLOW_PORT
SPARK_PORT=$SPARK_PORT
SPARK_UI_PORT=$SPARK_UI_PORT
SPARK_WORKER_UI_PORT=$SPARK_WORKER_UI_PORT
WORKER_LOG_PORT=$WORKER_LOG_PORT
TRIGGERER_LOG_PORT=$TRIGGERER_LOG_PORT
AIRFLOW_DATABASE=$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
MLFLOW_STORE=$(mlflow_store)
BROKER_PREFIX=$BROKER_PREFIX
EOF
}

start_services() {
  start mlflow mlflow server --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "$(mlflow_store)" \
    --artifacts-destination "$STACK_DIR/mlflow/artifacts"
  if [ "$TOPOLOGY" = production ]; then
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
  if [ "$TOPOLOGY" = production ]; then
    # The default queue (plan, the spark-submit drivers, register) and queue "gpu"
    # (codes, pretrain, finetune), as in the compose file. The gpu worker serves no task
    # logs of its own: both write into one folder, which the default worker serves.
    start airflow-worker airflow celery worker --queues default --concurrency 2 \
      --celery-hostname "default-$STACK_ID@%h" --pid "$AIRFLOW_HOME/worker-default.pid"
    start airflow-worker-gpu airflow celery worker --queues gpu --concurrency 1 \
      --celery-hostname "gpu-$STACK_ID@%h" --pid "$AIRFLOW_HOME/worker-gpu.pid" --skip-serve-logs
  fi
}

cmd_up() {
  local found
  if [ "$TOPOLOGY" = production ]; then
    if ! found="$(cmd_check)"; then echo "$found" >&2; exit 3; fi
    echo "$found"
  fi
  stack_env
  announce
  mkdir -p "$LOGS" "$RUN" "$STACK_DIR/mlflow/artifacts" "$STACK_DIR/spark/work"
  bash "$REPO/infra/setup_venv.sh"
  write_stack_env
  if [ "$TOPOLOGY" = production ]; then create_databases; fi
  bash "$REPO/infra/demo_data.sh"
  # The admin password: generated once, kept out of the repo (var/ is ignored), mode 600.
  local pwfile="$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
  if [ ! -s "$pwfile" ]; then
    (umask 077; "$PY" -c 'import json, secrets; print(json.dumps({"admin": secrets.token_urlsafe(12)}))' > "$pwfile")
  fi
  bash "$REPO/infra/airflow_init.sh"

  echo "starting the stack"
  start_services
  echo "waiting for health checks"
  wait_for mlflow 180 check_mlflow
  if [ "$TOPOLOGY" = production ]; then
    wait_for spark-worker 120 check_spark
    wait_for airflow-worker-gpu 180 check_workers
  fi
  wait_for airflow-api-server 180 check_airflow
  wait_for airflow-dag-processor 180 check_dags
  cmd_status
  print_urls "$pwfile"
}

print_urls() {
  cat <<EOF

The stack is up ($TOPOLOGY topology).
  Airflow UI/REST  $AIRFLOW_URL   user admin, password $("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$1")
  MLflow UI/REST   $MLFLOW_URL
EOF
  if [ "$TOPOLOGY" = production ]; then
    echo "  Spark master     $SPARK_MASTER   (UI http://$HOST:$SPARK_UI_PORT; spark_default points here)"
    echo "  Celery workers   queue default and queue gpu, broker $REDIS_URL"
  else
    echo "  Spark            local[2] inside each spark-submit"
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
  for name in $SERVICES; do
    if [ -f "$RUN/$name.pid" ]; then
      if is_running "$name"; then printf '  %-22s running (pid %s)\n' "$name" "$(cat "$RUN/$name.pid")"
      else printf '  %-22s DOWN (see %s)\n' "$name" "$LOGS/$name.log"; bad=1; fi
    fi
  done
  [ -f "$STACK_DIR/stack.env" ] || return $bad
  stack_env
  health "$RUN/mlflow.pid" "mlflow health" check_mlflow || bad=1
  health "$RUN/airflow-api-server.pid" "airflow health" check_airflow || bad=1
  health "$RUN/spark-master.pid" "spark workers" check_spark || bad=1
  health "$RUN/airflow-worker-gpu.pid" "celery workers" check_workers || bad=1
  return $bad
}

cmd_down() {
  local name pid
  # Stop scheduling first, then the workers (their running tasks), then what serves.
  for name in airflow-triggerer airflow-dag-processor airflow-scheduler airflow-worker-gpu \
      airflow-worker airflow-api-server spark-worker spark-master mlflow; do
    [ -f "$RUN/$name.pid" ] || continue
    pid=$(cat "$RUN/$name.pid")
    # Each service was started in its own session: signal the whole group (workers,
    # gunicorn/uvicorn children, Celery pool and task processes, Spark executors).
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$RUN/$name.pid"
    echo "  $name stopped"
  done
  rm -f "$STACK_DIR/stack.env"
}

cmd_purge() {
  echo "purging the stack's state"
  purge_services
  # Only what `up` creates: never the whole folder, which a user may have pointed anywhere.
  rm -rf "$STACK_DIR"/{airflow,mlflow,lake,spark,logs,run} "$STACK_DIR/airflow-passwords.json"
  rmdir "$STACK_DIR" 2> /dev/null || true
  echo "  removed $STACK_DIR/{airflow,mlflow,lake,spark,logs,run}"
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

usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

action="${1:-}"; shift || true
case "$action" in
  up)
    case "${1:-}" in
      "") ;;
      --embedded) TOPOLOGY=embedded ;;
      *) usage ;;
    esac
    cmd_up ;;
  check) cmd_check ;;
  status) cmd_status ;;
  down)
    case "${1:-}" in
      "") cmd_down ;;
      --purge) cmd_down; cmd_purge ;;
      *) usage ;;
    esac ;;
  trigger) cmd_trigger "$@" ;;
  logs) cmd_logs "$@" ;;
  *) usage ;;
esac
