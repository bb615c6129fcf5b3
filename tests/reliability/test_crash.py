"""Crash safety per stage: a real ``vqrec`` process SIGKILLed mid-write loses nothing.

For clean, encode, codes, pretrain and a fine-tune: a first version is committed by an
uninterrupted run; then the same stage runs as its own process (its own Spark JVM for the
Spark stages), is stopped at a chosen point in the middle of writing
(tests/support/crash_harness.py) and its whole process group is SIGKILLed. Then:

* the committed version is intact (every file byte for byte) and still what
  ``resolve_version`` returns; the killed run's output is visible to no reader (only its
  hidden ``.tmp-*`` staging folder is left);
* a rerun completes and equals the uninterrupted run: byte-identical data files for clean,
  encode and codes; for training, ``--resume`` continues from the last checkpoint (the log
  shows it skipped the finished epochs) and gives the same weights and metrics.

Crash points (7): clean while renaming its 3rd table's part file (2 of 5 tables written);
encode while renaming its first written part; codes after the quantizers and one of three
domains' codes are written, and while it replaces an already committed version (the swap);
pretrain while replacing its epoch-1 checkpoint by epoch 2's; the fine-tune inside its
permutation phase (same, epoch 1 -> 2), then once more while committing its domain part.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.support.crash_harness import (
    epochs_run,
    file_bytes,
    kill,
    read_log,
    run_cli,
    start_paused,
)
from tests.support.demo_lake import CODES, PRETRAIN, TARGET, TINY_TRAIN, copy_lake
from vqrec.cli import main as vqrec
from vqrec.core.trainer import load_checkpoint
from vqrec.lake.store import CURRENT, SUCCESS, LakeError, resolve_part, resolve_version

TRAIN = [*TINY_TRAIN, "--epochs", "3"]
FINETUNE = ["--backbone-version", "m1", "--domain", TARGET]
FINETUNE += ["--permutation", "learned", "--permutation-epochs", "2"]
TIMING = {"seconds", "seq_per_s", "valid_seconds"}  # wall-clock fields of a history: never equal


@pytest.fixture(scope="module")
def prepared(coded_demo_lake, tmp_path_factory):
    """One lake with a committed version of every stage, each made by an uninterrupted run."""
    torch.set_num_threads(1)
    lake = copy_lake(coded_demo_lake["lake"], tmp_path_factory.mktemp("crash") / "lake")
    train = ["--lake", str(lake), "--version", "m1", *TRAIN]
    assert vqrec(["pretrain", *train, "--domains", ",".join(PRETRAIN)]) == 0
    assert vqrec(["finetune", *train, *FINETUNE]) == 0
    return {"raw": coded_demo_lake["raw"], "lake": lake, "clean": coded_demo_lake["clean"]}


@pytest.fixture
def lake(prepared, tmp_path) -> Path:
    """A private copy of the prepared lake (the killed runs must not touch the shared one)."""
    copy = tmp_path / "lake"
    shutil.copytree(prepared["lake"], copy)
    return copy


def assert_untouched(
    lake: Path, stage: str, version: str, before: dict, killed: str, staged: bool = True
) -> None:
    """``version`` is byte-identical and CURRENT; ``killed`` is invisible to readers, at most a
    hidden staging folder without ``_SUCCESS`` is left (``staged``: one must be there)."""
    folder = lake / stage / version
    assert file_bytes(folder) == before
    assert resolve_version(lake, stage) == folder
    with pytest.raises(LakeError, match=f"no version '{killed}' of stage '{stage}'"):
        resolve_version(lake, stage, killed)
    assert sorted(p.name for p in (lake / stage).iterdir() if not p.name.startswith(".")) == [
        CURRENT,
        version,
    ]
    staging = list((lake / stage).glob(f".tmp-{killed}-*"))
    assert bool(staging) == staged
    assert not any((s / SUCCESS).exists() for s in staging)


@pytest.mark.slow  # ~2-3 min: two cold Spark runs of the clean job (killed, rerun); runs in CI
def test_clean_killed_mid_write_then_rerun_is_identical(prepared, lake, tmp_path):
    before = file_bytes(lake / "clean" / "v1")
    argv = ["clean", *prepared["clean"], "--lake", str(lake), "--version", "v2"]
    # Spark has written items and users and just written interactions; the driver is about
    # to rename interactions' part file. sequences and quarantine are not written yet.
    paused = start_paused(
        argv, [("os.rename", f"{lake}/clean/.tmp-v2-*/interactions/domain=*/part-*")], tmp_path
    )
    (staging,) = (lake / "clean").glob(".tmp-v2-*")
    assert (staging / "items").is_dir() and (staging / "users").is_dir()
    assert not (staging / "sequences").exists()
    assert kill(paused) == -9
    assert_untouched(lake, "clean", "v1", before, killed="v2")

    run_cli(argv, tmp_path)
    v1, v2 = lake / "clean" / "v1", resolve_version(lake, "clean")
    assert v2 == lake / "clean" / "v2"
    tables = file_bytes(v1, "*/domain=*/*.parquet")
    assert len(tables) == 5 * 3  # five tables of three domains
    assert file_bytes(v2, "*/domain=*/*.parquet") == tables


def test_encode_killed_mid_write_then_rerun_is_identical(lake, tmp_path):
    before = file_bytes(lake / "embeddings" / "v1")
    argv = ["encode", "--lake", str(lake), "--version", "v2"]
    paused = start_paused(
        argv, [("os.rename", f"{lake}/embeddings/.tmp-v2-*/items/domain=*/part-*")], tmp_path
    )
    (staging,) = (lake / "embeddings").glob(".tmp-v2-*")
    assert list(staging.glob("items/domain=*/*.parquet"))  # Spark's files are there
    assert kill(paused) == -9
    assert_untouched(lake, "embeddings", "v1", before, killed="v2")

    run_cli(argv, tmp_path)
    v1, v2 = lake / "embeddings" / "v1", resolve_version(lake, "embeddings")
    assert v2 == lake / "embeddings" / "v2"
    vectors = file_bytes(v1, "items/domain=*/*.parquet")
    assert len(vectors) == 3
    assert file_bytes(v2, "items/domain=*/*.parquet") == vectors


def test_codes_killed_mid_write_and_mid_replace(lake, tmp_path):
    v1 = lake / "codes" / "v1"
    before = file_bytes(v1)
    data = ["codes/domain=*/*.parquet", "quantizers/*.faiss", "stats.json"]
    expected = {pattern: file_bytes(v1, pattern) for pattern in data}
    argv = ["codes", "--lake", str(lake), *CODES]
    # Quantizer saved, Arts coded, about to write Garden's codes.
    paused = start_paused(
        [*argv, "--version", "v2"],
        [("os.mkdir", f"{lake}/codes/.tmp-v2-*/codes/domain=Garden")],
        tmp_path,
    )
    (staging,) = (lake / "codes").glob(".tmp-v2-*")
    assert (staging / "quantizers" / "pretrain.faiss").is_file()
    assert (staging / "codes" / "domain=Arts" / "part-00000.parquet").is_file()
    assert kill(paused) == -9
    assert_untouched(lake, "codes", "v1", before, killed="v2")

    run_cli([*argv, "--version", "v2"], tmp_path)
    v2 = resolve_version(lake, "codes")
    assert v2 == lake / "codes" / "v2"
    for pattern in data:
        assert file_bytes(v2, pattern) == expected[pattern], pattern

    # Re-running a committed version (a cleared nightly) replaces it whole. Killed at the
    # replacement itself, the name must still hold one complete version, old or new, never
    # nothing: the first trigger is the moment the new folder takes the name (two renames
    # without an atomic swap), the second the removal of the old one after the swap.
    paused = start_paused(
        [*argv, "--version", "v1"],
        [("os.rename", f"{lake}/codes/.tmp-v1-*"), ("shutil.rmtree", f"{lake}/codes/.tmp-*")],
        tmp_path,
    )
    assert kill(paused) == -9
    assert resolve_version(lake, "codes", "v1") == v1
    assert (v1 / SUCCESS).is_file()
    for pattern in data:
        assert file_bytes(v1, pattern) == expected[pattern], pattern
    assert resolve_version(lake, "codes") == v2  # the killed run never moved CURRENT


def _metrics(path: Path) -> dict:
    """metrics.json without the wall-clock fields of its history."""
    doc = json.loads(path.read_text())
    doc["history"] = [{k: v for k, v in h.items() if k not in TIMING} for h in doc["history"]]
    return doc


def test_pretrain_killed_between_checkpoints_resumes_to_the_same_model(lake, tmp_path):
    before = file_bytes(lake / "models" / "m1")
    argv = ["pretrain", "--lake", str(lake), "--version", "m2", *TRAIN]
    argv += ["--domains", ",".join(PRETRAIN)]
    checkpoint = lake / "checkpoints" / "m2" / "backbone" / "last.pt"
    # Epoch 2's checkpoint is written to its temp file; last.pt still holds epoch 1.
    paused = start_paused(argv, [("os.rename", f"{checkpoint.parent}/.last.pt.*.tmp")], tmp_path, 2)
    assert kill(paused) == -9
    assert epochs_run(read_log(paused)) == [("train", 1), ("train", 2)]
    assert list(checkpoint.parent.glob(".last.pt.*.tmp"))  # the half-replaced one
    _, state = load_checkpoint(checkpoint)
    assert state["position"] == {"phase": "train", "epoch": 1, "done": False}
    assert_untouched(lake, "models", "m1", before, killed="m2", staged=False)

    resumed = run_cli([*argv, "--resume"], tmp_path)
    assert epochs_run(resumed.stderr) == [("train", 2), ("train", 3)]  # epoch 1 not redone
    m1, m2 = lake / "models" / "m1" / "backbone", resolve_version(lake, "models") / "backbone"
    assert m2 == lake / "models" / "m2" / "backbone"
    assert (m2 / "model.safetensors").read_bytes() == (m1 / "model.safetensors").read_bytes()
    assert _metrics(m2 / "metrics.json") == _metrics(m1 / "metrics.json")
    assert json.loads((m2 / "config.json").read_text()) == json.loads(
        (m1 / "config.json").read_text()
    )
    assert not checkpoint.parent.exists()  # removed once the version is committed


def test_finetune_killed_twice_resumes_to_the_same_domain_model(lake, tmp_path):
    before = file_bytes(lake / "models" / "m1")
    argv = ["finetune", "--lake", str(lake), "--version", "m2", *TRAIN, *FINETUNE]
    checkpoint = lake / "checkpoints" / "m2" / f"domain-{TARGET}" / "last.pt"
    # 1. Inside the permutation phase: epoch 2's checkpoint written, last.pt = epoch 1.
    first = start_paused(argv, [("os.rename", f"{checkpoint.parent}/.last.pt.*.tmp")], tmp_path, 2)
    assert kill(first) == -9
    _, state = load_checkpoint(checkpoint)
    assert state["position"] == {"phase": "permutation", "epoch": 1, "done": False}
    assert_untouched(lake, "models", "m1", before, killed="m2", staged=False)

    # 2. Resumed, then killed while committing its part: every file of domains/Toys is
    # written into the staging folder, _SUCCESS is next.
    part = lake / "models" / "m2" / "domains"
    second = start_paused(
        [*argv, "--resume"], [("open", f"{part}/.tmp-{TARGET}-*/{SUCCESS}")], tmp_path
    )
    assert kill(second) == -9
    done = epochs_run(read_log(second))
    assert done[0] == ("permutation", 2) and ("permutation", 1) not in done
    assert done[-1] == ("train", 3)
    (staging,) = part.glob(f".tmp-{TARGET}-*")
    assert (staging / "model.safetensors").is_file() and not (staging / SUCCESS).exists()
    with pytest.raises(LakeError, match="not a committed part"):
        resolve_part(lake, "models", "m2", f"domains/{TARGET}")
    assert [p.name for p in part.iterdir() if not p.name.startswith(".")] == []
    assert file_bytes(lake / "models" / "m1") == before

    # 3. Resumed again: nothing left to train, it commits the same model.
    resumed = run_cli([*argv, "--resume"], tmp_path)
    assert epochs_run(resumed.stderr) == []
    m1 = resolve_part(lake, "models", "m1", f"domains/{TARGET}")
    m2 = resolve_part(lake, "models", "m2", f"domains/{TARGET}")
    for name in ("model.safetensors", "lookup_table.safetensors"):
        assert (m2 / name).read_bytes() == (m1 / name).read_bytes(), name
    assert _metrics(m2 / "metrics.json") == _metrics(m1 / "metrics.json")
    assert json.loads((m2 / "config.json").read_text()) == json.loads(
        (m1 / "config.json").read_text()
    )
    assert not checkpoint.parent.exists()
