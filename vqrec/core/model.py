"""The VQ-Rec model: item codes -> code-embedding means -> causal Transformer -> cosine scores.

One class, :class:`VQRec`, serves the paper's model and the two baselines, so that every
variant shares the Transformer, the scoring and the evaluation:

* ``item_encoder="vq"``: an item is its code (D indices, one per sub-vector); its
  representation is the mean of D rows of the code-embedding table. The table has one
  block of M+1 rows per sub-vector; row 0 of each block is padding, so a raw code ``c`` of
  sub-vector ``d`` lives at row ``d * (M + 1) + c + 1`` (the official layout).
* ``item_encoder="id"``: one learned row per item (ID-only SASRec).
* ``item_encoder="text"``: the frozen sentence embedding of the item through a learned
  linear adaptor (UniSRec-style, without the mixture of experts).

Each kind is a class of :mod:`vqrec.core.item_encoders` (``model.items``): it builds,
fills, embeds and restores its tables, so the model never switches on the kind.

Beyond the paper, ``transductive=True`` (vq only) adds one learned ID row per item to its
code mean (UniSRec's transductive fine-tune, MISSRec's "with IDs"). The ID table starts at
zero, so a transferred model starts exactly where the inductive one does, and an item
without an ID row (one unseen in training, coded from its text at serving time) is
represented by its code alone.

The sequence encoder follows RecBole's SASRec / TransformerEncoder: item representation +
learned position, LayerNorm, dropout, post-LN Transformer layers with a GELU feed-forward,
output at the last real position. Scores are cosine similarities divided by a temperature.

Efficiency (the official code builds a (B, L, D, H) tensor and runs at ~350 sequences/s):

* code means go through ``F.embedding_bag(mode="mean")`` on the *unique* items of a call;
* linear layers, LayerNorms and dropouts run on the real tokens only (:class:`Packing`):
  the cost follows sum(lengths), not B * L; only attention sees the padded grid, through
  ``F.scaled_dot_product_attention`` with a causal mask;
* when only the last position is needed, the last layer computes keys/values for every
  token but queries, attention output and feed-forward for the last one only;
* dropout masks come from ``rand_like`` (``bernoulli_`` is slow on CPU).

Permutation learning (transfer): set ``model.code_table_override`` (or use the
``with model.using_code_table(table):`` context manager) to a (D*(M+1), H) tensor, e.g.
``model.blocks_to_table(perm(model.code_blocks()))`` with a
:class:`vqrec.core.permutation.CodePermutation` ``perm``; every item/code embedding then reads
that table instead of the parameter, so gradients flow into the permutation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqrec.core.item_encoders import ITEM_ENCODERS as ENCODER_CLASSES
from vqrec.core.item_encoders import item_encoder

ITEM_ENCODERS = tuple(ENCODER_CLASSES)  # ("vq", "id", "text"): vqrec.core.item_encoders


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`VQRec` (defaults: the paper / RecBole config)."""

    item_encoder: str = "vq"  # "vq" | "id" | "text" (see the module docstring)
    code_dim: int = 32  # D: sub-vectors per item code
    code_cap: int = 256  # M = 2**bits: centroids per sub-vector (+1 padding row per block)
    n_items: int = 0  # catalogue size incl. padding row 0 (set by set_catalogue)
    text_dim: int = 384
    hidden: int = 300
    inner: int = 256  # feed-forward size (the official VQ-Rec/RecBole config)
    layers: int = 2
    heads: int = 2
    dropout: float = 0.5  # hidden dropout
    attn_dropout: float = 0.5
    max_len: int = 50
    temperature: float = 0.07
    layer_norm_eps: float = 1e-12
    transductive: bool = False  # vq: + a learned ID row per catalogue item (zero-initialised)

    def __post_init__(self) -> None:
        if self.item_encoder not in ITEM_ENCODERS:
            raise ValueError(
                f"item_encoder must be one of {ITEM_ENCODERS}, not {self.item_encoder!r}"
            )
        if self.transductive and self.item_encoder != "vq":
            raise ValueError("transductive=True adds ID rows to codes: it needs item_encoder='vq'")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        for name in ("code_dim", "code_cap", "hidden", "inner", "layers", "heads", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**values)


