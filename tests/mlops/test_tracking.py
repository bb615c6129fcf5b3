"""Tracking against a real SQLite MLflow store: nested runs, params, epoch metrics, plots."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.image
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.support.world import DOMAIN, MODELS, copy_world
from vqrec.lake.store import resolve_version
from vqrec.mlops import tracking

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
    assert len(tracking.stage_runs(lake, "nightly-9", "codes")) == 1
    assert tracking.stage_runs(lake, "nightly-9", "clean") == []
    tracking.summarize_pipeline_run(
        lake, "nightly-9", {"A.test_ndcg@10": 0.25}, {"vqrec.promotion.A": "v2 promoted"}
    )
    run = MlflowClient(tracking.tracking_uri(lake)).get_run(parent)
    assert run.info.run_name == "nightly d20261121T000000 (incremental)"
    assert run.data.params == {"cadence": "incremental", "domains": "A,B"}
    assert run.data.metrics["A.test_ndcg_at_10"] == 0.25
    assert run.data.metrics["wall_s.codes"] >= 0
    assert run.data.tags["vqrec.promotion.A"] == "v2 promoted"
