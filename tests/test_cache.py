"""EmbeddingCache: round trip, key mismatch detection, incomplete entries, CachingPredictor."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_sam.predict.predictor import Embedding
from napari_sam.volume.cache import CacheMismatchError, CachingPredictor, EmbeddingCache, data_identity, make_key


def _embedding(seed=0, size=(40, 50)):
    rng = np.random.default_rng(seed)
    return Embedding(features=rng.standard_normal((1, 8, 4, 4)).astype(np.float32), original_size=size,
                     input_size=(819, 1024), image_size=1024, model_id="tiny")


def _key(**over):
    parts = dict(model_id="tiny|None", contrast_limits=[[0.0, 1000.0]],
                 tile_layout={"tile_shape": None, "halo": None, "crop_n_layers": 0},
                 data=data_identity(np.arange(3 * 40 * 50).reshape(3, 40, 50), path=None))
    parts.update(over)
    return make_key(**parts)


def test_put_get_round_trip_is_exact(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", _key())
    emb = _embedding()
    assert cache.get(2, 1) is None and (2, 1) not in cache
    cache.put(2, 1, emb)
    back = EmbeddingCache(tmp_path / "c").get(2, 1)  # reopened from disk with the stored key
    assert isinstance(back, Embedding)
    np.testing.assert_array_equal(back.features, emb.features)
    assert (back.original_size, back.input_size, back.image_size, back.model_id) == (
        (40, 50), (819, 1024), 1024, "tiny")
    assert cache.entries() == [(2, 1)]


@pytest.mark.parametrize("change, field", [
    ({"model_id": "other|None"}, "model"),
    ({"contrast_limits": [[0.0, 2000.0]]}, "contrast_limits"),
    ({"tile_layout": {"tile_shape": [512, 512], "halo": [64, 64], "crop_n_layers": 0}}, "tile_layout"),
    ({"data": data_identity(np.ones((3, 40, 50)), path=None)}, "data"),
])
def test_key_mismatch_is_reported_and_reset_clears(tmp_path, change, field):
    EmbeddingCache(tmp_path / "c", _key()).put(0, 0, _embedding())
    with pytest.raises(CacheMismatchError, match=field):
        EmbeddingCache(tmp_path / "c", _key(**change))
    fresh = EmbeddingCache(tmp_path / "c", _key(**change), reset=True)
    assert fresh.get(0, 0) is None and fresh.entries() == []


def test_incomplete_entry_is_not_trusted(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", _key())
    cache.put(0, 0, _embedding())
    # a write killed before its final "complete" attribute: features there, flag missing
    arr = zarr.open_array(str(tmp_path / "c" / "s0" / "t0"), mode="r+")
    arr.attrs["complete"] = False
    assert cache.get(0, 0) is None and (0, 0) not in cache


def test_data_identity_samples_windows():
    vol = np.zeros((5, 300, 300), np.uint16)
    base = data_identity(vol)
    changed_corner = vol.copy()
    changed_corner[0, 0, 0] = 1  # inside the first sampled window
    assert data_identity(changed_corner)["samples"] != base["samples"]
    assert data_identity(vol.astype(np.float32))["dtype"] != base["dtype"]
    assert data_identity(vol[:4])["shape"] != base["shape"]
    # cheap by design: a pixel outside the sampled windows is not noticed (documented)
    unseen = vol.copy()
    unseen[0, 100, 200] = 1
    assert data_identity(unseen) == base


def test_not_a_cache(tmp_path):
    with pytest.raises(ValueError, match="not an embedding cache"):
        EmbeddingCache(tmp_path / "nothing")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not an embedding cache"):
        EmbeddingCache(tmp_path / "busy", _key())


class FakePredictor:
    """Counts encoder runs; its embedding is a function of the image content."""

    def __init__(self):
        self.encoded = 0
        self.current = None

    def set_image(self, image, **kwargs):
        self.encoded += 1
        self.current = Embedding(features=np.full((1, 2, 2, 2), float(np.sum(image)), np.float32),
                                 original_size=image.shape[:2], input_size=(1024, 1024), image_size=1024,
                                 model_id="fake")

    def set_embedding(self, emb):
        self.current = emb

    def get_embedding(self):
        return self.current

    def predict(self):
        return self.current.features[0, 0, 0, 0]


def test_caching_predictor_reuses_embeddings_by_slice_and_tile(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", _key())
    tiles = [np.full((4, 4), v) for v in (1, 2, 3)]
    first = FakePredictor()
    wrapped = CachingPredictor(first, cache)
    results = []
    for s in range(2):
        wrapped.start_slice(s)
        for t in tiles:
            wrapped.set_image(t * (s + 1))
            results.append(wrapped.predict())  # delegated to the wrapped predictor
    assert first.encoded == 6 and wrapped.misses == 6 and wrapped.hits == 0
    second = FakePredictor()
    again = CachingPredictor(second, cache)
    replay = []
    for s in range(2):
        again.start_slice(s)
        for t in tiles:
            again.set_image(t * (s + 1))
            replay.append(again.predict())
    assert second.encoded == 0 and again.hits == 6
    assert replay == results == [16.0, 32.0, 48.0, 32.0, 64.0, 96.0]