class Dropout(nn.Module):
    """Inverted dropout with the mask drawn by ``rand_like`` (same distribution as
    ``nn.Dropout``; ~5x faster on CPU, where ``bernoulli_`` dominated a training step)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * keep


@dataclass
class Packing:
    """Where the real (non-padding) tokens of a right-padded (B, L) batch are.

    Linear layers, LayerNorms and dropouts run on the T real tokens only ("packed",
    (T, H)); only attention needs the (B, L) grid. Padding positions are never read by a
    real position (the mask is causal), so skipping them changes nothing but the cost.
    """

    batch: int
    length: int
    lengths: torch.Tensor  # (B,) real tokens per row
    flat: torch.Tensor  # (T,) index of each real token in the flattened (B*L) grid
    last: torch.Tensor  # (B,) index of each row's last real token among the T packed ones

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor, length: int) -> Packing:
        real = torch.arange(length, device=lengths.device) < lengths.unsqueeze(1)
        flat = real.reshape(-1).nonzero().squeeze(1)
        return cls(len(lengths), length, lengths, flat, torch.cumsum(lengths, 0) - 1)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(T, C) -> (B, L, C), zeros at padding positions (differentiable)."""
        grid = packed.new_zeros(self.batch * self.length, packed.shape[-1])
        return grid.index_copy(0, self.flat, packed).view(self.batch, self.length, -1)

    def pack(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (T, C), the real positions only."""
        return grid.reshape(self.batch * self.length, -1)[self.flat]


class SelfAttention(nn.Module):
    """Multi-head causal self-attention with RecBole's post-LN residual block."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)  # fused q, k, v: one GEMM
        self.out = nn.Linear(config.hidden, config.hidden)
        self.attn_dropout = config.attn_dropout
        self.dropout = Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, heads, L, H/heads)
        b, length, h = x.shape
        return x.view(b, length, self.heads, h // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, packing: Packing, last_only: bool = False) -> torch.Tensor:
        """x (T, H) packed tokens -> (T, H); with ``last_only``, (B, H) for each row's last
        real token only (queries there, keys/values everywhere: all the last layer needs).

        Keys after a query's position are masked (causal), so right padding never reaches a
        real position.
        """
        h = x.shape[-1]
        p = self.attn_dropout if self.training else 0.0
        if not last_only:
            q, k, v = packing.unpack(self.qkv(x)).split(h, dim=-1)
            ctx = F.scaled_dot_product_attention(
                self._split(q), self._split(k), self._split(v), dropout_p=p, is_causal=True
            )
            ctx = packing.pack(ctx.transpose(1, 2))
            residual = x
        else:
            residual = x[packing.last]  # (B, H)
            w_q, w_kv = self.qkv.weight.split([h, 2 * h])
            b_q, b_kv = self.qkv.bias.split([h, 2 * h])
            q = F.linear(residual, w_q, b_q).unsqueeze(1)  # (B, 1, H)
            k, v = packing.unpack(F.linear(x, w_kv, b_kv)).split(h, dim=-1)
            positions = torch.arange(packing.length, device=x.device)
            keep = positions < packing.lengths.unsqueeze(1)  # (B, L): the row's real keys
            ctx = F.scaled_dot_product_attention(
                self._split(q),
                self._split(k),
                self._split(v),
                attn_mask=keep[:, None, None, :],
                dropout_p=p,
            )
            ctx = ctx.transpose(1, 2).reshape(-1, h)
        return self.norm(self.dropout(self.out(ctx)) + residual)


class FeedForward(nn.Module):
    """RecBole's point-wise feed-forward: Linear -> GELU -> Linear -> dropout, post-LN."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden, config.inner)
        self.fc2 = nn.Linear(config.inner, config.hidden)
        self.dropout = Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dropout(self.fc2(F.gelu(self.fc1(x)))) + x)


class TransformerLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.feed_forward = FeedForward(config)

    def forward(self, x: torch.Tensor, packing: Packing, last_only: bool = False) -> torch.Tensor:
        return self.feed_forward(self.attention(x, packing, last_only))


class VQRec(nn.Module):
    """SASRec-style sequential recommender over vq / id / text item representations."""

    # Parameter-name prefixes of the two halves of a checkpoint (see the *_state_dict methods).
    BACKBONE_PREFIXES = ("position_embedding.", "layers.", "input_norm.")
    ITEM_TABLE_PREFIXES = ("code_embedding.", "id_embedding.", "text_adaptor.")

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = dataclasses.replace(config)  # own copy: set_catalogue updates n_items
        c = self.config
        n_items = max(c.n_items, 1)
        # How item ids become vectors (vq / id / text): its tables come first (init order).
        self.items = item_encoder(c.item_encoder)
        self.items.build(self, n_items)
        self.position_embedding = nn.Embedding(c.max_len, c.hidden)
        self.input_norm = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)
        self.input_dropout = Dropout(c.dropout)
        self.layers = nn.ModuleList(TransformerLayer(c) for _ in range(c.layers))
        # A (D*(M+1), H) tensor that replaces code_embedding.weight when set (permutation
        # learning). Not a parameter and not saved.
        self.code_table_override: torch.Tensor | None = None
        self.apply(self.init_weights)
        self.items.after_init(self)

    # ------------------------------------------------------------------ initialisation
    @staticmethod
    def init_weights(module: nn.Module) -> None:
        """RecBole's init: normal(0, 0.02) for Linear/Embedding, LayerNorm 1/0, biases 0."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    @property
    def device(self) -> torch.device:
        return self.position_embedding.weight.device

    # ------------------------------------------------------------------ catalogue
    def set_catalogue(
        self,
        codes: torch.LongTensor | None = None,
        text: torch.Tensor | None = None,
        n_items: int | None = None,
    ) -> None:
        """The items the model can embed: row i = item_idx i, row 0 = padding.

        vq: ``codes`` (N+1, D) raw codes in 0..M-1 (row 0 ignored); stored as a buffer,
        shifted +1 and offset per block internally. text: ``text`` (N+1, text_dim) float.
        id: ``n_items`` = N+1 (re-sizes and re-initialises the id table: build the
        optimizer afterwards).
        """
        self.items.set_catalogue(self, codes=codes, text=text, n_items=n_items)

    def shift_codes(self, codes: torch.LongTensor) -> torch.LongTensor:
        """Raw codes [..., D] in 0..M-1 -> rows of the code table (+1, offset per block)."""
        c = self.config
        offsets = torch.arange(c.code_dim, device=codes.device) * (c.code_cap + 1) + 1
        return codes.long() + offsets

    # ------------------------------------------------------------------ item representations
    def code_table(self) -> torch.Tensor:
        """The (D*(M+1), H) code table in use: the override when set, else the parameter."""
        if self.code_table_override is not None:
            return self.code_table_override
        return self.code_embedding.weight

    def code_blocks(self) -> torch.Tensor:
        """The code-embedding parameter as (D, M, H) blocks, padding rows dropped (a view)."""
        c = self.config
        return self.code_embedding.weight.view(c.code_dim, c.code_cap + 1, c.hidden)[:, 1:]

    def blocks_to_table(self, blocks: torch.Tensor) -> torch.Tensor:
        """(D, M, H) blocks -> a (D*(M+1), H) table with zero padding rows (differentiable)."""
        d, m, h = blocks.shape
        pad = blocks.new_zeros(d, 1, h)
        return torch.cat([pad, blocks], dim=1).reshape(d * (m + 1), h)

    @contextlib.contextmanager
    def using_code_table(self, table: torch.Tensor) -> Iterator[None]:
        """Run the model with ``table`` (D*(M+1), H) as its code table inside the block."""
        c = self.config
        expected = (c.code_dim * (c.code_cap + 1), c.hidden)
        if tuple(table.shape) != expected:
            raise ValueError(f"code table must have shape {expected}, got {tuple(table.shape)}")
        previous, self.code_table_override = self.code_table_override, table
        try:
            yield
        finally:
            self.code_table_override = previous

    def embed_shifted(self, shifted: torch.LongTensor) -> torch.Tensor:
        """(U, D) shifted codes -> (U, H) means of their rows of the code table in use."""
        # (U, D) shifted codes -> (U, H) means; padding_idx=0 is excluded from the mean, so
        # an all-padding bag (item 0) gives zeros.
        return F.embedding_bag(shifted, self.code_table(), mode="mean", padding_idx=0)

    def item_embeddings(self, item_ids: torch.LongTensor) -> torch.Tensor:
        """Item ids [...] -> representations [..., H]; padding id 0 -> zeros.

        Each distinct id is embedded once (a batch of histories repeats items a lot).
        """
        n = self.config.n_items
        flat = item_ids.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= max(n, 1)):
            raise IndexError(
                f"item ids must be in 0..{max(n, 1) - 1} (catalogue of {n} rows), "
                f"got min {int(flat.min())} max {int(flat.max())}"
            )
        if not self.items.dedupe:
            emb = self.items.embed_unique(self, flat)
        else:
            unique, inverse = torch.unique(flat, return_inverse=True)
            emb = self.items.embed_unique(self, unique)[inverse]
        return emb.view(*item_ids.shape, self.config.hidden)

    def code_embeddings(self, codes: torch.LongTensor) -> torch.Tensor:
        """Raw codes [..., D] in 0..M-1 -> [..., H], the mean of their D code rows.

        Used for semi-synthetic negatives and for items unseen in training (which have no
        ID row in a transductive model: they are their code alone).
        """
        c = self.config
        if c.item_encoder != "vq":
            raise RuntimeError(f"code_embeddings needs item_encoder='vq', not {c.item_encoder!r}")
        if codes.shape[-1] != c.code_dim:
            raise ValueError(f"codes must end in D={c.code_dim}, got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= c.code_cap):
            raise ValueError(f"codes must be in 0..{c.code_cap - 1}")
        flat = self.shift_codes(codes.reshape(-1, c.code_dim))
        return self.embed_shifted(flat).view(*codes.shape[:-1], c.hidden)

    def all_item_embeddings(self) -> torch.Tensor:
        """Representations of the whole catalogue: (N+1, H), row 0 (padding) zeros."""
        ids = torch.arange(max(self.config.n_items, 1), device=self.device)
        return self.items.embed_unique(self, ids)

    # ------------------------------------------------------------------ sequence encoder
    def encode(
        self,
        history: torch.LongTensor,
        lengths: torch.LongTensor,
        all_positions: bool = False,
        history_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode right-padded histories with the causal Transformer.

        history (B, L) item ids right-padded with 0, any L <= max_len; lengths (B,) >= 1.
        Returns the output at position lengths-1: (B, H); with all_positions=True: (B, L, H)
        (zeros at positions >= lengths). ``history_emb`` (B, L, H) lets a caller pass item
        representations it already computed together with other ids (e.g. the targets), so
        each distinct item is embedded once per step.

        Only the real tokens go through the linear layers (see :class:`Packing`), so the
        cost follows sum(lengths), not B * L.
        """
        b, length = history.shape
        if length > self.config.max_len:
            raise ValueError(f"history length {length} exceeds max_len {self.config.max_len}")
        if lengths.shape != (b,):
            raise ValueError(f"lengths must have shape ({b},), got {tuple(lengths.shape)}")
        if b and (int(lengths.min()) < 1 or int(lengths.max()) > length):
            raise ValueError(f"lengths must be in 1..{length}")
        packing = Packing.from_lengths(lengths.to(history.device), length)
        if history_emb is None:
            x = self.item_embeddings(history.reshape(-1)[packing.flat])  # (T, H)
        else:
            x = packing.pack(history_emb)
        x = x + self.position_embedding(packing.flat % length)
        x = self.input_dropout(self.input_norm(x))
        for i, layer in enumerate(self.layers):
            if not all_positions and i == len(self.layers) - 1:
                # Causal: the last layer's output at lengths-1 needs only that query.
                return layer(x, packing, last_only=True)
            x = layer(x, packing)
        return packing.unpack(x) if all_positions else x[packing.last]

    def score(self, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """cosine(seq, items) / temperature: (B, H) x (N, H) -> (B, N)."""
        return F.normalize(seq, dim=-1) @ F.normalize(items, dim=-1).T / self.config.temperature

    # ------------------------------------------------------------------ freezing
    def freeze_backbone(self) -> None:
        """Freeze the Transformer and positions; the item table and input LayerNorm train."""
        for name, param in self.named_parameters():
            frozen = name.startswith(self.BACKBONE_PREFIXES) and not name.startswith("input_norm.")
            param.requires_grad_(not frozen)

    def unfreeze_all(self) -> None:
        for param in self.parameters():
            param.requires_grad_(True)

    # ------------------------------------------------------------------ checkpoints
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Transformer + positions + input LayerNorm: what every domain shares."""
        return {
            k: v.detach().clone()
            for k, v in self.state_dict().items()
            if k.startswith(self.BACKBONE_PREFIXES)
        }

    def lookup_table_state_dict(self) -> dict[str, torch.Tensor]:
        """The domain's item table (code table / id table / text adaptor) + input LayerNorm."""
        return {
            k: v.detach().clone()
            for k, v in self.state_dict().items()
            if k.startswith(self.ITEM_TABLE_PREFIXES + ("input_norm.",))
        }

    def _load_part(self, state: dict[str, torch.Tensor], expected: set[str], what: str) -> None:
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(
                f"{what} does not fit this model: missing {sorted(missing)}, "
                f"unexpected {sorted(unexpected)}"
            )
        own = self.state_dict()
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ValueError(
                    f"{what}: {k} has shape {tuple(v.shape)}, model {tuple(own[k].shape)}"
                )
        self.load_state_dict(state, strict=False)

    def load_backbone_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a backbone (from any catalogue) into this model; item tables are untouched."""
        self._load_part(state, set(self.backbone_state_dict()), "backbone state dict")

    def load_lookup_table_state_dict(
        self, state: dict[str, torch.Tensor], without_id_rows: bool = False
    ) -> None:
        """Load a domain's lookup table (and input LayerNorm) into this model.

        ``without_id_rows``: ``state`` comes from an inductive model (a pre-trained backbone)
        and this model's ID rows, if any, keep their values.
        """
        expected = set(self.lookup_table_state_dict())
        if without_id_rows:
            expected = {k for k in expected if not k.startswith("id_embedding.")}
        self._load_part(state, expected, "lookup table state dict")


# ---------------------------------------------------------------------- safetensors files
def _save(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"vqrec": json.dumps(meta, sort_keys=True)})


def _load(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file: a format without code, so a crafted file
    (a pickle renamed .safetensors) is refused with a clear error, never executed."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vqrec", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except SafetensorError as err:
        raise ValueError(f"{path} is not a valid safetensors file ({err})") from err
    return tensors, meta


def save_backbone(model: VQRec, path: str | os.PathLike[str]) -> None:
    """Write the backbone (Transformer + positions + input LayerNorm) with its config."""
    _save(model.backbone_state_dict(), path, {"part": "backbone", "config": model.config.to_dict()})


def load_backbone(model: VQRec, path: str | os.PathLike[str]) -> None:
    """Load a backbone file into ``model`` (any catalogue; architecture must match)."""
    tensors, meta = _load(path)
    if meta.get("part") not in (None, "backbone"):
        raise ValueError(f"{path} holds a {meta.get('part')!r}, not a backbone")
    model.load_backbone_state_dict(tensors)


def save_lookup_table(model: VQRec, path: str | os.PathLike[str]) -> None:
    """Write the domain's lookup table (+ input LayerNorm) alone."""
    meta = {"part": "lookup_table", "config": model.config.to_dict()}
    _save(model.lookup_table_state_dict(), path, meta)


def load_lookup_table(model: VQRec, path: str | os.PathLike[str]) -> None:
    """Load a lookup-table file into ``model`` (which already holds a backbone)."""
    tensors, meta = _load(path)
    if meta.get("part") not in (None, "lookup_table"):
        raise ValueError(f"{path} holds a {meta.get('part')!r}, not a lookup table")
    model.load_lookup_table_state_dict(tensors)


def save_model(model: VQRec, path: str | os.PathLike[str]) -> None:
    """Write everything needed to score: weights, the catalogue (codes/text) and the config."""
    _save(model.state_dict(), path, {"part": "model", "config": model.config.to_dict()})


def load_model(path: str | os.PathLike[str], map_location: str = "cpu") -> VQRec:
    """Rebuild a :class:`VQRec` written by :func:`save_model`."""
    tensors, meta = _load(path)
    if meta.get("part") != "model" or "config" not in meta:
        raise ValueError(f"{path} is not a full VQRec model file (part={meta.get('part')!r})")
    model = VQRec(ModelConfig.from_dict(meta["config"]))
    model.items.prepare_load(model, tensors)
    model.load_state_dict(tensors, strict=True)
    return model.to(map_location)


__all__ = [
    "ModelConfig",
    "VQRec",
    "save_backbone",
    "load_backbone",
    "save_lookup_table",
    "load_lookup_table",
    "save_model",
    "load_model",
]
