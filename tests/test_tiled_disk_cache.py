"""Tier 2: the tiles of large planes in the session's on-disk embedding cache (no Qt).

References: masks of a session that runs the encoder itself (no cache), a
brute-force numbering of the tile grid, and the keys and entries the cache
module checks.  The built-in model on the CPU; planes of 640 px are prompted
in 256 px tiles 128 px apart (5 x 5 tiles).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from napari.components import ViewerModel

import napari_sam
from napari_sam._napari.session import Session
from napari_sam.predict.tiled_embedding import TiledPrompter
from napari_sam.synthetic import make_nuclei_image
from napari_sam.volume.cache import CacheMismatchError, EmbeddingCache

SIZE = 640


class Counting:
    """The built-in predictor, counting its encoder runs."""

    def __init__(self):
        self.inner, self.calls = napari_sam.make_predictor("builtin", device="cpu"), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def set_image(self, *args, **kwargs):
        self.calls += 1
        return self.inner.set_image(*args, **kwargs)


@pytest.fixture(scope="module")
def nuclei():
    return make_nuclei_image((SIZE, SIZE), seed=3)


def _clicks(labels: np.ndarray, n: int) -> list[np.ndarray]:
    """Centres of ``n`` objects spread over the plane."""
    ids = [i for i in np.unique(labels) if i]
    out = []
    for i in ids[:: max(1, len(ids) // (2 * n))]:
        rr, cc = np.nonzero(labels == i)
        out.append(np.array([rr[len(rr) // 2], cc[len(cc) // 2]], float))
    return out


def _session(image, cache=None, *, predictor=None, **kw):
    viewer = ViewerModel()
    layer = viewer.add_image(image)
    session = Session(predictor or Counting(), layer, **kw)
    if cache is not None:
        session.open_disk_cache(cache, model_id="builtin")
    return viewer, session


def _click(viewer, session, point):
    points = viewer.add_points([point])
    try:
        return session.predict(viewer.dims, points_layer=points).objects[0]
    finally:
        viewer.layers.remove(points)


@pytest.mark.parametrize("shape", [(640, 640), (700, 300), (200, 1000), (100, 90), (256, 513)])
@pytest.mark.parametrize("halo", [0, 16, 64])
def test_tile_numbers_are_the_first_row_major_tile_of_each_window(shape, halo):
    tiler = TiledPrompter(SimpleNamespace(image_size=256), np.zeros(shape), halo=halo)
    n_rows, n_cols = tiler.n_tiles()
    first: dict = {}
    for i in range(n_rows):
        for j in range(n_cols):
            first.setdefault(tiler.tile_window((i, j)), i * n_cols + j)  # brute force
    assert {w: tiler.tile_number(w) for w in first} == first
    assert sorted(first) == sorted(tiler.windows())
    for r0, c0, r1, c1 in first:  # windows off the grid have no number
        for shifted in ((r0 + 1, c0, r1 + 1, c1), (r0, c0 + 3, r1, c1 + 3), (r0, c0, r1 - 1, c1)):
            if shifted not in first:
                assert tiler.tile_number(shifted) is None


def test_a_reopened_session_reads_its_tiles_from_disk_and_gives_the_same_masks(nuclei, tmp_path):
    image, labels = nuclei
    clicks = _clicks(labels, 4)
    viewer, first = _session(image, tmp_path / "cache")
    ref = first.plane(viewer.dims)
    grid = set(first.tiler(ref).windows())
    windows = [_click(viewer, first, p).tile_window for p in clicks]
    in_tiles = [p for p, w in zip(clicks, windows) if w in grid]
    assert len(in_tiles) >= 3
    stored = EmbeddingCache(tmp_path / "cache").entries()
    assert stored == sorted({(0, first.tiler(ref).tile_number(w)) for w in windows if w in grid})

    viewer, again = _session(image, tmp_path / "cache")  # a new session on the same folder
    viewer, fresh = _session(image)  # the reference: encodes every tile itself
    for p in in_tiles:
        got, want = _click(viewer, again, p), _click(viewer, fresh, p)
        np.testing.assert_array_equal(got.masks, want.masks)
        np.testing.assert_array_equal(got.scores, want.scores)
    tiler = again.tiler(again.plane(viewer.dims))
    assert again.predictor.calls == 0 and tiler.n_encoded == 0
    assert tiler.n_loaded == len({fresh.tiler(ref).tile_window(fresh.tiler(ref).tile_index(p)) for p in in_tiles})
    assert fresh.predictor.calls == tiler.n_loaded


def test_precompute_writes_every_tile_and_then_no_prompt_runs_the_encoder(nuclei, tmp_path):
    image, labels = nuclei
    viewer, session = _session(image)
    ref = session.plane(viewer.dims)
    _click(viewer, session, _clicks(labels, 1)[0])  # one tile in memory before the cache is opened
    assert session.predictor.calls == 1
    session.open_disk_cache(tmp_path / "cache", model_id="builtin")
    tiler = session.tiler(ref)
    n = session.precompute(viewer.dims)
    assert n == len(tiler.windows()) == 25
    assert session.predictor.calls == 25  # the tile in memory was written, not encoded again
    cache = EmbeddingCache(tmp_path / "cache")
    assert cache.entries() == [(0, t) for t in range(25)]
    for w in tiler.windows():  # each entry is its tile's embedding, checked against the tile's pixels
        r0, c0, r1, c1 = w
        from napari_sam.volume.cache import array_digest

        assert cache.check(0, tiler.tile_number(w), array_digest(image[r0:r1, c0:c1]))
        assert cache.get(0, tiler.tile_number(w)).original_size == (r1 - r0, c1 - c0)

    viewer, again = _session(image, tmp_path / "cache")
    assert again.precompute(viewer.dims) == 25 and again.predictor.calls == 0
    grid = set(tiler.windows())
    for p in _clicks(labels, 5):
        if _click(viewer, again, p).tile_window in grid:
            assert again.predictor.calls == 0
    # the whole plane (what propagation uses) is stored after the tiles, not over tile 0
    again.prepare(again.plane(viewer.dims), whole=True)
    assert EmbeddingCache(tmp_path / "cache").entries() == [(0, t) for t in range(26)]
    assert EmbeddingCache(tmp_path / "cache").get(0, 0).original_size == (256, 256)
    assert EmbeddingCache(tmp_path / "cache").get(0, 25).original_size == (SIZE, SIZE)


def test_a_cache_of_another_tile_layout_is_refused(nuclei, tmp_path):
    image, labels = nuclei
    viewer, session = _session(image, tmp_path / "cache")
    _click(viewer, session, _clicks(labels, 1)[0])
    for other in ({"tile_halo": 32}, {"tiled": False}):
        with pytest.raises(CacheMismatchError, match="tile_layout"):
            _session(image, tmp_path / "cache", **other)
    viewer, other = _session(image, **{"tile_halo": 32})
    other.open_disk_cache(tmp_path / "cache", model_id="builtin", reset=True)  # starts again
    assert EmbeddingCache(tmp_path / "cache").entries() == []
    _click(viewer, other, _clicks(labels, 1)[0])
    assert other.predictor.calls == 1 and len(EmbeddingCache(tmp_path / "cache").entries()) == 1


def test_a_changed_pixel_in_a_stored_tile_is_refused(nuclei, tmp_path):
    image, labels = nuclei
    viewer, session = _session(image, tmp_path / "cache")
    point = np.array([200.0, 450.0])
    obj = _click(viewer, session, point)
    tiler = session.tiler(session.plane(viewer.dims))
    number = tiler.tile_number(tiler.tile_window(tiler.tile_index(point)))
    changed = image.copy()
    changed[190, 440] += 1  # inside that tile, away from the windows the cache key samples
    viewer, other = _session(changed, tmp_path / "cache")  # the key still matches
    with pytest.raises(CacheMismatchError, match=f"s0/t{number} was computed from other pixels"):
        _click(viewer, other, point)
    assert obj.mask.any() and other.predictor.calls == 0


def test_a_cache_made_by_napari_sam_embed_is_refused_both_ways(nuclei, tmp_path):
    from napari_sam.volume.embed import embed_volume

    image, _ = nuclei
    image = image[:300, :600]  # a few tiles of the command line's own layout
    assert embed_volume(image, tmp_path / "cli", model="builtin", device="cpu") > 1
    with pytest.raises(CacheMismatchError, match="made by `napari-sam embed`.*choose another folder"):
        _session(image, tmp_path / "cli")
    viewer, session = _session(image, tmp_path / "plugin")
    session.precompute(viewer.dims)
    with pytest.raises(CacheMismatchError, match="tile_layout"):
        embed_volume(image, tmp_path / "plugin", model="builtin", device="cpu")
