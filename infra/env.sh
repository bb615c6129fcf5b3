# shellcheck shell=bash
# Source me: the local defaults every entry point shares (SQLite Airflow, local Spark,
# local MLflow store inside the lake). Anything already set in the environment wins.
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_repo/.venv/bin:$PATH"
export VQREC_LAKE="${VQREC_LAKE:-$_repo/var/lake}"
export VQREC_RAW_ROOT="${VQREC_RAW_ROOT:-$_repo/var/demo/raw}"
# The demo's domains (vqrec demo): Toys is held out for the new-domain backfill.
export VQREC_DOMAINS="${VQREC_DOMAINS:-Arts,Garden,Kitchen}"
export VQREC_PRETRAIN_DOMAINS="${VQREC_PRETRAIN_DOMAINS:-Arts,Garden}"
export VQREC_TARGET_DOMAINS="${VQREC_TARGET_DOMAINS:-Arts,Garden,Kitchen}"
# The demo's domains have ~240 items: too few for a domain's own OPQ (needs > 384), so the
# demo codes every domain with the shared pre-training quantizer (the default is "domain").
export VQREC_CODE_STRATEGY="${VQREC_CODE_STRATEGY:-shared}"
# Demo-sized training (a few minutes on 2 CPU cores); unset for the paper's defaults.
_demo_hyper='{"pretrain": {"epochs": 6, "batch_size": 512, "patience": 3}, "finetune": {"epochs": 12, "batch_size": 512, "patience": 4}}'
export VQREC_HYPER="${VQREC_HYPER-$_demo_hyper}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$_repo/var/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$_repo/dags}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE="${AIRFLOW__CORE__UNIT_TEST_MODE:-False}"
# spark-submit against local[2] unless a real connection is configured.
export AIRFLOW_CONN_SPARK_DEFAULT="${AIRFLOW_CONN_SPARK_DEFAULT:-{\"conn_type\": \"spark\", \"host\": \"local[2]\"}}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$_repo/.venv/bin/python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PYSPARK_PYTHON}"
# One thread per process on small machines; raise on big GPU workers.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
unset _repo _demo_hyper
