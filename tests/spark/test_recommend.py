"""Batch recommendations on a real local Spark with a real registered champion: every user
gets the served model's answer, committed like every stage."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.support.world import DOMAIN, copy_world
from vqrec.lake.store import resolve_version
from vqrec.mlops import registry
from vqrec.spark.recommend import RecommendConfig, main, run_recommend

pytestmark = pytest.mark.usefixtures("lake_store")


@pytest.fixture(scope="module")
def champion_lake(trained_world, tmp_path_factory):
    world = copy_world(trained_world, tmp_path_factory.mktemp("recommend") / "lake")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    registered = registry.register_domain(world["lake"], DOMAIN, "trained")
    assert registered["promotion"]["promoted"]
    yield world | {"model_version": registered["version"]}
    mp.undo()


def test_every_user_gets_the_champions_top_k(spark, champion_lake):
    lake, data = champion_lake["lake"], champion_lake["data"]
    config = RecommendConfig(lake=str(lake), version="r1", clean_version="v1", k=5)
    summary = run_recommend(spark, config)
    users = data["users"]
    assert summary["domains"][DOMAIN]["users"] == len(users)
    assert summary["domains"][DOMAIN]["model_version"] == champion_lake["model_version"]

    folder = resolve_version(lake, "recommendations", "r1") / f"domain={DOMAIN}"
    assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet"]
    table = pq.read_table(folder).to_pandas()
    assert list(table.columns) == [
        "user_id", "rank", "item_id", "score", "strategy", "model_version"
    ]  # fmt: skip
    assert len(table) == 5 * len(users) and table["user_id"].nunique() == len(users)
    assert table.equals(table.sort_values(["user_id", "rank"]).reset_index(drop=True))
    assert set(table["model_version"]) == {champion_lake["model_version"]}

    # The same answers as the registered pyfunc for a sample of users (latest histories).
    model = registry.load_champion(DOMAIN, lake)
    item_ids = data["item_ids"]
    sample = list(range(0, len(users), 37))
    request = pd.DataFrame(
        {
            "history": [[item_ids[i - 1] for i in users[u]] for u in sample],
            "k": [5] * len(sample),
            "exclude_seen": [True] * len(sample),
        }
    )
    expected = model.predict(request)
    for row, u in enumerate(sample):
        got = table[table["user_id"] == f"U{u:04d}"]
        assert list(got["item_id"]) == list(expected.loc[row, "item_ids"]), u
        assert list(got["score"]) == pytest.approx(list(expected.loc[row, "scores"]), abs=1e-5)
        assert not set(got["item_id"]) & {item_ids[i - 1] for i in users[u]}  # exclude_seen


def test_bad_requests_are_one_line_errors(spark, champion_lake, capsys):
    lake = str(champion_lake["lake"])
    assert main(["--lake", lake, "--version", "r2", "--k", "0"]) == 2
    assert "vqrec recommend: error: k must be between 1 and 1000, got 0" in capsys.readouterr().err
    assert main(["--lake", lake, "--version", "r2", "--domains", "Nope"]) == 2
    err = capsys.readouterr().err
    assert "domain(s) ['Nope'] not in clean version" in err and "Traceback" not in err
