"""plan_run: params validation, raw snapshots and run versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from vqrec.orchestration.pipeline import RunPlan, plan_run, resolve_raw_snapshot, version_for


def _raw(tmp_path, *domains, snapshot=None):
    root = tmp_path / "raw"
    base = root / snapshot if snapshot else root
    for d in domains:
        (base / d).mkdir(parents=True)
    return root


def test_plan_defaults(tmp_path):
    root = _raw(tmp_path, "A", "B", "C")
    plan = plan_run(
        {"raw_root": str(root), "lake": str(tmp_path / "lake"), "pretrain_domains": ["A", "B"]},
        logical_date="2026-11-20T00:00:00+00:00",
        run_id="manual__x",
    )
    assert plan.domains == ["A", "B", "C"]
    assert plan.target_domains == ["A", "B"]
    assert plan.version == "d20261120T000000"
    assert (plan.cadence, plan.cadence_reason) == ("refresh", "no champion backbone yet")
    assert RunPlan.from_dict(plan.to_dict()) == plan


def test_same_date_same_version_and_run_id_fallback():
    assert version_for("2026-11-20T00:00:00+00:00", "a") == version_for(
        "2026-11-20T00:00:00+00:00", "b"
    )
    assert version_for(None, "manual__2026-11-23T09:27:31.47+00:00") == (
        "manual__2026-11-23T09_27_31.47_00_00"
    )


def test_snapshots_pick_latest_not_after_date(tmp_path):
    root = tmp_path / "raw"
    for day in ["2026-11-01", "2026-11-10", "2026-11-20"]:
        (root / f"dt={day}" / "A").mkdir(parents=True)
    assert resolve_raw_snapshot(root, "2026-11-15T02:00:00").name == "dt=2026-11-10"
    assert resolve_raw_snapshot(root, None).name == "dt=2026-11-20"
    with pytest.raises(FileNotFoundError, match="no raw snapshot"):
        resolve_raw_snapshot(root, "2026-10-01")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"pretrain_domains": []}, "at least one"),
        ({"pretrain_domains": ["A"], "domains": ["A", "Z"]}, "not found"),
        ({"pretrain_domains": ["../etc"]}, "invalid domain"),
        ({"pretrain_domains": ["A"], "target_domains": ["C"], "domains": ["A"]}, "not among"),
        ({"pretrain_domains": ["A"], "code_strategy": "magic"}, "code_strategy"),
    ],
)
def test_bad_params_are_clear_errors(tmp_path, params, message):
    root = _raw(tmp_path, "A", "B", "C")
    with pytest.raises(ValueError, match=message):
        plan_run({"raw_root": str(root), **params})


def test_missing_raw_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan_run({"raw_root": str(tmp_path / "nope"), "pretrain_domains": ["A"]})


def test_champion_backbone_lets_store_errors_through(tmp_path, monkeypatch):
    """Only "no such model/alias" means no champion; a broken store is not reported as one."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST
    from mlflow.tracking import MlflowClient

    from vqrec.orchestration import pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def broken(self, name, alias):
        raise MlflowException("store unreachable", error_code=INTERNAL_ERROR)

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", broken)
    with pytest.raises(MlflowException, match="store unreachable"):
        pipeline.champion_backbone(str(tmp_path / "lake"))

    def missing(self, name, alias):
        raise MlflowException("no such alias", error_code=RESOURCE_DOES_NOT_EXIST)

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", missing)
    with pytest.raises(RuntimeError, match="no vqrec-backbone@champion"):
        pipeline.champion_backbone(str(tmp_path / "lake"))


