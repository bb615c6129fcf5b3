"""`vqrec baselines` on real Amazon data (../shared/data): the four rows end to end.

Smoke size by default (the first users of Scientific and Beauty, the items they touch, a
small model, a few epochs); VQREC_FULL=1 runs the full domains with the paper's model.
Real components throughout: the reference splits, the sentence-transformers encoder,
faiss OPQ codes (vqrec.core.quantizer), torch training and full-ranking evaluation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import FULL, shared_domain
from vqrec.core.metrics import popularity_metrics
from vqrec.core.sequences import SPLITS, DomainData, Sequences
from vqrec.lake.reference import read_reference_domain
from vqrec.lake.store import staged_version

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

USERS = None if FULL else 700


def _subset(data: DomainData, users: int | None) -> DomainData:
    """The first ``users`` users, with items renumbered densely over what they touch."""
    if users is None:
        return data
    keep = {s: np.flatnonzero(data.splits[s].users < users) for s in SPLITS}
    rows_items = []
    for s in SPLITS:
        seqs = data.splits[s]
        rows_items += [seqs.items[seqs.offsets[r] : seqs.offsets[r + 1]] for r in keep[s]]
    used = np.unique(np.concatenate(rows_items + [data.splits[s].targets[keep[s]] for s in SPLITS]))
    new_id = np.zeros(data.n_items + 1, np.int64)
    new_id[used] = np.arange(1, len(used) + 1)
    splits = {}
    for s in SPLITS:
        seqs = data.splits[s]
        hist = [new_id[seqs.items[seqs.offsets[r] : seqs.offsets[r + 1]]].tolist() for r in keep[s]]
        splits[s] = Sequences.from_lists(
            hist, new_id[seqs.targets[keep[s]]].tolist(), seqs.users[keep[s]].tolist()
        )
    texts = [""] + [data.source["texts"][i] for i in used]
    return DomainData(data.name, len(used), splits, source={"texts": texts})


def _write_lake(lake: Path, domains: list[DomainData]) -> None:
    from vqrec.core.encoder import encode_texts, load_encoder

    model = load_encoder(None)
    seq_schema = pa.schema(
        [
            ("split", pa.string()),
            ("user_idx", pa.int32()),
            ("history", pa.list_(pa.int32())),
            ("target", pa.int32()),
        ]
    )
    with staged_version(lake, "clean", "v1") as out:
        for d in domains:
            cols: dict[str, list] = {"split": [], "user_idx": [], "history": [], "target": []}
            for s in SPLITS:
                seqs = d.splits[s]
                cols["split"] += [s] * len(seqs)
                cols["user_idx"] += seqs.users.tolist()
                cols["target"] += seqs.targets.tolist()
                cols["history"] += [
                    seqs.items[seqs.offsets[r] : seqs.offsets[r + 1]].tolist()
                    for r in range(len(seqs))
                ]
            texts = d.source["texts"][1:]
            items = {
                "item_idx": pa.array(range(1, d.n_items + 1), pa.int32()),
                "text": texts,
                "text_hash": [hashlib.sha1(t.encode()).hexdigest() for t in texts],
            }
            for table, data in (
                ("sequences", pa.table(cols, schema=seq_schema)),
                ("items", pa.table(items)),
            ):
                (out / table / f"domain={d.name}").mkdir(parents=True)
                pq.write_table(data, out / table / f"domain={d.name}" / "part-0.parquet")
    with staged_version(lake, "embeddings", "v1", {"encoder": "all-MiniLM-L6-v2"}) as out:
        for d in domains:
            emb = encode_texts(model, d.source["texts"][1:], batch_size=128)
            table = pa.table(
                {
                    "item_idx": pa.array(range(1, d.n_items + 1), pa.int32()),
                    "embedding": pa.array(list(emb), pa.list_(pa.float32())),
                }
            )
            (out / "items" / f"domain={d.name}").mkdir(parents=True)
            pq.write_table(table, out / "items" / f"domain={d.name}" / "part-0.parquet")


def test_four_row_table_on_real_scientific(lake: Path, capsys) -> None:
    from vqrec.stages.baselines import main
    from vqrec.stages.codes import CodesConfig, run_codes

    sci = _subset(read_reference_domain(shared_domain("Scientific") / "reference"), USERS)
    beauty = _subset(read_reference_domain(shared_domain("Beauty") / "reference"), USERS)
    _write_lake(lake, [sci, beauty])
    code_dim, bits = (32, 8) if FULL else (8, 5)
    run_codes(
        CodesConfig(
            pretrain_domains=("Beauty",),
            target_domains=("Scientific",),
            lake=str(lake),
            version="v1",
            code_dim=code_dim,
            bits=bits,
            niter=None if FULL else 10,
        )
    )
    argv = ["--lake", str(lake), "--domain", "Scientific", "--pretrain-domains", "Beauty"]
    argv += ["--targets", "all", "--json"]
    if not FULL:
        argv += ["--epochs", "6", "--batch-size", "256"]
        argv += ["--model-config", json.dumps({"hidden": 64, "inner": 64, "dropout": 0.2})]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = json.loads(out.strip().splitlines()[-1])
    assert set(rows) == {"id", "text", "vq-scratch", "vq-transfer"}
    assert "VQ-Rec pre-trained + transferred" in out
    for metrics in rows.values():
        assert 0 <= metrics["ndcg@10"] <= metrics["recall@10"] <= metrics["recall@50"] <= 1
    pop = popularity_metrics(sci.splits["train"], sci.splits["test"], sci.n_items)
    # Every text/code-based row learns something the popularity ranking does not.
    for name in ("text", "vq-scratch", "vq-transfer"):
        assert rows[name]["recall@50"] > pop["recall@50"], (name, rows[name], pop)
    if FULL:  # the published reference points on this split (see the issue)
        assert rows["vq-transfer"]["recall@10"] > 0.09
