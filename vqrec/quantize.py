"""Stage 3, codes: OPQ quantizers (faiss) and the discrete code of every item.

VQ-Rec turns an item's text embedding into D small integers with optimized product
quantization: a learned rotation (OPQ), then D sub-vectors, each replaced by the index of
its nearest of M = 2**bits centroids. The model never sees the embedding again, only the
code, so the quantizer is part of the model: it is fitted once, saved next to the codes,
frozen, and codes later (new) items of its domain without refit.

Choices, and why:

* Index: ``OPQ{D},IVF1,PQ{D}x{bits}np`` with inner product, as the official VQ-Rec
  scripts (minus polysemous training, which only relabels centroids for Hamming search and
  costs most of the time; STACK.md trap 5). With IVF1 the code is the PQ code of the
  residual to the single coarse centroid (the data mean), which ``sa_encode`` returns.
* Raw embeddings by default: the official scripts fit on the raw PLM vectors (BERT CLS).
  ``normalize=True`` prepends faiss's ``L2norm`` transform to the index itself, so that a
  saved quantizer always applies the same preprocessing it was fitted with. (The bundled
  all-MiniLM-L6-v2 ends with a Normalize module: its vectors are unit-norm already.)
* "Strict" fitting (the paper's): a quantizer sees only the items of the ``train`` rows of
  its domains' sequences (any item in a history or as a target), so items that occur only
  as valid/test targets never shape it. They are still coded, by the frozen quantizer.
* Determinism: one faiss thread by default, the OPQ start rotation drawn from ``seed``
  (faiss would use a fixed one), the k-means seeds of the OPQ-internal PQ and of the final
  PQ set to ``seed``; domains and items are visited in sorted order.
* Frozen quantizers: ``frozen_from`` (``--frozen-from``) names an earlier codes version
  whose quantizers are reused as they are; :func:`code_new_items` codes items that appear
  later with the quantizer of their domain. Neither refits.

    vqrec codes --lake L --version V --pretrain-domains Games,Beauty \\
        --target-domains Scientific [--strategy domain|shared] [--code-dim 32] [--bits 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import numbers
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from vqrec.lake import (
    LakeError,
    default_version,
    read_success,
    resolve_version,
    staged_version,
    validate_name,
)

log = logging.getLogger("vqrec.quantize")

PRETRAIN = "pretrain"  # name of the quantizer fitted jointly on the pre-training domains
STRATEGIES = ("domain", "shared")
# faiss warns below this many training points per centroid; we warn once instead of D*niter
# times (the warning is printed by every k-means run inside OPQ).
FAISS_MIN_POINTS_PER_CENTROID = 39
MAX_BITS = 15  # codes are stored as int16


# ---------------------------------------------------------------------------------------
# The quantizer: fit, assign, save, load
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run faiss with ``n`` OpenMP threads, restoring the previous setting afterwards.

    One thread is the default everywhere: OPQ training collapses on a busy 2-core machine
    when it competes for cores (STACK.md trap 4), and only one thread is bit-reproducible.
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def factory_string(code_dim: int, bits: int, normalize: bool = False) -> str:
    """The faiss index_factory string of a VQ-Rec quantizer."""
    prefix = "L2norm," if normalize else ""
    return f"{prefix}OPQ{code_dim},IVF1,PQ{code_dim}x{bits}np"


def _check_embeddings(x: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """A C-contiguous float32 (n, d) copy-or-view of ``x``, or a ValueError saying why not."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d array (n, d), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: expected floating point values, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{what}: {bad.size} row(s) hold NaN or infinite values "
            f"(first rows: {bad[:5].tolist()})"
        )
    return x


def _opq_of(index: faiss.Index) -> faiss.OPQMatrix:
    chain = faiss.downcast_index(index).chain
    for i in range(chain.size()):
        vt = faiss.downcast_VectorTransform(chain.at(i))
        if isinstance(vt, faiss.OPQMatrix):
            return vt
    raise ValueError("not a VQ-Rec quantizer: no OPQ transform in the index")


