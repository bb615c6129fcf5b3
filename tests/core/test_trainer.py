"""vqrec.core.trainer and vqrec.stages.train: resume = uninterrupted, the CLI smoke run beats
popularity, lake outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from vqrec.core.metrics import popularity_metrics
from vqrec.core.model import ModelConfig
from vqrec.core.sequences import DomainData, Sequences, merge_domains
from vqrec.core.trainer import StopRequested, TrainConfig, TrainResult, finetune, pretrain
from vqrec.lake.models import load_domain_model
from vqrec.lake.store import resolve_version, staged_version
from vqrec.lake.tables import load_domain

D, M = 8, 16  # small codes so that a few hundred items exercise every block
TINY = {"code_dim": D, "code_cap": M, "hidden": 32, "inner": 32, "dropout": 0.1}
TINY |= {"attn_dropout": 0.1, "max_len": 20}


def topic_domain(name: str, n_items: int, n_users: int, topics: int, seed: int) -> DomainData:
    """Users stay within one topic; half of each item's code is its topic's code.

    Popularity is flat within topics, so the most-popular baseline is near chance while a
    sequence model that reads the codes finds the user's topic.
    """
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, topics, n_items + 1)
    topic_code = rng.integers(0, M, (topics, D))
    own = rng.integers(0, M, (n_items + 1, D))
    codes = np.where(np.arange(D) < D // 2, topic_code[topic], own).astype(np.int64)
    codes[0] = 0
    members = [np.flatnonzero(topic[1:] == t) + 1 for t in range(topics)]
    rows: dict[str, tuple[list, list, list]] = {s: ([], [], []) for s in ("train", "valid", "test")}
    for u in range(n_users):
        pool = members[rng.integers(topics)]
        s = [int(x) for x in rng.choice(pool, rng.integers(5, 12))]
        n = len(s)
        for t in range(1, n - 2):
            rows["train"][0].append(s[:t])
            rows["train"][1].append(s[t])
            rows["train"][2].append(u)
        for split, t in (("valid", n - 2), ("test", n - 1)):
            rows[split][0].append(s[:t])
            rows[split][1].append(s[t])
            rows[split][2].append(u)
    splits = {k: Sequences.from_lists(*v) for k, v in rows.items()}
    return DomainData(name, n_items, splits, codes=codes)


def tiny_backbone() -> TrainResult:
    """One pre-training epoch of the TINY model on a topic domain "P": a backbone to transfer."""
    return pretrain(
        merge_domains([topic_domain("P", 90, 120, 6, seed=6)]),
        TrainConfig(epochs=1, batch_size=64, progress=False),
        ModelConfig(**TINY),
    )


def write_domains(lake: Path, domains: list[DomainData], version: str = "v1") -> None:
    """Commit clean (sequences, items) and codes versions holding ``domains``."""
    with staged_version(lake, "clean", version) as out:
        for d in domains:
            cols: dict[str, list] = {"split": [], "user_idx": [], "history": [], "target": []}
            for split, seqs in d.splits.items():
                for r in range(len(seqs)):
                    cols["split"].append(split)
                    cols["user_idx"].append(int(seqs.users[r]))
                    cols["history"].append(seqs.items[seqs.offsets[r] : seqs.offsets[r + 1]])
                    cols["target"].append(int(seqs.targets[r]))
            cols["history"] = [h.astype(np.int32).tolist() for h in cols["history"]]
            schema = pa.schema(
                [
                    ("split", pa.string()),
                    ("user_idx", pa.int32()),
                    ("history", pa.list_(pa.int32())),
                    ("target", pa.int32()),
                ]
            )
            for table, data in (
                ("sequences", pa.table(cols, schema=schema)),
                ("items", pa.table({"item_idx": pa.array(range(1, d.n_items + 1), pa.int32())})),
            ):
                folder = out / table / f"domain={d.name}"
                folder.mkdir(parents=True)
                pq.write_table(data, folder / "part-0.parquet")
    with staged_version(lake, "codes", version) as out:
        for d in domains:
            folder = out / "codes" / f"domain={d.name}"
            folder.mkdir(parents=True)
            table = pa.table(
                {
                    "item_idx": pa.array(range(1, d.n_items + 1), pa.int32()),
                    "code": pa.array(d.codes[1:].tolist(), pa.list_(pa.int16())),
                    "quantizer": [d.name] * d.n_items,
                }
            )
            pq.write_table(table, folder / "part-0.parquet")
        (out / "config.json").write_text(json.dumps({"code_dim": D, "bits": 4}))


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize(
    ("mode", "stop"),
    [("scratch", 2), ("transfer", 1), ("transfer", 3)],  # 1: inside the permutation phase
)
def test_resume_gives_the_uninterrupted_result(tmp_path: Path, mode: str, stop: int) -> None:
    torch.set_num_threads(1)
    data = topic_domain("T", 80, 120, 6, seed=5)
    backbone = None
    base = dict(mode=mode, epochs=3, batch_size=64, patience=5, progress=False, seed=7)
    base |= dict(permutation="learned", permutation_epochs=2)
    if mode == "transfer":
        pre = tiny_backbone()
        backbone = pre.model
    cfg = ModelConfig(**TINY)
    straight = finetune(data, TrainConfig(**base), cfg, backbone, tmp_path / "a" / "last.pt")
    ckpt = tmp_path / "b" / "last.pt"
    with pytest.raises(StopRequested):
        finetune(data, TrainConfig(**base, stop_after_epochs=stop), cfg, backbone, ckpt)
    assert ckpt.exists()
    resumed = finetune(data, TrainConfig(**base), cfg, backbone, ckpt, resume=True)
    _same(straight.model.state_dict(), resumed.model.state_dict())
    assert straight.metrics["test"] == resumed.metrics["test"]
    losses = [(h["phase"], h["epoch"], h["loss"]) for h in straight.metrics["history"]]
    assert losses == [(h["phase"], h["epoch"], h["loss"]) for h in resumed.metrics["history"]]


def test_checkpoint_refuses_another_config(tmp_path: Path) -> None:
    data = topic_domain("T", 40, 40, 4, seed=1)
    ckpt = tmp_path / "last.pt"
    cfg = dict(mode="scratch", epochs=2, batch_size=64, progress=False)
    with pytest.raises(StopRequested):
        finetune(data, TrainConfig(**cfg, stop_after_epochs=1), ModelConfig(**TINY), None, ckpt)
    with pytest.raises(ValueError, match="different config"):
        finetune(data, TrainConfig(**cfg, lr=0.5), ModelConfig(**TINY), None, ckpt, resume=True)


def test_chain_batches_train_the_same_targets_as_prefix_rows() -> None:
    data = topic_domain("T", 50, 30, 3, seed=2)
    from vqrec.core.sequences import training_chains

    chains = training_chains(data.splits)
    hist, lengths, targets = chains.chain_batch(np.arange(len(chains)), max_len=50)
    pairs = set()
    for b in range(len(chains)):
        for j in range(int(lengths[b])):
            pairs.add((int(chains.users[b]), tuple(hist[b, : j + 1].tolist()), int(targets[b, j])))
    train = data.splits["train"]
    want = {
        (int(train.users[r]), tuple(train.items[train.offsets[r] : train.offsets[r + 1]]), int(t))
        for r, t in enumerate(train.targets)
    }
    assert pairs == want


def test_cli_smoke_pretrain_transfer_evaluate_beats_popularity(lake: Path, capsys) -> None:
    """pretrain -> transfer (learned permutation) -> evaluate, through the `vqrec` CLI."""
    from vqrec.cli import main

    torch.set_num_threads(1)
    pre = [topic_domain("Alpha", 300, 500, 12, seed=1), topic_domain("Beta", 250, 400, 10, seed=2)]
    target = topic_domain("Gamma", 200, 400, 10, seed=3)
    write_domains(lake, pre + [target])
    common = ["--lake", str(lake), "--no-progress", "--batch-size", "256", "--seed", "3"]
    # The MLflow runs of the CLI are checked in tests/mlops/test_registry.py.
    common += ["--model-config", json.dumps(TINY), "--no-mlflow"]
    capsys.readouterr()
    assert main(["pretrain", *common, "--version", "bb", "--domains", "Alpha,Beta"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Test is summarised like valid: each metric's mean over the domains, then each domain's.
    for split in ("valid", "test"):
        figures = summary[split]
        for metric in ("ndcg@10", "recall@10", "ndcg@50", "recall@50"):
            per_domain = [figures[f"{d}/{metric}"] for d in ("Alpha", "Beta")]
            assert figures[metric] == pytest.approx(sum(per_domain) / 2), (split, metric)
    args = ["--version", "m1", "--backbone-version", "bb", "--domain", "Gamma"]
    args += ["--permutation", "learned", "--permutation-epochs", "2"]
    assert main(["finetune", *common, *args, "--epochs", "30"]) == 0
    capsys.readouterr()
    out = lake.parent / "evaluation.json"
    evaluate = ["evaluate", "--lake", str(lake), "--models-version", "m1", "--domain", "Gamma"]
    assert main([*evaluate, "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result  # --out: the same JSON, in a file
    metrics = result["metrics"]

    data = load_domain(lake, "Gamma")
    pop = popularity_metrics(data.splits["train"], data.splits["test"], data.n_items)
    assert metrics["ndcg@10"] > 2 * pop["ndcg@10"] + 0.05, (metrics, pop)
    assert metrics["recall@10"] > 2 * pop["recall@10"], (metrics, pop)

    # The committed version holds the backbone and the domain, each with its config.
    models = resolve_version(lake, "models", "m1")
    assert (models / "backbone" / "model.safetensors").exists()
    folder = models / "domains" / "Gamma"
    for name in ("lookup_table.safetensors", "model.safetensors", "config.json", "metrics.json"):
        assert (folder / name).exists(), name
    model, info = load_domain_model(folder)
    assert info["train"]["mode"] == "transfer" and info["backbone_version"] == "bb"
    assert info["data"]["codes"] == "v1" and info["model"]["code_dim"] == D
    saved = info["metrics"]
    assert saved["test"] == pytest.approx(metrics)  # evaluate reproduces the saved test

    # A scratch run with no --version makes a models version without a backbone: it must not
    # become CURRENT, or the next plain transfer finds no backbone to read.
    one = ["--domain", "Gamma", "--epochs", "1", "--permutation", "identity"]
    assert main(["finetune", *common, *one, "--mode", "scratch"]) == 0
    assert resolve_version(lake, "models").name == "m1"
    assert main(["finetune", *common, *one, "--version", "m2"]) == 0  # backbone: CURRENT
    assert (
        load_domain_model(resolve_version(lake, "models", "m2") / "domains" / "Gamma")[1][
            "backbone_version"
        ]
        == "m1"
    )
    assert [h["phase"] for h in saved["history"]][:2] == ["permutation", "permutation"]
    # Every run committed: no checkpoint, and no empty folder of one, is left behind.
    assert not (lake / "checkpoints").exists()
    # The lookup table alone is small and loads into a model with the same backbone.
    from safetensors.torch import load_file

    table = load_file(folder / "lookup_table.safetensors")
    assert set(table) == {"code_embedding.weight", "input_norm.weight", "input_norm.bias"}
    assert (
        model.lookup_table_state_dict()["code_embedding.weight"] == table["code_embedding.weight"]
    ).all()


def test_time_budget_covers_the_permutation_phase() -> None:
    """A budget crossed during the permutation phase ends it (what was learned is applied),
    and fine-tuning then stops after its first epoch: no phase runs past the budget."""
    torch.set_num_threads(1)
    pre = tiny_backbone()
    cfg = TrainConfig(mode="transfer", epochs=50, batch_size=64, permutation="learned",
                      permutation_epochs=50, progress=False, time_budget_min=1e-4)  # fmt: skip
    result = finetune(topic_domain("T", 80, 120, 6, seed=5), cfg, ModelConfig(**TINY), pre.model)
    phases = [(h["phase"], h["epoch"]) for h in result.metrics["history"]]
    assert phases == [("permutation", 1), ("train", 1)]
    assert result.metrics["stopped_by"].startswith("time budget")
    assert all(h["valid_seconds"] >= 0 for h in result.metrics["history"])


def test_matched_alignment_is_applied_before_fine_tuning() -> None:
    """permutation='matched' needs the items' backbone codes, costs no epoch, and starts
    fine-tuning from the table the matched assignment reorders."""
    torch.set_num_threads(1)
    pre = tiny_backbone()
    data = topic_domain("T", 80, 120, 6, seed=5)
    cfg = TrainConfig(mode="transfer", epochs=1, batch_size=64, permutation="matched",
                      progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="backbone's quantizer"):
        finetune(data, cfg, ModelConfig(**TINY), pre.model)
    # Planted: the domain's code i of block d is the backbone's code (i + 1) mod M.
    data.backbone_codes = (data.codes + 1) % M
    data.backbone_codes[0] = 0
    result = finetune(data, cfg, ModelConfig(**TINY), pre.model)
    assert [h["phase"] for h in result.metrics["history"]] == ["train"]


def test_sampled_softmax_fine_tuning_learns_and_is_the_full_softmax_at_k_n() -> None:
    """negatives=K trains on K sampled items a step; K >= the catalogue is the paper's full
    softmax exactly; a small K still learns the planted topics (beats popularity)."""
    torch.set_num_threads(1)
    data = topic_domain("T", 120, 200, 6, seed=3)
    base = dict(mode="scratch", epochs=2, batch_size=64, patience=5, progress=False, seed=11)
    full = finetune(data, TrainConfig(**base), ModelConfig(**TINY))
    every = finetune(data, TrainConfig(**base, negatives=data.n_items), ModelConfig(**TINY))
    _same(full.model.state_dict(), every.model.state_dict())
    sampled = finetune(data, TrainConfig(**base | {"epochs": 6}, negatives=16), ModelConfig(**TINY))
    pop = popularity_metrics(data.splits["train"], data.splits["test"], data.n_items)
    assert sampled.metrics["test"]["ndcg@10"] > 2 * pop["ndcg@10"]
    with pytest.raises(ValueError, match="negatives"):
        TrainConfig(negatives=-1)


def test_transfer_probe_picks_the_backbone_and_leaves_pre_training_as_it_was() -> None:
    """probe_domain: every probe_every-th epoch a short transfer to the probe domain is
    scored; early stopping keeps the epoch of the best probe, while the pre-training itself
    (losses, batches, dropout) is exactly the unprobed run's."""
    torch.set_num_threads(1)
    pre = merge_domains([topic_domain("P", 90, 120, 6, seed=6)])
    probe = topic_domain("T", 80, 120, 6, seed=5)
    probe.backbone_codes = probe.codes.copy()  # the probe coded by the pre-training quantizer
    base = dict(epochs=4, batch_size=64, patience=10, progress=False, seed=3)
    plain = pretrain(pre, TrainConfig(**base), ModelConfig(**TINY))
    probed_cfg = TrainConfig(**base, probe_domain="T", probe_every=2, probe_epochs=1)
    probed = pretrain(pre, probed_cfg, ModelConfig(**TINY), probe=probe)

    losses = [h["loss"] for h in plain.metrics["history"]]
    assert losses == [h["loss"] for h in probed.metrics["history"]]
    scores = {h["epoch"]: h["valid"].get("probe/ndcg@10") for h in probed.metrics["history"]}
    assert scores[1] is None and scores[3] is None  # probed every 2nd epoch only
    assert scores[2] is not None and scores[4] is not None
    best = max((2, 4), key=lambda e: scores[e])
    assert probed.metrics["best_epoch"] == best
    # The kept model is the pre-trained model of that epoch.
    again = pretrain(pre, TrainConfig(**base | {"epochs": best}), ModelConfig(**TINY))
    _same(again.model.state_dict(), probed.model.state_dict())


