"""VQRec model: shapes, padding, causal masking, state-dict split, freezing, determinism."""

from __future__ import annotations

import pytest
import torch

from vqrec.core.model import (
    ModelConfig,
    VQRec,
    load_backbone,
    load_lookup_table,
    load_model,
    save_backbone,
    save_lookup_table,
    save_model,
)

N_ITEMS = 30  # real items; the catalogue has N_ITEMS + 1 rows (row 0 = padding)
D, M, TEXT_DIM = 4, 8, 12


def tiny_config(item_encoder: str = "vq", **overrides) -> ModelConfig:
    values = dict(
        item_encoder=item_encoder,
        code_dim=D,
        code_cap=M,
        text_dim=TEXT_DIM,
        hidden=16,
        inner=24,
        layers=2,
        heads=2,
        dropout=0.1,
        attn_dropout=0.1,
        max_len=10,
    )
    values.update(overrides)
    return ModelConfig(**values)


def tiny_model(item_encoder: str = "vq", n_items: int = N_ITEMS, seed: int = 0, **kw) -> VQRec:
    torch.manual_seed(seed)
    model = VQRec(tiny_config(item_encoder, **kw))
    gen = torch.Generator().manual_seed(seed + 100)
    if item_encoder == "vq":
        model.set_catalogue(codes=torch.randint(0, M, (n_items + 1, D), generator=gen))
    elif item_encoder == "text":
        model.set_catalogue(text=torch.randn(n_items + 1, TEXT_DIM, generator=gen))
    else:
        model.set_catalogue(n_items=n_items + 1)
    return model


