"""The local stack, for real: `infra/stack.sh up --spark`, a nightly run through REST, `down`.

Everything is a real service on loopback (free ports, a temp stack folder): an MLflow server
(SQLite + proxied artifacts), Airflow 3's api-server, scheduler, dag-processor and triggerer
(LocalExecutor), and a Spark standalone master + worker that the DAG's spark-submit tasks
target. The test triggers vqrec_nightly through Airflow's REST API on the demo data, waits
for success, and checks the registry through MLflow's REST API.
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

ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-11-21"
TARGETS = ["Arts", "Kitchen"]
# Demo-sized and then some: this test is about the services, not model quality.
HYPER = {
    "pretrain": {"epochs": 2, "batch_size": 512, "patience": 2},
    "finetune": {"epochs": 3, "batch_size": 512, "patience": 2},
    "model": {"hidden": 64, "inner": 64},
}

pytestmark = pytest.mark.slow


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


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    mlflow_port, airflow_port, spark_port, spark_ui, worker_ui = _free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    env.update(
        VQREC_STACK_DIR=str(base / "stack"),
        VQREC_RAW_ROOT=str(base / "raw"),
        VQREC_STACK_MLFLOW_PORT=str(mlflow_port),
        VQREC_STACK_AIRFLOW_PORT=str(airflow_port),
        VQREC_STACK_SPARK_PORT=str(spark_port),
        VQREC_STACK_SPARK_UI_PORT=str(spark_ui),
        VQREC_STACK_SPARK_WORKER_UI_PORT=str(worker_ui),
        VQREC_STACK_SPARK_MEMORY="4g",
        VQREC_DOMAINS="Arts,Garden,Kitchen",
        VQREC_PRETRAIN_DOMAINS="Arts,Garden",
        VQREC_TARGET_DOMAINS=",".join(TARGETS),
        VQREC_HYPER=json.dumps(HYPER),
    )
    up = _stack(env, "up", "--spark")
    info = {
        "env": env,
        "dir": base / "stack",
        "up": up,
        "airflow": f"http://127.0.0.1:{airflow_port}",
        "mlflow": f"http://127.0.0.1:{mlflow_port}",
        "spark_ui": f"http://127.0.0.1:{spark_ui}",
    }
    try:
        yield info
    finally:
        down = _stack(env, "down", timeout=300)
        info["down"] = down


def _explain(proc: subprocess.CompletedProcess, logs: Path) -> str:
    tails = []
    for log in sorted(logs.glob("*.log")):
        tails.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n" + "\n".join(
        tails
    )


def test_stack_runs_the_nightly_through_rest_and_registers_in_mlflow(stack):
    up = stack["up"]
    assert up.returncode == 0, _explain(up, stack["dir"] / "logs")
    # Ports, credentials and the logs folder are printed for the operator.
    password = json.loads((stack["dir"] / "airflow-passwords.json").read_text())["admin"]
    assert stack["airflow"] in up.stdout and f"password {password}" in up.stdout
    assert stack["mlflow"] in up.stdout and str(stack["dir"] / "logs") in up.stdout
    assert oct((stack["dir"] / "airflow-passwords.json").stat().st_mode & 0o777) == "0o600"
    status = _stack(stack["env"], "status")
    assert status.returncode == 0, status.stdout + status.stderr

    # A wrong password is refused: the API is not open.
    with pytest.raises(Exception, match="401|403"):
        AirflowClient(stack["airflow"], "admin", password + "x")

    client = AirflowClient(stack["airflow"], "admin", password)
    client.unpause("vqrec_nightly")
    run_id = client.trigger("vqrec_nightly", DATE)
    run = client.wait("vqrec_nightly", run_id, timeout=1500, poll=5)
    assert run["state"] == "success"
    states = client.task_states("vqrec_nightly", run_id)
    assert states["register"] == "success"
    assert [states[f"finetune[{i}]"] for i in range(len(TARGETS))] == ["success"] * len(TARGETS)

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

    # The Spark stages ran on the standalone cluster, not in local mode.
    master = _get(f"{stack['spark_ui']}/json/")
    apps = {a["name"] for a in master["completedapps"]}
    assert {"vqrec-clean", "vqrec-encode"} <= apps, apps


def test_down_stops_every_service(stack):
    pids = [int(p.read_text()) for p in (stack["dir"] / "run").glob("*.pid")]
    assert len(pids) == 7
    down = _stack(stack["env"], "down", timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list((stack["dir"] / "run").glob("*.pid"))
    # `status` on a stopped stack says nothing is running and succeeds.
    assert _stack(stack["env"], "status").returncode == 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
