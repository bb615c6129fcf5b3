"""Distributed pre-training: 2 CPU processes with gloo stay in sync and learn."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqrec.core.model import ModelConfig
from vqrec.core.sequences import merge_domains
from vqrec.core.trainer import TrainConfig, pretrain

WORLD = 2


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from tests.core.test_trainer import TINY, topic_domain

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data = merge_domains(
            [topic_domain("A", 120, 200, 6, seed=1), topic_domain("B", 100, 160, 5, seed=2)]
        )
        cfg = TrainConfig(epochs=3, batch_size=128, patience=10, progress=False, seed=11)
        result = pretrain(data, cfg, ModelConfig(**TINY))
        state = {k: v.cpu() for k, v in result.model.state_dict().items()}
        losses = [h["loss"] for h in result.metrics["history"]]
        torch.save({"state": state, "losses": losses}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_gloo_processes_stay_in_sync(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    runs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for key, value in runs[0]["state"].items():
        torch.testing.assert_close(value, runs[1]["state"][key], rtol=0, atol=0, msg=key)
    for losses in (runs[0]["losses"], runs[1]["losses"]):
        assert all(torch.isfinite(torch.tensor(losses)))
        assert losses[-1] < losses[0]  # it learns
    # The replicas trained on different halves of each batch: their losses differ.
    assert runs[0]["losses"] != runs[1]["losses"]
