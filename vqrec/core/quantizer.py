"""The quantizer of VQ-Rec: OPQ (faiss) fit, code assignment, save/load, code statistics.

VQ-Rec turns an item's text embedding into D small integers with optimized product
quantization: a learned rotation (OPQ), then D sub-vectors, each replaced by the index of
its nearest of M = 2**bits centroids. The model never sees the embedding again, only the
code, so the quantizer is part of the model: it is fitted once, saved next to the codes,
frozen, and codes later (new) items of its domain without refit. The codes stage
(:mod:`vqrec.stages.codes`) decides which items each quantizer is fitted on.

Choices, and why:

* Index: ``OPQ{D},IVF1,PQ{D}x{bits}np`` with inner product, as the official VQ-Rec
  scripts (minus polysemous training, which only relabels centroids for Hamming search and
  costs most of the time). With IVF1 the code is the PQ code of the
  residual to the single coarse centroid (the data mean), which ``sa_encode`` returns.
* Raw embeddings by default: the official scripts fit on the raw PLM vectors (BERT CLS).
  ``normalize=True`` prepends faiss's ``L2norm`` transform to the index itself, so that a
  saved quantizer always applies the same preprocessing it was fitted with. (The bundled
  all-MiniLM-L6-v2 ends with a Normalize module: its vectors are unit-norm already.)
* Determinism: one faiss thread by default, the OPQ start rotation drawn from ``seed``
  (faiss would use a fixed one), the k-means seeds of the OPQ-internal PQ and of the final
  PQ set to ``seed``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger("vqrec.quantize")

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
    when it competes for cores (README: Troubleshooting), and only one thread is bit-reproducible.
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
    d = x.shape[1]
    code_dim, bits = check_fit_shape(x.shape[0], d, code_dim, bits)
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


def check_fit_shape(n: int, d: int, code_dim: int, bits: int) -> tuple[int, int]:
    """``(code_dim, bits)`` as ints, or a ValueError saying what to change: faiss itself
    aborts or segfaults on several of these shapes instead of raising."""
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
    # Two limits, one minimum: k-means needs a point per centroid, and faiss's OPQ fits a
    # d x d rotation that segfaults or aborts ("invalid cluster assignment") with n <= d
    # points instead of raising. Refuse first, with the one number that matters.
    need = max(n_centroids, d + 1)
    if n < need:
        raise ValueError(
            f"too few training points: {n} embeddings; fitting needs at least {need} "
            f"({n_centroids} centroids per sub-vector at bits={bits}, and more points than the "
            f"{d} dimensions of OPQ's rotation): use more training items, or the 'shared' "
            "strategy, which reuses the pre-training quantizer"
        )
    if n < FAISS_MIN_POINTS_PER_CENTROID * n_centroids:
        log.warning(
            "fitting on %d points for %d centroids per sub-vector: faiss recommends at least %d",
            n,
            n_centroids,
            FAISS_MIN_POINTS_PER_CENTROID * n_centroids,
        )
    return code_dim, bits


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
