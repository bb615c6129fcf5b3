"""The local stack, for real: `infra/stack.sh up`, a nightly run through REST, `down --purge`.

Everything is a real service on loopback (free ports, a temp stack folder), in the production
topology: Airflow 3's api-server, scheduler, dag-processor and triggerer with the
CeleryExecutor (Redis broker, metadata and Celery results in the stack's own PostgreSQL
database), a Celery worker for the default queue and one for queue `gpu`, an MLflow server on
its own PostgreSQL database (proxied artifacts), and a Spark standalone master + worker that
the DAG's spark-submit tasks target. The test triggers vqrec_nightly through Airflow's REST
API on the demo data, waits for success, and checks where each task ran, the champions
through MLflow's REST API, and what landed in PostgreSQL. It skips, with the stack's own
message, where PostgreSQL or Redis is absent (`stack.sh check`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from vqrec.devtools.stack_client import AirflowClient, registered_models
from vqrec.orchestration.airflow_support import GPU_QUEUE

ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-11-21"
TARGETS = ["Arts", "Kitchen"]
# Demo-sized and then some: this test is about the services, not model quality.
# Where each task must run: the GPU stages on the gpu worker, the rest on the default one.
GPU_TASKS = {"codes", "pretrain", "finetune"}
CPU_TASKS = {
    "plan",
    "clean",
    "publish_clean_assets",
    "encode",
    "targets",
    "evaluate",
    "register",
    "recommend",
}
HYPER = {
    "pretrain": {"epochs": 2, "batch_size": 512, "patience": 2},
    "finetune": {"epochs": 3, "batch_size": 512, "patience": 2},
    "model": {"hidden": 64, "inner": 64},
}

pytestmark = pytest.mark.slow

SERVICES = [
    "mlflow",
    "spark-master",
    "spark-worker",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _stack(env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "infra" / "stack.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _sql(database_url: str, query: str) -> list[str]:
    """One column of a query, through psql as the stack's tools run it."""
    proc = subprocess.run(
        ["psql", database_url.replace("+psycopg2", ""), "-qAt", "-c", query],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def _stack_env(stack_dir: Path) -> dict[str, str]:
    lines = (stack_dir / "stack.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line)


def _base_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    env.update(VQREC_STACK_DIR=str(base / "stack"), VQREC_RAW_ROOT=str(base / "raw"))
    return env


def test_absent_services_are_named_with_how_to_start_them(tmp_path):
    """A laptop without PostgreSQL or Redis: `check` and `up` say which, and how to start
    it, exit 3 and create nothing (closed ports stand in for the absent services)."""
    pg_port, redis_port = _free_ports(2)
    env = _base_env(tmp_path)
    env.update(
        VQREC_STACK_PG_PORT=str(pg_port), VQREC_STACK_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0"
    )
    check = _stack(env, "check", timeout=60)
    assert check.returncode == 3, check.stdout + check.stderr
    assert f"PostgreSQL is not answering on 127.0.0.1:{pg_port}" in check.stdout
    assert "pg_ctlcluster --skip-systemctl-redirect" in check.stdout
    assert f"Redis is not answering at redis://127.0.0.1:{redis_port}/0" in check.stdout
    assert "redis-server --daemonize yes" in check.stdout
    assert "up --embedded" in check.stdout
    up = _stack(env, "up", timeout=60)
    assert up.returncode == 3 and "PostgreSQL is not answering" in up.stderr, up.stderr
    assert not (tmp_path / "stack").exists()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    env = _base_env(base)
    check = _stack(env, "check", timeout=60)
    if check.returncode == 3:
        pytest.skip(check.stdout.strip())
    assert check.returncode == 0, check.stdout + check.stderr
    ports = dict(
        zip(
            ["MLFLOW", "AIRFLOW", "SPARK", "SPARK_UI", "SPARK_WORKER_UI", "WORKER_LOG"]
            + ["TRIGGERER_LOG"],
            _free_ports(7),
            strict=True,
        )
    )
    env.update({f"VQREC_STACK_{name}_PORT": str(port) for name, port in ports.items()})
    env.update(
        VQREC_STACK_SPARK_MEMORY="4g",
        VQREC_DOMAINS="Arts,Garden,Kitchen",
        VQREC_PRETRAIN_DOMAINS="Arts,Garden",
        VQREC_TARGET_DOMAINS=",".join(TARGETS),
        VQREC_HYPER=json.dumps(HYPER),
    )
    up = _stack(env, "up")
    info = {
        "env": env,
        "dir": base / "stack",
        "up": up,
        "airflow": f"http://127.0.0.1:{ports['AIRFLOW']}",
        "mlflow": f"http://127.0.0.1:{ports['MLFLOW']}",
        "spark_ui": f"http://127.0.0.1:{ports['SPARK_UI']}",
    }
    if (base / "stack" / "stack.env").exists():
        info["state"] = _stack_env(base / "stack")
    try:
        yield info
    finally:
        # Drops the stack's databases and broker keys too (a no-op after test_down...).
        info["down"] = _stack(env, "down", "--purge", timeout=300)


def _explain(proc: subprocess.CompletedProcess, logs: Path) -> str:
    tails = []
    for log in sorted(logs.glob("*.log")):
        tails.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n" + "\n".join(
        tails
    )


def _check_up_output(stack: dict) -> str:
    """What `up` said it creates (before starting anything) and where it serves; returns
    the admin password."""
    up, state = stack["up"], stack["state"]
    assert state["TOPOLOGY"] == "production"
    announced = up.stdout.split("starting the stack")[0]
    assert state["AIRFLOW_DATABASE"].startswith("postgresql+psycopg2://postgres@127.0.0.1:5432/")
    assert state["MLFLOW_STORE"].startswith("postgresql://postgres@127.0.0.1:5432/")
    for created in (state["AIRFLOW_DATABASE"], state["MLFLOW_STORE"], state["BROKER_PREFIX"]):
        assert created in announced, (created, announced)
    assert str(stack["dir"] / "lake") in announced
    password = json.loads((stack["dir"] / "airflow-passwords.json").read_text())["admin"]
    assert stack["airflow"] in up.stdout and f"password {password}" in up.stdout
    assert stack["mlflow"] in up.stdout and str(stack["dir"] / "logs") in up.stdout
    assert oct((stack["dir"] / "airflow-passwords.json").stat().st_mode & 0o777) == "0o600"
    return password


def _check_celery_placement(stack: dict, tis: dict[str, dict]) -> None:
    """Every task ran through Celery: queued on its queue, taken by that queue's worker
    (the worker logs name each workload they executed), its result in PostgreSQL."""
    for key, ti in tis.items():
        name = key.split("[")[0]
        if name in GPU_TASKS | CPU_TASKS:
            assert ti["queue"] == (GPU_QUEUE if name in GPU_TASKS else "default"), (key, ti)
            assert ti["hostname"], (key, ti)
    logs = stack["dir"] / "logs"
    executed = {}
    for worker in ("airflow-worker", "airflow-worker-gpu"):
        lines = (logs / f"{worker}.log").read_text().splitlines()
        workloads = [ln for ln in lines if "Executing workload in Celery" in ln]
        executed[worker] = {
            t for t in GPU_TASKS | CPU_TASKS if any(f"task_id='{t}'" in w for w in workloads)
        }
    assert executed["airflow-worker-gpu"] == GPU_TASKS, executed
    assert executed["airflow-worker"] == CPU_TASKS, executed
    done = _sql(
        stack["state"]["AIRFLOW_DATABASE"],
        "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'",
    )
    assert int(done[0]) >= len(GPU_TASKS | CPU_TASKS), done


def test_stack_runs_the_nightly_on_celery_and_registers_in_mlflow(stack):
    up = stack["up"]
    assert up.returncode == 0, _explain(up, stack["dir"] / "logs")
    password = _check_up_output(stack)
    status = _stack(stack["env"], "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "celery workers         ok" in status.stdout

    # A wrong password is refused: the API is not open.
    with pytest.raises(Exception, match="401|403"):
        AirflowClient(stack["airflow"], "admin", password + "x")

    client = AirflowClient(stack["airflow"], "admin", password)
    client.unpause("vqrec_nightly")
    run_id = client.trigger("vqrec_nightly", DATE)
    run = client.wait("vqrec_nightly", run_id, timeout=3600, poll=5)
    assert run["state"] == "success"
    tis = client.task_instances("vqrec_nightly", run_id)
    assert tis["register"]["state"] == "success"
    assert [tis[f"finetune[{i}]"]["state"] for i in range(len(TARGETS))] == ["success"] * len(
        TARGETS
    )
    _check_celery_placement(stack, tis)

    # MLflow, through its REST API: a champion for the backbone and every target domain.
    models = registered_models(stack["mlflow"])
    for name in ["vqrec-backbone", *(f"vqrec-{d}" for d in TARGETS)]:
        assert models[name].get("champion") == "1", (name, models)
    runs = _get(
        f"{stack['mlflow']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=vqrec"
    )
    experiment_id = runs["experiment"]["experiment_id"]
    req = urllib.request.Request(
        f"{stack['mlflow']}/api/2.0/mlflow/runs/search",
        data=json.dumps({"experiment_ids": [experiment_id], "max_results": 200}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        found = json.loads(resp.read())["runs"]
    names = {r["info"]["run_name"] for r in found}
    assert {"pretrain", *(f"register-vqrec-{d}" for d in TARGETS)} <= names, names
    assert all(r["info"]["status"] == "FINISHED" for r in found)
    # Artifacts went through the server's proxy into the stack's artifact folder.
    assert any((stack["dir"] / "mlflow" / "artifacts").rglob("MLmodel"))

    # The metadata is in the stack's PostgreSQL databases, not in a SQLite file.
    aliases = _sql(stack["state"]["MLFLOW_STORE"], "SELECT name FROM registered_model_aliases")
    assert set(aliases) >= {"vqrec-backbone", *(f"vqrec-{d}" for d in TARGETS)}, aliases
    dag_runs = _sql(
        stack["state"]["AIRFLOW_DATABASE"],
        "SELECT state FROM dag_run WHERE dag_id = 'vqrec_nightly'",
    )
    assert dag_runs == ["success"], dag_runs
    assert not list(stack["dir"].rglob("*.db"))

    # The Spark stages ran on the standalone cluster, not in local mode.
    master = _get(f"{stack['spark_ui']}/json/")
    apps = {a["name"] for a in master["completedapps"]}
    assert {"vqrec-clean", "vqrec-encode"} <= apps, apps


def test_down_purge_stops_every_service_and_drops_the_stack_state(stack):
    pids = {p.stem: int(p.read_text()) for p in (stack["dir"] / "run").glob("*.pid")}
    assert sorted(pids) == sorted(SERVICES)
    state = stack["state"]
    down = _stack(stack["env"], "down", "--purge", timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # The databases, the broker keys and the stack folder's state are gone.
    databases = _sql(
        "postgresql://postgres@127.0.0.1:5432/postgres", "SELECT datname FROM pg_database"
    )
    for url in (state["AIRFLOW_DATABASE"], state["MLFLOW_STORE"]):
        assert url.rsplit("/", 1)[1] not in databases
    pattern = state["BROKER_PREFIX"] + "*"
    keys = subprocess.run(
        ["redis-cli", "-u", "redis://127.0.0.1:6379/0", "--scan", "--pattern", pattern],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert keys.returncode == 0 and keys.stdout.strip() == "", keys.stdout
    assert not (stack["dir"] / "lake").exists() and not (stack["dir"] / "run").exists()
    # `status` on a stopped stack says nothing is running and succeeds.
    assert _stack(stack["env"], "status").returncode == 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
