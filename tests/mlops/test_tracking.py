"""Tracking against a real SQLite MLflow store: nested runs, params, epoch metrics, plots."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.image
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.support.world import DOMAIN, MODELS, copy_world
from vqrec.lake.models import data_versions
from vqrec.lake.store import DamagedVersion, resolve_version
from vqrec.mlops import tracking

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("lake_store")


@pytest.fixture(scope="module")
def world(trained_world, tmp_path_factory):
    return copy_world(trained_world, tmp_path_factory.mktemp("tracking") / "lake")


def test_tracking_uri_defaults_to_the_lake_and_env_overrides(lake, monkeypatch):
    uri = tracking.tracking_uri(lake)
    assert uri == f"sqlite:///{lake.resolve()}/mlflow/mlflow.db"
    experiment_id = tracking.setup_tracking(lake, "exp-a")
    location = MlflowClient(uri).get_experiment(experiment_id).artifact_location
    assert location == (lake.resolve() / "mlflow" / "artifacts" / "exp-a").as_uri()
    assert tracking.setup_tracking(lake, "exp-a") == experiment_id  # idempotent

    other = f"sqlite:///{lake}/other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert tracking.tracking_uri(lake) == other
    # Setting up twice in one process (register does) stays on the user's store: MLflow
    # re-exports the URI, which must not be mistaken for our own default.
    for _ in range(2):
        tracking.setup_tracking(lake, "exp-b")
        assert mlflow.get_tracking_uri() == other
        assert mlflow.get_registry_uri() == other


@dataclass
class _Inner:
    lr: float = 0.01
    db_password: str = "hunter2"
    layers: list[int] = field(default_factory=lambda: [64, 32])


def test_flatten_params_keeps_config_and_drops_secrets():
    config = {
        "train": _Inner(),
        "aws": {"secret_access_key": "AKIA...", "region": "eu-west-1"},
        "apiToken": "t0k3n",
        "monkey_count": 3,
        "scores@10": [0.1],
    }
    params = tracking.flatten_params(config)
    assert params["train.lr"] == "0.01"
    assert params["train.layers"] == "[64, 32]"
    assert params["aws.region"] == "eu-west-1"
    assert params["monkey_count"] == "3"  # 'key' is a word, not a substring
    assert params["scores_at_10"] == "[0.1]"
    assert tracking.flatten_params({"lr": 1}, prefix="codes.") == {"codes.lr": "1"}
    joined = json.dumps(params)
    for secret in ("hunter2", "AKIA", "t0k3n"):
        assert secret not in joined


def test_pipeline_run_nests_stage_runs_with_metrics_plots_and_artifacts(world):
    lake = world["lake"]
    client_uri = tracking.tracking_uri(lake)
    parent = tracking.start_pipeline_run(
        lake, "nightly-1", logical_date="2026-11-22", data_versions={"clean": "v1"}
    )
    # Every Airflow task calls this again: it must find the same parent.
    assert tracking.start_pipeline_run(lake, "nightly-1") == parent

    codes_dir = resolve_version(lake, "codes", "v1")
    with tracking.stage_run(lake, "nightly-1", "codes", data_versions={"codes": "v1"}) as run:
        tracking.log_codes(codes_dir)
        codes_run = run.info.run_id
    model_dir = resolve_version(lake, "models", "trained") / "domains" / DOMAIN
    with tracking.stage_run(lake, "nightly-1", f"finetune-{DOMAIN}", domain=DOMAIN) as run:
        tests = tracking.log_model_dir(model_dir)
        report = tracking.log_quality_report(resolve_version(lake, "clean", "v1"), DOMAIN)
        finetune_run = run.info.run_id
    tracking.end_pipeline_run(lake, "nightly-1")

    client = MlflowClient(client_uri)
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.tags[tracking.TAG_LOGICAL_DATE] == "2026-11-22"
    assert parent_run.data.tags["vqrec.data.clean"] == "v1"
    children = client.search_runs(
        [parent_run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert {c.info.run_id for c in children} == {codes_run, finetune_run}

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert (
            client.get_run(finetune_run).data.tags[tracking.TAG_GIT_COMMIT] == head.stdout.strip()
        )

    # Codes: the quantizer, the stats and one usage + one collision plot per domain.
    codes_files = _artifacts(client, codes_run)
    assert f"codes/quantizers/{DOMAIN}.faiss" in codes_files
    assert "codes/stats.json" in codes_files
    for plot in (f"plots/code_usage_{DOMAIN}.png", f"plots/collisions_{DOMAIN}.png"):
        _assert_png(client, codes_run, plot)
    stats = json.loads((codes_dir / "stats.json").read_text())["domains"][DOMAIN]
    logged = client.get_run(codes_run).data.metrics
    assert logged[f"codes.{DOMAIN}.unique_code_share"] == pytest.approx(stats["unique_code_share"])

    # Fine-tuning: the whole config (no secrets), one metric point per epoch, test figures.
    run = client.get_run(finetune_run)
    assert run.data.params["train.epochs"] == str(MODELS["trained"][0])
    assert run.data.params["model.code_dim"] == str(world["data"]["codes"].shape[1])
    assert not any("token" in k for k in run.data.params)
    assert "must-not-be-logged" not in json.dumps(run.data.params)
    history = json.loads((model_dir / "metrics.json").read_text())["history"]
    losses = client.get_metric_history(finetune_run, "loss")
    assert [m.step for m in losses] == [h["epoch"] for h in history]
    assert [m.value for m in losses] == pytest.approx([h["loss"] for h in history])
    valid = client.get_metric_history(finetune_run, "valid_ndcg_at_10")
    assert [m.value for m in valid] == pytest.approx([h["valid"]["ndcg@10"] for h in history])
    assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(world["test"]["trained"]["ndcg@10"])
    assert tests["test_ndcg@10"] == pytest.approx(world["test"]["trained"]["ndcg@10"])
    _assert_png(client, finetune_run, "plots/training_curves.png")
    assert "data_quality/toyshop.json" in _artifacts(client, finetune_run)
    assert run.data.metrics[f"data.{DOMAIN}.users"] == report["users"]


def test_stage_loggers_read_committed_lake_versions(world):
    """The one-call loggers the DAG uses after each stage: codes, pretrain, finetune-<d>."""
    lake = world["lake"]
    codes_run = tracking.log_codes_run(lake, "nightly-3", "v1")
    pretrain_run = tracking.log_training_run(lake, "nightly-3", "trained")
    finetune_run = tracking.log_training_run(lake, "nightly-3", "trained", DOMAIN)
    client = MlflowClient(tracking.tracking_uri(lake))
    parent = tracking.start_pipeline_run(lake, "nightly-3")
    for run_id, stage in [(codes_run, "codes"), (pretrain_run, "pretrain"),
                          (finetune_run, f"finetune-{DOMAIN}")]:  # fmt: skip
        run = client.get_run(run_id)
        assert run.data.tags[tracking.TAG_STAGE] == stage
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.status == "FINISHED"
    tags = client.get_run(finetune_run).data.tags
    assert tags["vqrec.data.clean"] == "v1" and tags["vqrec.data.models"] == "trained"
    assert len(client.get_metric_history(pretrain_run, "loss")) == MODELS["trained"][0]
    assert "data_quality/toyshop.json" in _artifacts(client, finetune_run)
    assert f"plots/code_usage_{DOMAIN}.png" in _artifacts(client, codes_run)


def test_a_failing_stage_is_marked_failed(lake):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run(lake, "nightly-2", "pretrain") as run:
            mlflow.log_metric("loss", 1.0, step=1)
            raise RuntimeError("boom")
    client = MlflowClient(tracking.tracking_uri(lake))
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_epoch_records_flatten_phases_without_step_collisions():
    metrics = {
        "history": [
            {"phase": "permutation", "epoch": 1, "loss": 2.0, "valid": {"ndcg@10": 0.1}},
            {"phase": "train", "epoch": 1, "loss": 1.5, "valid": {"ndcg@10": 0.2}},
        ],
        "test": {"Games/ndcg@10": 0.2, "Beauty/ndcg@10": 0.4},
    }
    records = tracking.epoch_records(metrics)
    assert records[0] == {"epoch": 1.0, "permutation_loss": 2.0, "permutation_valid_ndcg@10": 0.1}
    assert records[1] == {"epoch": 1.0, "loss": 1.5, "valid_ndcg@10": 0.2}
    # Pre-training reports per domain; the gate's figure is their mean.
    assert tracking.test_metrics(metrics)["test_ndcg@10"] == pytest.approx(0.3)


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for info in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def _assert_png(client: MlflowClient, run_id: str, path: str) -> None:
    local = Path(client.download_artifacts(run_id, path))
    image = matplotlib.image.imread(local)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0.01  # something is drawn, not a blank canvas


def test_the_parent_run_summarises_the_night(lake):
    """Named after the run, the plan as params (a second call adds none twice), and at the
    end the night's figures, decisions and each stage's wall time."""
    parent = tracking.start_pipeline_run(
        lake, "nightly-9", run_name="nightly d20261121T000000 (incremental)",
        params={"cadence": "incremental", "domains": "A,B"},
    )  # fmt: skip
    assert tracking.start_pipeline_run(lake, "nightly-9", params={"cadence": "incremental"}) == (
        parent
    )
    with tracking.stage_run(lake, "nightly-9", "codes"):
        pass
    # A Spark stage's run is logged after its job: it gets the job's own start and end.
    with tracking.stage_run(lake, "nightly-9", "clean", span=(1_800_000_000.0, 1_800_000_127.5)):
        tracking.log_metrics({"A.users": 3})
    (clean,) = tracking.stage_runs(lake, "nightly-9", "clean")
    assert (clean.info.start_time, clean.info.end_time) == (1_800_000_000_000, 1_800_000_127_500)
    assert clean.info.status == "FINISHED" and clean.data.metrics["A.users"] == 3
    assert clean.data.tags["mlflow.parentRunId"] == parent
    assert len(tracking.stage_runs(lake, "nightly-9", "codes")) == 1
    tracking.summarize_pipeline_run(
        lake, "nightly-9", {"A.test_ndcg@10": 0.25}, {"vqrec.promotion.A": "v2 promoted"}
    )
    run = MlflowClient(tracking.tracking_uri(lake)).get_run(parent)
    assert run.info.run_name == "nightly d20261121T000000 (incremental)"
    assert run.data.params == {"cadence": "incremental", "domains": "A,B"}
    assert run.data.metrics["A.test_ndcg_at_10"] == 0.25
    assert run.data.metrics["wall_s.codes"] >= 0
    assert run.data.metrics["wall_s.clean"] == 127.5
    assert run.data.tags["vqrec.promotion.A"] == "v2 promoted"


def test_training_runs_list_their_lake_versions_as_datasets(world):
    """The run of a pretrain / finetune names the clean, codes and embeddings versions it
    read as MLflow Datasets: ``<stage>/<version>``, the version's folder, a digest of its
    _SUCCESS (a rewrite of the same version name changes it)."""
    lake = world["lake"]
    runs = {
        "backbone": tracking.log_training_run(lake, "nightly-4", "trained"),
        f"domains/{DOMAIN}": tracking.log_training_run(lake, "nightly-4", "trained", DOMAIN),
    }
    client = MlflowClient(tracking.tracking_uri(lake))
    for folder, run_id in runs.items():
        recorded = data_versions(resolve_version(lake, "models", "trained") / folder)
        assert {"clean", "codes", "embeddings"} <= set(recorded)
        inputs = {i.dataset.name: i for i in client.get_run(run_id).inputs.dataset_inputs}
        assert set(inputs) == {f"{stage}/{version}" for stage, version in recorded.items()}
        for stage, version in recorded.items():
            logged = inputs[f"{stage}/{version}"]
            committed = resolve_version(lake, stage, version)
            digest = hashlib.sha256((committed / "_SUCCESS").read_bytes()).hexdigest()[:16]
            assert logged.dataset.digest == digest
            assert logged.dataset.source_type == "local"
            assert json.loads(logged.dataset.source) == {"uri": str(committed)}
            tags = {t.key: t.value for t in logged.tags}
            assert tags == {"mlflow.data.context": "training", "vqrec.stage": stage}


def test_a_damaged_training_version_is_an_error_not_a_shorter_list(world, tmp_path):
    """A version that was swept is left out (its name stays in the tags); one that is there
    but damaged stops the logging: a run must never list less than the model read."""
    lake = copy_world(world, tmp_path / "lake")["lake"]
    model_dir = resolve_version(lake, "models", "trained") / "backbone"
    clean = resolve_version(lake, "clean", data_versions(model_dir)["clean"])
    next(clean.rglob("*.parquet")).unlink()
    with pytest.raises(DamagedVersion, match="is missing"):
        tracking.training_datasets(model_dir, lake)


def test_processes_creating_the_store_at_once_all_succeed(tmp_path):
    """Parallel fine-tunes on a fresh lake each open the default SQLite store: MLflow's
    first open runs its schema migrations, and two at once used to end one of them in an
    alembic "expected to match one row" traceback. Four real processes, released together."""
    lake = tmp_path / "lake"
    go = tmp_path / "go"
    script = (
        "import sys, time, pathlib\n"
        "from vqrec.mlops import tracking\n"
        "go = pathlib.Path(sys.argv[2])\n"
        "while not go.exists(): time.sleep(0.01)\n"
        "print(tracking.setup_tracking(sys.argv[1], 'parallel'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(lake), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    time.sleep(8)  # every process imported mlflow and waits
    go.touch()
    done = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _, _ in done), [err[-600:] for _, _, err in done]
    assert len({out.strip() for _, out, _ in done}) == 1  # one experiment, found by all


def _pretrain_against(lake: Path, store: str | None) -> tuple[subprocess.CompletedProcess, float]:
    """`vqrec pretrain` in a fresh process with ``store`` as $MLFLOW_TRACKING_URI (None: the
    lake's default store); returns the process and its wall seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if store is not None:
        env["MLFLOW_TRACKING_URI"] = store
    argv = [sys.executable, "-m", "vqrec.cli", "pretrain", "--lake", str(lake)]
    argv += ["--domains", DOMAIN, "--no-progress", "--device", "cpu"]
    t0 = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - t0


def _assert_refused(done: subprocess.CompletedProcess, seconds: float, *said: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqrec pretrain: error: MLflow"), lines
    for text in said:
        assert text in lines[0], (text, lines[0])
    # MLflow's own retries took ~100 s; the check answers before any import of torch data.
    assert seconds < 60, seconds


@pytest.fixture
def immutable(tmp_path):
    """Make a path immutable (``chattr +i``): even root cannot write into or beside it (a
    chmod 0555 folder would not stop root). Undone after the test."""
    made: list[Path] = []

    def make(path: Path) -> Path:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not available here: {done.stderr.strip()}")
        made.append(path)
        return path

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_an_unwritable_store_is_one_line_and_fast(lake, tmp_path, immutable):
    """Real failures, root included: a store "folder" that is a file, an immutable folder,
    an immutable SQLite file; and the lake's default store under a file."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    store = f"sqlite:///{blocker}/mlflow.db"
    _assert_refused(*_pretrain_against(lake, store), store, f"{blocker} is a file, not a folder")

    folder = tmp_path / "frozen"
    folder.mkdir()
    store = f"sqlite:///{immutable(folder)}/mlflow.db"
    _assert_refused(*_pretrain_against(lake, store), store, "Operation not permitted")

    db = tmp_path / "open" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(b"")
    store = f"sqlite:///{immutable(db)}"
    _assert_refused(*_pretrain_against(lake, store), store, "Operation not permitted", str(db))

    (lake / "mlflow").write_text("not the store folder")
    _assert_refused(*_pretrain_against(lake, None), f"{lake / 'mlflow'} is a file, not a folder")
    assert not (lake / "checkpoints").exists()  # refused before any training


def test_only_local_stores_are_checked(tmp_path):
    assert tracking.check_store("http://127.0.0.1:1") == "http://127.0.0.1:1"
    assert tracking.check_store("sqlite://") == "sqlite://"
    assert tracking.local_store_path(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert tracking.local_store_path(f"file://{tmp_path}/runs") == tmp_path / "runs"
    store = f"sqlite:///{tmp_path}/new/deeper/mlflow.db"
    assert tracking.check_store(store) == store  # a folder that can be made is made
    assert (tmp_path / "new" / "deeper").is_dir()
    assert list((tmp_path / "new" / "deeper").iterdir()) == []  # the probe is gone
