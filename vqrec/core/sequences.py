"""Training data: a domain's sequences, item codes and text embeddings as tensors.

A split is held *ragged* (all histories concatenated + offsets), never padded to 50: the
mean training history is 4 items on Scientific and 9 on Games/Beauty, so a batch is padded
only to its own longest history (right padding + lengths). Length-bucketed batches
(shuffle, sort chunks by length, shuffle the batch order) shrink that padding further.

Multi-domain pre-training uses one global item id space: domain k's item ``i`` becomes
``offset_k + i`` (row 0 stays the padding item), so in-batch negatives mix domains.

Readers: :mod:`vqrec.lake.tables` (the lake's stage outputs) and
:mod:`vqrec.lake.reference` (the published reference splits, for benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """A stage output that training cannot use (names the file and the problem)."""


@dataclass
class Sequences:
    """One split of one (or several merged) domains, ragged.

    Row r's history is ``items[offsets[r]:offsets[r+1]]`` (oldest first), its target
    ``targets[r]``; ``users[r]`` is the user_idx (per domain) and ``domain[r]`` the index of
    the domain it came from (0 for a single domain).
    """

    items: np.ndarray  # int64 (total,)
    offsets: np.ndarray  # int64 (n+1,)
    targets: np.ndarray  # int64 (n,)
    users: np.ndarray  # int64 (n,)
    domain: np.ndarray = field(default=None)  # int16 (n,)

    def __post_init__(self) -> None:
        if self.domain is None:
            self.domain = np.zeros(len(self.targets), dtype=np.int16)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(
        self, rows: np.ndarray, max_len: int = 50
    ) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
        """(history (B, L), lengths (B,), targets (B,)) for ``rows``, L = longest in batch.

        Histories keep their last ``max_len`` items and are right-padded with 0.
        """
        rows = np.asarray(rows, dtype=np.int64)
        end = self.offsets[rows + 1]
        lengths = np.minimum(end - self.offsets[rows], max_len)
        width = max(int(lengths.max()) if len(rows) else 1, 1)
        pos = np.arange(width)
        idx = (end - lengths)[:, None] + pos[None, :]
        valid = pos[None, :] < lengths[:, None]
        hist = np.where(valid, self.items[np.minimum(idx, max(len(self.items) - 1, 0))], 0)
        return (
            torch.from_numpy(hist.astype(np.int64)),
            torch.from_numpy(lengths.astype(np.int64)),
            torch.from_numpy(self.targets[rows].astype(np.int64)),
        )

    def chain_batch(
        self, rows: np.ndarray, max_len: int = 50
    ) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
        """All-position training batch of chains (see :func:`training_chains`).

        A chain ``c`` (its last ``max_len + 1`` items) gives the input ``c[:-1]`` and the
        targets ``c[1:]``: position j predicts item j+1 from items 0..j, so one causal pass
        trains every prefix of the chain at once. Returns (history (B, L), lengths (B,),
        targets (B, L) with 0 beyond each row's length).
        """
        rows = np.asarray(rows, dtype=np.int64)
        end = self.offsets[rows + 1]
        lengths = np.minimum(end - self.offsets[rows], max_len + 1)
        width = max(int(lengths.max()) - 1 if len(rows) else 1, 1)
        pos = np.arange(width + 1)
        idx = (end - lengths)[:, None] + pos[None, :]
        valid = pos[None, :] < lengths[:, None]
        chain = np.where(valid, self.items[np.minimum(idx, max(len(self.items) - 1, 0))], 0)
        chain = torch.from_numpy(chain.astype(np.int64))
        hist = chain[:, :-1] * (chain[:, 1:] > 0)  # the last item is only a target
        return hist, torch.from_numpy((lengths - 1).astype(np.int64)), chain[:, 1:]

    def shifted(self, offset: int, domain: int) -> Sequences:
        """The same rows with item ids moved to the global id space (padding never occurs)."""
        return Sequences(
            self.items + offset,
            self.offsets.copy(),
            self.targets + offset,
            self.users.copy(),
            np.full(len(self.targets), domain, dtype=np.int16),
        )

    @staticmethod
    def concat(parts: list[Sequences]) -> Sequences:
        items = np.concatenate([p.items for p in parts])
        sizes = np.cumsum([0] + [len(p.items) for p in parts[:-1]])
        offsets = np.concatenate(
            [parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, sizes, strict=True)]
        )
        return Sequences(
            items,
            offsets,
            np.concatenate([p.targets for p in parts]),
            np.concatenate([p.users for p in parts]),
            np.concatenate([p.domain for p in parts]),
        )

    @staticmethod
    def from_lists(
        histories: list[list[int]], targets: list[int], users: list[int] | None = None
    ) -> Sequences:
        """Build from Python lists (tests, reference files)."""
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        if len(lengths) and lengths.min() < 1:
            raise DataError("every sequence row needs a non-empty history")
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.fromiter((i for h in histories for i in h), dtype=np.int64, count=offsets[-1])
        users_arr = np.asarray(users if users is not None else range(len(targets)), np.int64)
        return Sequences(items, offsets, np.asarray(targets, np.int64), users_arr)


@dataclass
class DomainData:
    """Everything training needs about one domain (item ids 1..n_items, 0 = padding)."""

    name: str
    n_items: int
    splits: dict[str, Sequences]
    codes: np.ndarray | None = None  # int64 (n_items+1, D), raw codes 0..M-1, row 0 unused
    text: np.ndarray | None = None  # float32 (n_items+1, d), row 0 zeros
    # int64 (n_items+1, D): the items coded by the quantizer the backbone was pre-trained
    # with (the "matched" alignment's view of what the backbone knows); row 0 unused
    backbone_codes: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)  # versions/paths it was read from

    def check(self) -> None:
        """Refuse ids outside 1..n_items (a mismatch between stage versions)."""
        for split, seq in self.splits.items():
            for what, arr in (("history", seq.items), ("target", seq.targets)):
                if len(arr) and (arr.min() < 1 or arr.max() > self.n_items):
                    raise DataError(
                        f"domain {self.name}: {split} {what} item ids span "
                        f"{arr.min()}..{arr.max()}, catalogue is 1..{self.n_items}"
                    )


@dataclass
class MultiDomain:
    """Several domains merged into one global item id space (for pre-training)."""

    names: list[str]
    offsets: dict[str, int]  # global id = offsets[name] + local item_idx
    n_items: int  # total, excluding padding
    train: Sequences
    chains: Sequences  # every user's training part, global ids (all-position training)
    valid: dict[str, Sequences]  # per domain, local ids (evaluation ranks within a domain)
    codes: np.ndarray  # int64 (n_items+1, D)
    domains: dict[str, DomainData]


def merge_domains(domains: list[DomainData]) -> MultiDomain:
    """One global id space over ``domains`` (in the given order); codes are required."""
    if not domains:
        raise DataError("pre-training needs at least one domain")
    offsets: dict[str, int] = {}
    codes_rows = [None]
    train_parts, chain_parts = [], []
    total = 0
    for k, d in enumerate(domains):
        if d.codes is None:
            raise DataError(f"domain {d.name} has no codes: run `vqrec codes` first")
        offsets[d.name] = total
        train_parts.append(d.splits["train"].shifted(total, k))
        chain_parts.append(training_chains(d.splits).shifted(total, k))
        codes_rows.append(d.codes[1:])
        total += d.n_items
    dims = {c.shape[1] for c in codes_rows[1:]}
    if len(dims) != 1:
        raise DataError(f"domains have codes of different lengths {sorted(dims)}")
    codes = np.concatenate([np.zeros((1, dims.pop()), np.int64)] + codes_rows[1:])
    return MultiDomain(
        names=[d.name for d in domains],
        offsets=offsets,
        n_items=total,
        train=Sequences.concat(train_parts),
        chains=Sequences.concat(chain_parts),
        valid={d.name: d.splits["valid"] for d in domains},
        codes=codes,
        domains={d.name: d for d in domains},
    )


def batch_rows(
    lengths: np.ndarray,
    batch_size: int,
    generator: torch.Generator,
    bucket: bool = True,
    bucket_batches: int = 32,
    targets_per_row: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Row indices of one epoch's batches.

    Plain: a random permutation cut into batches. Bucketed: the permutation is cut into
    chunks of ``bucket_batches`` batches, each chunk is sorted by length (stable) and cut
    into batches, and the batch order is shuffled -- batches hold similar lengths, so
    they pad little, while every epoch still sees a fresh random grouping.
    Randomness comes only from ``generator`` (its state is checkpointed for resume).

    ``targets_per_row`` (chains): a batch holds about ``batch_size`` *targets*, not rows.
    """
    n = len(lengths)
    weights = np.ones(n, np.int64) if targets_per_row is None else targets_per_row
    perm = torch.randperm(n, generator=generator).numpy()
    if not bucket:
        return _cut(perm, weights, batch_size)
    batches = []
    per_chunk = batch_size * bucket_batches
    chunk_id = np.cumsum(weights[perm]) // per_chunk
    for c in np.unique(chunk_id):
        rows = perm[chunk_id == c]
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        batches += _cut(rows, weights, batch_size)
    order = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in order]


def _cut(rows: np.ndarray, weights: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive slices of ``rows`` holding about ``batch_size`` weight each."""
    if (weights == 1).all():
        return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    group = (np.cumsum(weights[rows]) - 1) // batch_size
    bounds = np.flatnonzero(np.diff(group)) + 1
    return [b for b in np.split(rows, bounds) if len(b)]


def training_chains(splits: dict[str, Sequences]) -> Sequences:
    """Every user's training part as one chain, for all-position training.

    The valid row's history is the user's training items ``s[0..n-3]`` (the last 50 of
    them): as a chain it holds exactly the targets of the user's ``train`` rows, each with
    the same history, when the training part has at most 51 items (longer users keep the
    targets of their last 50 items, with shorter histories than the prefix rows). Users
    with a single training item have no training target and are dropped.
    """
    valid = splits["valid"]
    rows = np.flatnonzero(valid.lengths >= 2)
    lengths = valid.lengths[rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    gather = np.repeat(valid.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
    return Sequences(
        valid.items[gather],
        offsets,
        valid.items[valid.offsets[rows + 1] - 1],  # unused by chain batches; kept for shape
        valid.users[rows],
        valid.domain[rows],
    )
