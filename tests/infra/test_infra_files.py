"""The production files, validated by real linters and by what the pipeline needs of them.

No Docker engine runs here, so the images are not built and the compose file is not started:
hadolint checks the Dockerfile, check-jsonschema checks the compose file against the Compose
Specification's schema, yamllint its YAML, shellcheck the scripts; the rest of this file
checks that the deployment wires what the DAGs expect (queues, connections, secrets).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vqrec.orchestration.airflow_support import GPU_QUEUE

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
COMPOSE = ROOT / "infra" / "compose" / "compose.yaml"
ENV_EXAMPLE = ROOT / "infra" / "compose" / "env.example"
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|FERNET|ACCESS_KEY|TOKEN(?!IZERS)|CREDENTIAL")


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    exe = BIN / name
    assert exe.exists(), f"{name} is a dev dependency (pyproject [dev]); reinstall the venv"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_dockerfile_passes_hadolint():
    proc = _tool("hadolint", "--config", "infra/docker/.hadolint.yaml", str(DOCKERFILE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_matches_the_compose_spec_schema_and_yamllint():
    proc = _tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _tool("yamllint", "--strict", str(COMPOSE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shell_scripts_pass_shellcheck():
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "infra").glob("*.sh"))
    proc = _tool("shellcheck", "-x", *scripts, ".ci/run")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_images_install_the_same_pins_as_the_local_venv():
    text = DOCKERFILE.read_text()
    targets = re.findall(r"^FROM \S+ AS (\w+)$", text, flags=re.M)
    assert targets == ["base", "cpu", "gpu"]
    pinned = (ROOT / "constraints.txt").read_text().split()
    assert "torch==2.13.0" in pinned
    # torch first, exactly the constrained version, then the project from pyproject.
    assert text.count("torch==2.13.0") == 2
    assert text.count('pip install ".[prod]" -c constraints.txt') == 2
    assert "download.pytorch.org/whl/cpu" in text.split("AS gpu")[0]  # CPU wheel on cpu only
    assert "openjdk-17-jre-headless" in text.split("AS gpu")[0]  # Java for Spark


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif node is not None:
        yield str(node)


def _env_items(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_no_secret_is_written_in_the_compose_file(compose):
    """Every secret-looking setting is a required variable: no literal, no default."""
    for name, service in compose["services"].items():
        for key, value in _env_items(service).items():
            if SECRET_WORDS.search(key) and "FILE" not in key:
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), (name, key, value)
            for var in re.findall(r"\$\{([A-Z0-9_]+):-", value):
                assert not SECRET_WORDS.search(var), f"{name}.{key}: secret {var} has a default"
        for text in _strings(service):
            # A password inside a URL must come from a variable too.
            for userinfo in re.findall(r"://[^/@\s]*:([^@/\s]+)@", text):
                assert userinfo.startswith("${") and ":?" in userinfo, (name, text)


def test_every_variable_is_documented_and_no_value_is_shipped(compose):
    lines = [ln for ln in COMPOSE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", "\n".join(lines)))
    documented = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            documented[key] = value
    assert used <= set(documented), used - set(documented)
    assert all(value == "" for value in documented.values()), "env.example ships values"
    assert ".env" in (ROOT / ".gitignore").read_text()


def test_the_deployment_wires_what_the_dags_need(compose):
    services = compose["services"]
    # Airflow on Celery, metadata in Postgres, one CPU and one GPU worker queue.
    scheduler_env = _env_items(services["airflow-scheduler"])
    assert scheduler_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert scheduler_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    gpu = services["airflow-worker-gpu"]
    assert gpu["command"][-4:] == ["--queues", GPU_QUEUE, "--concurrency", "1"]
    assert gpu["build"]["target"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    cpu_worker = services["airflow-worker"]
    assert "default" in cpu_worker["command"] and cpu_worker["hostname"] == "airflow-worker"
    # spark_default points at the standalone master that the compose file starts.
    conn = scheduler_env["AIRFLOW_CONN_SPARK_DEFAULT"]
    master = services["spark-master"]["command"]
    assert '"spark://spark-master"' in conn and master[master.index("--port") + 1] in conn
    assert "spark://spark-master:7077" in services["spark-worker"]["command"]
    # Tasks, executors and the GPU worker share one lake; MLflow keeps artifacts in S3.
    for name in ("airflow-worker", "airflow-worker-gpu", "spark-worker"):
        assert "lake:/lake" in services[name]["volumes"], name
    assert scheduler_env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert any(a.startswith("--artifacts-destination=s3://") for a in services["mlflow"]["command"])
    assert _env_items(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    # Published ports listen on loopback only; put a TLS proxy in front for remote users.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
