"""Training: multi-domain pre-training and per-domain fine-tuning of VQ-Rec.

Modes (``TrainConfig.mode``):

* ``pretrain``: several domains in one global id space, in-batch contrastive loss with one
  semi-synthetic hard negative per row (the positive's code, a fraction rho corrupted).
* ``transfer`` (the paper's inductive setting): load the pre-trained model, freeze the
  Transformer and positions, learn a permutation of each code block (Gumbel-Sinkhorn,
  hard forward, straight-through backward) for ``permutation_epochs``, apply it for good,
  then fine-tune the code table (+ input LayerNorm) with a full softmax over the domain.
* ``full``: the same start (pre-trained weights, permutation), nothing frozen.
* ``scratch``: random init, everything trained, full softmax (also the ID-only and
  text-adaptor baselines, with ``ModelConfig.item_encoder`` "id" / "text").

Every epoch ends with a checkpoint (one ``torch.save`` file of tensors + JSON state,
loaded with ``weights_only=True``); ``resume=True`` continues a killed run from its last
finished epoch and, on CPU with a seed, gives the same result as an uninterrupted run (the
RNG states of dropout, batching and negative sampling are checkpointed too). Early
stopping on valid NDCG@10 with ``patience``; test is reported on the best epoch.

Multi-GPU pre-training: run under ``torchrun``; the objective is wrapped in
DistributedDataParallel (NCCL on CUDA, gloo on CPU), each rank takes a slice of every
global batch (in-batch negatives are those of the rank's slice), rank 0 evaluates,
checkpoints and writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from vqrec.core.losses import (
    contrastive_loss,
    corrupt_codes,
    full_softmax_loss,
    sampled_softmax_loss,
)
from vqrec.core.metrics import EvalConfig, evaluate, format_metrics
from vqrec.core.model import ModelConfig, VQRec
from vqrec.core.permutation import (
    CodePermutation,
    apply_permutation,
    matched_permutation,
    permuted_code_table,
)
from vqrec.core.sequences import (
    DomainData,
    MultiDomain,
    Sequences,
    batch_rows,
    training_chains,
)

# The config lives in its own torch-free module (the CLIs' --help); re-exported here.
from vqrec.core.train_config import (  # noqa: F401
    FINETUNE_DEFAULTS,
    MODES,
    PERMUTATIONS,
    TrainConfig,
    finetune_config,
)

EARLY_STOP_METRIC = "ndcg@10"
# Pre-training's early-stopping metric when it has a probe domain (transfer_probe).
PROBE_METRIC = "probe/" + EARLY_STOP_METRIC


class StopRequested(RuntimeError):
    """Raised by ``stop_after_epochs`` after a checkpoint: behaves like a killed run."""


@dataclass
class TrainResult:
    model: VQRec
    metrics: dict[str, Any]  # per-epoch history, best epoch, best valid, test
    config: dict[str, Any] = field(default_factory=dict)


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (``auto``), else CPU; an explicit name is taken as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------- distributed


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world_rank() -> int:
    """This process's rank under torchrun (0 when not distributed): only rank 0 writes."""
    return _world()[0]


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return True


# ---------------------------------------------------------------------- objectives