@pytest.mark.usefixtures("lake_store")
def test_cadence_is_incremental_on_a_champion_backbone(trained_world, tmp_path):
    """Real registered champions (the trained toy world): an incremental run builds on the
    champion backbone's versions and warm-starts the domain from its champion; a refresh is
    what is asked, what a lake without champion gets, and what a rerun of the refresh's own
    date repeats."""
    from tests.support.world import DOMAIN, copy_world
    from vqrec.mlops import registry

    lake = copy_world(trained_world, tmp_path / "lake")["lake"]
    registry.register_backbone(lake, "trained", clean_version="v1", codes_version="v1")
    registry.register_domain(lake, DOMAIN, "trained")
    params = {"raw_root": str(_raw(tmp_path, DOMAIN)), "lake": str(lake)}
    params["pretrain_domains"] = [DOMAIN]

    plan = plan_run(params, logical_date="2026-11-21T00:00:00+00:00")
    assert plan.cadence == "incremental" and plan.backbone_version == "trained"
    assert plan.frozen_codes_version == "v1" and plan.warm_start == {DOMAIN: "trained"}
    assert plan_run({**params, "cadence": "refresh"}, "2026-11-21").cadence == "refresh"
    rerun = plan_run(params, logical_date=None, run_id="trained")  # the refresh's own version
    assert (rerun.cadence, rerun.cadence_reason) == (
        "refresh",
        "a rerun of the date that refreshed",
    )
    with pytest.raises(ValueError, match="cadence must be one of incremental, refresh"):
        plan_run({**params, "cadence": "weekly"}, "2026-11-21")


def _incremental_night(trained_world, tmp_path) -> tuple[Path, RunPlan]:
    """A copy of the trained toy world and the plan of an incremental night on it: the
    night's model ("worse", untrained) after the refresh's ("trained")."""
    from tests.support.world import DOMAIN, copy_world, name_data_like_models

    lake = copy_world(trained_world, tmp_path / "lake")["lake"]
    name_data_like_models(lake)
    plan = RunPlan(
        lake=str(lake), raw_root="", version="worse", domains=[DOMAIN],
        pretrain_domains=[DOMAIN], target_domains=[DOMAIN], cadence="incremental",
        backbone_version="trained",
    )  # fmt: skip
    return lake, plan


@pytest.mark.usefixtures("lake_store")
def test_drift_report_recommends_a_refresh_when_a_limit_is_crossed(trained_world, tmp_path):
    """Read from what the stages committed: the night's codes stats and the test NDCG@10 of
    the night's model against the refresh's (here: an untrained model after a trained one)."""
    from tests.support.world import DOMAIN
    from vqrec.orchestration.pipeline import drift_report

    _, plan = _incremental_night(trained_world, tmp_path)
    report = drift_report(plan)
    figures = report["domains"][DOMAIN]
    test = trained_world["test"]
    drop = (test["trained"]["ndcg@10"] - test["worse"]["ndcg@10"]) / test["trained"]["ndcg@10"]
    assert figures["ndcg_drop"] == pytest.approx(drop, abs=1e-4) and drop > 0.1
    assert "ndcg_drop" in figures["crossed"] and report["refresh_recommended"]
    share = figures["unique_code_share"]  # the toy's 8 x 16 codes collide a lot
    assert ("unique_code_share_below" in figures["crossed"]) == (share < 0.9)

    plan.hyper = {"refresh_when": {"ndcg_drop": 1.0, "unique_code_share_below": share - 0.01}}
    assert not drift_report(plan)["refresh_recommended"]
    plan.hyper = {"refresh_when": {"ndcg": 1.0}}
    with pytest.raises(ValueError, match=r"hyper.refresh_when: unknown key\(s\) \['ndcg'\]"):
        drift_report(plan)


@pytest.mark.usefixtures("lake_store")
def test_drift_report_refuses_a_damaged_model_instead_of_skipping_it(trained_world, tmp_path):
    """A model part whose files changed after its commit is not "a model without figures":
    the report stops on it (vqrec.lake.store.find_part), naming the file."""
    from tests.support.world import DOMAIN
    from vqrec.lake.store import DamagedVersion
    from vqrec.orchestration.pipeline import drift_report

    lake, plan = _incremental_night(trained_world, tmp_path)
    metrics = lake / "models" / "trained" / "domains" / DOMAIN / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"ndcg@10"', '"ndcg@10" ', 1))
    with pytest.raises(DamagedVersion, match="metrics.json"):
        drift_report(plan)
