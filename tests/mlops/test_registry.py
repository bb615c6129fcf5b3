"""The registry against a real SQLite MLflow store: pyfunc predictions, the promotion gate,
idempotent registration, unseen items coded on the fly, the zero-shot backbone."""

from __future__ import annotations

import json
from collections import Counter

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.support.world import DOMAIN, copy_world
from vqrec.core.model import load_model
from vqrec.lake.store import resolve_version
from vqrec.mlops import registry, tracking
from vqrec.mlops.pyfunc import MAX_K, BadRequest

NAME = registry.domain_model_name(DOMAIN)


@pytest.fixture(scope="module")
def world(trained_world, tmp_path_factory):
    """The three models of the shared world, in a lake of this module's own."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield copy_world(trained_world, tmp_path_factory.mktemp("registry") / "lake")
    mp.undo()


@pytest.fixture(scope="module")
def registered(world):
    """Register the three in order, as three nightly runs would; keep each decision."""
    lake = world["lake"]
    results = {v: registry.register_domain(lake, DOMAIN, v, pipeline_run_id=f"run-{v}")
               for v in ("untrained", "trained", "worse")}  # fmt: skip
    return results


def test_gate_promotes_better_and_keeps_champion_over_worse(world, registered):
    client = MlflowClient()
    first, better, worse = registered["untrained"], registered["trained"], registered["worse"]
    figures = {k: v["ndcg@10"] for k, v in world["test"].items()}
    # The trained model really is better than both untrained ones (measured, not assumed).
    assert figures["trained"] > figures["untrained"] and figures["trained"] > figures["worse"]

    assert first["promotion"]["promoted"] and first["promotion"]["champion_version"] is None
    assert better["promotion"]["promoted"]
    assert better["promotion"]["champion_version"] == first["version"]
    assert better["promotion"]["challenger_value"] == pytest.approx(figures["trained"])
    assert better["promotion"]["champion_value"] == pytest.approx(figures["untrained"])

    assert not worse["promotion"]["promoted"]
    assert worse["promotion"]["decision"] == "kept_champion"
    assert worse["promotion"]["challenger_value"] == pytest.approx(figures["worse"])
    assert worse["promotion"]["champion_value"] == pytest.approx(figures["trained"])
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == better["version"]
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == worse["version"]

    # The decision and both figures are on the version (tags) and on its run.
    mv = client.get_model_version(NAME, worse["version"])
    assert mv.tags[registry.TAG_DECISION] == "kept_champion"
    assert float(mv.tags["vqrec.promotion.champion_value"]) == pytest.approx(figures["trained"])
    assert mv.tags[registry.TAG_MODEL_VERSION] == "worse"
    run = client.get_run(mv.run_id)
    assert run.data.params["promotion.decision"] == "kept_champion"
    assert run.data.metrics["promotion.champion_test_ndcg_at_10"] == pytest.approx(
        figures["trained"]
    )
    assert run.data.metrics["promotion.challenger_test_ndcg_at_10"] == pytest.approx(
        figures["worse"]
    )
    assert run.data.tags[tracking.TAG_PIPELINE_RUN] == "run-worse"


def test_version_page_shows_test_metrics_code_strategy_and_backbone(world, registered):
    """A version links to the LoggedModel it was made from: that model carries the test
    figures (linked to the clean version they were measured on) and says what it is in its
    params; the version's tags say it too."""
    client = MlflowClient()
    mv = client.get_model_version(NAME, registered["trained"]["version"])
    assert mv.tags[registry.TAG_CODE_STRATEGY] == "domain"  # the world's own quantizer
    assert mv.tags[registry.TAG_BACKBONE] == "trained"
    assert float(mv.tags["vqrec.metric.test_ndcg_at_10"]) == pytest.approx(
        world["test"]["trained"]["ndcg@10"]
    )
    # The link: the version's source is its LoggedModel (the store keeps no model_id field),
    # and the LoggedModel lists the versions made from it.
    assert mv.source.startswith("models:/m-"), mv.source
    model = client.get_logged_model(mv.source.removeprefix("models:/"))
    made = json.loads(model.tags["mlflow.modelVersions"])
    assert {"name": NAME, "version": int(mv.version)} in made
    figures = {m.key: m for m in model.metrics}
    assert figures["test_ndcg_at_10"].value == pytest.approx(world["test"]["trained"]["ndcg@10"])
    assert figures["test_recall_at_10"].value == pytest.approx(
        world["test"]["trained"]["recall@10"]
    )
    assert figures["test_ndcg_at_10"].dataset_name == "clean/v1"
    assert model.params["code_strategy"] == "domain"
    assert model.params["backbone_version"] == "trained"
    assert model.params["clean_version"] == "v1" and model.params["model_version"] == "trained"
    # The register run names its data too (as every training run does).
    inputs = client.get_run(mv.run_id).inputs.dataset_inputs
    assert {"clean/v1", "codes/v1", "embeddings/v1"} <= {i.dataset.name for i in inputs}