class PretrainObjective(nn.Module):
    """In-batch contrastive loss with one semi-synthetic hard negative per row.

    A module (not a function) so that DDP and torch.compile can wrap one forward call.
    """

    def __init__(self, model: VQRec, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(
        self,
        hist: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor,
        neg_codes: torch.Tensor,
    ) -> torch.Tensor:
        b, length = hist.shape
        every = targets.dim() == 2  # chains: a target at every position
        flat = targets[targets > 0] if every else targets
        # Histories and targets share many items: embed every distinct id once.
        emb = self.model.item_embeddings(torch.cat([hist.reshape(-1), flat]))
        hist_emb = emb[: b * length].view(b, length, -1)
        seq = self.model.encode(hist, lengths, all_positions=every, history_emb=hist_emb)
        if every:
            seq = seq[targets > 0]
        hard = self.model.code_embeddings(neg_codes)
        return contrastive_loss(seq, emb[b * length :], flat, self.temperature, hard)


class FinetuneObjective(nn.Module):
    """Cross-entropy over every item of the domain (padding excluded), or, with
    ``negatives`` > 0, over that many items sampled anew each step (``sampled_softmax_loss``:
    an epoch linear in the catalogue instead of rows x catalogue)."""

    def __init__(self, model: VQRec, temperature: float, negatives: int = 0):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.negatives = negatives

    def forward(self, hist: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor):
        if targets.dim() == 2:  # chains: a target at every position
            seq = self.model.encode(hist, lengths, all_positions=True)[targets > 0]
            targets = targets[targets > 0]
        else:
            seq = self.model.encode(hist, lengths)
        n_items = self.model.config.n_items - 1  # without the padding row
        if not 0 < self.negatives < n_items:
            return full_softmax_loss(
                seq, self.model.all_item_embeddings(), targets, self.temperature
            )
        neg_ids = torch.randperm(n_items, device=seq.device)[: self.negatives] + 1
        emb = self.model.item_embeddings(torch.cat([targets, neg_ids]))
        pos, neg = emb[: len(targets)], emb[len(targets) :]
        return sampled_softmax_loss(seq, pos, targets, neg, neg_ids, n_items, self.temperature)


# ---------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, tensors: dict[str, Any], state: dict[str, Any]) -> None:
    """One file, replaced atomically: tensors + the JSON state (so they never disagree).

    The same temp-file + os.replace as vqrec.lake.store.atomic_path, written out here: the
    core does not import the lake."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"tensors": tensors, "state_json": json.dumps(state)}, tmp)
    os.replace(tmp, path)
    (path.parent / "state.json").write_text(json.dumps(state, indent=2))


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors + state of a checkpoint; anything else is refused, never unpickled.

    ``weights_only=True`` lets torch's unpickler build tensors and plain containers only,
    so a crafted file cannot run code. Its own error suggests retrying with
    ``weights_only=False``, which would: say what to do instead.
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob["tensors"], json.loads(blob["state_json"])
    except (pickle.UnpicklingError, RuntimeError, KeyError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} is not a vqrec training checkpoint of plain tensors (refused, nothing "
            f"was unpickled: {first[:200]}); delete it, or run without --resume to start over"
        ) from err


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------- the epoch loop


class Loop:
    """Epochs, early stopping, checkpoints and resume for one training phase sequence.

    A run is a list of phases ("permutation", "train"); the checkpoint records the phase
    and epoch reached, the model, optimizer and RNG states, and the best model so far.
    ``metric`` is the valid key early stopping follows; an epoch whose valid lacks it (a
    pre-training epoch between transfer probes) neither improves nor spends patience.
    ``name`` prefixes its epoch lines (a run inside another: the transfer probe).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: VQRec,
        device: torch.device,
        checkpoint: Path | None,
        resume: bool,
        metric: str = EARLY_STOP_METRIC,
        name: str = "",
    ):
        self.cfg = cfg
        self.metric = metric
        self.name = name  # prefixes the epoch lines of a nested run (the transfer probe)
        self.model = model
        self.device = device
        self.checkpoint = checkpoint
        self.rank, self.world = _world()
        self.sampler_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"score": -1.0, "epoch": 0, "valid": {}}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.position = {"phase": "", "epoch": 0, "done": False}
        self.epochs_this_run = 0
        self.started = time.perf_counter()
        self.stopped_by = ""
        self.restored: dict[str, Any] | None = None
        if resume and checkpoint is not None and checkpoint.exists():
            self.restored, state = load_checkpoint(checkpoint)
            if state.get("config") != _resumable(cfg):
                raise ValueError(
                    f"{checkpoint}: the checkpoint was written with a different config; "
                    "run without --resume to start over"
                )
            self.history = state["history"]
            self.best = state["best"]
            self.bad_epochs = state["bad_epochs"]
            self.position = state["position"]
            self.model.load_state_dict(self.restored["model"])
            self.best_state = self.restored.get("best_model")
            torch.set_rng_state(self.restored["rng_torch"])
            self.sampler_gen.set_state(self.restored["rng_sampler"])
            self.noise_gen.set_state(self.restored["rng_noise"])
            if device.type == "cuda" and "rng_cuda" in self.restored:
                torch.cuda.set_rng_state(self.restored["rng_cuda"])

    def finished(self, phase: str, epochs: int) -> int:
        """Epochs of ``phase`` already done in a resumed run (0 when fresh)."""
        if self.position["phase"] == phase:
            return self.position["epoch"]
        order = ["permutation", "train"]
        if self.position["phase"] in order and order.index(self.position["phase"]) > order.index(
            phase
        ):
            return epochs  # a later phase started: this one is complete
        return 0

    def save(self, phase: str, epoch: int, extra: dict[str, torch.Tensor], done: bool) -> None:
        self.position = {"phase": phase, "epoch": epoch, "done": done}
        if self.rank != 0 or self.checkpoint is None:
            return
        tensors: dict[str, Any] = {
            "model": _cpu_state(self.model),
            "rng_torch": torch.get_rng_state(),
            "rng_sampler": self.sampler_gen.get_state(),
            "rng_noise": self.noise_gen.get_state().cpu(),
            **extra,
        }
        if self.device.type == "cuda":
            tensors["rng_cuda"] = torch.cuda.get_rng_state()
        if self.best_state is not None:
            tensors["best_model"] = self.best_state
        state = {
            "config": _resumable(self.cfg),
            "history": self.history,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "position": self.position,
        }
        save_checkpoint(self.checkpoint, tensors, state)

    def tick(self) -> None:
        """Count an epoch of this run; stop like a kill when asked (tests of resume)."""
        self.epochs_this_run += 1
        if self.cfg.stop_after_epochs and self.epochs_this_run >= self.cfg.stop_after_epochs:
            raise StopRequested(f"stopped after {self.epochs_this_run} epochs (as requested)")

    def run_epoch(
        self,
        seqs: Sequences,
        step,
        optimizer: torch.optim.Optimizer,
        desc: str,
        params: list[torch.Tensor],
    ) -> dict[str, float]:
        """One pass over ``seqs``; ``step(hist, lengths, targets) -> loss`` on this rank's rows."""
        cfg = self.cfg
        chains = cfg.targets == "all"
        max_len = min(cfg.max_len, self.model.config.max_len)
        per_row = np.minimum(seqs.lengths, max_len + 1) - 1 if chains else None
        batches = batch_rows(
            seqs.lengths, cfg.batch_size, self.sampler_gen, cfg.bucket, targets_per_row=per_row
        )
        make_batch = seqs.chain_batch if chains else seqs.batch
        total, rows_done, t0 = 0.0, 0, time.perf_counter()
        bar = tqdm(batches, desc=desc, leave=False, disable=not cfg.progress or self.rank != 0)
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.amp else nullcontext()
        for rows in bar:
            rows = rows[self.rank :: self.world]  # this rank's slice of the global batch
            hist, lengths, targets = make_batch(rows, max_len)
            n_targets = int((targets > 0).sum()) if chains else len(rows)
            hist, lengths, targets = (t.to(self.device) for t in (hist, lengths, targets))
            with amp:
                loss = step(hist, lengths, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
            total += loss_value * n_targets
            rows_done += n_targets
            bar.set_postfix(loss=f"{loss_value:.4f}")
        seconds = time.perf_counter() - t0
        return {
            "loss": total / max(rows_done, 1),
            "seconds": seconds,
            "seq_per_s": rows_done * self.world / max(seconds, 1e-9),
        }

    def record(self, entry: dict[str, Any], log: bool = True) -> bool:
        """Append an epoch's entry; update the best model; True when patience ran out."""
        self.history.append(entry)
        score = entry.get("valid", {}).get(self.metric)
        improved = score is not None and score > self.best["score"]
        if improved:
            self.best = {"score": score, "epoch": entry["epoch"], "valid": entry["valid"]}
            self.best_state = _cpu_state(self.model)
            self.bad_epochs = 0
        elif score is not None:
            self.bad_epochs += 1
        if log and self.rank == 0:
            valid = format_metrics(entry["valid"]) if entry.get("valid") else ""
            if score is not None and self.metric != EARLY_STOP_METRIC:
                valid += f"  {self.metric} {score:.4f}"
            if len(self.history) == 1 and not self.name:
                print(
                    f"(one line per epoch; * = best valid {self.metric} so far, the model "
                    f"kept; stops after {self.cfg.patience} epochs without one)",
                    file=sys.stderr,
                )
            print(
                f"[{self.name + ' ' if self.name else ''}{entry['phase']} {entry['epoch']}] "
                f"loss {entry['loss']:.4f} "
                f"{entry['seq_per_s']:.0f} seq/s  valid {valid}{'  *' if improved else ''}",
                file=sys.stderr,
                flush=True,
            )
        if self.bad_epochs >= self.cfg.patience:
            self.stopped_by = f"patience ({self.cfg.patience} epochs without a better valid)"
        if not self.stopped_by and self.out_of_time():
            self.stopped_by = f"time budget ({self.cfg.time_budget_min} min)"
        return bool(self.stopped_by)

    def out_of_time(self) -> bool:
        """True once this run has used its ``time_budget_min`` (0: no budget)."""
        budget = self.cfg.time_budget_min * 60
        return bool(budget) and time.perf_counter() - self.started > budget

    def fit(
        self,
        rows: Sequences,
        step: Callable[..., torch.Tensor],
        optimizer: torch.optim.Optimizer,
        params: list[torch.Tensor],
        validate: Callable[[], tuple[dict[str, float], float]],
        desc: str,
    ) -> None:
        """The training phase, for pretrain() and finetune() alike: epochs until ``cfg.epochs``,
        patience or the time budget, each one validated, recorded and checkpointed (a resumed
        run continues after its last finished epoch); ends with the best model loaded.

        ``validate() -> (metrics, seconds)``: the caller decides who evaluates (rank 0 only in
        distributed pre-training) and how; ``desc`` prefixes the progress bar ("pretrain 3")."""
        start = self.finished("train", self.cfg.epochs)
        stop = bool(self.position.get("done")) and self.position["phase"] == "train"
        for epoch in range(start + 1, self.cfg.epochs + 1):
            if stop:
                break
            self.model.train()
            entry = self.run_epoch(rows, step, optimizer, f"{desc} {epoch}", params)
            metrics, entry["valid_seconds"] = validate()
            stop = self.record({"phase": "train", "epoch": epoch, "valid": metrics, **entry})
            self.save("train", epoch, {"optimizer": optimizer.state_dict()}, done=stop)
            self.tick()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


def _result(loop: Loop, model: VQRec, cfg: TrainConfig, test: dict[str, Any]) -> TrainResult:
    """The trained model with its per-epoch history, best valid and test metrics, config."""
    metrics = {
        "history": loop.history,
        "best_epoch": loop.best["epoch"],
        "stopped_by": loop.stopped_by or "epochs",
        "valid": loop.best["valid"],
        "test": test,
    }
    return TrainResult(model, metrics, {"train": asdict(cfg), "model": model.config.to_dict()})


def _resumable(cfg: TrainConfig) -> dict[str, Any]:
    """The config fields a resumed run must share with the checkpoint (not device/display)."""
    skip = {"stop_after_epochs", "progress", "device", "time_budget_min"}
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def _optimizer(params: list[torch.Tensor], lr: float, weight_decay: float):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _eval_valid(
    model: VQRec, seqs: Sequences, cfg: TrainConfig, device: torch.device, **kw
) -> dict[str, float]:
    config = EvalConfig(batch_size=cfg.eval_batch_size, max_len=cfg.max_len)
    return evaluate(model, seqs, config=config, device=device, **kw)


def _timed(fn, *args, **kw) -> tuple[Any, float]:
    """(fn's result, its wall seconds): validation time is part of an epoch's cost."""
    t0 = time.perf_counter()
    return fn(*args, **kw), round(time.perf_counter() - t0, 3)


def _subsample(seqs: Sequences, n: int, seed: int) -> Sequences:
    if n <= 0 or len(seqs) <= n:
        return seqs
    rows = np.sort(np.random.default_rng(seed).choice(len(seqs), n, replace=False))
    lengths = seqs.lengths[rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    gather = np.repeat(seqs.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
    return Sequences(seqs.items[gather], offsets, seqs.targets[rows], seqs.users[rows])


# ---------------------------------------------------------------------- pre-training


def _pretrain_valid(
    model: VQRec,
    data: MultiDomain,
    valid: dict[str, Sequences],
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Valid metrics of every domain (``<domain>/<metric>``) and their mean (the bare names,
    early stopping's NDCG@10 among them)."""
    per_domain = {
        d: _eval_valid(
            model,
            valid[d],
            cfg,
            device,
            item_offset=data.offsets[d],
            n_items=data.domains[d].n_items,
        )
        for d in data.names
    }
    return with_domain_mean(per_domain)


def with_domain_mean(per_domain: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{domain: {metric: v}}`` -> each metric's unweighted mean over the domains (bare
    names) and every domain's own (``<domain>/<metric>``): the shape of pre-training's valid
    and test figures alike."""
    keys = next(iter(per_domain.values()), {})
    mean = {k: float(np.mean([m[k] for m in per_domain.values()])) for k in keys}
    return mean | {f"{d}/{k}": v for d, m in per_domain.items() for k, v in m.items()}


def pretrain(
    data: MultiDomain,
    cfg: TrainConfig,
    model_cfg: ModelConfig | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    probe: DomainData | None = None,
) -> TrainResult:
    """Pre-train a VQ-Rec model on the merged domains; early-stop on mean valid NDCG@10, or,
    with ``probe`` (the domain ``cfg.probe_domain`` names, its ``backbone_codes`` set), on
    a short transfer to it every ``cfg.probe_every`` epochs (:func:`transfer_probe`)."""
    if bool(cfg.probe_domain) != (probe is not None) or (
        probe is not None and probe.name != cfg.probe_domain
    ):
        raise ValueError(
            f"probe_domain {cfg.probe_domain!r} needs that domain's data as probe "
            f"(got {probe.name if probe is not None else None!r})"
        )
    if probe is not None and probe.name in data.names:
        raise ValueError(f"the probe domain {probe.name!r} is one of the pre-training domains")
    device = pick_device(cfg.device)
    init_distributed(device)
    rank, world = _world()
    _seed_everything(cfg.seed)
    model_cfg = dataclasses.replace(model_cfg or ModelConfig(), item_encoder="vq")
    model_cfg.code_dim = data.codes.shape[1]
    if data.codes.max() >= model_cfg.code_cap:
        raise ValueError(f"codes reach {data.codes.max()}, code_cap is {model_cfg.code_cap}")
    model = VQRec(model_cfg)
    model.set_catalogue(codes=torch.from_numpy(data.codes))
    model.to(device)
    codes = torch.from_numpy(data.codes).to(device)
    loop = Loop(
        cfg, model, device, checkpoint, resume, PROBE_METRIC if probe else EARLY_STOP_METRIC
    )
    objective: nn.Module = PretrainObjective(model, model_cfg.temperature)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective)
    if cfg.compile:
        objective = torch.compile(objective)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, cfg.lr, cfg.weight_decay)
    if loop.restored is not None and "optimizer" in loop.restored:
        optimizer.load_state_dict(loop.restored["optimizer"])
    valid = {d: _subsample(s, cfg.valid_rows, cfg.seed) for d, s in data.valid.items()}

    def step(hist, lengths, targets):
        flat = targets[targets > 0] if targets.dim() == 2 else targets
        neg = corrupt_codes(codes[flat], cfg.rho, model_cfg.code_cap, loop.noise_gen)
        return objective(hist, lengths, targets, neg)

    def validate() -> tuple[dict[str, float], float]:
        metrics, seconds = ({}, 0.0)
        if rank == 0:
            metrics, seconds = _timed(_pretrain_valid, model, data, valid, cfg, device)
            epoch = len(loop.history) + 1
            if probe is not None and epoch % cfg.probe_every == 0:
                found, probe_seconds = _timed(transfer_probe, model, probe, cfg)
                metrics |= {f"probe/{k}": v for k, v in found.items()}
                seconds += probe_seconds
        if world > 1:  # rank 0 evaluates; everyone follows its early-stopping decision
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics, seconds

    rows = data.chains if cfg.targets == "all" else data.train
    loop.fit(rows, step, optimizer, params, validate, "pretrain")
    test: dict[str, float] = {}
    if rank == 0:  # reported like valid: the mean over domains, then each domain's
        per_domain = {
            d: _eval_valid(
                model,
                data.domains[d].splits["test"],
                cfg,
                device,
                item_offset=data.offsets[d],
                n_items=data.domains[d].n_items,
            )
            for d in data.names
        }
        test = with_domain_mean(per_domain)
    return _result(loop, model, cfg, test)


def transfer_probe(model: VQRec, probe: DomainData, cfg: TrainConfig) -> dict[str, float]:
    """The best valid metrics of a short transfer of ``model`` (as it stands) to ``probe``.

    Fine-tunes a new model built from ``model``'s weights (``model`` is not touched) for
    ``cfg.probe_epochs`` epochs with the transfer's fine-tune defaults (matched alignment,
    chains, its lr), on ``cfg.valid_rows`` valid rows of the probe domain, with
    pre-training's seed, so every probe of a run sees the same batches. The global RNG states
    are restored after it: a probed run pre-trains exactly as an unprobed one, only its
    stopping rule differs.
    Not in the paper (which pre-trains for a fixed budget); see TrainConfig.probe_domain.
    """
    probe_cfg = finetune_config(
        epochs=cfg.probe_epochs,
        patience=cfg.probe_epochs,
        valid_rows=cfg.valid_rows,
        seed=cfg.seed,
        device=cfg.device,
        max_len=cfg.max_len,
        eval_batch_size=cfg.eval_batch_size,
        progress=False,
    )
    states = (torch.get_rng_state(), np.random.get_state())
    cuda_state = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    try:
        result = finetune(probe, probe_cfg, backbone=model, test=False, name=f"probe {probe.name}")
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state)
    return result.metrics["valid"]


# ---------------------------------------------------------------------- fine-tuning


def training_rows(data: DomainData, cfg: TrainConfig) -> Sequences:
    """The rows one epoch iterates: prefix rows, or one chain per user (targets="all")."""
    return training_chains(data.splits) if cfg.targets == "all" else data.splits["train"]


def _random_permutation(code_dim: int, code_cap: int, seed: int) -> torch.LongTensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(code_cap, generator=gen) for _ in range(code_dim)])


def _matched_permutation(model: VQRec, data: DomainData) -> torch.LongTensor:
    """The data-driven alignment (vqrec.core.permutation.matched_permutation) of ``data``'s codes
    with the model's pre-trained table, items weighted by 1 + their training frequency."""
    if data.backbone_codes is None:
        raise ValueError(
            f"domain {data.name}: permutation 'matched' needs the items' codes under the "
            "backbone's quantizer (finetune_to_lake reads them; give backbone_codes)"
        )
    with torch.no_grad():
        ids = torch.arange(1, data.n_items + 1)
        targets = model.code_embeddings(torch.from_numpy(data.backbone_codes[1:]).to(model.device))
        train = data.splits["train"]
        counts = np.bincount(np.concatenate([train.items, train.targets]), minlength=len(ids) + 1)
        weights = torch.from_numpy(1.0 + counts[1:]).float()
        return matched_permutation(
            model.code_blocks().cpu(), torch.from_numpy(data.codes[1:]), targets.cpu(), weights
        )


# ModelConfig fields a transfer / full fine-tune takes from its own config, not the backbone's
# (none of them changes a tensor's shape).
FINETUNE_MODEL_FIELDS = ("dropout", "attn_dropout", "temperature", "transductive")


def build_domain_model(
    data: DomainData, cfg: TrainConfig, model_cfg: ModelConfig, backbone: VQRec | None
) -> VQRec:
    """The model to fine-tune: the pre-trained one on the domain's catalogue, or a fresh one."""
    if cfg.mode in ("transfer", "full"):
        if backbone is None:
            raise ValueError(f"mode {cfg.mode!r} needs a pre-trained backbone")
        # The backbone's shape; what fine-tuning decides (regularisation, the softmax's
        # temperature, ID rows or not) comes from ``model_cfg``: chosen on the domain's valid.
        chosen = {name: getattr(model_cfg, name) for name in FINETUNE_MODEL_FIELDS}
        model_cfg = dataclasses.replace(backbone.config, **chosen)
    if cfg.mode == "scratch" and model_cfg.item_encoder == "vq" and data.codes is not None:
        model_cfg = dataclasses.replace(model_cfg, code_dim=int(data.codes.shape[1]))
    model = VQRec(model_cfg)
    model.set_catalogue(**model.items.catalogue(model_cfg, data))
    if backbone is not None and cfg.mode in ("transfer", "full"):
        # Backbone and the pre-trained code table (the starting point the permutation aligns
        # the domain's codes to); the catalogue buffer stays the domain's.
        model.load_backbone_state_dict(backbone.backbone_state_dict())
        model.load_lookup_table_state_dict(
            backbone.lookup_table_state_dict(), without_id_rows=model_cfg.transductive
        )
    return model


def finetune(
    data: DomainData,
    cfg: TrainConfig,
    model_cfg: ModelConfig | None = None,
    backbone: VQRec | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    test: bool = True,
    name: str = "",
) -> TrainResult:
    """Fine-tune (transfer / full) or train from scratch on one domain; test on the best epoch
    (``test=False``: no test pass, an empty test dict; ``name`` prefixes its epoch lines: both
    for the transfer probe)."""
    if cfg.mode == "pretrain":
        raise ValueError("finetune() runs transfer/full/scratch; use pretrain() for pretrain")
    device = pick_device(cfg.device)
    _seed_everything(cfg.seed)
    model = build_domain_model(data, cfg, model_cfg or ModelConfig(), backbone).to(device)
    loop = Loop(cfg, model, device, checkpoint, resume, name=name)
    train = training_rows(data, cfg)
    valid = _subsample(data.splits["valid"], cfg.valid_rows, cfg.seed)
    objective: nn.Module = FinetuneObjective(model, model.config.temperature, cfg.negatives)
    if cfg.compile:
        objective = torch.compile(objective)
    pre_trained = cfg.mode in ("transfer", "full") and model.config.item_encoder == "vq"

    # Phase 1: align the domain's codes with the pre-trained table (permutation per block).
    if pre_trained and cfg.permutation == "learned":
        _learn_permutation(loop, data, cfg, model, objective, device)
    elif pre_trained and cfg.permutation == "random" and loop.finished("train", 1) == 0:
        c = model.config
        apply_permutation(model, _random_permutation(c.code_dim, c.code_cap, cfg.seed).to(device))
    elif pre_trained and cfg.permutation == "matched" and loop.finished("train", 1) == 0:
        apply_permutation(model, _matched_permutation(model, data).to(device))

    # Phase 2: fine-tune the lookup table (transfer) or everything (full, scratch).
    if cfg.mode == "transfer":
        model.freeze_backbone()
    else:
        model.unfreeze_all()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, cfg.lr, cfg.weight_decay)
    if loop.restored is not None and loop.position["phase"] == "train" and loop.position["epoch"]:
        optimizer.load_state_dict(loop.restored["optimizer"])

    def validate() -> tuple[dict[str, float], float]:
        return _timed(_eval_valid, model, valid, cfg, device)

    loop.fit(train, objective, optimizer, params, validate, cfg.mode)
    model.unfreeze_all()
    tested = _eval_valid(model, data.splits["test"], cfg, device) if test else {}
    return _result(loop, model, cfg, tested)


def _learn_permutation(
    loop: Loop,
    data: DomainData,
    cfg: TrainConfig,
    model: VQRec,
    objective: nn.Module,
    device: torch.device,
) -> None:
    """Learn one permutation per code block with everything else frozen, then apply it."""
    c = model.config
    perm = CodePermutation(c.code_dim, c.code_cap, sinkhorn_iters=cfg.sinkhorn_iters).to(device)
    optimizer = _optimizer(list(perm.parameters()), cfg.permutation_lr, 0.0)
    done = loop.finished("permutation", cfg.permutation_epochs)
    if loop.restored is not None:
        if "permutation" in loop.restored:
            perm.load_state_dict(loop.restored["permutation"])
        if loop.position["phase"] == "permutation":
            optimizer.load_state_dict(loop.restored["optimizer"])
    if done >= cfg.permutation_epochs and loop.position["phase"] != "permutation":
        return  # resumed after the permutation was applied: the restored model holds it
    for p in model.parameters():
        p.requires_grad_(False)
    valid = _subsample(data.splits["valid"], cfg.valid_rows, cfg.seed)

    def step(hist, lengths, targets):
        with model.using_code_table(permuted_code_table(model, perm)):
            return objective(hist, lengths, targets)

    for epoch in range(done + 1, cfg.permutation_epochs + 1):
        model.train()
        perm.train()
        entry = loop.run_epoch(
            training_rows(data, cfg),
            step,
            optimizer,
            f"permutation {epoch}",
            list(perm.parameters()),
        )
        perm.eval()  # no Gumbel noise: validate the permutation as it would be applied
        with torch.no_grad(), model.using_code_table(permuted_code_table(model, perm)):
            metrics, entry["valid_seconds"] = _timed(_eval_valid, model, valid, cfg, device)
        loop.history.append({"phase": "permutation", "epoch": epoch, "valid": metrics, **entry})
        if loop.rank == 0:
            print(
                f"[permutation {epoch}] loss {entry['loss']:.4f} valid {format_metrics(metrics)}",
                file=sys.stderr,
                flush=True,
            )
        state = {"permutation": _cpu_state(perm), "optimizer": optimizer.state_dict()}
        loop.save("permutation", epoch, state, done=False)
        loop.tick()
        if loop.out_of_time():  # the budget covers this phase too: apply what was learned
            break
    with torch.no_grad():
        apply_permutation(model, perm.hard().to(device))
    model.unfreeze_all()
    # The applied permutation is part of the model from now on: checkpoint it so that a
    # resume in the next phase starts from the permuted table.
    loop.save("train", 0, {"permutation": _cpu_state(perm), "optimizer": {}}, done=False)
