"""Unsafe inputs: crafted files never run code, names never escape the lake, secrets never leak.

* Pickles with a payload (``__reduce__`` that would create a marker file) planted as a
  training checkpoint, as model weights, quantizer and Parquet tables in the lake, and as
  artifacts of the registered champion in the MLflow store: every loader refuses them with a
  clear error and the marker is never created (checkpoints load with ``weights_only=True``,
  weights are safetensors, tables Parquet, quantizers faiss: none of them unpickles).
* Domain names and versions from CLI flags and DAG params (``../x``, ``a/b``, ``..``...):
  one clear error, nothing written anywhere (the whole temp tree is compared).
* Secret-looking environment variables (AWS keys, MLflow password, a DB URI with a
  password, a Hugging Face token) around real tracked stages (the codes log, pretrain,
  finetune, register) against a real SQLite MLflow store: no secret value in any param,
  tag, metric key, description, logged model, stored file or log line.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.support.crash_harness import stage_env
from tests.support.world import DOMAIN, MODELS, copy_world
from vqrec.cli import main as vqrec
from vqrec.core.model import ModelConfig
from vqrec.core.trainer import TrainConfig
from vqrec.lake.manifest import MANIFEST
from vqrec.lake.store import adopt_version, resolve_version
from vqrec.mlops import registry, tracking
from vqrec.orchestration import pipeline
from vqrec.stages.codes import code_new_items
from vqrec.stages.train import pretrain_to_lake

SMALL = json.dumps({"hidden": 32, "inner": 32, "layers": 1, "heads": 1, "max_len": 10})


pytestmark = pytest.mark.usefixtures("lake_store")


@pytest.fixture
def lake(trained_world, tmp_path) -> Path:
    return copy_world(trained_world, tmp_path / "lake")["lake"]


# ---------------------------------------------------------------------------------------
# crafted pickles


class _Payload:
    """Unpickling this runs ``call(*args)``; every variant would create the marker file."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def payloads(marker: Path) -> list[_Payload]:
    return [
        _Payload(os.system, (f"touch {marker}",)),  # a shell command
        _Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),  # Python code
        _Payload(Path.touch, (marker,)),  # a plain library call
    ]


def pickled_files(marker: Path) -> list[tuple[str, bytes]]:
    """Each payload as torch.save writes it (zip + pickle) and as a bare pickle."""
    files = []
    for i, payload in enumerate(payloads(marker)):
        buffer = io.BytesIO()
        torch.save({"tensors": {"model": payload}, "state_json": "{}"}, buffer)
        files.append((f"torch-zip-{i}", buffer.getvalue()))
        files.append((f"pickle-{i}", pickle.dumps({"tensors": payload, "state_json": "{}"})))
    return files


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err):
        code = vqrec(argv)
    return code, err.getvalue()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_crafted_checkpoints_are_refused_and_never_unpickled(lake, tmp_path):
    marker = tmp_path / "PWNED"
    common = ["--lake", str(lake), "--epochs", "2", "--no-progress", "--device", "cpu"]
    common += ["--model-config", SMALL, "--resume"]
    runs = [
        (["pretrain", *common, "--version", "p", "--domains", DOMAIN], "p/backbone"),
        (
            # identity: this lake holds no embeddings for the matched alignment to read
            ["finetune", *common, "--version", "f", "--domain", DOMAIN,
             "--backbone-version", "trained", "--permutation", "identity"],
            f"f/domain-{DOMAIN}",
        ),
    ]
    tried = 0
    for name, blob in pickled_files(marker):
        for argv, part in runs:
            checkpoint = lake / "checkpoints" / part / "last.pt"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_bytes(blob)  # what a resumed run finds where its own would be
            code, err = _cli(argv)
            assert code == 2, (name, err)
            assert "is not a vqrec training checkpoint of plain tensors (refused" in err, err
            assert "Traceback" not in err and "weights_only=False" not in err
            assert not marker.exists(), name
            tried += 1
    assert tried == 12
    # Nothing was trained or committed from a refused checkpoint.
    assert sorted(p.name for p in (lake / "models").iterdir()) == sorted(["CURRENT", *MODELS])


