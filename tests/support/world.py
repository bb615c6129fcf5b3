"""A tiny but real lake for the MLflow tests: one domain, real encoder, real faiss, real torch.

Builds, in the documented layout (docs/ARCHITECTURE.md), what the clean / encode / codes /
train stages would write for a small synthetic shop: 400 items in 50 product series, users
who walk along a series. The item texts go through the real sentence encoder, the codes
through a real OPQ quantizer (vqrec.core.quantizer), and the model is a real VQRec trained for a
few epochs with the full-softmax loss, its valid/test NDCG measured by vqrec.core.metrics'
ranking. Nothing here is a stub; it is only smaller than the pipeline's stages.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from vqrec.core.encoder import default_model_path, encode_texts, encoder_key, load_encoder
from vqrec.core.losses import full_softmax_loss
from vqrec.core.metrics import metrics_from_ranks, ranks_from_scores
from vqrec.core.model import ModelConfig, VQRec, save_model
from vqrec.core.quantizer import assign_codes, code_stats, fit_quantizer, save_quantizer
from vqrec.lake.store import (
    SUCCESS,
    read_success,
    resolve_version,
    staged_part,
    staged_version,
)

DOMAIN = "toyshop"
PRODUCTS = ["kettle", "notebook", "headphones", "sneakers", "backpack", "lamp",
            "keyboard", "mug", "tent", "guitar strings"]  # fmt: skip
STYLES = ["steel", "travel", "wireless", "kids", "professional"]
# 50 series x 8 items = 400 items: faiss OPQ needs at least d (384) training vectors.
SERIES = [f"{style} {product}" for product in PRODUCTS for style in STYLES]
BRANDS = ["Acme", "Northwind", "Globex", "Initech", "Umbrella", "Hooli"]
PER_SERIES = 8
CODE_DIM, BITS = 8, 4
MAX_LEN = 10


def item_text(series: int, j: int) -> str:
    return f"{BRANDS[j % len(BRANDS)]} {SERIES[series]} model {j + 1}, size {'SMLX'[j % 4]}"


def _sequences(n_items: int, seed: int) -> list[list[int]]:
    """Users walking forward along one series (item_idx 1-based, series-major order)."""
    rng = np.random.default_rng(seed)
    users = []
    for series in range(len(SERIES)):
        for _ in range(6):
            start, length = int(rng.integers(0, PER_SERIES)), int(rng.integers(5, 9))
            users.append(
                [1 + series * PER_SERIES + (start + t) % PER_SERIES for t in range(length)]
            )
    assert max(max(u) for u in users) <= n_items
    return users


def build_data(lake: Path, version: str = "v1", seed: int = 0) -> dict:
    """clean + embeddings + codes versions of the toy domain; returns what a test needs."""
    texts = [item_text(s, j) for s in range(len(SERIES)) for j in range(PER_SERIES)]
    n = len(texts)
    item_ids = [f"TOY{i:04d}" for i in range(1, n + 1)]  # sorted order == item_idx order
    users = _sequences(n, seed)

    meta: dict = {}
    with staged_version(lake, "clean", version, metadata=meta) as out:
        _write(out / "items" / f"domain={DOMAIN}", {
            "item_idx": pa.array(range(1, n + 1), pa.int32()),
            "item_id": item_ids,
            "text": texts,
            "text_hash": [hashlib.sha1(t.encode()).hexdigest() for t in texts],
        })  # fmt: skip
        rows = [(u, i, pos) for u, seq in enumerate(users) for pos, i in enumerate(seq)]
        _write(out / "interactions" / f"domain={DOMAIN}", {
            "user_idx": pa.array([r[0] for r in rows], pa.int32()),
            "item_idx": pa.array([r[1] for r in rows], pa.int32()),
            "user_id": [f"U{r[0]:04d}" for r in rows],
            "item_id": [item_ids[r[1] - 1] for r in rows],
            "ts": pa.array([1_600_000_000 + 60 * r[2] for r in rows], pa.int64()),
            "pos": pa.array([r[2] for r in rows], pa.int32()),
        })  # fmt: skip
        # Leave-one-out splits as the clean stage writes them (docs/ARCHITECTURE.md).
        seq_rows = [("train", u, s[max(0, t - 50) : t], s[t])
                    for u, s in enumerate(users) for t in range(1, len(s) - 2)]  # fmt: skip
        seq_rows += [("valid", u, s[:-2][-50:], s[-2]) for u, s in enumerate(users)]
        seq_rows += [("test", u, s[:-1][-50:], s[-1]) for u, s in enumerate(users)]
        _write(out / "sequences" / f"domain={DOMAIN}", {
            "split": [r[0] for r in seq_rows],
            "user_idx": pa.array([r[1] for r in seq_rows], pa.int32()),
            "history": pa.array([r[2] for r in seq_rows], pa.list_(pa.int32())),
            "target": pa.array([r[3] for r in seq_rows], pa.int32()),
        })  # fmt: skip
        (out / "reports").mkdir()
        report = {"rows_in": len(rows), "kept": len(rows), "users": len(users), "items": n}
        (out / "reports" / f"{DOMAIN}.json").write_text(json.dumps(report))

    model_path = default_model_path()
    encoder = load_encoder(model_path)
    vectors = encode_texts(encoder, texts)
    key = encoder_key(model_path, vectors.shape[1])
    summary = {"encoder": key, "dimension": int(vectors.shape[1]), "config": {"model": None}}
    with staged_version(lake, "embeddings", version, metadata=summary):
        pass

    index = fit_quantizer(vectors, code_dim=CODE_DIM, bits=BITS, seed=seed, niter=5)
    codes = assign_codes(index, vectors).astype(np.int64)
    fitted = {"domains": [DOMAIN], "fit_domains": [DOMAIN], "fit_clean_version": version}
    stats = {
        "domains": {DOMAIN: code_stats(codes, 2**BITS) | {"quantizer": DOMAIN}},
        "quantizers": {DOMAIN: fitted, "pretrain": fitted},
    }
    with staged_version(lake, "codes", version, metadata={}) as out:
        save_quantizer(index, out / "quantizers" / f"{DOMAIN}.faiss")
        save_quantizer(index, out / "quantizers" / "pretrain.faiss")
        _write(out / "codes" / f"domain={DOMAIN}", {
            "item_idx": pa.array(range(1, n + 1), pa.int32()),
            "code": pa.array(codes.tolist(), pa.list_(pa.int16())),
            "quantizer": [DOMAIN] * n,
        })  # fmt: skip
        (out / "stats.json").write_text(json.dumps(stats))
        config = {"code_dim": CODE_DIM, "bits": BITS, "embeddings_version": version,
                  "quantizer_of_domain": {DOMAIN: DOMAIN}, "encoder": key}  # fmt: skip
        (out / "config.json").write_text(json.dumps(config))
    catalogue = np.zeros((n + 1, CODE_DIM), np.int64)
    catalogue[1:] = codes
    return {"item_ids": item_ids, "texts": texts, "users": users, "codes": catalogue,
            "version": version}  # fmt: skip


def _write(folder: Path, columns: dict) -> None:
    folder.mkdir(parents=True)
    pq.write_table(pa.table(columns), folder / "part-0.parquet")


def _batch(rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, ...]:
    hist = torch.zeros(len(rows), MAX_LEN, dtype=torch.long)
    for i, (h, _) in enumerate(rows):
        h = h[-MAX_LEN:]
        hist[i, : len(h)] = torch.as_tensor(h)
    lengths = torch.as_tensor([min(len(h), MAX_LEN) for h, _ in rows])
    return hist, lengths, torch.as_tensor([t for _, t in rows])


@torch.no_grad()
def _metrics(model: VQRec, rows: list[tuple[list[int], int]]) -> dict[str, float]:
    model.eval()
    hist, lengths, targets = _batch(rows)
    scores = model.score(model.encode(hist, lengths), model.all_item_embeddings())
    scores[:, 0] = -torch.inf
    return metrics_from_ranks(ranks_from_scores(scores, targets).numpy())


def train_model(
    lake: Path, data: dict, version: str, epochs: int, seed: int = 0
) -> dict[str, float]:
    """Train a tiny VQRec for ``epochs`` (0: untrained) and commit models/<version>/.

    Writes backbone/ and domains/<DOMAIN>/ (model.safetensors, config.json, metrics.json
    with the per-epoch history and the measured test figures); returns the test metrics.
    """
    torch.manual_seed(seed)
    cfg = ModelConfig(code_dim=CODE_DIM, code_cap=2**BITS, hidden=32, inner=64, layers=1,
                      heads=1, dropout=0.1, attn_dropout=0.1, max_len=MAX_LEN)  # fmt: skip
    model = VQRec(cfg)
    model.set_catalogue(codes=torch.as_tensor(data["codes"]))
    users = data["users"]
    train = [(u[:t], u[t]) for u in users for t in range(1, len(u) - 2)]
    valid = [(u[:-2], u[-2]) for u in users]
    test = [(u[:-1], u[-1]) for u in users]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    hist, lengths, targets = _batch(train)
    for epoch in range(1, epochs + 1):
        model.train()
        loss = full_softmax_loss(
            model.encode(hist, lengths), model.all_item_embeddings(), targets, cfg.temperature
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"phase": "train", "epoch": epoch, "loss": loss.item(),
                        "valid": _metrics(model, valid)})  # fmt: skip
    metrics = {"history": history, "valid": _metrics(model, valid), "test": _metrics(model, test)}
    info = {
        "train": {"epochs": epochs, "lr": 1e-2, "seed": seed, "api_token": "must-not-be-logged"},
        "model": cfg.to_dict(),
        "domain": DOMAIN,
        "backbone_version": version,  # fine-tuned on the backbone of its own version
        "data": {
            "clean": data["version"],
            "codes": data["version"],
            "embeddings": data["version"],
        },  # fmt: skip
    }
    # As the trainer commits them (vqrec.lake.models, vqrec.stages.train): the backbone with
    # one data source per domain, then the domain as its own part.
    backbone = info | {"data": {DOMAIN: info["data"]}}

    def write(folder: Path, config: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_model(model, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "metrics.json").write_text(json.dumps(metrics))

    with staged_version(lake, "models", version, metadata={}) as out:
        write(out / "backbone", backbone)
    with staged_part(lake, "models", version, f"domains/{DOMAIN}") as out:
        write(out, info)
    return metrics["test"]


# The models of the shared world: name -> (epochs, seed). "trained" is clearly better than
# both untrained ones (the tests check it on the measured figures, never assume it).
MODELS = {"untrained": (0, 0), "trained": (40, 0), "worse": (0, 1)}


def build_world(lake: Path) -> dict:
    """The toy domain's data (version ``v1``) and the three :data:`MODELS`, committed."""
    data = build_data(lake)
    tests = {name: train_model(lake, data, name, epochs, seed)
             for name, (epochs, seed) in MODELS.items()}  # fmt: skip
    return {"lake": lake, "data": data, "test": tests}