def test_transfer_probe_refuses_a_missing_or_pre_training_domain() -> None:
    pre = merge_domains([topic_domain("P", 90, 120, 6, seed=6)])
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False, probe_domain="T")
    with pytest.raises(ValueError, match="probe_domain 'T' needs that domain"):
        pretrain(pre, cfg, ModelConfig(**TINY))
    same = topic_domain("P", 90, 120, 6, seed=6)
    with pytest.raises(ValueError, match="is one of the pre-training domains"):
        pretrain(
            pre,
            TrainConfig(**{**cfg.__dict__, "probe_domain": "P"}),
            ModelConfig(**TINY),
            probe=same,
        )
    with pytest.raises(ValueError, match="probe_every"):
        TrainConfig(probe_every=0)


def test_fine_tuning_chooses_its_own_regularisation_on_the_backbone_s_shape() -> None:
    """transfer / full: the shape is the backbone's; dropout, attention dropout, temperature
    and ID rows are the fine-tune's model config (chosen on the domain's valid)."""
    from vqrec.core.trainer import build_domain_model

    torch.set_num_threads(1)
    pre = tiny_backbone()
    data = topic_domain("T", 80, 120, 6, seed=5)
    chosen = ModelConfig(**TINY | {"dropout": 0.2, "attn_dropout": 0.3, "temperature": 0.1,
                                   "hidden": 64, "inner": 64})  # fmt: skip
    cfg = TrainConfig(mode="transfer", permutation="identity", progress=False)
    model = build_domain_model(data, cfg, chosen, pre.model)
    assert (model.config.dropout, model.config.attn_dropout) == (0.2, 0.3)
    assert model.config.temperature == 0.1
    assert (model.config.hidden, model.config.inner) == (32, 32)  # the backbone's shape
    assert model.input_dropout.p == 0.2
