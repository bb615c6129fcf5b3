"""The registry under failure: what downstream loads by alias is always a complete, not-worse model.

Against a real SQLite MLflow store and real tiny models (tests/support/world.py):

* the pipeline's register step, run for a better and then a worse nightly (and retried),
  never promotes the worse one, and the alias serves the better one's predictions;
* a missing champion (nothing registered, a model without versions, the champion's version
  deleted) is one clear :class:`NoChampionError` from ``load_champion``, a clear error from
  ``serve_model`` and the new-domain plan, and the next registration becomes champion;
* a registration SIGKILLed midway (while copying the weights into the store, and after the
  new version is registered but before the gate ran) leaves ``champion`` on the old version,
  which still loads and predicts; the rerun completes the same version and promotes it.
"""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.support.crash_harness import kill, run_cli, start_paused
from tests.support.world import DOMAIN, copy_world, name_data_like_models
from vqrec.mlops import registry, serving, tracking
from vqrec.orchestration import pipeline
from vqrec.orchestration.pipeline import RunPlan

NAME = registry.domain_model_name(DOMAIN)


pytestmark = pytest.mark.usefixtures("lake_store")


@pytest.fixture(scope="module")
def models(trained_world, tmp_path_factory):
    """Two nightly versions of the shared world: ``trained`` (good) and ``worse`` (untrained),
    each with clean/embeddings/codes versions of the same name (as the pipeline writes them)."""
    tests = trained_world["test"]
    assert tests["trained"]["ndcg@10"] > tests["worse"]["ndcg@10"]  # measured, not assumed
    world = copy_world(trained_world, tmp_path_factory.mktemp("registry-reliability") / "lake")
    name_data_like_models(world["lake"])
    return world


@pytest.fixture
def lake(models, tmp_path):
    """A copy of the model lake with an empty MLflow store of its own."""
    copy = copy_world(models, tmp_path / "lake")["lake"]
    tracking.setup_tracking(copy)
    return copy


def _histories(models) -> pd.DataFrame:
    item_ids = models["data"]["item_ids"]
    rows = [[item_ids[i - 1] for i in user[:-1]] for user in models["data"]["users"][:40]]
    return pd.DataFrame({"history": rows, "k": [10] * len(rows)})


def _predict(uri: str, frame: pd.DataFrame) -> list[list[str]]:
    return [list(ids) for ids in mlflow.pyfunc.load_model(uri).predict(frame)["item_ids"]]


def _plan(lake, version: str) -> RunPlan:
    return RunPlan(
        lake=str(lake),
        raw_root=str(lake),
        version=version,
        domains=[DOMAIN],
        pretrain_domains=[DOMAIN],
        target_domains=[DOMAIN],
        run_id=f"nightly-{version}",
    )


def _champion(client: MlflowClient, name: str = NAME) -> str:
    return str(client.get_model_version_by_alias(name, registry.CHAMPION).version)


def test_register_step_never_promotes_a_worse_challenger(models, lake):
    client = MlflowClient()
    summary = {"domains": {DOMAIN: {}}, "failed": []}
    first = pipeline.register_run(_plan(lake, "trained"), summary)
    worse = pipeline.register_run(_plan(lake, "worse"), summary)
    retry = pipeline.register_run(_plan(lake, "worse"), summary)  # an Airflow retry of the task

    good_v = first["domains"][DOMAIN]["version"]
    assert first["domains"][DOMAIN]["promotion"]["why"] == "no champion yet"
    for model in (first["backbone"], first["domains"][DOMAIN]):
        assert model["promotion"]["promoted"]
    for model in (worse["backbone"], worse["domains"][DOMAIN]):
        assert model["promotion"]["decision"] == "kept_champion", model
    assert (
        retry["domains"][DOMAIN]["reused"] and not retry["domains"][DOMAIN]["promotion"]["promoted"]
    )
    assert _champion(client) == good_v
    assert _champion(client, registry.BACKBONE_MODEL) == first["backbone"]["version"]
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2  # the retry added none
    gate = worse["domains"][DOMAIN]["promotion"]
    assert gate["challenger_value"] == pytest.approx(models["test"]["worse"]["ndcg@10"])
    assert gate["champion_value"] == pytest.approx(models["test"]["trained"]["ndcg@10"])

    # What a downstream consumer loads by alias is the better model, and it predicts.
    frame = _histories(models)
    served = [list(ids) for ids in registry.load_champion(DOMAIN, lake).predict(frame)["item_ids"]]
    assert served == _predict(f"models:/{NAME}/{good_v}", frame)
    bad_v = worse["domains"][DOMAIN]["version"]
    assert served != _predict(f"models:/{NAME}/{bad_v}", frame)


