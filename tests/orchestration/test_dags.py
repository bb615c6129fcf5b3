"""The Airflow DAGs: they import, have the expected shape, and run end to end for real.

The end-to-end tests run `airflow dags test` (a real Airflow 3, SQLite metadata DB in a temp
AIRFLOW_HOME, spark-submit against local[2], the real encoder, faiss, torch and a real MLflow
store in the lake) on the project's demo data.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DATE = "2026-11-20"
# Small but real: the DAG's own defaults, with demo-sized epochs and a smaller model.
HYPER = {
    "pretrain": {"epochs": 4, "batch_size": 512, "patience": 3},
    "finetune": {"epochs": 10, "batch_size": 512, "patience": 4},
    "model": {"hidden": 128, "inner": 128},
}


def _airflow_env(home: Path, lake: Path, raw: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": "local[2]"}),
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        VQREC_LAKE=str(lake),
        VQREC_RAW_ROOT=str(raw),
        VQREC_DOMAINS="Arts,Garden,Kitchen",
        VQREC_PRETRAIN_DOMAINS="Arts,Garden",
        VQREC_TARGET_DOMAINS="Arts,Garden,Kitchen",
        VQREC_HYPER=json.dumps(HYPER),
        VQREC_CODE_STRATEGY="shared",  # demo domains are too small for their own OPQ
        VQREC_SPARK_DRIVER_MEMORY="3g",  # reaches spark-submit (the default is 4g)
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _run(cmd: list[str], env: dict[str, str], log: Path, timeout: int = 1200) -> None:
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-60:])
        pytest.fail(f"{' '.join(cmd[:4])} failed (rc {proc.returncode}); log {log}:\n{tail}")


_SHAPE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=%r)
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id in ("vqrec_nightly", "vqrec_new_domain"):
    dag = bag.get_dag(dag_id)
    out["dags"][dag_id] = {
        "doc": bool(dag.doc_md), "catchup": dag.catchup, "params": sorted(dag.params.keys()),
        "tasks": {t.task_id: {"up": sorted(t.upstream_task_ids), "pool": t.pool, "queue": t.queue,
                  "retries": t.retries, "doc": bool(t.doc_md or t.doc),
                  "rule": getattr(t.trigger_rule, "value", str(t.trigger_rule))}
                  for t in dag.tasks},
    }
print("SHAPE" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    """A temp AIRFLOW_HOME with a migrated SQLite metadata DB and the gpu pool."""
    base = tmp_path_factory.mktemp("airflow")
    env = _airflow_env(base / "home", base / "lake", base / "raw")
    _run(["bash", str(ROOT / "infra" / "airflow_init.sh")], env, base / "init.log")
    return base, env


def test_dagbag_imports_and_shapes(airflow_env):
    base, env = airflow_env
    proc = subprocess.run(
        [sys.executable, "-c", _SHAPE % str(ROOT / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("SHAPE")]
    assert line, proc.stderr[-3000:]
    shape = json.loads(line[-1][5:])
    assert shape["errors"] == {}
    nightly = shape["dags"]["vqrec_nightly"]
    tasks = nightly["tasks"]
    assert set(tasks) == {
        "plan",
        "clean",
        "encode",
        "publish_clean_assets",
        "codes",
        "pretrain",
        "targets",
        "finetune",
        "evaluate",
        "register",
        "recommend",
    }
    assert tasks["clean"]["up"] == ["plan"] and tasks["encode"]["up"] == ["clean"]
    assert "register" in tasks["recommend"]["up"] and "recommend_k" in nightly["params"]
    assert "encode" in tasks["codes"]["up"] and "codes" in tasks["pretrain"]["up"]
    assert {"pretrain", "targets"} <= set(tasks["finetune"]["up"])
    assert "finetune" in tasks["evaluate"]["up"] and "evaluate" in tasks["register"]["up"]
    for tid in ("codes", "pretrain", "finetune"):
        assert tasks[tid]["pool"] == "gpu" and tasks[tid]["queue"] == "gpu", tid
    assert tasks["evaluate"]["rule"] == "all_done"
    assert tasks["finetune"]["retries"] >= 1
    assert nightly["doc"] and nightly["catchup"] is False
    assert all(tasks[t]["doc"] for t in ("clean", "encode", "codes", "pretrain", "targets"))

    new = shape["dags"]["vqrec_new_domain"]
    assert set(new["tasks"]) == {
        "plan",
        "clean_encode",  # one Spark application: a small domain's cost is mostly JVM time
        "codes",
        "finetune",
        "evaluate",
        "register",
    }
    assert "clean_encode" in new["tasks"]["codes"]["up"]
    assert {"domain", "raw_path", "layout"} <= set(new["params"])
    assert "pretrain" not in new["tasks"]  # never retrains the backbone


def _data_hashes(lake: Path, version: str) -> dict[str, str]:
    """sha1 of every data file of a run's clean / embeddings / codes versions."""
    out = {}
    for stage in ("clean", "embeddings", "codes"):
        base = lake / stage / version
        for f in sorted(base.rglob("*")):
            if f.is_file() and f.suffix in {".parquet", ".faiss"}:
                out[str(f.relative_to(lake))] = hashlib.sha1(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def nightly_world(airflow_env):
    """Demo data + one real `airflow dags test vqrec_nightly` run."""
    base, env = airflow_env
    lake, raw = base / "lake", base / "raw"
    _run([str(VENV_BIN / "vqrec"), "demo", "--out", str(raw), "--seed", "0"], env, base / "d.log")
    _run([str(VENV_BIN / "airflow"), "dags", "test", "vqrec_nightly", DATE], env, base / "n1.log")
    return {"base": base, "env": env, "lake": lake, "raw": raw}


def _client(lake: Path):
    from mlflow.tracking import MlflowClient

    from vqrec.mlops import tracking

    tracking.setup_tracking(lake)
    return MlflowClient()


@pytest.mark.slow
def test_nightly_end_to_end_registers_champions(nightly_world):
    from vqrec.core.metrics import popularity_metrics
    from vqrec.lake.tables import load_domain
    from vqrec.orchestration.pipeline import version_for

    lake = nightly_world["lake"]
    client = _client(lake)
    for name in ("vqrec-backbone", "vqrec-Arts", "vqrec-Garden", "vqrec-Kitchen"):
        mv = client.get_model_version_by_alias(name, "champion")
        assert str(mv.version) == "1", name
    # The transferred models beat popularity on the demo data by a clear margin.
    version = version_for(f"{DATE}T00:00:00+00:00", "")
    for domain in ("Arts", "Garden", "Kitchen"):
        metrics = json.loads(
            (lake / "models" / version / "domains" / domain / "metrics.json").read_text()
        )["test"]
        data = load_domain(lake, domain, version, version)
        pop = popularity_metrics(data.splits["train"], data.splits["test"], data.n_items)
        assert metrics["ndcg@10"] > 1.5 * pop["ndcg@10"] + 0.02, (domain, metrics, pop)
        # Batch recommendations: the champion's top-10 for every user of the domain.
        recs = pq.read_table(lake / "recommendations" / version / f"domain={domain}")
        assert recs.num_rows == 10 * len(data.splits["test"]), domain
        assert set(recs.column("model_version").to_pylist()) == {"1"}
    # MLflow: the night's parent run is named after it, summarises it, and every stage
    # (the Spark ones too) is a child run.
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("vqrec").experiment_id],
        filter_string=f"tags.`vqrec.stage` = 'pipeline' and params.version = '{version}'",
    )
    assert parent.info.run_name == f"nightly {version} (refresh)"
    assert parent.data.params["cadence"] == "refresh"
    assert parent.data.tags["vqrec.promotion.Arts"] == "v1 promoted"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    stages = {c.data.tags["vqrec.stage"] for c in children}
    assert {"clean", "encode", "codes", "pretrain", "finetune-Arts", "finetune-Kitchen"} <= stages
    for domain in ("Arts", "Garden", "Kitchen"):
        assert parent.data.metrics[f"{domain}.test_ndcg_at_10"] > 0, domain
    assert parent.data.metrics["wall_s.pretrain"] > 0
    # The Spark stages' runs span their jobs (logged afterwards, from the versions' _SUCCESS).
    assert parent.data.metrics["wall_s.clean"] > 1 and parent.data.metrics["wall_s.encode"] > 1
    # The codes run plots every domain, one without collisions (Kitchen's) too.
    (codes_run,) = [c for c in children if c.data.tags["vqrec.stage"] == "codes"]
    plots = {a.path for a in client.list_artifacts(codes_run.info.run_id, "plots")}
    for domain in ("Arts", "Garden", "Kitchen"):
        assert {f"plots/code_usage_{domain}.png", f"plots/collisions_{domain}.png"} <= plots
    # The driver's heap is spark-submit's flag: a session's conf comes after the JVM started.
    night_log = (nightly_world["base"] / "n1.log").read_text()
    assert "spark-submit --master local[2] --driver-memory 3g --name vqrec-clean" in night_log