def copy_world(world: dict, dest: Path) -> dict:
    """A private copy of the shared world's lake (with no MLflow store) for a test to change."""
    shutil.copytree(world["lake"], dest, ignore=shutil.ignore_patterns("mlflow"))
    return world | {"lake": dest}


def name_data_like_models(lake: Path, source: str = "v1") -> None:
    """Commit the data versions again under each model's name, as a nightly names every
    stage of its run alike (clean/<v>, embeddings/<v>, codes/<v>, models/<v>)."""
    for version in MODELS:
        for stage in ("clean", "embeddings", "codes"):
            src = resolve_version(lake, stage, source)
            meta = {k: v for k, v in read_success(src).items() if k not in ("stage", "version")}
            skip = shutil.ignore_patterns(SUCCESS)
            with staged_version(lake, stage, version, metadata=meta) as out:
                shutil.copytree(src, out, dirs_exist_ok=True, ignore=skip)


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory) -> dict:
    """One lake for every test that needs trained models; never written: copy it first."""
    lake = tmp_path_factory.mktemp("world") / "lake"
    lake.mkdir()
    return build_world(lake)


@pytest.fixture
def lake_store(monkeypatch):
    """Use the lake's own SQLite store, never a tracking/registry URI left in the environment.

    Test modules import it and apply it with ``pytestmark = pytest.mark.usefixtures(...)``.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
