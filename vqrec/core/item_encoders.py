"""How an item id becomes a vector: one class per ``ModelConfig.item_encoder`` kind.

* :class:`VQItemEncoder` (``"vq"``, the paper's): an item is its code, D indices into a
  code-embedding table; its representation is the mean of its D code rows. With
  ``transductive=True`` a learned ID row per item is added (zero-initialised, so a new
  item is its code alone).
* :class:`IDItemEncoder` (``"id"``): one learned row per item (ID-only SASRec).
* :class:`TextItemEncoder` (``"text"``): the frozen sentence embedding through a learned
  linear adaptor (UniSRec-style, without the mixture of experts).

The encoders hold no state of their own: the tables stay attributes of the
:class:`~vqrec.core.model.VQRec` module, under the names every saved model and checkpoint
uses (``code_embedding``, ``item_codes``, ``id_embedding``, ``text_adaptor``, ``item_text``).
An encoder only says, for its kind, how those are built, filled, embedded and restored, so
the model and the trainer ask it instead of switching on the kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from vqrec.core.model import ModelConfig, VQRec
    from vqrec.core.sequences import DomainData


class ItemEncoder:
    """The item-representation strategy of a model (see the module docstring)."""

    kind = ""
    # Embed each distinct id of a call once (worth it when an embedding is not a lookup).
    dedupe = True

    def build(self, model: VQRec, n_items: int) -> None:
        """Register this kind's tables on ``model`` (before the Transformer: init order)."""
        raise NotImplementedError

    def after_init(self, model: VQRec) -> None:
        """Fix up after the model's weight init (padding rows, zero-initialised tables)."""
        self.zero_padding(model)

    def zero_padding(self, model: VQRec) -> None:
        """Zero the padding rows: a saved table stays clean, a stray lookup leaks nothing."""

    def set_catalogue(
        self, model: VQRec, codes: Any = None, text: Any = None, n_items: int | None = None
    ) -> None:
        """Fill the catalogue (row i = item_idx i, row 0 padding); see VQRec.set_catalogue."""
        raise NotImplementedError

    def catalogue(self, config: ModelConfig, data: DomainData) -> dict[str, Any]:
        """The ``set_catalogue`` arguments for a domain, after checking it has what we need."""
        raise NotImplementedError

    def embed_unique(self, model: VQRec, ids: torch.LongTensor) -> torch.Tensor:
        """Embeddings of a flat vector of item ids: (U,) -> (U, H); padding id 0 -> zeros."""
        raise NotImplementedError

    def prepare_load(self, model: VQRec, tensors: dict[str, torch.Tensor]) -> None:
        """Size the catalogue tables to a saved model's, so its state dict loads as is."""
        raise NotImplementedError