def _recorded_as_committed(lake, stage: str, version: str) -> None:
    """Re-record a version's manifests as they are now: as if its stage had committed the
    crafted files (the manifest check refuses them first otherwise; these tests are about
    the loaders' own defence behind it)."""
    for manifest in (Path(lake) / stage / version).rglob(MANIFEST):
        manifest.unlink()
    adopt_version(lake, stage, version)


def test_crafted_weights_tables_and_quantizers_in_the_lake_are_refused(lake, tmp_path):
    marker = tmp_path / "PWNED"
    blob = pickle.dumps(payloads(marker)[0])
    models, codes = resolve_version(lake, "models", "trained"), resolve_version(lake, "codes", "v1")
    small = ["--lake", str(lake), "--epochs", "1", "--no-progress", "--device", "cpu"]
    small += ["--model-config", SMALL, "--backbone-version", "trained", "--domain", DOMAIN]

    # The domain model's weights: evaluate refuses them.
    (models / "domains" / DOMAIN / "model.safetensors").write_bytes(blob)
    code, err = _cli(
        ["evaluate", "--lake", str(lake), "--models-version", "trained", "--domain", DOMAIN]
    )
    assert code == 2 and "models/trained" in err and "is damaged" in err, err  # the manifest
    _recorded_as_committed(lake, "models", "trained")
    code, err = _cli(
        ["evaluate", "--lake", str(lake), "--models-version", "trained", "--domain", DOMAIN]
    )
    assert code == 2 and "model.safetensors is not a valid safetensors file" in err, err

    # The backbone's weights: a fine-tune on it refuses them.
    (models / "backbone" / "model.safetensors").write_bytes(blob)
    _recorded_as_committed(lake, "models", "trained")
    code, err = _cli(["finetune", *small, "--version", "f1"])
    assert code == 2 and "backbone/model.safetensors is not a valid safetensors file" in err, err

    # A clean table: Parquet holds no code, and the store never records a Parquet file
    # without a footer in a manifest, so the manifest check is what refuses it.
    sequences = resolve_version(lake, "clean", "v1") / "sequences" / f"domain={DOMAIN}"
    (sequences / "part-0.parquet").write_bytes(blob)
    code, err = _cli(["finetune", *small, "--version", "f2", "--mode", "scratch"])
    assert code == 2 and "clean/v1 is damaged" in err and "part-0.parquet" in err, err

    # A frozen quantizer: coding new items with it refuses the file.
    (codes / "quantizers" / f"{DOMAIN}.faiss").write_bytes(blob)
    with pytest.raises(ValueError, match=f"{DOMAIN}.faiss is not a faiss index file"):
        code_new_items(codes, DOMAIN, np.zeros((2, 384), np.float32))
    assert not marker.exists()


def test_crafted_artifacts_of_the_registered_champion_are_refused(lake, tmp_path):
    marker = tmp_path / "PWNED"
    blob = pickle.dumps(payloads(marker)[2])
    assert registry.register_domain(lake, DOMAIN, "trained")["promotion"]["promoted"]
    (stored,) = (lake / "mlflow" / "artifacts").glob("*/models/*/artifacts/artifacts")
    for name, message in (
        ("model.safetensors", "is not a valid safetensors file"),
        ("items.parquet", "Parquet magic bytes not found"),
    ):
        original = (stored / name).read_bytes()
        (stored / name).write_bytes(blob)
        with pytest.raises(Exception, match=message) as info:
            registry.load_champion(DOMAIN, lake)
        assert isinstance(info.value, ValueError | MlflowException)
        (stored / name).write_bytes(original)
    assert not marker.exists()
    assert registry.load_champion(DOMAIN, lake) is not None  # the restored one loads


# ---------------------------------------------------------------------------------------
# names from CLI flags and DAG params

