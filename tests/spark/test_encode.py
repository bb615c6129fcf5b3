"""vqrec.spark.encode: the Spark encode stage with the real model, real Spark, real files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import FULL, shared_domain
from vqrec.core.encoder import encode_texts, encoder_key, load_encoder
from vqrec.lake.store import LakeError, read_success, resolve_version, staged_version
from vqrec.spark.encode import EncodeConfig, main, run_encode

WORDS = "red blue green steel wooden quiet fast tiny heavy soft".split()
NOUNS = "shoe hat lamp drill guitar brush kettle camera puzzle saw".split()


def catalog(n: int, offset: int = 0) -> list[str]:
    """``n`` distinct, varied item titles (lengths differ, so batches get sorted)."""
    return [
        f"{WORDS[(i + offset) % 10]} {NOUNS[(i * 3 + offset) % 10]} model {i + offset}"
        + " with extras" * (i % 4)
        for i in range(n)
    ]


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def write_clean(lake: Path, version: str, domains: dict[str, list[str]]) -> None:
    """A committed clean version holding only the items table (the encode stage's input)."""
    with staged_version(lake, "clean", version) as out:
        for domain, texts in domains.items():
            folder = out / "items" / f"domain={domain}"
            folder.mkdir(parents=True)
            table = pa.table(
                {
                    "item_idx": pa.array(range(1, len(texts) + 1), pa.int32()),
                    "item_id": pa.array(
                        [f"{domain}-{i:04d}" for i in range(len(texts))], pa.string()
                    ),
                    "text": pa.array(texts, pa.string()),
                    "text_hash": pa.array([sha1(t) for t in texts], pa.string()),
                }
            )
            # Written in reverse order: the stage must sort, not rely on input order.
            order = pa.array(list(reversed(range(len(texts)))), pa.int64())
            pq.write_table(table.take(order), folder / "p.parquet")


def read_domain(lake: Path, version: str, domain: str) -> pa.Table:
    folder = resolve_version(lake, "embeddings", version) / "items" / f"domain={domain}"
    assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet"]
    return pq.read_table(folder / "part-00000.parquet")


def test_encode_writes_the_contract_and_caches_by_text_hash(spark, lake):
    games = catalog(40)
    tools = catalog(12, offset=3) + [games[5], games[5]]  # same texts in and across domains
    write_clean(lake, "c1", {"Games": games, "Tools": tools, "Empty": []})

    first = run_encode(spark, EncodeConfig(lake=str(lake), version="e1", batch_size=16))
    unique = set(games) | set(tools)
    assert first["domains"] == {"Empty": 0, "Games": 40, "Tools": 14}
    assert first["unique_texts"] == len(unique)
    assert (first["encoded"], first["reused"]) == (len(unique), 0)  # each text encoded once
    key = encoder_key(None, 384)
    assert first["encoder"] == key and first["dimension"] == 384
    meta = read_success(resolve_version(lake, "embeddings"))
    assert (meta["encoded"], meta["reused"], meta["version"]) == (len(unique), 0, "e1")
    cache_files = sorted((lake / "embedding_cache" / key).glob("*.parquet"))
    assert [p.name for p in cache_files] == [first["cache_file"]]
    assert pq.read_table(cache_files[0]).num_rows == len(unique)

    # Schema and order of the contract (docs/ARCHITECTURE.md).
    model = load_encoder()
    for domain, texts in {"Games": games, "Tools": tools}.items():
        table = read_domain(lake, "e1", domain)
        assert table.schema.names == [
            "item_idx", "item_id", "text_hash", "embedding", "norm", "encoder",
        ]  # fmt: skip
        assert table.schema.field("item_idx").type == pa.int32()
        assert table.schema.field("embedding").type.value_type == pa.float32()
        assert table.schema.field("norm").type == pa.float32()
        rows = table.to_pydict()
        assert rows["item_idx"] == list(range(1, len(texts) + 1))
        assert rows["text_hash"] == [sha1(t) for t in texts]
        assert set(rows["encoder"]) == {key}
        vectors = np.asarray(rows["embedding"], dtype=np.float32)
        # The stored vectors are the raw encoder output of exactly these texts.
        expected = model.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
        np.testing.assert_allclose(vectors, expected, atol=2e-5)
        np.testing.assert_allclose(rows["norm"], np.linalg.norm(vectors, axis=1), rtol=1e-5)
    empty = read_domain(lake, "e1", "Empty")
    assert empty.num_rows == 0 and "embedding" in empty.schema.names

    # Deterministic: without the cache, the same input encodes to the identical output.
    shutil.move(lake / "embedding_cache", lake.parent / "old_cache")
    again = run_encode(spark, EncodeConfig(lake=str(lake), version="e1b", batch_size=16))
    assert again["encoded"] == len(unique)
    for domain in ("Games", "Tools", "Empty"):
        assert read_domain(lake, "e1b", domain).equals(read_domain(lake, "e1", domain))

    # Rerun over the same items: nothing encoded, identical output, no new cache file.
    second = run_encode(spark, EncodeConfig(lake=str(lake), version="e2"))
    assert (second["encoded"], second["reused"]) == (0, len(unique))
    assert second["cache_file"] is None
    assert len(list((lake / "embedding_cache" / key).glob("*.parquet"))) == 1
    for domain in ("Games", "Tools", "Empty"):
        assert read_domain(lake, "e2", domain).equals(read_domain(lake, "e1", domain))

    # A new clean version with 10 new items (and one changed text): exactly those encoded.
    changed = games[:39] + [games[39] + " (2024 edition)"] + catalog(10, offset=100)
    write_clean(lake, "c2", {"Games": changed, "Tools": tools})
    third = run_encode(
        spark, EncodeConfig(lake=str(lake), version="e3", clean_version="c2", domains=["Games"])
    )
    assert third["domains"] == {"Games": 50}
    assert (third["encoded"], third["reused"]) == (11, 39)
    assert len(list((lake / "embedding_cache" / key).glob("*.parquet"))) == 2
    assert not (resolve_version(lake, "embeddings", "e3") / "items" / "domain=Tools").exists()
    vectors = np.asarray(read_domain(lake, "e3", "Games").column("embedding").to_pylist())
    np.testing.assert_allclose(vectors, encode_texts(model, changed), atol=2e-5)


def test_the_driver_loads_the_model_only_for_an_encoder_new_to_the_lake(spark, lake, monkeypatch):
    """The workers encode. The driver loads the model once per lake and encoder, for its
    dimension (a broken model then fails in one line, below); later runs read the dimension
    off the encoder's cache folder name."""
    driver_models: dict = {}
    monkeypatch.setattr("vqrec.core.encoder._MODELS", driver_models)
    write_clean(lake, "c1", {"Games": catalog(20)})
    first = run_encode(spark, EncodeConfig(lake=str(lake), version="e1"))
    assert len(driver_models) == 1
    driver_models.clear()
    again = run_encode(spark, EncodeConfig(lake=str(lake), version="e2"))
    assert driver_models == {}, "the driver loaded the encoder again"
    assert (first["encoded"], again["encoded"], again["reused"]) == (20, 0, 20)
    assert first["encoder"] == again["encoder"] == encoder_key(None, 384)
    assert first["dimension"] == again["dimension"] == 384


def test_missing_or_broken_input_gets_a_clear_error(spark, lake, capsys):
    with pytest.raises(LakeError, match="no committed version of stage 'clean'"):
        run_encode(spark, EncodeConfig(lake=str(lake), version="e1"))
    # The CLI reports it in one line, without a stack trace.
    assert main(["--lake", str(lake), "--version", "e1"]) == 2
    assert "vqrec encode: error: no committed version" in capsys.readouterr().err

    write_clean(lake, "c1", {"Games": catalog(5)})
    with pytest.raises(LakeError, match=r"domain\(s\) \['Nope'\] not in"):
        run_encode(spark, EncodeConfig(lake=str(lake), version="e1", domains=["Nope"]))
    with pytest.raises(LakeError, match=r"no version 'c9' of stage 'clean' .* \(have: c1\)"):
        run_encode(spark, EncodeConfig(lake=str(lake), version="e1", clean_version="c9"))

    # A model folder that is not a sentence-transformers model: one line, before Spark works.
    not_a_model = lake.parent / "not-a-model"
    not_a_model.mkdir()
    assert main(["--lake", str(lake), "--version", "e1", "--model", str(not_a_model)]) == 2
    assert "cannot load sentence-transformers model" in capsys.readouterr().err

    # A hash that is not sha1(text) would poison the cache: refused, naming the item.
    with staged_version(lake, "clean", "bad") as out:
        folder = out / "items" / "domain=Games"
        folder.mkdir(parents=True)
        pq.write_table(
            pa.table(
                {
                    "item_idx": pa.array([1, 2], pa.int32()),
                    "item_id": ["g1", "g2"],
                    "text": ["fine title", ""],
                    "text_hash": [sha1("fine title"), sha1("")],
                }
            ),
            folder / "p.parquet",
        )
    with pytest.raises(LakeError, match=r"1 item\(s\) with empty text.*item_idx=2 \(g2"):
        run_encode(spark, EncodeConfig(lake=str(lake), version="e1"))
    assert not (lake / "embeddings" / "e1").exists()  # nothing half-written


@pytest.mark.slow
@pytest.mark.realdata
def test_encode_real_item_texts_match_sentence_transformers(spark, lake):
    """Real Scientific item texts (smoke: 300; VQREC_FULL=1: all 4,385) through the job."""
    text_file = shared_domain("Scientific") / "reference" / "Scientific.text"
    lines = text_file.read_text(encoding="utf-8").splitlines()[1:]
    texts = [line.split("\t", 1)[1].strip() for line in lines if "\t" in line]
    texts = texts if FULL else texts[:300]
    write_clean(lake, "c1", {"Scientific": texts})
    summary = run_encode(spark, EncodeConfig(lake=str(lake), version="e1"))
    assert summary["encoded"] == len(set(texts))
    table = read_domain(lake, "e1", "Scientific")
    assert table.num_rows == len(texts)
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    expected = load_encoder().encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    np.testing.assert_allclose(vectors, expected, atol=2e-5)
    assert json.loads((resolve_version(lake, "embeddings") / "_SUCCESS").read_text())["items"] == (
        len(texts)
    )
