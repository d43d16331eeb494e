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