class VQItemEncoder(ItemEncoder):
    kind = "vq"

    def build(self, model: VQRec, n_items: int) -> None:
        c = model.config
        model.code_embedding = nn.Embedding(c.code_dim * (c.code_cap + 1), c.hidden)
        model.register_buffer("item_codes", torch.zeros(n_items, c.code_dim, dtype=torch.long))
        if c.transductive:
            model.id_embedding = nn.Embedding(n_items, c.hidden, padding_idx=0)

    def after_init(self, model: VQRec) -> None:
        self.zero_padding(model)
        if model.config.transductive:
            nn.init.zeros_(model.id_embedding.weight)

    @torch.no_grad()
    def zero_padding(self, model: VQRec) -> None:
        c = model.config
        model.code_embedding.weight.view(c.code_dim, -1, c.hidden)[:, 0] = 0

    def set_catalogue(
        self, model: VQRec, codes: Any = None, text: Any = None, n_items: int | None = None
    ) -> None:
        c = model.config
        if codes is None:
            raise ValueError("item_encoder='vq' needs codes=(N+1, D) raw codes")
        codes = torch.as_tensor(codes)
        if codes.dim() != 2 or codes.shape[1] != c.code_dim or codes.shape[0] < 1:
            raise ValueError(f"codes must have shape (N+1, {c.code_dim}), got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        codes = codes.long()
        bad = ((codes[1:] < 0) | (codes[1:] >= c.code_cap)).any(dim=1).nonzero()
        if len(bad):
            row = int(bad[0]) + 1
            raise ValueError(
                f"codes row {row} (item_idx {row}) has values outside 0..{c.code_cap - 1}: "
                f"{codes[row].tolist()} ({len(bad)} bad rows)"
            )
        model.item_codes = model.shift_codes(codes).to(model.device)
        model.item_codes[0] = 0  # item 0 = padding: every lookup hits padding row 0
        c.n_items = codes.shape[0]
        if c.transductive:
            self.resize_id_rows(model, c.n_items)

    def catalogue(self, config: ModelConfig, data: DomainData) -> dict[str, Any]:
        if data.codes is None:
            raise ValueError(f"domain {data.name}: item_encoder 'vq' needs codes")
        if data.codes.shape[1] != config.code_dim or data.codes.max() >= config.code_cap:
            raise ValueError(
                f"domain {data.name}: codes of shape {data.codes.shape} (max {data.codes.max()}) "
                f"do not fit code_dim={config.code_dim}, code_cap={config.code_cap}"
            )
        return {"codes": torch.from_numpy(data.codes)}

    def embed_unique(self, model: VQRec, ids: torch.LongTensor) -> torch.Tensor:
        emb = model.embed_shifted(model.item_codes[ids])
        if model.config.transductive:  # row 0 (padding) is zero: padding stays zero
            emb = emb + F.embedding(ids, model.id_embedding.weight, padding_idx=0)
        return emb

    def prepare_load(self, model: VQRec, tensors: dict[str, torch.Tensor]) -> None:
        # Buffers are stored shifted: size the catalogue, then the state dict loads as is.
        model.item_codes = torch.zeros_like(tensors["item_codes"])
        if model.config.transductive:
            self.resize_id_rows(model, tensors["id_embedding.weight"].shape[0])

    @staticmethod
    def resize_id_rows(model: VQRec, n_items: int) -> None:
        """Transductive: an ID table of ``n_items`` rows; rows of items it already had keep
        their values, new rows start at zero (= the item's code alone)."""
        old = model.id_embedding.weight
        if old.shape[0] == n_items:
            return
        table = nn.Embedding(n_items, model.config.hidden, padding_idx=0).to(old.device)
        with torch.no_grad():
            table.weight.zero_()
            keep = min(n_items, old.shape[0])
            table.weight[:keep] = old[:keep]
        model.id_embedding = table


class IDItemEncoder(ItemEncoder):
    kind = "id"
    dedupe = False  # a plain lookup: de-duplication would not pay

    def build(self, model: VQRec, n_items: int) -> None:
        model.id_embedding = nn.Embedding(n_items, model.config.hidden, padding_idx=0)

    @torch.no_grad()
    def zero_padding(self, model: VQRec) -> None:
        model.id_embedding.weight[0] = 0

    def set_catalogue(
        self, model: VQRec, codes: Any = None, text: Any = None, n_items: int | None = None
    ) -> None:
        if n_items is None or n_items < 1:
            raise ValueError("item_encoder='id' needs n_items >= 1 (N+1, incl. padding)")
        table = nn.Embedding(n_items, model.config.hidden, padding_idx=0).to(model.device)
        model.init_weights(table)
        model.id_embedding = table
        self.zero_padding(model)
        model.config.n_items = n_items

    def catalogue(self, config: ModelConfig, data: DomainData) -> dict[str, Any]:
        return {"n_items": data.n_items + 1}

    def embed_unique(self, model: VQRec, ids: torch.LongTensor) -> torch.Tensor:
        return F.embedding(ids, model.id_embedding.weight, padding_idx=0)

    def prepare_load(self, model: VQRec, tensors: dict[str, torch.Tensor]) -> None:
        self.set_catalogue(model, n_items=tensors["id_embedding.weight"].shape[0])


class TextItemEncoder(ItemEncoder):
    kind = "text"

    def build(self, model: VQRec, n_items: int) -> None:
        c = model.config
        model.text_adaptor = nn.Linear(c.text_dim, c.hidden)
        model.register_buffer("item_text", torch.zeros(n_items, c.text_dim))

    def set_catalogue(
        self, model: VQRec, codes: Any = None, text: Any = None, n_items: int | None = None
    ) -> None:
        c = model.config
        if text is None:
            raise ValueError("item_encoder='text' needs text=(N+1, text_dim) embeddings")
        text = torch.as_tensor(text, dtype=torch.float32)
        if text.dim() != 2 or text.shape[1] != c.text_dim:
            raise ValueError(f"text must have shape (N+1, {c.text_dim}), got {tuple(text.shape)}")
        if not torch.isfinite(text).all():
            row = int((~torch.isfinite(text)).any(dim=1).nonzero()[0])
            raise ValueError(f"text embedding row {row} has non-finite values")
        model.item_text = text.clone().to(model.device)
        model.item_text[0] = 0
        c.n_items = text.shape[0]

    def catalogue(self, config: ModelConfig, data: DomainData) -> dict[str, Any]:
        if data.text is None:
            raise ValueError(f"domain {data.name}: item_encoder 'text' needs embeddings")
        return {"text": torch.from_numpy(data.text)}

    def embed_unique(self, model: VQRec, ids: torch.LongTensor) -> torch.Tensor:
        emb = model.text_adaptor(model.item_text[ids])
        return emb * (ids != 0).unsqueeze(-1)  # padding -> zeros (the adaptor has a bias)

    def prepare_load(self, model: VQRec, tensors: dict[str, torch.Tensor]) -> None:
        model.item_text = torch.zeros_like(tensors["item_text"])


ITEM_ENCODERS: dict[str, type[ItemEncoder]] = {
    cls.kind: cls for cls in (VQItemEncoder, IDItemEncoder, TextItemEncoder)
}


def item_encoder(kind: str) -> ItemEncoder:
    """The encoder of a ``ModelConfig.item_encoder`` kind."""
    try:
        return ITEM_ENCODERS[kind]()
    except KeyError:
        raise ValueError(
            f"item_encoder must be one of {tuple(ITEM_ENCODERS)}, not {kind!r}"
        ) from None
