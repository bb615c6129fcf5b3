"""The registered pyfunc model: :class:`VQRecRecommender` (top-k from a history of raw ids).

Everything a consumer needs to load and predict, and nothing else: the registry ships this
module with :mod:`vqrec.core` (model, quantizer, encoder) through ``code_paths``, not the
lake, Airflow glue or dev tools. See :mod:`vqrec.mlops.registry` for what it is built from.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import Array, ColSpec, DataType, Object, Property, Schema

DEFAULT_K = 10
MAX_K = 1000  # a bigger k is refused (400), never capped silently


class BadRequest(MlflowException, ValueError):
    """A request the model refuses: ``mlflow models serve`` answers HTTP 400 with its message
    (MLflow's INVALID_PARAMETER_VALUE); in process it is also a ValueError.

    A request is validated whole before anything is scored: one bad row refuses the request
    (all or nothing), and the message names the row and the field.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def _parse_new_items(value: Any, row: int) -> list[dict[str, str]]:
    """``new_items`` of one input row (a list of {item_id, text} objects) -> that list."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if not isinstance(value, list | tuple | np.ndarray):
        raise BadRequest(
            f"row {row}: new_items must be a list of {{item_id, text}} objects, "
            f"got {type(value).__name__} {value!r:.80}"
        )
    items = []
    for j, item in enumerate(value):
        if not isinstance(item, dict) or "item_id" not in item or "text" not in item:
            raise BadRequest(f"row {row}: new_items[{j}] needs 'item_id' and 'text', got {item!r}")
        text = str(item["text"]).strip()
        if not text:
            raise BadRequest(f"row {row}: new_items[{j}] ({item['item_id']!r}) has an empty text")
        items.append({"item_id": str(item["item_id"]), "text": text})
    return items


def _history(value: Any, row: int) -> list[str]:
    """``history`` of one input row (a list of item ids, oldest first) -> that list."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if not isinstance(value, list | tuple | np.ndarray):
        raise BadRequest(
            f"row {row}: history must be a list of item ids, got {type(value).__name__} "
            f"{value!r:.80}"
        )
    return [str(item) for item in value]


class VQRecRecommender(mlflow.pyfunc.PythonModel):
    """Top-k recommendation from a history of raw item ids (see the module docstring)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load weights (safetensors), id maps (Parquet) and the quantizer (faiss)."""
        import pyarrow.parquet as pq
        import torch

        from vqrec.core.model import load_model

        artifacts = context.artifacts
        self.bundle = json.loads(Path(artifacts["bundle"]).read_text())
        self.model = load_model(artifacts["model"]).eval()
        with torch.no_grad():
            self.item_emb = self.model.all_item_embeddings()  # (N+1, H), row 0 padding
        if not self.bundle.get("catalogue", True):
            # The backbone: its pre-training catalogue is not served, only new items are.
            self.item_emb = self.item_emb[:1]
        self.item_ids = np.array([""], dtype=object)
        self.popularity = np.zeros(1)
        self.index_of: dict[str, int] = {}
        if self.bundle.get("catalogue", True):
            table = pq.read_table(artifacts["items"]).to_pandas()
            n = int(table["item_idx"].max())
            ids = np.full(n + 1, "", dtype=object)
            ids[table["item_idx"].to_numpy()] = table["item_id"].astype(str).to_numpy()
            pop = np.zeros(n + 1)
            pop[table["item_idx"].to_numpy()] = table["popularity"].to_numpy(dtype=np.float64)
            self.item_ids, self.popularity = ids, pop / max(pop.sum(), 1.0)
            self.index_of = {item: i for i, item in enumerate(ids) if i > 0}
            if len(ids) != len(self.item_emb):
                raise ValueError(
                    f"id map has {len(ids) - 1} items, the model's catalogue "
                    f"{len(self.item_emb) - 1}: bundle is inconsistent"
                )
        self.quantizer_path = artifacts.get("quantizer")
        self._quantizer = None
        self._encoder = None
        self._lock = threading.Lock()  # one request at a time through the lazy loaders

    # -- unseen items: text -> sentence embedding -> frozen quantizer -> code table
    def _encoder_model(self):
        if self._encoder is None:
            from vqrec.core.encoder import load_encoder

            self._encoder = load_encoder(_resolve_encoder(self.bundle))
        return self._encoder

    def embed_new_items(self, texts: list[str]) -> Any:
        """(n, H) item representations of unseen items from their texts."""
        import torch

        from vqrec.core.encoder import encode_texts
        from vqrec.core.quantizer import assign_codes, load_quantizer

        if not self.quantizer_path:
            raise ValueError("this model has no quantizer: it cannot code unseen items")
        with self._lock:
            if self._quantizer is None:
                self._quantizer = load_quantizer(self.quantizer_path)
            vectors = encode_texts(self._encoder_model(), texts)
            codes = assign_codes(self._quantizer, vectors)
        with torch.no_grad():
            return self.model.code_embeddings(torch.as_tensor(codes.astype(np.int64)))

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """One output row per input row: top-k ``item_ids`` and ``scores`` (see module doc)."""
        import torch

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "history" not in df.columns:
            raise BadRequest(f"input needs a 'history' column, got columns {list(df.columns)}")
        n_rows = len(df)
        ks = self._ks(df)
        exclude = (
            df["exclude_seen"].fillna(False).astype(bool).tolist()
            if "exclude_seen" in df.columns
            else [False] * n_rows
        )

        new_per_row, texts = self._new_items(df)
        histories, unknown = self._histories(df, new_per_row)
        # Every row is valid (BadRequest above otherwise): only now is anything computed.
        table = self.item_emb
        if texts:
            table = torch.cat([self.item_emb, self.embed_new_items(texts)])
        names = np.concatenate([self.item_ids, np.array(texts, dtype=object)])
        for mapping in new_per_row:
            for item_id, idx in mapping.items():
                names[idx] = item_id
        out_ids, out_scores = self._rank(histories, table, names, new_per_row, exclude, ks)
        strategy = ["model"] * n_rows
        for r in range(n_rows):
            if not histories[r]:
                strategy[r] = "popularity"
                out_ids[r], out_scores[r] = self._popular(ks[r], new_per_row[r])
        return pd.DataFrame(
            {
                "item_ids": out_ids,
                "scores": out_scores,
                "unknown_items": unknown,
                "strategy": strategy,
            }
        )

    def _new_items(self, df: pd.DataFrame) -> tuple[list[dict[str, int]], list[str]]:
        """Items unseen in training, per row: ``{item_id: row of the extended table}`` per
        input row, and the texts to embed (all rows' at once, in table order)."""
        new_per_row: list[dict[str, int]] = []
        texts: list[str] = []
        for row, value in enumerate(df["new_items"] if "new_items" in df.columns else []):
            mapping: dict[str, int] = {}
            for j, item in enumerate(_parse_new_items(value, row)):
                if item["item_id"] in self.index_of:
                    raise BadRequest(
                        f"row {row}: new_items[{j}] {item['item_id']!r} is already in the "
                        "catalogue (it keeps its trained representation): leave it out"
                    )
                if item["item_id"] in mapping:
                    raise BadRequest(f"row {row}: new_items[{j}] {item['item_id']!r} is repeated")
                mapping[item["item_id"]] = len(self.item_emb) + len(texts)
                texts.append(item["text"])
            new_per_row.append(mapping)
        new_per_row += [{} for _ in range(len(df) - len(new_per_row))]
        return new_per_row, texts

    def _histories(
        self, df: pd.DataFrame, new_per_row: list[dict[str, int]]
    ) -> tuple[list[list[int]], list[list[str]]]:
        """Histories as rows of the (extended) table, the last ``max_len`` kept, and each
        row's ids found nowhere: unknown ids are reported, not fatal."""
        max_len = self.model.config.max_len
        histories, unknown = [], []
        for row, value in enumerate(df["history"]):
            ids, missing = [], []
            for item in _history(value, row):
                idx = self.index_of.get(item) or new_per_row[row].get(item)
                (ids if idx else missing).append(idx or item)
            histories.append(ids[-max_len:])
            unknown.append(missing)
        return histories, unknown

    def _rank(
        self,
        histories: list[list[int]],
        table: Any,
        names: np.ndarray,
        new_per_row: list[dict[str, int]],
        exclude: list[bool],
        ks: list[int],
    ) -> tuple[list[list[str]], list[list[float]]]:
        """Top-k ids and scores of every row with a history (others stay empty): the model
        scores the whole (extended) table, 256 rows at a time; what a row may not get (the
        padding, other rows' new items, its history when ``exclude``) is set to -inf in
        place, then :func:`top_k` picks."""
        import torch

        n_rows = len(histories)
        n_known = len(self.item_emb)
        out_ids: list[list[str]] = [[] for _ in range(n_rows)]
        out_scores: list[list[float]] = [[] for _ in range(n_rows)]
        rows = [r for r in range(n_rows) if histories[r]]
        for start in range(0, len(rows), 256):  # bounded (rows x catalogue) score matrix
            chunk = rows[start : start + 256]
            length = max(len(histories[r]) for r in chunk)
            hist = torch.zeros(len(chunk), length, dtype=torch.long)
            for i, r in enumerate(chunk):
                hist[i, : len(histories[r])] = torch.as_tensor(histories[r])
            lengths = torch.as_tensor([len(histories[r]) for r in chunk])
            with torch.no_grad():
                seq = self.model.encode(hist, lengths, history_emb=table[hist])
                scores = self.model.score(seq, table)
            own = _cells([list(new_per_row[r].values()) for r in chunk])
            own_scores = scores[own]
            scores[:, 0] = -torch.inf  # padding
            if not self.bundle.get("catalogue", True):
                scores[:, 1:n_known] = -torch.inf
            scores[:, n_known:] = -torch.inf  # new items: each row gets back its own
            scores[own] = own_scores
            scores[_cells([histories[r] if exclude[r] else [] for r in chunk])] = -torch.inf
            picked = top_k(scores, [ks[r] for r in chunk])
            for r, (order, values) in zip(chunk, picked, strict=True):
                out_ids[r] = [str(names[j]) for j in order]
                out_scores[r] = values
        return out_ids, out_scores

    def _ks(self, df: pd.DataFrame) -> list[int]:
        if "k" not in df.columns:
            return [DEFAULT_K] * len(df)
        ks = []
        for row, value in enumerate(df["k"]):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                ks.append(DEFAULT_K)
                continue
            whole = isinstance(value, int | np.integer) and not isinstance(value, bool)
            if not whole and not (isinstance(value, float | np.floating) and value.is_integer()):
                raise BadRequest(f"row {row}: k must be a whole number, got {value!r}")
            k = int(value)
            if not 1 <= k <= MAX_K:
                raise BadRequest(f"row {row}: k must be between 1 and {MAX_K}, got {k}")
            ks.append(k)
        return ks

    def _popular(self, k: int, new_items: dict[str, int]) -> tuple[list[str], list[float]]:
        """Cold start: the domain's most popular items (share of interactions)."""
        if len(self.popularity) <= 1:
            # No catalogue (the backbone): nothing is popular; new items in given order.
            return list(new_items)[:k], [0.0] * min(k, len(new_items))
        order = np.argsort(-self.popularity[1:], kind="stable")[:k] + 1
        return [str(self.item_ids[i]) for i in order], [float(self.popularity[i]) for i in order]


def _cells(columns_per_row: list[list[int]]) -> tuple[Any, Any]:
    """(row indices, column indices) addressing ``columns_per_row[i]`` of each row ``i``."""
    import torch

    rows = [i for i, cols in enumerate(columns_per_row) for _ in cols]
    cols = [c for cols in columns_per_row for c in cols]
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def top_k(scores: Any, ks: list[int]) -> list[tuple[list[int], list[float]]]:
    """Each row's best ``ks[i]`` columns and their scores, in the order of a stable sort by
    (score descending, column ascending); -inf columns are never returned.

    The same answer as sorting each whole row (the rule of vqrec.core.metrics: items whose
    codes collide tie exactly, and the smaller item_idx wins), at the cost of one
    ``torch.topk`` over the matrix: only the k + 1 best of a row are ordered, and a row
    whose tie crosses the k-th place (the (k+1)-th best scores the same as the k-th, so
    which tied columns get in depends on the column order) is sorted whole.
    """
    import torch

    allowed = (scores > -torch.inf).sum(1).tolist()
    ks = [min(k, n) for k, n in zip(ks, allowed, strict=True)]
    width = min(scores.shape[1], max(ks, default=0) + 1)
    best, where = torch.topk(scores, width, dim=1)
    out = []
    for i, k in enumerate(ks):
        if k == 0:
            out.append(([], []))
            continue
        if k < width and best[i, k] == best[i, k - 1]:
            values, order = torch.sort(scores[i], descending=True, stable=True)
        else:
            columns, _ = torch.sort(where[i, :k])  # ascending, then a stable sort by score
            values, position = torch.sort(scores[i, columns], descending=True, stable=True)
            order = columns[position]
        out.append((order[:k].tolist(), values[:k].tolist()))
    return out


def _resolve_encoder(bundle: dict[str, Any]) -> str:
    """The sentence encoder folder/name whose key matches the one the items were encoded with.

    The key (``vqrec.core.encoder.encoder_key``) hashes the model files, so a model at another
    path (another venv, a serving image) is accepted only if it is the same model.
    """
    from vqrec.core.encoder import default_model_path, encoder_key, resolve_model

    wanted, dim = bundle.get("encoder_key"), int(bundle.get("text_dim") or 0)
    candidates = [
        c
        for c in (os.environ.get("VQREC_ENCODER"), bundle.get("encoder_model"))
        if c and (Path(c).exists() or "/" in c or not Path(c).suffix)
    ]
    candidates.append(default_model_path())
    tried = []
    for candidate in candidates:
        try:
            model_id = resolve_model(candidate)
        except ValueError:
            continue
        if (
            not wanted
            or not dim
            or (Path(model_id).exists() and encoder_key(model_id, dim) == wanted)
        ):
            return model_id
        tried.append(model_id)
    raise ValueError(
        f"no sentence encoder with key {wanted!r} found (tried {tried}); "
        "set $VQREC_ENCODER to the model folder the items were encoded with"
    )


NEW_ITEM = Object([Property("item_id", DataType.string), Property("text", DataType.string)])


def signature() -> ModelSignature:
    """The pyfunc signature: history/k/new_items/exclude_seen in, top-k lists out."""
    inputs = Schema(
        [
            ColSpec(Array(DataType.string), "history"),
            ColSpec(DataType.long, "k", required=False),
            ColSpec(Array(NEW_ITEM), "new_items", required=False),
            ColSpec(DataType.boolean, "exclude_seen", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec(Array(DataType.string), "item_ids"),
            ColSpec(Array(DataType.double), "scores"),
            ColSpec(Array(DataType.string), "unknown_items"),
            ColSpec(DataType.string, "strategy"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)
