"""The embedding cache under concurrent writers and damage: never a silently wrong entry."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
from test_cache import _embedding, _key

from napari_sam.volume.cache import EmbeddingCache


def _writer(path: str, seed: int, rounds: int) -> None:
    cache = EmbeddingCache(path, _key())
    emb = _embedding(seed=seed)
    emb.features[...] += 10.0  # never zero
    for _ in range(rounds):
        for t in range(4):
            cache.put(0, t, emb)


def test_concurrent_writers_never_leave_zero_or_mixed_entries(tmp_path):
    path = str(tmp_path / "c")
    EmbeddingCache(path, _key())
    candidates = []
    for seed in range(3):
        emb = _embedding(seed=seed)
        emb.features[...] += 10.0
        candidates.append(emb.features)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, seed, 15)) for seed in range(3)]
    for p in procs:
        p.start()
    reader = EmbeddingCache(path)
    seen = 0
    while any(p.is_alive() for p in procs):
        for t in range(4):
            emb = reader.get(0, t)
            if emb is not None:  # a complete entry is one writer's data, whole
                assert any(np.array_equal(emb.features, c) for c in candidates), "mixed or zero-filled entry"
                seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    for t in range(4):
        assert any(np.array_equal(reader.get(0, t).features, c) for c in candidates)
    leftovers = [p.name for p in Path(path).rglob(".*") if p.name.startswith(".t")]
    assert leftovers == []


def test_corrupt_cache_chunk_names_store_entry_and_reset(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", _key())
    cache.put(1, 0, _embedding())
    chunks = [p for p in (tmp_path / "c" / "s1" / "t0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(os.urandom(37))
    with pytest.raises(ValueError) as exc:
        EmbeddingCache(tmp_path / "c").get(1, 0)
    text = str(exc.value)
    assert str(tmp_path / "c") in text and "s1/t0" in text and "--reset-cache" in text


def test_cache_path_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "c").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        EmbeddingCache(tmp_path / "c", _key())


def test_weights_identity_follows_the_content_not_the_path(tmp_path, monkeypatch):
    import hashlib

    from napari_sam.volume import cache as cache_mod

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "models"))
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"first weights")
    first = cache_mod.weights_identity("vit_b", ckpt)
    assert first == "vit_b|sha256:" + hashlib.sha256(b"first weights").hexdigest()
    ckpt.write_bytes(b"other weights, same path")
    os.utime(ckpt, ns=(1, 2))
    assert cache_mod.weights_identity("vit_b", ckpt) != first
    # remembered by size + mtime: a second process reads the digest instead of hashing again
    cache_mod._DIGESTS.clear()
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(cache_mod.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert cache_mod.weights_identity("vit_b", ckpt).endswith(real(b"other weights, same path").hexdigest())
    assert calls == []


def test_new_weights_at_the_same_path_do_not_reuse_the_cache(tmp_path, monkeypatch):
    from napari_sam.volume.cache import CacheMismatchError
    from napari_sam.volume.source import volume_cache_key as cache_key

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "models"))
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"a")
    view = np.zeros((2, 8, 8), np.uint16)
    meta = {"path": None}
    key = cache_key(view, meta, "vit_b", ckpt, [[0, 1]], None, None, {})
    EmbeddingCache(tmp_path / "c", key)
    ckpt.write_bytes(b"b")
    with pytest.raises(CacheMismatchError, match="model"):
        EmbeddingCache(tmp_path / "c", cache_key(view, meta, "vit_b", ckpt, [[0, 1]], None, None, {}))