def batch(seed: int = 0, b: int = 5, length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded histories with lengths 1..length."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (b,), generator=gen)
    lengths[0] = length  # at least one full row
    history = torch.randint(1, N_ITEMS + 1, (b, length), generator=gen)
    history[torch.arange(length) >= lengths.unsqueeze(1)] = 0
    return history, lengths


ENCODERS = ["vq", "id", "text"]


@pytest.mark.parametrize("item_encoder", ENCODERS)
def test_shapes(item_encoder):
    model = tiny_model(item_encoder)
    history, lengths = batch()
    assert model.encode(history, lengths).shape == (5, 16)
    assert model.encode(history, lengths, all_positions=True).shape == (5, 8, 16)
    assert model.item_embeddings(history).shape == (5, 8, 16)
    items = model.all_item_embeddings()
    assert items.shape == (N_ITEMS + 1, 16)
    assert model.score(model.encode(history, lengths), items).shape == (5, N_ITEMS + 1)
    assert model.config.n_items == N_ITEMS + 1


@pytest.mark.parametrize("item_encoder", ENCODERS)
def test_padding_id_embeds_to_zero(item_encoder):
    model = tiny_model(item_encoder)
    emb = model.item_embeddings(torch.tensor([[0, 3, 0]]))
    assert torch.count_nonzero(emb[0, 0]) == 0 and torch.count_nonzero(emb[0, 2]) == 0
    assert emb[0, 1].abs().sum() > 0
    assert torch.count_nonzero(model.all_item_embeddings()[0]) == 0


def test_vq_item_is_mean_of_its_code_rows():
    model = tiny_model("vq")
    raw = model.item_codes - model.shift_codes(torch.zeros(1, D, dtype=torch.long))
    weight = model.code_embedding.weight
    item = 7
    rows = [weight[d * (M + 1) + int(raw[item, d]) + 1] for d in range(D)]
    expected = torch.stack(rows).mean(0)
    torch.testing.assert_close(model.item_embeddings(torch.tensor([item]))[0], expected)
    torch.testing.assert_close(model.code_embeddings(raw[item]), expected)


@pytest.mark.parametrize("item_encoder", ENCODERS)
def test_causal_masking(item_encoder):
    model = tiny_model(item_encoder).eval()
    history = torch.randint(1, N_ITEMS + 1, (3, 8), generator=torch.Generator().manual_seed(1))
    lengths = torch.full((3,), 8)
    before = model.encode(history, lengths, all_positions=True)
    changed = history.clone()
    changed[:, 5] = changed[:, 5] % N_ITEMS + 1  # a different item at position 5
    after = model.encode(changed, lengths, all_positions=True)
    torch.testing.assert_close(before[:, :5], after[:, :5])  # earlier positions: unchanged
    assert (before[:, 5:] - after[:, 5:]).abs().max() > 1e-4  # later ones do change


@pytest.mark.parametrize("item_encoder", ENCODERS)
def test_padding_after_lengths_does_not_matter(item_encoder):
    model = tiny_model(item_encoder).eval()
    history, lengths = batch(seed=2)
    out = model.encode(history, lengths)
    # Garbage after the lengths (real item ids, not padding) changes nothing.
    garbage = history.clone()
    tail = torch.arange(8) >= lengths.unsqueeze(1)
    garbage[tail] = torch.randint(1, N_ITEMS + 1, (int(tail.sum()),))
    torch.testing.assert_close(model.encode(garbage, lengths), out)
    # Padding only to the longest history (any L <= max_len) gives the same output, and so
    # does a longer padding up to max_len.
    short = history[1:, : int(lengths[1:].max())]
    torch.testing.assert_close(model.encode(short, lengths[1:]), out[1:])
    wide = torch.cat([history, torch.zeros(5, 2, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model.encode(wide, lengths), out)
    # The last-position shortcut equals the full output gathered at lengths-1; positions
    # after the lengths are zeros.
    full = model.encode(history, lengths, all_positions=True)
    torch.testing.assert_close(full[torch.arange(5), lengths - 1], out)
    assert torch.count_nonzero(full[tail]) == 0 and torch.count_nonzero(full[~tail].abs() > 0)


def test_bad_input_gets_clear_errors():
    model = tiny_model("vq")
    bad = torch.randint(0, M, (N_ITEMS + 1, D))
    bad[4, 2] = M  # out of range
    with pytest.raises(ValueError, match="row 4"):
        model.set_catalogue(codes=bad)
    with pytest.raises(ValueError, match="shape"):
        model.set_catalogue(codes=torch.zeros(5, D + 1, dtype=torch.long))
    with pytest.raises(IndexError, match="item ids"):
        model.item_embeddings(torch.tensor([N_ITEMS + 1]))
    with pytest.raises(ValueError, match="max_len"):
        model.encode(torch.ones(1, 11, dtype=torch.long), torch.tensor([11]))
    with pytest.raises(ValueError, match="lengths"):
        model.encode(torch.ones(1, 4, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match="item_encoder"):
        ModelConfig(item_encoder="bert")


def _train_steps(model: VQRec, steps: int = 3) -> list[float]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(steps):
        history, lengths = batch(seed=step)
        targets = torch.arange(1, 6) + step
        logits = model.score(model.encode(history, lengths), model.all_item_embeddings())
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_deterministic_with_seed():
    a, b = tiny_model("vq", seed=3), tiny_model("vq", seed=3)
    torch.manual_seed(11)
    losses_a = _train_steps(a.train())
    torch.manual_seed(11)
    losses_b = _train_steps(b.train())
    assert losses_a == losses_b
    assert losses_a[-1] != losses_a[0]


def test_recbole_initialisation():
    model = VQRec(tiny_config("vq", hidden=64, inner=64))
    std = model.code_blocks().std().item()
    assert 0.015 < std < 0.025
    assert torch.count_nonzero(model.code_embedding.weight.view(D, M + 1, 64)[:, 0]) == 0
    norm = model.layers[0].attention.norm
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    assert torch.all(model.layers[0].feed_forward.fc1.bias == 0)


def test_state_dict_split_and_files(tmp_path):
    source = tiny_model("vq", seed=0)
    _train_steps(source.train())  # so nothing is at its initial value
    backbone, table = source.backbone_state_dict(), source.lookup_table_state_dict()
    assert "code_embedding.weight" in table and "code_embedding.weight" not in backbone
    assert any(k.startswith("layers.") for k in backbone)
    assert not any(k.startswith(("layers.", "position_embedding.")) for k in table)
    assert "item_codes" not in backbone and "item_codes" not in table

    save_backbone(source, tmp_path / "backbone.safetensors")
    save_lookup_table(source, tmp_path / "table.safetensors")
    # A model with another catalogue (7 more items) takes the backbone...
    other = tiny_model("vq", n_items=N_ITEMS + 7, seed=5)
    raw = source.item_codes - source.shift_codes(torch.zeros(1, D, dtype=torch.long))
    raw[0] = 0
    other.set_catalogue(codes=torch.cat([raw, torch.randint(0, M, (7, D))]))
    load_backbone(other, tmp_path / "backbone.safetensors")
    for k, v in backbone.items():
        torch.testing.assert_close(other.state_dict()[k], v)
    # ...and the table alone; with both, it encodes the shared items as the source does.
    load_lookup_table(other, tmp_path / "table.safetensors")
    source.eval(), other.eval()
    history, lengths = batch()
    torch.testing.assert_close(source.encode(history, lengths), other.encode(history, lengths))
    # A lookup table is not a backbone.
    with pytest.raises(ValueError, match="not a backbone"):
        load_backbone(other, tmp_path / "table.safetensors")


def test_id_backbone_into_other_catalogue(tmp_path):
    source = tiny_model("id", n_items=N_ITEMS)
    save_backbone(source, tmp_path / "backbone.safetensors")
    save_lookup_table(source, tmp_path / "table.safetensors")
    other = tiny_model("id", n_items=N_ITEMS + 3)
    load_backbone(other, tmp_path / "backbone.safetensors")
    with pytest.raises(ValueError, match="shape"):  # an id table fits its own catalogue only
        load_lookup_table(other, tmp_path / "table.safetensors")


@pytest.mark.parametrize("item_encoder", ENCODERS)
def test_save_and_load_full_model(tmp_path, item_encoder):
    model = tiny_model(item_encoder).eval()
    save_model(model, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path / "model.safetensors").eval()
    assert loaded.config == model.config
    history, lengths = batch()
    torch.testing.assert_close(
        loaded.score(loaded.encode(history, lengths), loaded.all_item_embeddings()),
        model.score(model.encode(history, lengths), model.all_item_embeddings()),
    )


def test_freeze_backbone_trains_only_the_lookup_table():
    model = tiny_model("vq")
    model.freeze_backbone()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"code_embedding.weight", "input_norm.weight", "input_norm.bias"}
    backbone_before = {
        k: v for k, v in model.backbone_state_dict().items() if not k.startswith("input_norm.")
    }
    table_before = model.code_embedding.weight.detach().clone()
    _train_steps(model.train())
    for k, v in backbone_before.items():
        torch.testing.assert_close(model.state_dict()[k], v)
    assert not torch.equal(model.code_embedding.weight, table_before)
    model.unfreeze_all()
    assert all(p.requires_grad for p in model.parameters())


def test_code_table_override():
    model = tiny_model("vq").eval()
    history, lengths = batch()
    out = model.encode(history, lengths)
    same = model.blocks_to_table(model.code_blocks())
    with model.using_code_table(same):
        torch.testing.assert_close(model.encode(history, lengths), out)
    with model.using_code_table(torch.randn_like(same)):
        assert (model.encode(history, lengths) - out).abs().max() > 1e-3
    assert model.code_table_override is None
    torch.testing.assert_close(model.encode(history, lengths), out)


def test_history_emb_matches_internal_lookup():
    model = tiny_model("text").eval()
    history, lengths = batch()
    targets = torch.arange(1, 6)
    ids = torch.cat([history.reshape(-1), targets])
    emb = model.item_embeddings(ids)
    history_emb = emb[: history.numel()].view(*history.shape, -1)
    torch.testing.assert_close(
        model.encode(history, lengths, history_emb=history_emb), model.encode(history, lengths)
    )


def recbole_reference(model: VQRec, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """RecBole's SASRec forward written out plainly (eval mode): full padded grid, the
    official (B, L, D, H) code lookup, an additive -10000 mask on padding and future keys."""
    c = model.config
    b, length = history.shape
    shifted = model.item_codes[history]  # (B, L, D)
    x = model.code_embedding.weight[shifted].mean(-2)  # (B, L, D, H) -> (B, L, H)
    x = x * (history != 0).unsqueeze(-1)  # padding items are zero
    x = model.input_norm(x + model.position_embedding.weight[:length])
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool)) & (history != 0)[:, None, :]
    additive = (~allowed).float().unsqueeze(1) * -10000.0  # (B, 1, L, L)
    dh = c.hidden // c.heads
    for layer in model.layers:
        att = layer.attention
        q, k, v = att.qkv(x).split(c.hidden, dim=-1)
        q, k, v = (t.view(b, length, c.heads, dh).transpose(1, 2) for t in (q, k, v))
        probs = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5 + additive, dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(b, length, c.hidden)
        x = att.norm(att.out(ctx) + x)
        ff = layer.feed_forward
        x = ff.norm(ff.fc2(torch.nn.functional.gelu(ff.fc1(x))) + x)
    return x[torch.arange(b), lengths - 1]


def test_encode_matches_recbole_reference():
    model = tiny_model("vq").eval()
    history, lengths = batch(seed=4, b=7)
    torch.testing.assert_close(
        model.encode(history, lengths), recbole_reference(model, history, lengths)
    )


def test_dropout_keeps_expectation():
    from vqrec.core.model import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.5).train()
    out = drop(torch.ones(200_000))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(drop.eval()(torch.ones(5)), torch.ones(5))


def test_transductive_adds_id_rows_that_start_at_zero_and_fall_back_to_codes(tmp_path):
    torch.manual_seed(0)
    codes = torch.randint(0, M, (N_ITEMS + 1, D))
    inductive = VQRec(tiny_config())
    inductive.set_catalogue(codes=codes)
    model = VQRec(tiny_config(transductive=True))
    model.set_catalogue(codes=codes)
    model.load_backbone_state_dict(inductive.backbone_state_dict())
    model.load_lookup_table_state_dict(inductive.lookup_table_state_dict(), without_id_rows=True)
    assert model.id_embedding.weight.shape == (N_ITEMS + 1, 16)
    # Zero ID rows: the transferred model starts exactly where the inductive one is.
    torch.testing.assert_close(model.all_item_embeddings(), inductive.all_item_embeddings())
    with torch.no_grad():
        model.id_embedding.weight[1:] = torch.randn(N_ITEMS, 16)
    ids = torch.tensor([0, 3, 7])
    expected = inductive.item_embeddings(ids) + model.id_embedding.weight[ids]
    torch.testing.assert_close(model.item_embeddings(ids), expected)
    assert model.item_embeddings(torch.tensor([0])).abs().sum() == 0  # padding stays zero
    # Only the item table (codes + ID rows) and the input LayerNorm train in transfer.
    model.freeze_backbone()
    assert model.id_embedding.weight.requires_grad and model.code_embedding.weight.requires_grad
    # A larger catalogue keeps the trained ID rows; the new item is its code alone.
    grown = torch.cat([codes, torch.randint(0, M, (1, D))])
    before = model.id_embedding.weight.detach().clone()
    model.set_catalogue(codes=grown)
    torch.testing.assert_close(model.id_embedding.weight[: N_ITEMS + 1], before)
    new = torch.tensor([N_ITEMS + 1])
    torch.testing.assert_close(model.item_embeddings(new), model.code_embeddings(grown[new]))
    # Saved and loaded with its ID rows.
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config.transductive
    torch.testing.assert_close(loaded.all_item_embeddings(), model.all_item_embeddings())
    with pytest.raises(ValueError, match="transductive"):
        tiny_config("id", transductive=True)