BAD_NAMES = ["../x", "..", "a/../../b", "/etc", ".hidden", "x/y"]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_names_from_cli_flags_cannot_escape_the_lake(lake, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    raw = tmp_path / "raw" / DOMAIN
    raw.mkdir(parents=True)
    L = ["--lake", str(lake)]
    train = [*L, "--no-progress", "--model-config", SMALL]
    cases = []
    for bad in BAD_NAMES:
        cases += [
            ["clean", "--raw", str(raw), *L, "--domains", bad],
            ["encode", *L, "--domains", bad],
            ["encode", *L, "--version", bad],
            ["encode", *L, "--clean-version", bad],
            ["codes", *L, "--pretrain-domains", bad],
            ["codes", *L, "--pretrain-domains", DOMAIN, "--target-domains", bad],
            ["codes", *L, "--pretrain-domains", DOMAIN, "--version", bad],
            ["codes", *L, "--pretrain-domains", DOMAIN, "--frozen-from", bad],
            ["pretrain", *train, "--domains", bad],
            ["pretrain", *train, "--domains", DOMAIN, "--version", bad],
            ["pretrain", *train, "--domains", DOMAIN, "--codes-version", bad],
            ["finetune", *train, "--domain", bad],
            ["finetune", *train, "--domain", DOMAIN, "--version", bad],
            ["finetune", *train, "--domain", DOMAIN, "--backbone-version", bad],
            ["evaluate", *L, "--domain", bad],
            ["evaluate", *L, "--domain", DOMAIN, "--clean-version", bad],
            ["register", *L, "--domains", bad],
            ["register", *L, "--version", bad],
        ]
    before = _tree(tmp_path)
    for argv in cases:
        code, err = _cli(argv)
        assert code == 2, (argv, err)
        # clean checks --domains against its raw folders; every other flag is validated.
        assert "invalid" in err or "not among the raw folders" in err, (argv, err)
        assert "Traceback" not in err, (argv, err)
    assert _tree(tmp_path) == before  # nothing written, inside the lake or out of it
    assert len(cases) == 18 * len(BAD_NAMES)


def test_names_from_dag_params_and_plans_cannot_escape_the_lake(lake, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    before = _tree(tmp_path)
    for bad in BAD_NAMES:
        with pytest.raises(ValueError, match="invalid domain"):
            pipeline.plan_new_domain({"domain": bad, "raw_path": str(raw), "lake": str(lake)})
        with pytest.raises(ValueError, match="invalid domain"):
            pipeline.plan_run({"raw_root": str(raw), "lake": str(lake), "pretrain_domains": [bad]})
    # A plan travels through XCom as a dict: a tampered one is refused by the stage itself,
    # before its checkpoints (written every epoch) could land outside the lake.
    plan = pipeline.RunPlan(
        lake=str(lake),
        raw_root=str(raw),
        version="v1",
        domains=[DOMAIN],
        pretrain_domains=[DOMAIN],
        target_domains=[DOMAIN],
        hyper={"pretrain": {"epochs": 1}, "finetune": {"epochs": 1}},
    ).to_dict()
    for bad in BAD_NAMES:
        with pytest.raises(ValueError, match="invalid domain"):
            pipeline.run_finetune(plan, bad)
        with pytest.raises(ValueError, match="invalid version"):
            pretrain_to_lake(
                lake, bad, [DOMAIN], TrainConfig(epochs=1, progress=False), ModelConfig()
            )
        with pytest.raises(ValueError, match="invalid"):
            registry.register_domain(lake, bad, "trained")
    assert _tree(tmp_path) == before


# ---------------------------------------------------------------------------------------
# secrets

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAVQRECTESTSECRET1",
    "AWS_SECRET_ACCESS_KEY": "vqrecTestSecret2/K7MDENG+bPxRfiCYEXAMPLE",
    "MLFLOW_TRACKING_USERNAME": "vqrec-ops",
    "MLFLOW_TRACKING_PASSWORD": "vqrecTestSecret3-hunter2",
    "AIRFLOW_CONN_MLFLOW_DB": "postgresql://vqrec:vqrecTestSecret4@db.internal:5432/mlflow",
    "AIRFLOW_CONN_SPARK_DEFAULT": "spark://ops:vqrecTestSecret5@spark-master:7077",
    "HF_TOKEN": "hf_vqrecTestSecret6",
}
SECRET_VALUES = [v for k, v in SECRETS.items() if k != "MLFLOW_TRACKING_USERNAME"]
SECRET_VALUES += ["vqrecTestSecret4", "vqrecTestSecret5"]  # the passwords inside the URIs

STAGES = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
from vqrec.mlops import tracking
from vqrec.orchestration import pipeline
plan = pipeline.RunPlan(
    lake=sys.argv[1], raw_root=sys.argv[1], version="v1", domains=[sys.argv[2]],
    pretrain_domains=[sys.argv[2]], target_domains=[sys.argv[2]], code_strategy="shared",
    run_id="nightly-secrets", hyper=json.loads(sys.argv[3]),
).to_dict()
print("plan", json.dumps(plan))  # as the DAG's plan task logs its XCom
print("codes", tracking.log_codes_run(sys.argv[1], "nightly-secrets", "v1"))
print("pretrain", pipeline.run_pretrain(plan))
result = pipeline.run_finetune(plan, sys.argv[2])
summary = pipeline.collect_results(plan, [result])
print("register", json.dumps(pipeline.register_run(plan, summary), default=str))
"""


def test_no_secret_reaches_mlflow_or_the_logs(lake, tmp_path):
    hyper = {
        "model": json.loads(SMALL),
        "pretrain": {"epochs": 2, "batch_size": 256},
        "finetune": {"epochs": 2, "batch_size": 256, "permutation": "identity"},  # no embeddings
    }
    done = subprocess.run(
        [sys.executable, "-c", STAGES, str(lake), DOMAIN, json.dumps(hyper)],
        cwd=tmp_path,
        env=stage_env(SECRETS),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-5000:]

    uri = tracking.tracking_uri(lake)
    client = MlflowClient(uri, registry_uri=uri)  # not the registry an earlier test set up
    texts: list[str] = []
    experiments = client.search_experiments(view_type=ViewType.ALL)
    ids = [e.experiment_id for e in experiments]
    runs = client.search_runs(ids, run_view_type=ViewType.ALL)
    for run in runs:
        texts += [run.info.run_name or "", *run.data.metrics]
        texts += [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()]
    for model in client.search_logged_models(experiment_ids=ids):
        texts += [f"{k}={v}" for k, v in {**model.params, **model.tags}.items()]
    for rm in client.search_registered_models():
        texts += [rm.name, rm.description or "", *map(str, rm.tags.items())]
        for mv in client.search_model_versions(f"name='{rm.name}'"):
            texts += [mv.source or "", mv.description or "", *map(str, mv.tags.items())]
    stages = {r.data.tags.get(tracking.TAG_STAGE) for r in runs}
    assert {"pipeline", "codes", "pretrain", f"finetune-{DOMAIN}"} <= stages
    assert sum(len(r.data.params) for r in runs) > 50  # the configs were logged, in full
    assert {rm.name for rm in client.search_registered_models()} == {
        registry.BACKBONE_MODEL,
        registry.domain_model_name(DOMAIN),
    }

    # ...and every stored byte: the SQLite store, the artifacts, the lake's own files.
    stored = [p for p in lake.rglob("*") if p.is_file()]
    (db,) = [p for p in stored if p.name == "mlflow.db"]
    # The scan does look where things are: the run's own id is found in all three places.
    assert any("nightly-secrets" in t for t in texts) and b"nightly-secrets" in db.read_bytes()
    assert "nightly-secrets" in logs
    for secret in SECRET_VALUES:
        assert not [t for t in texts if secret in t], secret
        assert secret not in logs, secret
        hits = [p for p in stored if secret.encode() in p.read_bytes()]
        assert not hits, (secret, hits)
