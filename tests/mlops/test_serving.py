"""REST serving for real: `mlflow models serve` of models:/vqrec-<d>@champion on loopback."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from tests.support.world import DOMAIN, copy_world
from vqrec.mlops import registry, serving, tracking

pytestmark = pytest.mark.slow  # ~65 s (server start ~20 s); runs in CI


@pytest.fixture(scope="module")
def champion(trained_world, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    world = copy_world(trained_world, tmp_path_factory.mktemp("serving") / "lake")
    lake = world["lake"]
    result = registry.register_domain(lake, DOMAIN, "trained", pipeline_run_id="serve-run")
    assert result["promotion"]["promoted"]
    yield {"lake": lake, "data": world["data"], "uri": tracking.tracking_uri(lake)}
    mp.undo()


def test_models_serve_answers_top_k_lists(champion, tmp_path):
    item_ids, texts = champion["data"]["item_ids"], champion["data"]["texts"]
    users = champion["data"]["users"][:5]
    histories = [[item_ids[i - 1] for i in u[:-1]] for u in users]
    new = [{"item_id": "NEW-1", "text": texts[7]}]
    # In-process answer of the same champion: the server must agree with it.
    model = registry.load_champion(DOMAIN, champion["lake"])
    expected = model.predict(pd.DataFrame({"history": histories, "k": [10] * len(histories)}))

    model_uri = f"models:/{registry.domain_model_name(DOMAIN)}@champion"
    log = tmp_path / "serve.log"
    started = time.monotonic()
    with serving.serve_model(model_uri, champion["uri"], log_path=log, timeout=180) as url:
        ready = time.monotonic() - started
        records = serving.invoke(
            url, {"dataframe_records": [{"history": h, "k": 10} for h in histories]}
        )
        split = serving.invoke(
            url,
            {
                "dataframe_split": {
                    "columns": ["history", "k", "new_items"],
                    "data": [[histories[0], 3, new], [["NOPE"], 4, None]],
                }
            },
        )
        # Bad requests: HTTP 400 whose message names the row and the field.
        bad = [
            ({"history": ["x"], "k": 0}, "row 0: k must be between 1 and 1000"),
            ({"history": ["x"], "new_items": [{"item_id": "n"}]}, "Missing required properties"),
            ({"history": ["x"], "new_items": [{"item_id": item_ids[0], "text": "t"}]},
             "already in the catalogue"),
        ]  # fmt: skip
        for record, message in bad:
            with pytest.raises(RuntimeError, match=f"HTTP 400 .*{message}"):
                serving.invoke(url, {"dataframe_records": [record]})
    print(f"mlflow models serve ready in {ready:.1f} s")

    rows = records["predictions"]
    assert len(rows) == len(histories)
    for row, exp in zip(rows, expected.itertuples(), strict=True):
        assert row["item_ids"] == list(exp.item_ids) and len(row["item_ids"]) == 10
        assert row["scores"] == pytest.approx(list(exp.scores), abs=1e-5)
        assert row["strategy"] == "model"
    first, cold = split["predictions"]
    assert len(first["item_ids"]) == 3 and set(first["item_ids"]) <= {*item_ids, "NEW-1"}
    assert cold["strategy"] == "popularity" and cold["unknown_items"] == ["NOPE"]
    assert len(cold["item_ids"]) == 4