def _pq_of(index: faiss.Index) -> faiss.ProductQuantizer:
    ivfpq = faiss.downcast_index(faiss.downcast_index(index).index)
    if not isinstance(ivfpq, faiss.IndexIVFPQ):
        raise ValueError(f"not a VQ-Rec quantizer: inner index is {type(ivfpq).__name__}")
    return ivfpq.pq


def quantizer_shape(index: faiss.Index) -> tuple[int, int, int]:
    """(input dimension d, code_dim D, bits) of a fitted quantizer."""
    pq_ = _pq_of(index)
    return int(index.d), int(pq_.M), int(pq_.nbits)


def fit_quantizer(
    x: np.ndarray,
    code_dim: int = 32,
    bits: int = 8,
    seed: int = 0,
    niter: int | None = None,
    normalize: bool = False,
    threads: int = 1,
) -> faiss.Index:
    """Fit an ``OPQ{D},IVF1,PQ{D}x{bits}np`` inner-product quantizer on ``x`` (n, d).

    ``niter`` is the number of OPQ iterations (faiss's default, 50, when None);
    ``normalize`` puts an L2 normalisation in front (part of the saved index). The result
    is deterministic for a given ``x``, ``seed`` and ``threads=1``.
    """
    x = _check_embeddings(x)
    n, d = x.shape
    if not isinstance(code_dim, numbers.Integral) or code_dim < 1:
        raise ValueError(f"code_dim must be a positive integer, got {code_dim!r}")
    code_dim = int(code_dim)
    if d % code_dim != 0:
        raise ValueError(
            f"code_dim={code_dim} does not divide the embedding dimension d={d}: OPQ splits "
            f"the rotated vector into {code_dim} equal sub-vectors (try a divisor of {d})"
        )
    if not isinstance(bits, numbers.Integral) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in 1..{MAX_BITS} (int16 codes), got {bits!r}")
    bits = int(bits)
    n_centroids = 2**bits
    if n < n_centroids:
        raise ValueError(
            f"too few training points: {n} embeddings for {n_centroids} centroids per "
            f"sub-vector (bits={bits}); faiss k-means needs at least {n_centroids} "
            f"(and recommends {FAISS_MIN_POINTS_PER_CENTROID * n_centroids}); "
            "use fewer bits or more training items"
        )
    if n <= d:
        # faiss's OPQ fits a d x d rotation; with n <= d points it segfaults or aborts
        # ("invalid cluster assignment") instead of raising: refuse first, clearly.
        raise ValueError(
            f"too few training points: {n} embeddings of dimension {d}; OPQ's {d}x{d} "
            f"rotation needs more points than dimensions (n > {d}): use more training items "
            "(e.g. the 'shared' strategy, which reuses the pre-training quantizer)"
        )
    if n < FAISS_MIN_POINTS_PER_CENTROID * n_centroids:
        log.warning(
            "fitting on %d points for %d centroids per sub-vector: faiss recommends at least %d",
            n,
            n_centroids,
            FAISS_MIN_POINTS_PER_CENTROID * n_centroids,
        )

    index = faiss.index_factory(
        d, factory_string(code_dim, bits, normalize), faiss.METRIC_INNER_PRODUCT
    )
    opq = _opq_of(index)
    if niter is not None:
        if niter < 1:
            raise ValueError(f"niter must be >= 1, got {niter}")
        opq.niter = int(niter)
    # faiss starts OPQ from a rotation drawn with a fixed seed (1234): draw it from ours.
    rng = np.random.default_rng(seed)
    start_rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    faiss.copy_array_to_vector(start_rotation.astype(np.float32).ravel(), opq.A)
    # Without this OPQ trains its rotation against an internal 8-bit PQ whatever `bits` is,
    # with k-means seed 1234; give it a PQ of the real shape and our seed.
    opq_pq = faiss.ProductQuantizer(d, code_dim, bits)
    opq_pq.cp.seed = seed
    opq_pq.cp.min_points_per_centroid = 1  # we warned above, once
    opq.pq = opq_pq
    ivf = faiss.downcast_index(faiss.downcast_index(index).index)
    ivf.pq.cp.seed = seed
    ivf.pq.cp.min_points_per_centroid = 1
    ivf.cp.min_points_per_centroid = 1  # the single coarse centroid (the mean)
    ivf.cp.seed = seed
    try:
        with faiss_threads(threads):
            index.train(x)
    finally:
        opq.pq = None  # opq_pq dies with this frame: never leave a dangling pointer
    return index