def test_registering_the_same_model_twice_is_idempotent(world, registered):
    client = MlflowClient()
    before = client.search_model_versions(f"name='{NAME}'")
    again = registry.register_domain(world["lake"], DOMAIN, "worse", pipeline_run_id="run-worse")
    after = client.search_model_versions(f"name='{NAME}'")
    assert again["reused"] and again["version"] == registered["worse"]["version"]
    assert len(after) == len(before)
    assert not again["promotion"]["promoted"]
    assert (
        str(client.get_model_version_by_alias(NAME, "champion").version)
        == (registered["trained"]["version"])
    )


def test_champion_ranks_like_the_evaluation(world, registered):
    """The served top-10 hit rate over the test rows equals the measured test Recall@10."""
    model = registry.load_champion(DOMAIN, world["lake"])
    item_ids, users = world["data"]["item_ids"], world["data"]["users"]
    histories = [[item_ids[i - 1] for i in u[:-1]] for u in users]
    out = model.predict(pd.DataFrame({"history": histories, "k": [10] * len(users)}))
    assert len(out) == len(users)
    assert (out["strategy"] == "model").all()
    catalogue = set(item_ids)
    hits = 0
    for row, u in zip(out.itertuples(), users, strict=True):
        assert len(row.item_ids) == 10 and set(row.item_ids) <= catalogue
        assert list(row.scores) == sorted(row.scores, reverse=True)
        hits += item_ids[u[-1] - 1] in row.item_ids
    assert hits / len(users) == pytest.approx(world["test"]["trained"]["recall@10"], abs=0.02)


def test_unknown_history_items_are_reported_and_cold_users_get_popular_items(world, registered):
    model = registry.load_champion(DOMAIN, world["lake"])
    item_ids = world["data"]["item_ids"]
    out = model.predict(
        pd.DataFrame({"history": [[item_ids[0], "NOPE-1"], ["NOPE-2"], []], "k": [3, 5, 5]})
    )
    assert out.loc[0, "strategy"] == "model" and list(out.loc[0, "unknown_items"]) == ["NOPE-1"]
    assert out.loc[1, "strategy"] == "popularity" and list(out.loc[1, "unknown_items"]) == [
        "NOPE-2"
    ]
    counts = Counter(i for u in world["data"]["users"] for i in u)
    top = sorted(counts, key=lambda i: (-counts[i], i))[:5]
    assert list(out.loc[2, "item_ids"]) == [item_ids[i - 1] for i in top]
    assert list(out.loc[1, "item_ids"]) == list(out.loc[2, "item_ids"])


def test_new_items_are_coded_by_the_frozen_quantizer_and_recommendable(world, registered):
    model = registry.load_champion(DOMAIN, world["lake"])
    item_ids, texts = world["data"]["item_ids"], world["data"]["texts"]
    n = len(item_ids)
    new = [
        {"item_id": "NEW-COPY", "text": texts[4]},  # same text as an existing item
        {"item_id": "NEW-FRESH", "text": "waterproof hiking tent for two people"},
    ]
    history = [item_ids[2], item_ids[3]]
    out = model.predict(
        pd.DataFrame({"history": [history], "k": [n + 2], "new_items": [new]})
    )
    ranked = dict(zip(out.loc[0, "item_ids"], out.loc[0, "scores"], strict=True))
    assert len(ranked) == n + 2 and {"NEW-COPY", "NEW-FRESH"} <= set(ranked)
    # Same text -> same embedding -> same code under the frozen quantizer -> same score.
    assert ranked["NEW-COPY"] == pytest.approx(ranked[item_ids[4]], abs=1e-5)

    # A new item may also appear in the history of the same request.
    out = model.predict(
        pd.DataFrame({"history": [[*history, "NEW-FRESH"]], "k": [5], "new_items": [new]})
    )
    assert list(out.loc[0, "unknown_items"]) == [] and out.loc[0, "strategy"] == "model"

    # Without new_items the same ids are unknown and never recommended.
    out = model.predict(pd.DataFrame({"history": [["NEW-FRESH"]], "k": [n]}))
    assert "NEW-FRESH" not in out.loc[0, "item_ids"] and out.loc[0, "strategy"] == "popularity"


