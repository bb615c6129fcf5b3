"""vqrec.core.encoder: the real bundled MiniLM model, its cache key and batched encoding."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vqrec.core.encoder import (
    default_model_path,
    dimension_in_key,
    embedding_dimension,
    encode_texts,
    encoder_key,
    load_encoder,
    model_name,
    resolve_model,
)
from vqrec.lake.store import validate_name

TEXTS = [
    "PORTER-CABLE 4 1/2-Inch 80 Grit Adhesive-Backed Sanding Roll. Industrial & Scientific.",
    "Super Mario Odyssey - Nintendo Switch",
    "a",
    "Neutrogena Hydro Boost Water Gel, 1.7 Ounce. Beauty Skin Care Face Moisturizers.",
]


def test_default_model_loads_once_and_encodes_like_sentence_transformers():
    model = load_encoder()
    assert load_encoder(None) is model  # per-process cache: a Spark worker loads it once
    assert embedding_dimension(model) == 384
    vectors = encode_texts(model, TEXTS, batch_size=2)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    expected = model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    # Different texts give different vectors; the same text gives the same vector.
    assert not np.allclose(vectors[0], vectors[1])
    again = encode_texts(model, [TEXTS[1]])
    np.testing.assert_allclose(again[0], vectors[1], atol=1e-5)


def test_encode_nothing_returns_an_empty_matrix_of_the_right_width():
    empty = encode_texts(load_encoder(), [])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_encoder_key_depends_on_model_content_and_dimension_not_on_path(tmp_path):
    key = encoder_key(None, 384)
    assert key == encoder_key(default_model_path(), 384)
    assert key.startswith("all-MiniLM-L6-v2-384-")
    assert validate_name(key, "encoder key") == key  # a safe single path component
    assert encoder_key(None, 256) != key

    copy = tmp_path / "my-minilm"
    shutil.copytree(default_model_path(), copy)
    # The same files elsewhere (another venv, another worker) share the cache...
    assert encoder_key(copy, 384).split("-384-")[1] == key.split("-384-")[1]
    assert model_name(copy) == "my-minilm"
    # ...but changed weights do not.
    tokenizer_cfg = copy / "tokenizer_config.json"
    tokenizer_cfg.write_text(tokenizer_cfg.read_text() + "\n")
    assert encoder_key(copy, 384).split("-384-")[1] != key.split("-384-")[1]
    # A key tells its dimension for its own model only (the cache folder names the width).
    assert dimension_in_key(key, None) == 384
    assert dimension_in_key(encoder_key(None, 256), None) == 256
    assert dimension_in_key(key, copy) is None
    assert dimension_in_key(key + "x", None) is None

    assert encoder_key("sentence-transformers/all-mpnet-base-v2", 768).startswith(
        "all-mpnet-base-v2-768-"
    )


def test_bad_model_arguments_get_clear_errors(tmp_path):
    afile = tmp_path / "weights.bin"
    afile.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        resolve_model(afile)
    with pytest.raises(RuntimeError, match="no-such-org/no-such-model"):
        load_encoder("no-such-org/no-such-model")