def unpack_codes(packed: np.ndarray, code_dim: int, bits: int) -> np.ndarray:
    """faiss's packed PQ codes (n, ceil(D*bits/8)) uint8 -> (n, D) int16.

    faiss writes codes with its BitstringWriter: little-endian bit order, code j occupies
    bits ``j*bits .. (j+1)*bits-1`` of the byte string (bits=4: code 0 is the low nibble of
    byte 0, code 1 the high nibble).
    """
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if bits == 8:
        return packed[:, :code_dim].astype(np.int16)
    flat_bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : code_dim * bits]
    weights = (1 << np.arange(bits, dtype=np.int32)).astype(np.int32)
    return (flat_bits.reshape(len(packed), code_dim, bits) * weights).sum(axis=2).astype(np.int16)


def assign_codes(index: faiss.Index, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """The (n, D) int16 codes of ``x`` under a fitted quantizer (values in 0..2**bits-1)."""
    d, code_dim, bits = quantizer_shape(index)
    if not index.is_trained:
        raise ValueError("the quantizer is not trained")
    x = _check_embeddings(x)
    if x.shape[1] != d:
        raise ValueError(f"embeddings have dimension {x.shape[1]}, the quantizer expects {d}")
    if len(x) == 0:
        return np.zeros((0, code_dim), dtype=np.int16)
    with faiss_threads(threads):
        packed = index.sa_encode(x)  # IVF1: no list-number prefix (sa_code_size == PQ size)
    return unpack_codes(packed, code_dim, bits)


def save_quantizer(index: faiss.Index, path: str | Path) -> Path:
    """Write a fitted quantizer to ``path`` (faiss.write_index); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


def load_quantizer(path: str | Path) -> faiss.Index:
    """Read a quantizer written by :func:`save_quantizer`; check that it is one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no quantizer file at {path}")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:  # faiss's C++ reader: not an index file at all
        first = str(err).strip().splitlines()[-1][:200]
        raise ValueError(f"{path} is not a faiss index file ({first})") from err
    quantizer_shape(index)  # raises a clear ValueError on a foreign index
    return index


def is_normalizing(index: faiss.Index) -> bool:
    """Whether a quantizer L2-normalises its input (fitted with ``normalize=True``)."""
    chain = faiss.downcast_index(index).chain
    return any(
        isinstance(faiss.downcast_VectorTransform(chain.at(i)), faiss.NormalizationTransform)
        for i in range(chain.size())
    )


def reconstruction_error(index: faiss.Index, x: np.ndarray) -> float:
    """Mean relative squared error ||x - decode(encode(x))||^2 / ||x||^2 (0 for empty x).

    With ``normalize`` the index reconstructs the normalised vector, so compare with that.
    """
    x = _check_embeddings(x)
    if len(x) == 0:
        return 0.0
    recon = index.sa_decode(index.sa_encode(x))
    if is_normalizing(index):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    num = ((x - recon) ** 2).sum(axis=1)
    den = np.maximum((x**2).sum(axis=1), 1e-12)
    return float((num / den).mean())


# ---------------------------------------------------------------------------------------
# Statistics of a code matrix
# ---------------------------------------------------------------------------------------


def code_stats(codes: np.ndarray, code_cap: int) -> dict[str, Any]:
    """How well a code matrix (n, D) separates items, with ``code_cap`` = 2**bits values.

    * ``unique_code_share``: share of items whose code no other item has;
    * ``distinct_code_rate``: distinct codes / items;
    * ``collision_groups``: number of codes shared by 2+ items, and
      ``collision_group_sizes``: {group size: number of such groups};
    * per sub-vector: ``used_centroids``, usage ``entropy_bits`` (Shannon, log2) and
      ``entropy_normalized`` (divided by log2(code_cap), 1 = uniform usage).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes: expected a 2-d array (n, D), got shape {codes.shape}")
    if code_cap < 2:
        raise ValueError(f"code_cap must be >= 2, got {code_cap}")
    n, code_dim = codes.shape
    if n and (codes.min() < 0 or codes.max() >= code_cap):
        raise ValueError(
            f"codes hold values outside 0..{code_cap - 1} (min {codes.min()}, max {codes.max()})"
        )
    if n:
        _, counts = np.unique(codes, axis=0, return_counts=True)
    else:
        counts = np.zeros(0, dtype=np.int64)
    sizes, groups = np.unique(counts[counts > 1], return_counts=True)
    entropy, used = [], []
    for j in range(code_dim):
        usage = np.bincount(codes[:, j].astype(np.int64), minlength=code_cap)
        p = usage[usage > 0] / max(n, 1)
        entropy.append(float(-(p * np.log2(p)).sum()) + 0.0)  # + 0.0: no "-0.0" in JSON
        used.append(int((usage > 0).sum()))
    max_entropy = math.log2(code_cap)
    return {
        "n_items": int(n),
        "code_dim": int(code_dim),
        "code_cap": int(code_cap),
        "distinct_codes": int(len(counts)),
        "distinct_code_rate": float(len(counts) / n) if n else 0.0,
        "unique_code_share": float((counts == 1).sum() / n) if n else 0.0,
        "collision_groups": int((counts > 1).sum()),
        "items_in_collisions": int(counts[counts > 1].sum()),
        "collision_group_sizes": {str(int(s)): int(g) for s, g in zip(sizes, groups, strict=True)},
        "entropy_bits": entropy,
        "entropy_normalized": [h / max_entropy for h in entropy],
        "mean_entropy_normalized": float(np.mean(entropy) / max_entropy) if code_dim else 0.0,
        "used_centroids": used,
        "min_used_centroids": int(min(used)) if used else 0,
    }


# ---------------------------------------------------------------------------------------
# Reading the lake
# ---------------------------------------------------------------------------------------


def _partition(root: Path, table: str, domain: str) -> Path:
    path = root / table / f"domain={validate_name(domain, 'domain')}"
    if not path.is_dir():
        present = sorted(p.name.removeprefix("domain=") for p in (root / table).glob("domain=*"))
        raise LakeError(f"no {table} for domain {domain!r} at {path} (domains present: {present})")
    return path


def _read_parquet(path: Path, columns: list[str]) -> pa.Table:
    """All Parquet files of a partition folder (Spark's _SUCCESS/.crc files are skipped)."""
    dataset = ds.dataset(str(path), format="parquet")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise LakeError(f"{path}: missing column(s) {missing} (has {dataset.schema.names})")
    return dataset.to_table(columns=columns)


def read_embeddings(embeddings_dir: Path, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """(item_idx int32 sorted, embeddings float32 (n, d)) of a domain of an embeddings version.

    Refuses (naming the folder and the items) nulls, ragged or non-finite vectors and
    duplicated or non-positive item ids: a silent bad row would become a wrong code.
    """
    path = _partition(Path(embeddings_dir), "items", domain)
    table = _read_parquet(path, ["item_idx", "embedding"])
    if table.num_rows == 0:
        raise LakeError(f"{path}: no embeddings")
    if table.column("item_idx").null_count:
        raise ValueError(f"{path}: null item_idx")
    ids = table.column("item_idx").to_numpy().astype(np.int64)
    if (ids < 1).any():
        raise ValueError(f"{path}: item_idx must be >= 1 (0 is padding), got {ids.min()}")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{path}: duplicated item_idx {uniq[counts > 1][:5].tolist()}")
    emb = table.column("embedding").combine_chunks()
    if emb.null_count:
        bad = ids[emb.is_null().to_numpy(zero_copy_only=False)]
        raise ValueError(f"{path}: null embedding for item_idx {sorted(bad.tolist())[:5]}")
    lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
    common = int(np.bincount(lengths).argmax())
    if (lengths != common).any() or common == 0:
        odd = ids[lengths != common] if common else ids
        raise ValueError(
            f"{path}: embeddings of unequal length ({lengths.min()}..{lengths.max()}, mostly "
            f"{common}), e.g. item_idx {sorted(odd.tolist())[:5]}"
        )
    x = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    x = x.reshape(len(ids), common)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"{path}: NaN/inf embedding for item_idx {sorted(ids[~finite].tolist())[:5]}"
        )
    order = np.argsort(ids, kind="stable")
    return ids[order].astype(np.int32), np.ascontiguousarray(x[order])


def training_items(clean_dir: Path, domain: str) -> np.ndarray:
    """The strict training items of a domain: sorted item_idx of the ``train`` sequence rows.

    An item is a training item when it occurs in the history or as the target of at least
    one ``train`` row. Items seen only as a valid/test target (a user's last two events)
    are not, so they cannot shape the quantizer (the official ``--strict`` mode).
    """
    path = _partition(Path(clean_dir), "sequences", domain)
    table = _read_parquet(path, ["split", "history", "target"])
    train = table.filter(pc.equal(table.column("split"), "train"))
    history = pc.list_flatten(train.column("history")).to_numpy(zero_copy_only=False)
    target = train.column("target").to_numpy(zero_copy_only=False)
    items = np.unique(np.concatenate([history, target]).astype(np.int64))
    if items.size == 0:
        raise LakeError(f"{path}: no train rows, so no training items for domain {domain!r}")
    return items.astype(np.int32)


# ---------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodesConfig:
    """What the codes stage fits and writes. Lists are kept sorted: order never matters."""

    pretrain_domains: tuple[str, ...]
    target_domains: tuple[str, ...] = ()
    strategy: str = "domain"  # target domains: own strict quantizer, or the shared one
    lake: str | None = None  # None: $VQREC_LAKE or ./var/lake
    version: str | None = None  # output version; None: a UTC timestamp
    embeddings_version: str | None = None  # None: CURRENT
    clean_version: str | None = None  # None: the one the embeddings came from, else CURRENT
    code_dim: int = 32  # D sub-vectors
    bits: int = 8  # M = 2**bits centroids per sub-vector
    seed: int = 0
    niter: int | None = None  # OPQ iterations; None: faiss's 50
    normalize: bool = False  # L2-normalise before OPQ (official: raw PLM vectors)
    strict: bool = True  # fit on training items only (False: on every item)
    threads: int = 1
    # An earlier codes version whose quantizers are frozen: every quantizer this run needs
    # ("pretrain", or a target domain's own) that it holds is reused as is, no refit; only
    # the missing ones are fitted (new-domain backfill on the champion's quantizer).
    frozen_from: str | None = None

    def __post_init__(self) -> None:
        pre = tuple(sorted(set(self.pretrain_domains)))
        tgt = tuple(sorted(set(self.target_domains)))
        for d in pre + tgt:
            validate_name(d, "domain")
        # Versions too, before any fitting: a bad one must fail in a second, not after OPQ.
        for v in (self.version, self.embeddings_version, self.clean_version, self.frozen_from):
            if v is not None:
                validate_name(v, "version")
        if not pre and not tgt:
            raise ValueError("no domains: give pretrain_domains and/or target_domains")
        both = sorted(set(pre) & set(tgt))
        if both:
            raise ValueError(f"domain(s) {both} are both pre-training and target domains")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.strategy == "domain" and PRETRAIN in tgt:
            raise ValueError(f"a target domain may not be named {PRETRAIN!r} (quantizer name)")
        if self.strategy == "shared" and tgt and not pre and not self.frozen_from:
            raise ValueError(
                "strategy 'shared' needs a pre-training quantizer: give pretrain_domains "
                "or frozen_from (a codes version holding one)"
            )
        object.__setattr__(self, "pretrain_domains", pre)
        object.__setattr__(self, "target_domains", tgt)


@dataclass
class _Domain:
    name: str
    item_idx: np.ndarray
    x: np.ndarray
    train_mask: np.ndarray  # rows of x that the quantizer may be fitted on


def _load_domain(cfg: CodesConfig, emb_dir: Path, clean_dir: Path, domain: str) -> _Domain:
    item_idx, x = read_embeddings(emb_dir, domain)
    if cfg.strict:
        train = training_items(clean_dir, domain)
        missing = np.setdiff1d(train, item_idx)
        if missing.size:
            raise LakeError(
                f"domain {domain!r}: {missing.size} training item(s) have no embedding in "
                f"{emb_dir} (e.g. item_idx {missing[:5].tolist()}); re-run encode on the "
                f"clean version {clean_dir.name}"
            )
        mask = np.isin(item_idx, train)
    else:
        mask = np.ones(len(item_idx), dtype=bool)
    log.info("domain %s: %d items, %d used for fitting", domain, len(item_idx), int(mask.sum()))
    return _Domain(domain, item_idx, x, mask)


def _fit(cfg: CodesConfig, name: str, domains: list[_Domain]) -> tuple[faiss.Index, dict]:
    x = np.concatenate([d.x[d.train_mask] for d in domains])
    log.info(
        "fitting quantizer %s on %d items (%s)", name, len(x), ",".join(d.name for d in domains)
    )
    t0 = time.perf_counter()
    try:
        index = fit_quantizer(
            x, cfg.code_dim, cfg.bits, cfg.seed, cfg.niter, cfg.normalize, cfg.threads
        )
    except ValueError as err:
        raise ValueError(f"quantizer {name!r} ({[d.name for d in domains]}): {err}") from None
    seconds = time.perf_counter() - t0
    log.info("fitted quantizer %s in %.1f s", name, seconds)
    info = {"domains": [d.name for d in domains], "n_train": int(len(x)), "fit_seconds": seconds}
    return index, info


def _write_codes(out: Path, dom: _Domain, codes: np.ndarray, quantizer: str) -> Path:
    path = out / "codes" / f"domain={dom.name}" / "part-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    code_dim = codes.shape[1]
    table = pa.table(
        {
            "item_idx": pa.array(dom.item_idx, type=pa.int32()),
            "code": pa.FixedSizeListArray.from_arrays(
                pa.array(codes.ravel(), type=pa.int16()), code_dim
            ).cast(pa.list_(pa.int16())),
            "quantizer": pa.array([quantizer] * len(dom.item_idx), type=pa.string()),
        }
    )
    pq.write_table(table, path)
    return path


def run_codes(config: CodesConfig) -> dict[str, Any]:
    """Fit the quantizers, code every item, commit ``<lake>/codes/<version>/``.

    Returns a summary: version, path, the quantizer of each domain and its code statistics.
    """
    cfg = config
    emb_dir = resolve_version(cfg.lake, "embeddings", cfg.embeddings_version)
    emb_meta = read_success(emb_dir)
    clean_dir = None
    if cfg.strict:
        # item_idx only means the same item within one clean version: by default read the
        # sequences of the clean version the embeddings were made from.
        clean_dir = resolve_version(
            cfg.lake, "clean", cfg.clean_version or emb_meta.get("clean_version")
        )
        if emb_meta.get("clean_version") not in (None, clean_dir.name):
            log.warning(
                "embeddings %s were made from clean version %s, not %s: item ids may differ",
                emb_dir.name,
                emb_meta["clean_version"],
                clean_dir.name,
            )
    log.info("embeddings %s, clean %s", emb_dir, clean_dir)

    def load(domain: str) -> _Domain:
        return _load_domain(cfg, emb_dir, clean_dir, domain)  # type: ignore[arg-type]

    pretrain = [load(d) for d in cfg.pretrain_domains]
    targets = [load(d) for d in cfg.target_domains]
    dims = {d.name: d.x.shape[1] for d in pretrain + targets}
    if len(set(dims.values())) > 1:
        raise ValueError(f"embedding dimensions differ between domains: {dims}")

    quantizers: dict[str, faiss.Index] = {}
    quantizer_info: dict[str, dict] = {}
    frozen_dir = resolve_version(cfg.lake, "codes", cfg.frozen_from) if cfg.frozen_from else None

    def get_quantizer(name: str, domains: list[_Domain]) -> None:
        """The frozen quantizer ``name`` of ``frozen_from`` if it has one, else fit it."""
        path = frozen_dir / "quantizers" / f"{name}.faiss" if frozen_dir else None
        if path is not None and path.is_file():
            index = load_quantizer(path)
            wanted = (next(iter(dims.values())), cfg.code_dim, cfg.bits, cfg.normalize)
            found = (*quantizer_shape(index), is_normalizing(index))
            if found != wanted:
                raise ValueError(
                    f"{path}: frozen quantizer has (d, code_dim, bits, normalize)={found}, "
                    f"this run needs {wanted}"
                )
            log.info("reusing frozen quantizer %s from codes version %s", name, frozen_dir.name)
            quantizers[name] = index
            quantizer_info[name] = {"frozen_from": frozen_dir.name, "domains": [], "n_train": 0}
        elif domains:
            quantizers[name], quantizer_info[name] = _fit(cfg, name, domains)
        else:
            raise LakeError(f"codes version {frozen_dir} has no quantizer {name!r} to reuse")

    if pretrain or (targets and cfg.strategy == "shared"):
        get_quantizer(PRETRAIN, pretrain)
    assignment = {d.name: PRETRAIN for d in pretrain}
    for dom in targets:
        if cfg.strategy == "domain":
            get_quantizer(dom.name, [dom])
            assignment[dom.name] = dom.name
        else:
            assignment[dom.name] = PRETRAIN

    # Which domains each quantizer was fitted on in this run (a frozen one: none).
    fitted_on = {name: set(info["domains"]) for name, info in quantizer_info.items()}
    version = validate_name(cfg.version or default_version(), "version")
    meta: dict[str, Any] = {
        "embeddings_version": emb_dir.name,
        "clean_version": clean_dir.name if clean_dir else None,
    }
    stats: dict[str, Any] = {"domains": {}, "quantizers": {}}
    with staged_version(cfg.lake, "codes", version, metadata=meta) as out:
        for name in sorted(quantizers):
            save_quantizer(quantizers[name], out / "quantizers" / f"{name}.faiss")
            # Timings go to _SUCCESS, not here: same inputs, same stats.json.
            info = {k: v for k, v in quantizer_info[name].items() if k != "fit_seconds"}
            _, code_dim, bits = quantizer_shape(quantizers[name])
            info["factory"] = factory_string(code_dim, bits, is_normalizing(quantizers[name]))
            stats["quantizers"][name] = info
        for dom in sorted(pretrain + targets, key=lambda d: d.name):
            name = assignment[dom.name]
            t0 = time.perf_counter()
            codes = assign_codes(quantizers[name], dom.x, cfg.threads)
            _write_codes(out, dom, codes, name)
            dstats = code_stats(codes, 2**cfg.bits)
            n_fit = int(dom.train_mask.sum()) if dom.name in fitted_on[name] else 0
            dstats.update(
                quantizer=name,
                n_fit_items=n_fit,
                n_unseen_at_fit=int(len(dom.x) - n_fit),
                relative_reconstruction_error=reconstruction_error(quantizers[name], dom.x),
            )
            stats["domains"][dom.name] = dstats
            log.info(
                "domain %s: coded %d items with %s in %.1f s; unique codes %.4f, "
                "collision groups %d, mean normalised entropy %.3f",
                dom.name,
                len(codes),
                name,
                time.perf_counter() - t0,
                dstats["unique_code_share"],
                dstats["collision_groups"],
                dstats["mean_entropy_normalized"],
            )
        config_doc = asdict(cfg)
        config_doc.update(
            meta,
            version=version,
            quantizer_of_domain=assignment,
            factory=factory_string(cfg.code_dim, cfg.bits, cfg.normalize),
            faiss_version=faiss.__version__,
            encoder=emb_meta.get("encoder"),
        )
        (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        (out / "config.json").write_text(json.dumps(config_doc, indent=2, sort_keys=True) + "\n")
        meta["fit_seconds"] = {k: v.get("fit_seconds") for k, v in quantizer_info.items()}
        meta["quantizer_of_domain"] = assignment
    final = resolve_version(cfg.lake, "codes", version)
    return {
        "version": version,
        "path": str(final),
        "quantizer_of_domain": assignment,
        "stats": stats["domains"],
        "fit_seconds": meta["fit_seconds"],
    }


def code_new_items(
    codes_dir: str | Path, domain: str, embeddings: np.ndarray, quantizer: str | None = None
) -> np.ndarray:
    """Code items unseen at fit time with the frozen quantizer of ``domain`` (no refit).

    ``codes_dir`` is a committed codes version (``resolve_version(lake, "codes")``). The
    quantizer is the one that coded ``domain`` in that version; a domain that version has
    never seen needs ``quantizer`` ("pretrain" for the shared strategy, or a domain name).
    """
    codes_dir = Path(codes_dir)
    config = json.loads((codes_dir / "config.json").read_text())
    known = config.get("quantizer_of_domain", {})
    if quantizer is None:
        if domain not in known:
            raise LakeError(
                f"{codes_dir}: domain {domain!r} has no quantizer in this version (domains: "
                f"{sorted(known)}); pass quantizer={PRETRAIN!r} to use the shared one"
            )
        quantizer = known[domain]
    index = load_quantizer(
        codes_dir / "quantizers" / f"{validate_name(quantizer, 'quantizer')}.faiss"
    )
    return assign_codes(index, embeddings, int(config.get("threads", 1)))


# ---------------------------------------------------------------------------------------
# CLI: vqrec codes
# ---------------------------------------------------------------------------------------


def _domains(value: str) -> tuple[str, ...]:
    return tuple(d.strip() for d in value.split(",") if d.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vqrec codes", description="Fit OPQ quantizers (strict) and write item codes."
    )
    p.add_argument("--lake", default=None, help="lake root (default $VQREC_LAKE or ./var/lake)")
    p.add_argument("--version", default=None, help="output version (default: UTC timestamp)")
    p.add_argument("--embeddings-version", default=None, help="default: CURRENT")
    p.add_argument(
        "--clean-version", default=None, help="default: the embeddings' clean version, or CURRENT"
    )
    p.add_argument("--pretrain-domains", type=_domains, default=(), help="comma-separated")
    p.add_argument("--target-domains", type=_domains, default=(), help="comma-separated")
    p.add_argument("--strategy", choices=STRATEGIES, default="domain")
    p.add_argument("--code-dim", type=int, default=32)
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--niter", type=int, default=None, help="OPQ iterations (faiss default 50)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise before OPQ")
    p.add_argument("--no-strict", action="store_true", help="fit on all items, not train only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--frozen-from",
        default=None,
        help="codes version whose quantizers to reuse frozen (no refit) where it has them",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``vqrec codes``: run the stage; errors in the input are reported, not traced."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = CodesConfig(
            pretrain_domains=args.pretrain_domains,
            target_domains=args.target_domains,
            strategy=args.strategy,
            lake=args.lake,
            version=args.version,
            embeddings_version=args.embeddings_version,
            clean_version=args.clean_version,
            code_dim=args.code_dim,
            bits=args.bits,
            seed=args.seed,
            niter=args.niter,
            normalize=args.normalize,
            strict=not args.no_strict,
            threads=args.threads,
            frozen_from=args.frozen_from,
        )
        result = run_codes(cfg)
    except (ValueError, LakeError, FileNotFoundError) as err:
        print(f"vqrec codes: error: {err}", file=sys.stderr)
        return 2
    for domain, st in sorted(result["stats"].items()):
        print(
            f"{domain}: quantizer={st['quantizer']} items={st['n_items']} "
            f"unique={st['unique_code_share']:.4f} collisions={st['collision_groups']} "
            f"entropy={st['mean_entropy_normalized']:.3f}"
        )
    print(f"codes version {result['version']} at {result['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
