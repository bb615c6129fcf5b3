"""A small coded demo lake: three demo domains cleaned, encoded and coded by the real CLI.

``clean``, ``encode`` (the real sentence encoder, Spark local[2]) and ``codes`` (faiss OPQ,
the ``shared`` strategy: one quantizer fitted on the pre-training domains codes all three)
each commit version ``v1``, once per test session. Tests that write into a lake take a copy
(:func:`copy_lake`): the shared one stays as built.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vqrec.cli import main as vqrec
from vqrec.devtools.demo import generate_demo

MAX_TS = "2000000000"  # fixed, so that a rerun on another day reads the same events
PRETRAIN, TARGET = ["Arts", "Garden"], "Toys"
CODES = ["--pretrain-domains", ",".join(PRETRAIN), "--target-domains", TARGET]
CODES += ["--strategy", "shared", "--code-dim", "8", "--bits", "4", "--niter", "2"]
# `vqrec pretrain` / `finetune` flags for a tiny, seeded model on CPU (seconds per epoch).
TINY_MODEL = {"hidden": 32, "inner": 32, "layers": 1, "heads": 1, "max_len": 20}
TINY_TRAIN = ["--no-progress", "--device", "cpu", "--batch-size", "256", "--seed", "5"]
TINY_TRAIN += ["--model-config", json.dumps(TINY_MODEL)]


@pytest.fixture(scope="session")
def coded_demo_lake(spark, tmp_path_factory) -> dict:
    """{"raw", "lake", "clean"}: the raw demo folders, the lake and the clean flags used."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("demo-lake")
    raw, lake = root / "raw", root / "lake"
    generate_demo(raw, seed=0, users=800, domains=[*PRETRAIN, TARGET])
    clean = ["--raw-root", str(raw), "--lake", str(lake), "--max-ts", MAX_TS]
    assert vqrec(["clean", *clean, "--version", "v1"]) == 0
    assert vqrec(["encode", "--lake", str(lake), "--version", "v1"]) == 0
    assert vqrec(["codes", "--lake", str(lake), "--version", "v1", *CODES]) == 0
    return {"raw": raw, "lake": lake, "clean": clean}


def copy_lake(lake: Path, to: Path) -> Path:
    """A private copy of ``lake`` at ``to`` (runs that write must not touch the shared one)."""
    shutil.copytree(lake, to)
    return to
