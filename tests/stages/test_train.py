"""vqrec.stages.train on a real coded lake: what the CLI wires around the core trainer."""

from __future__ import annotations

import json

import numpy as np

from tests.support.demo_lake import PRETRAIN, TARGET, TINY_TRAIN, copy_lake
from vqrec.cli import main as vqrec
from vqrec.lake.store import resolve_version

TRAIN = [*TINY_TRAIN, "--no-mlflow"]


def test_pretrain_probes_the_held_out_domain_from_the_lake(coded_demo_lake, tmp_path) -> None:
    """`vqrec pretrain --probe-domain`: the probe domain is read from the same clean, codes and
    embeddings versions (its texts re-coded by the pre-training quantizer), each epoch is
    scored by a short transfer to it, the epoch kept is the best probe's, and the backbone is
    trained on the pre-training domains alone."""
    lake = copy_lake(coded_demo_lake["lake"], tmp_path / "lake")
    argv = ["pretrain", "--lake", str(lake), "--version", "p1", *TRAIN, "--epochs", "3"]
    argv += ["--domains", ",".join(PRETRAIN), "--probe-domain", TARGET, "--probe-epochs", "1"]
    argv += ["--patience", "5", "--embeddings-version", "v1"]
    assert vqrec(argv) == 0
    folder = resolve_version(lake, "models", "p1") / "backbone"
    metrics = json.loads((folder / "metrics.json").read_text())
    probes = [h["valid"]["probe/ndcg@10"] for h in metrics["history"]]
    assert len(probes) == 3 and all(0.0 < p <= 1.0 for p in probes)
    assert metrics["best_epoch"] == 1 + int(np.argmax(probes))
    config = json.loads((folder / "config.json").read_text())
    assert config["domains"] == PRETRAIN and config["train"]["probe_domain"] == TARGET


def test_pretrain_refuses_a_probe_among_its_domains_in_one_line(
    coded_demo_lake, tmp_path, capsys
) -> None:
    lake = copy_lake(coded_demo_lake["lake"], tmp_path / "lake")
    argv = ["pretrain", "--lake", str(lake), "--version", "p1", *TRAIN, "--epochs", "1"]
    for probe in (PRETRAIN[0], "Kitchen"):
        assert vqrec([*argv, "--domains", ",".join(PRETRAIN), "--probe-domain", probe]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        assert probe in err[0]
    assert not (lake / "models" / "p1").exists()