@pytest.mark.slow
def test_progress_lines_from_the_nightly_log(nightly_world):
    """What infra/main.sh prints while the DAG runs: a line per task start and end, with
    its wall time and key figure, read from the run's real log and lake."""
    import io

    from vqrec.devtools.progress import report

    lake, base = nightly_world["lake"], nightly_world["base"]
    out = io.StringIO()
    lines = (base / "n1.log").read_text().splitlines()
    assert report(iter(lines), lake, out) == 0
    printed = out.getvalue().splitlines()
    tasks = ("plan", "clean", "encode", "codes", "pretrain", "evaluate", "register", "recommend")
    for task in tasks:
        assert f"  > {task} ..." in printed, task
        assert any(p.startswith(f"  ok {task} ") for p in printed), task
    assert any(p.startswith("  ok finetune[2] ") for p in printed)
    figures = {p.split()[1]: p for p in printed if p.startswith("  ok ")}
    assert "3 domains" in figures["clean"] and "rows kept" in figures["clean"]
    assert "unique-code share Arts" in figures["codes"]
    assert "best valid NDCG@10" in figures["pretrain"]


@pytest.mark.slow
def test_same_date_twice_is_idempotent(nightly_world):
    from vqrec.orchestration.pipeline import version_for

    lake, env, base = nightly_world["lake"], nightly_world["env"], nightly_world["base"]
    version = version_for(f"{DATE}T00:00:00+00:00", "")
    before = _data_hashes(lake, version)
    assert before, "the run wrote no data files"
    _run([str(VENV_BIN / "airflow"), "dags", "test", "vqrec_nightly", DATE], env, base / "n2.log")
    assert _data_hashes(lake, version) == before
    client = _client(lake)
    for name in ("vqrec-backbone", "vqrec-Arts"):
        versions = client.search_model_versions(f"name = '{name}'")
        assert len(versions) == 1, f"{name}: a rerun of the same date registered again"