def test_exclude_seen_drops_history_items(world, registered):
    model = registry.load_champion(DOMAIN, world["lake"])
    item_ids = world["data"]["item_ids"]
    history = item_ids[8:14]
    out = model.predict(
        pd.DataFrame({"history": [history, history], "k": [20, 20], "exclude_seen": [True, False]})
    )
    assert not set(history) & set(out.loc[0, "item_ids"])
    assert set(history) & set(out.loc[1, "item_ids"])  # the protocol does not mask


def test_bad_input_gets_a_clear_error(world, registered):
    """Every refusal is a BadRequest (HTTP 400 when served) naming the row and the field."""
    model = registry.load_champion(DOMAIN, world["lake"])
    known = world["data"]["item_ids"][0]
    ok = {"history": [known], "k": 3}
    refused = [
        ({"k": [3]}, "history"),
        ({**ok, "k": 0}, "row 0: k must be between 1 and 1000, got 0"),
        ({**ok, "k": MAX_K + 1}, f"row 0: k must be between 1 and 1000, got {MAX_K + 1}"),
        ({**ok, "new_items": [{"item_id": "a"}]}, r"Missing required properties: \{'text'\}"),
        ({**ok, "new_items": [{"item_id": "N", "text": " "}]}, "new_items\\[0\\] .* empty text"),
        ({**ok, "new_items": [{"item_id": known, "text": "t"}]}, "already in the catalogue"),
        ({**ok, "new_items": [{"item_id": "N", "text": "t"}] * 2}, "'N' is repeated"),
    ]
    for row, message in refused:
        frame = pd.DataFrame([row]) if "history" in row else pd.DataFrame(row)
        with pytest.raises(MlflowException, match=message):
            model.predict(frame)
    # One bad row refuses the whole request (all or nothing), naming that row.
    frame = pd.DataFrame({"history": [[known], [known]], "k": [3, 0]})
    with pytest.raises(MlflowException, match="row 1: k must be between"):
        model.predict(frame)
    # Straight to the class (no schema enforcement in front of it): the same refusals.
    python_model = model.unwrap_python_model()
    for value, message in ((2.5, "k must be a whole number, got 2.5"), (True, "whole number")):
        with pytest.raises(BadRequest, match=message):
            python_model.predict(None, pd.DataFrame({"history": [[known]], "k": [value]}))
    with pytest.raises(BadRequest, match="row 0: new_items must be a list"):
        python_model.predict(None, pd.DataFrame({"history": [[known]], "new_items": ["[{}]"]}))
    with pytest.raises(BadRequest, match="row 0: history must be a list of item ids"):
        python_model.predict(None, pd.DataFrame({"history": [known]}))


