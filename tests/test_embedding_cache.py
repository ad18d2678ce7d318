"""On-disk embedding cache: misses computed once, hits read back, other model weights invalidate, damage."""
import pickle

import h5py
import numpy as np
import pytest
import torch

from lang3d.models.clip import CLIPTextEncoder, load_clip
from lang3d.training.embedding_cache import EmbeddingCache, EmbeddingCacheError, content_key, model_fingerprint


def tiny_text_encoder(seed: int) -> CLIPTextEncoder:
    torch.manual_seed(seed)
    return CLIPTextEncoder(*load_clip("lang3d-tiny-ViT"))


def cached_texts(cache: EmbeddingCache, encoder: CLIPTextEncoder, texts: list[str], calls: list) -> torch.Tensor:
    def compute(index):
        calls.append([texts[i] for i in index])
        return encoder([texts[i] for i in index])
    return cache.get_or_compute([content_key(t) for t in texts], compute)


def namespace(encoder: CLIPTextEncoder) -> str:
    return f"lang3d-tiny-ViT|{model_fingerprint(encoder.model)}|text"


def test_miss_then_hit_across_instances(tmp_path):
    encoder = tiny_text_encoder(0)
    path, texts = tmp_path / "cache.h5", ["a chair", "a lamp", "a chair", "a table"]
    calls: list = []
    cache = EmbeddingCache(path, namespace(encoder))
    first = cached_texts(cache, encoder, texts, calls)
    assert calls == [["a chair", "a lamp", "a table"]]  # the repeated text is computed once
    assert (cache.misses, cache.hits) == (3, 1)
    torch.testing.assert_close(first, encoder(texts).float())
    cache.close()

    reopened = EmbeddingCache(path, namespace(encoder))  # another run: everything is read from the file
    calls.clear()
    again = cached_texts(reopened, encoder, ["a table", "a chair"], calls)
    assert calls == [] and (reopened.misses, reopened.hits) == (0, 2)
    torch.testing.assert_close(again, first[[3, 0]])
    mixed = cached_texts(reopened, encoder, ["a sofa", "a lamp"], calls)
    assert calls == [["a sofa"]] and len(reopened) == 4
    torch.testing.assert_close(mixed, encoder(["a sofa", "a lamp"]).float())
    pickle.loads(pickle.dumps(reopened))  # the open HDF5 handle is not pickled (DataLoader workers, spawn)


def test_other_weights_invalidate(tmp_path):
    path, texts = tmp_path / "cache.h5", ["a chair", "a lamp"]
    a, b, a_again = tiny_text_encoder(0), tiny_text_encoder(1), tiny_text_encoder(0)
    assert model_fingerprint(a.model) == model_fingerprint(a_again.model)
    assert model_fingerprint(a.model) != model_fingerprint(b.model)
    with torch.no_grad():
        a_again.model.ln_final.bias.add_(1e-3)  # any change of the weights, even small, is another model
    assert model_fingerprint(a.model) != model_fingerprint(a_again.model)

    calls: list = []
    from_a = cached_texts(EmbeddingCache(path, namespace(a)), a, texts, calls)
    from_b = cached_texts(EmbeddingCache(path, namespace(b)), b, texts, calls)
    assert len(calls) == 2  # model b missed although the texts are stored for model a
    torch.testing.assert_close(from_b, b(texts).float())
    assert not torch.allclose(from_a, from_b)
    calls.clear()
    cached_texts(EmbeddingCache(path, namespace(a)), a, texts, calls)
    assert calls == []  # model a's rows are still there


def test_content_keys():
    assert len(content_key("chair")) == 64
    assert content_key("chair") != content_key(b"chair")
    image = np.zeros((4, 4, 3), np.uint8)
    assert content_key(image) != content_key(image.reshape(8, 2, 3))  # same bytes, other shape
    assert content_key(image) != content_key(image.astype(np.float32))
    changed = image.copy()
    changed[0, 0, 0] = 1
    assert content_key(image) != content_key(changed)


def test_interrupted_write_and_mismatched_width(tmp_path):
    path = tmp_path / "cache.h5"
    cache = EmbeddingCache(path, "model|text")
    cache.get_or_compute(["k1"], lambda index: torch.ones(1, 3))
    cache.close()
    with h5py.File(path, "a") as f:  # a writer killed after growing the table, before writing the keys
        table = f[cache.group_name]["embeddings"]
        table.resize(5, axis=0)
        table[1:] = 7.0
    cache = EmbeddingCache(path, "model|text")
    out = cache.get_or_compute(["k2", "k1"], lambda index: torch.full((1, 3), 2.0))
    torch.testing.assert_close(out, torch.tensor([[2.0] * 3, [1.0] * 3]))
    assert len(cache) == 2
    with pytest.raises(EmbeddingCacheError, match=str(path.name)):
        cache.get_or_compute(["k3"], lambda index: torch.ones(1, 4))
    with pytest.raises(ValueError, match="\\[M, D\\]"):
        cache.get_or_compute(["k4", "k5"], lambda index: torch.ones(1, 3))
