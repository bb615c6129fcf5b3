"""vqrec.data: lake -> ragged splits -> padded batches, global id space, bucketed batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import SHARED_DATA
from vqrec.core.sequences import DataError, Sequences, batch_rows, merge_domains
from vqrec.lake.manifest import MANIFEST
from vqrec.lake.reference import read_reference_domain
from vqrec.lake.store import DamagedVersion, adopt_version, staged_version
from vqrec.lake.tables import load_domain


def _user_sequences(n_users: int, n_items: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(rng.integers(1, n_items + 1, size=rng.integers(3, 12))) for _ in range(n_users)]


def write_tiny_domain(
    root: Path, domain: str, users: list[list[int]], n_items: int, code_dim: int = 4
) -> None:
    """Write the clean/codes/embeddings tables of one domain in the lake layout."""
    rows = {"split": [], "user_idx": [], "history": [], "target": []}
    for u, s in enumerate(users):
        n = len(s)
        for split, t in [("train", t) for t in range(1, n - 2)] + [
            ("valid", n - 2),
            ("test", n - 1),
        ]:
            rows["split"].append(split)
            rows["user_idx"].append(u)
            rows["history"].append([int(x) for x in s[max(0, t - 50) : t]])
            rows["target"].append(int(s[t]))
    seq_schema = pa.schema(
        [
            ("split", pa.string()),
            ("user_idx", pa.int32()),
            ("history", pa.list_(pa.int32())),
            ("target", pa.int32()),
        ]
    )
    tables = {
        ("clean", "sequences"): pa.table(rows, schema=seq_schema),
        ("clean", "items"): pa.table(
            {
                "item_idx": pa.array(range(1, n_items + 1), pa.int32()),
                "item_id": [f"i{i}" for i in range(1, n_items + 1)],
            }
        ),
        ("codes", "codes"): pa.table(
            {
                "item_idx": pa.array(range(1, n_items + 1), pa.int32()),
                "code": pa.array(
                    [[(i * 7 + j) % 16 for j in range(code_dim)] for i in range(1, n_items + 1)],
                    pa.list_(pa.int16()),
                ),
                "quantizer": [domain] * n_items,
            }
        ),
        ("embeddings", "items"): pa.table(
            {
                "item_idx": pa.array(range(1, n_items + 1), pa.int32()),
                "embedding": pa.array(
                    [[float(i), 1.0, -float(i)] for i in range(1, n_items + 1)],
                    pa.list_(pa.float32()),
                ),
            }
        ),
    }
    for (stage, table), data in tables.items():
        folder = root / stage / table / f"domain={domain}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, folder / "part-0.parquet")


def make_lake(lake: Path, domains: dict[str, tuple[list[list[int]], int]]) -> None:
    """Commit one version of clean/codes/embeddings holding ``domains`` (name -> users, N)."""
    for stage in ("clean", "codes", "embeddings"):
        meta = {"encoder": "test"} if stage == "embeddings" else {}
        with staged_version(lake, stage, "v1", metadata=meta) as tmp:
            for name, (users, n_items) in domains.items():
                write_tiny_domain(tmp.parent / "_build", name, users, n_items)
                src = tmp.parent / "_build" / stage
                for p in src.rglob("*.parquet"):
                    dest = tmp / p.relative_to(src)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(p.read_bytes())


def test_load_domain_round_trips_the_splits(lake: Path) -> None:
    users = _user_sequences(20, 30, seed=1)
    make_lake(lake, {"Toys": (users, 30)})
    data = load_domain(lake, "Toys", need_codes=True, need_text=True)
    assert data.n_items == 30
    assert len(data.splits["valid"]) == len(data.splits["test"]) == 20
    assert len(data.splits["train"]) == sum(len(s) - 3 for s in users)
    test = data.splits["test"]
    for r in range(len(test)):
        s = users[test.users[r]]
        assert list(test.items[test.offsets[r] : test.offsets[r + 1]]) == s[:-1]
        assert test.targets[r] == s[-1]
    assert data.codes.shape == (31, 4) and (data.codes[0] == 0).all()
    assert list(data.codes[5]) == [(5 * 7 + j) % 16 for j in range(4)]
    assert data.text.shape == (31, 3) and data.text[7, 0] == 7.0
    assert data.source["clean"] == "v1" and data.source["quantizer"] == "Toys"


def test_batch_pads_to_the_longest_history_and_keeps_the_last_items() -> None:
    seqs = Sequences.from_lists([[1, 2, 3, 4, 5], [6], [7, 8]], [9, 10, 11])
    hist, lengths, targets = seqs.batch(np.array([1, 2]))
    assert hist.tolist() == [[6, 0], [7, 8]]
    assert lengths.tolist() == [1, 2] and targets.tolist() == [10, 11]
    hist, lengths, _ = seqs.batch(np.array([0, 1]), max_len=3)
    assert hist.tolist() == [[3, 4, 5], [6, 0, 0]] and lengths.tolist() == [3, 1]


def test_merge_domains_offsets_ids_and_codes(lake: Path) -> None:
    make_lake(
        lake,
        {"A": (_user_sequences(10, 20, seed=2), 20), "B": (_user_sequences(12, 15, seed=3), 15)},
    )
    a, b = load_domain(lake, "A"), load_domain(lake, "B")
    merged = merge_domains([a, b])
    assert merged.offsets == {"A": 0, "B": 20} and merged.n_items == 35
    assert merged.codes.shape == (36, 4)
    np.testing.assert_array_equal(merged.codes[21:], b.codes[1:])
    n_a = len(a.splits["train"])
    np.testing.assert_array_equal(merged.train.targets[n_a:], b.splits["train"].targets + 20)
    assert merged.train.targets[:n_a].max() <= 20 and merged.train.targets[n_a:].min() > 20
    assert set(merged.train.domain.tolist()) == {0, 1}
    hist, lengths, _ = merged.train.batch(np.arange(n_a, n_a + 5))
    assert (hist[hist > 0] > 20).all()


def test_bucketed_batches_cover_each_row_once_and_pad_less() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.geometric(0.2, size=5000).clip(1, 50)
    for bucket in (False, True):
        gen = torch.Generator().manual_seed(0)
        batches = batch_rows(lengths, 256, gen, bucket=bucket)
        rows = np.concatenate(batches)
        assert sorted(rows.tolist()) == list(range(5000))
    padded = {
        bucket: sum(
            len(b) * lengths[b].max()
            for b in batch_rows(lengths, 256, torch.Generator().manual_seed(1), bucket=bucket)
        )
        for bucket in (False, True)
    }
    assert padded[True] < 0.5 * padded[False]
    # Same generator state -> same batches (what resume relies on).
    again = batch_rows(lengths, 256, torch.Generator().manual_seed(1), bucket=True)
    first = batch_rows(lengths, 256, torch.Generator().manual_seed(1), bucket=True)
    assert all((x == y).all() for x, y in zip(again, first, strict=True))


def test_bad_inputs_name_the_file(lake: Path) -> None:
    make_lake(lake, {"A": (_user_sequences(5, 10, seed=4), 10)})
    with pytest.raises(DataError, match="domain=Nope"):
        load_domain(lake, "Nope")
    # Codes that miss an item are refused, naming the partition.
    codes_part = next((lake / "codes" / "v1" / "codes" / "domain=A").glob("*.parquet"))
    table = pq.read_table(codes_part)
    pq.write_table(table.slice(0, 9), codes_part)
    with pytest.raises(DamagedVersion, match="codes/v1 is damaged"):  # not as committed
        load_domain(lake, "A")
    # As if the codes stage itself had committed the short table: the reader refuses it.
    (lake / "codes" / "v1" / MANIFEST).unlink()
    adopt_version(lake, "codes", "v1")
    with pytest.raises(DataError, match="1 items have no code"):
        load_domain(lake, "A")
    with pytest.raises(ValueError, match="invalid domain"):
        load_domain(lake, "../etc")


def test_reference_domain_reader() -> None:
    folder = SHARED_DATA / "Scientific" / "reference"
    if not folder.is_dir():
        pytest.skip("real data absent")
    data = read_reference_domain(folder)
    assert data.n_items == 4385
    assert len(data.splits["train"]) == 34101 and len(data.splits["test"]) == 8442
    assert 3.5 < data.splits["train"].lengths.mean() < 5.5
    assert len(data.source["texts"]) == 4386 and data.source["texts"][1]