@pytest.mark.slow
def test_new_domain_registers_without_touching_the_backbone(nightly_world):
    lake, env, base, raw = (nightly_world[k] for k in ("lake", "env", "base", "raw"))
    client = _client(lake)
    backbone_before = client.get_model_version_by_alias("vqrec-backbone", "champion")
    stages = ("clean", "embeddings", "codes", "models")
    current_before = {s: (lake / s / "CURRENT").read_text() for s in stages}
    conf = {"domain": "Toys", "raw_path": str(raw / "Toys"), "lake": str(lake)}
    conf = json.dumps({**conf, "code_strategy": "shared"})
    _run(
        [str(VENV_BIN / "airflow"), "dags", "test", "vqrec_new_domain", DATE, "-c", conf],
        env,
        base / "new.log",
    )
    client = _client(lake)
    toys = client.get_model_version_by_alias("vqrec-Toys", "champion")
    assert str(toys.version) == "1"
    backbone_after = client.get_model_version_by_alias("vqrec-backbone", "champion")
    assert str(backbone_after.version) == str(backbone_before.version)
    assert len(client.search_model_versions("name = 'vqrec-backbone'")) == 1
    # The backfill's one-domain versions leave CURRENT on the nightly's complete picture, so
    # plain commands on the other domains keep working.
    assert {s: (lake / s / "CURRENT").read_text() for s in stages} == current_before
    evaluate = [str(VENV_BIN / "vqrec"), "evaluate", "--lake", str(lake), "--domain", "Arts"]
    _run(evaluate, env, base / "evaluate.log")


@pytest.mark.slow
def test_incremental_nightly_keeps_backbone_and_codes_and_warm_starts(nightly_world):
    """The next night on a champion: no refit, no pre-training, each domain warm-started
    from its champion for at most INCREMENTAL_CAPS epochs, registered through the same gate."""
    from vqrec.orchestration.pipeline import INCREMENTAL_CAPS, version_for

    lake, env, base = (nightly_world[k] for k in ("lake", "env", "base"))
    refreshed = version_for(f"{DATE}T00:00:00+00:00", "")
    day2 = "2026-11-21"
    _run([str(VENV_BIN / "airflow"), "dags", "test", "vqrec_nightly", day2], env, base / "day2.log")
    version = version_for(f"{day2}T00:00:00+00:00", "")

    def same_bytes(stage: str, path: str) -> bool:
        return (lake / stage / version / path).read_bytes() == (
            lake / stage / refreshed / path
        ).read_bytes()

    assert same_bytes("models", "backbone/model.safetensors")  # no pre-training
    quantizers = sorted(p.name for p in (lake / "codes" / refreshed / "quantizers").iterdir())
    assert "pretrain.faiss" in quantizers
    for quantizer in quantizers:  # the champion's quantizers, frozen
        assert same_bytes("codes", f"quantizers/{quantizer}"), quantizer
    client = _client(lake)
    assert len(client.search_model_versions("name = 'vqrec-backbone'")) == 1
    for domain in ("Arts", "Garden", "Kitchen"):
        config = json.loads(
            (lake / "models" / version / "domains" / domain / "config.json").read_text()
        )
        assert config["warm_start_version"] == refreshed, domain
        assert config["train"]["epochs"] <= INCREMENTAL_CAPS["epochs"]
        assert config["train"]["permutation"] == "identity"  # aligned already
        assert len(client.search_model_versions(f"name = 'vqrec-{domain}'")) == 2, domain