def test_missing_champion_is_a_clear_error_and_the_next_registration_takes_over(
    models, lake, tmp_path
):
    client = MlflowClient()
    with pytest.raises(registry.NoChampionError, match="no registered model 'vqrec-toyshop'"):
        registry.load_champion(DOMAIN, lake)
    client.create_registered_model(NAME)
    with pytest.raises(registry.NoChampionError, match="has no champion: it has no versions"):
        registry.load_champion(DOMAIN, lake)
    with pytest.raises(RuntimeError, match="no vqrec-backbone@champion"):
        pipeline.champion_backbone(str(lake))

    good = registry.register_domain(lake, DOMAIN, "trained")
    bad = registry.register_domain(lake, DOMAIN, "worse")
    assert good["promotion"]["promoted"] and not bad["promotion"]["promoted"]
    # The champion's version is deleted (by hand, by a retention job): MLflow drops the alias.
    client.delete_model_version(NAME, good["version"])
    with pytest.raises(registry.NoChampionError, match=r"versions \[2\]; was the champion del"):
        registry.load_champion(DOMAIN, lake)
    # Serving the alias fails at once with a clear error, not a server that never answers.
    log = tmp_path / "serve.log"
    uri = f"models:/{NAME}@{registry.CHAMPION}"
    with pytest.raises(RuntimeError, match="exited with .* before answering"):
        with serving.serve_model(uri, tracking.tracking_uri(lake), log_path=log):
            pass
    assert "alias champion not found" in log.read_text()

    # The gate treats a lost champion as none: the next registration is promoted and loads.
    again = pipeline.register_run(_plan(lake, "trained"), {"domains": {DOMAIN: {}}, "failed": []})
    result = again["domains"][DOMAIN]
    assert not result["reused"] and result["promotion"]["why"] == "no champion yet"
    assert _champion(client) == result["version"]
    out = registry.load_champion(DOMAIN, lake).predict(_histories(models))
    assert (out["strategy"] == "model").all() and all(len(ids) == 10 for ids in out["item_ids"])
    assert pipeline.champion_backbone(str(lake))["models"] == "trained"


def test_killed_registration_leaves_the_old_champion_serving(models, lake, tmp_path):
    client = MlflowClient()
    first = registry.register_domain(lake, DOMAIN, "worse")  # the current champion: weaker
    frame = _histories(models)
    served_before = _predict(f"models:/{NAME}@{registry.CHAMPION}", frame)
    argv = ["register", "--lake", str(lake), "--version", "trained", "--no-backbone"]

    def champion_still_serves() -> None:
        assert _champion(client) == first["version"]
        model = registry.load_champion(DOMAIN, lake)
        assert [list(ids) for ids in model.predict(frame)["item_ids"]] == served_before

    # 1. Killed while MLflow copies the weights of the better model into the store.
    paused = start_paused(
        argv,
        [("open", f"{lake}/mlflow/artifacts/*/models/*/artifacts/model.safetensors")],
        tmp_path,
    )
    assert kill(paused) == -9
    champion_still_serves()
    assert [str(v.version) for v in client.search_model_versions(f"name='{NAME}'")] == ["1"]

    # 2. Killed the moment MLflow created the version (before it became the challenger):
    # the version was created with its identity tags, so the rerun adopts it below
    # instead of registering another (it once stayed READY without tags, an orphan).
    paused = start_paused(argv, [("call", "vqrec.mlops.registry:_announce")], tmp_path)
    assert kill(paused) == -9
    champion_still_serves()
    (orphan,) = [v for v in client.search_model_versions(f"name='{NAME}'") if str(v.version) != "1"]
    assert orphan.tags[registry.TAG_MODEL_VERSION] == "trained"

    # 3. Killed after the better model is the challenger but before the gate ran: the
    # champion has not moved.
    paused = start_paused(argv, [("call", "vqrec.mlops.registry:promote")], tmp_path)
    assert kill(paused) == -9
    champion_still_serves()
    challenger = client.get_model_version_by_alias(NAME, registry.CHALLENGER)
    assert challenger.tags[registry.TAG_MODEL_VERSION] == "trained"
    assert registry.TAG_DECISION not in challenger.tags

    # 4. The rerun finds that complete version, runs the gate, and promotes it.
    assert str(challenger.version) == str(orphan.version)
    run_cli(argv, tmp_path)
    assert _champion(client) == str(challenger.version)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2
    served_after = registry.load_champion(DOMAIN, lake).predict(frame)
    assert [list(ids) for ids in served_after["item_ids"]] == _predict(
        f"models:/{NAME}/{challenger.version}", frame
    )
    decision = client.get_model_version(NAME, challenger.version).tags[registry.TAG_DECISION]
    assert decision == "promoted"


def test_an_unreachable_registry_stops_the_gate_instead_of_meaning_no_champion(
    lake, monkeypatch
):
    """Only "no such model / alias" means no champion; a store that fails must not promote."""
    import socket

    from mlflow.exceptions import MlflowException

    tracking.setup_tracking(lake)
    assert registry.champion_or_none(MlflowClient(), "vqrec-never-registered") is None
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = MlflowClient(f"http://127.0.0.1:{port}", registry_uri=f"http://127.0.0.1:{port}")
    with pytest.raises(MlflowException):
        registry.champion_or_none(down, "vqrec-Arts")