def test_tolerance_lets_a_slightly_worse_challenger_through(world, registered):
    client = MlflowClient()
    worse = registered["worse"]["version"]
    gap = world["test"]["trained"]["ndcg@10"] - world["test"]["worse"]["ndcg@10"]
    kept = registry.promote(client, NAME, worse, tolerance=gap / 2)
    assert not kept["promoted"]
    promoted = registry.promote(client, NAME, worse, tolerance=gap * 2)
    assert promoted["promoted"] and promoted["champion_version"] == registered["trained"]["version"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == worse
    # Put the better model back as champion for anything that runs later.
    client.set_registered_model_alias(NAME, "champion", registered["trained"]["version"])


def test_backbone_ranks_only_the_new_items_it_is_given(world):
    lake = world["lake"]
    result = registry.register_backbone(
        lake, "trained", pipeline_run_id="run-trained", clean_version="v1", codes_version="v1"
    )
    assert result["promotion"]["promoted"]
    tags = MlflowClient().get_model_version(registry.BACKBONE_MODEL, result["version"]).tags
    # What the new-domain backfill reads to find the champion backbone's lake versions.
    assert tags[registry.TAG_MODEL_VERSION] == "trained" and tags["vqrec.data.codes"] == "v1"
    model = mlflow.pyfunc.load_model(f"models:/{registry.BACKBONE_MODEL}@champion")
    texts = world["data"]["texts"]
    catalogue = [{"item_id": f"X{i}", "text": t} for i, t in enumerate(texts[:40])]
    out = model.predict(
        pd.DataFrame(
            {"history": [["X1", "X2", "X3"]], "k": [10], "new_items": [catalogue]}
        )
    )
    assert out.loc[0, "strategy"] == "model" and len(out.loc[0, "item_ids"]) == 10
    assert set(out.loc[0, "item_ids"]) <= {c["item_id"] for c in catalogue}

    # Same ranking as the trained model scoring those items through their codes directly.
    full = load_model(resolve_version(lake, "models", "trained") / "backbone" / "model.safetensors")
    full.eval()
    codes = torch.as_tensor(world["data"]["codes"][1:41])
    with torch.no_grad():
        emb = full.code_embeddings(codes)
        seq = full.encode(torch.tensor([[1, 2, 3]]), torch.tensor([3]), history_emb=emb[1:4][None])
        scores = full.score(seq, emb)[0].numpy()
    order = np.argsort(-scores, kind="stable")[:10]
    assert list(out.loc[0, "item_ids"]) == [f"X{i}" for i in order]


def test_real_trainer_output_registers_with_its_epoch_history(world, registered):
    """vqrec.stages.train's own pretrain/finetune outputs (not the test's tiny loop) register."""
    from vqrec.stages import train

    lake = world["lake"]
    small = json.dumps({"hidden": 32, "inner": 64, "layers": 1, "heads": 1, "max_len": 10,
                        "code_dim": world["data"]["codes"].shape[1]})  # fmt: skip
    common = ["--lake", str(lake), "--version", "real", "--epochs", "2", "--batch-size", "256",
              "--no-progress", "--device", "cpu", "--model-config", small]  # fmt: skip
    assert train.main_pretrain([*common, "--domains", DOMAIN]) == 0
    assert train.main_finetune(
        [*common, "--domain", DOMAIN, "--permutation", "learned", "--permutation-epochs", "1"]
    ) == 0
    client = MlflowClient()
    _assert_cli_runs_logged(client, lake)
    champion_before = client.get_model_version_by_alias(NAME, "champion")
    champion_value = float(champion_before.tags["vqrec.metric.test_ndcg_at_10"])

    results = registry.register_all(lake, "real", pipeline_run_id="run-real")
    by_name = {r["name"]: r for r in results}
    assert set(by_name) == {registry.BACKBONE_MODEL, NAME}
    domain = by_name[NAME]["promotion"]
    metrics = json.loads(
        (resolve_version(lake, "models", "real") / "domains" / DOMAIN / "metrics.json").read_text()
    )
    assert domain["challenger_value"] == pytest.approx(metrics["test"]["ndcg@10"])
    assert domain["promoted"] == (domain["challenger_value"] >= champion_value)

    run_id = client.get_model_version(NAME, by_name[NAME]["version"]).run_id
    run = client.get_run(run_id)
    assert run.data.params["train.mode"] == "transfer"
    # Both phases of the transfer are in the run: permutation epochs and table epochs.
    assert len(client.get_metric_history(run_id, "permutation_loss")) == 1
    assert len(client.get_metric_history(run_id, "loss")) >= 1


def _assert_cli_runs_logged(client: MlflowClient, lake) -> None:
    """Plain `vqrec pretrain` / `vqrec finetune` log the DAG's runs: children ``pretrain`` and
    ``finetune-<d>`` of the pipeline run named after the models version, each with its
    config, every epoch, its test figures and its datasets; the parent is ended with them."""
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], f"tags.`{tracking.TAG_PIPELINE_RUN}` = 'real'")
    by_stage = {r.data.tags[tracking.TAG_STAGE]: r for r in runs}
    assert set(by_stage) == {"pipeline", "pretrain", f"finetune-{DOMAIN}"}
    assert by_stage["pipeline"].info.status == "FINISHED"
    models = resolve_version(lake, "models", "real")
    for stage, folder in (("pretrain", "backbone"), (f"finetune-{DOMAIN}", f"domains/{DOMAIN}")):
        run = by_stage[stage]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == by_stage["pipeline"].info.run_id
        assert run.data.params["train.epochs"] == "2"
        metrics = json.loads((models / folder / "metrics.json").read_text())
        train_epochs = [h for h in metrics["history"] if h["phase"] != "permutation"]
        assert len(client.get_metric_history(run.info.run_id, "loss")) == len(train_epochs)
        assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(metrics["test"]["ndcg@10"])
        names = {i.dataset.name for i in run.inputs.dataset_inputs}
        assert {"clean/v1", "codes/v1"} <= names
    # Pre-training reports test like valid: the mean over its domains, then each domain's.
    backbone = json.loads((models / "backbone" / "metrics.json").read_text())
    assert backbone["test"]["ndcg@10"] == pytest.approx(backbone["test"][f"{DOMAIN}/ndcg@10"])
