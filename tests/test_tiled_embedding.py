"""Tiled interactive embeddings (napari_sam.predict.tiled_embedding) against untiled references.

The reference for a click on a 4096² plane is the same click on a crop the
model sees whole (same model, same contrast limits): tiling must not change
what the model answers, and only the tiles that hold prompts are embedded.
"""

from __future__ import annotations

import numpy as np
import pytest

import napari_sam
from napari_sam.normalize import estimate_contrast_limits
from napari_sam.predict.tiled_embedding import TiledPrompter, needs_tiling
from napari_sam.synthetic import make_nuclei_image


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def big():
    image, labels = make_nuclei_image((4096, 4096), seed=0)
    return image, labels, estimate_contrast_limits(image)


class _Counting:
    """The predictor, counting its encoder runs."""

    def __init__(self, predictor):
        self.inner, self.calls = predictor, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def set_image(self, *args, **kwargs):
        self.calls += 1
        return self.inner.set_image(*args, **kwargs)


def _interior_objects(labels: np.ndarray, n: int) -> list[tuple[int, np.ndarray]]:
    border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    out = []
    for i in np.unique(labels):
        if i == 0 or i in border:
            continue
        rr, cc = np.nonzero(labels == i)
        pt = np.array([rr.mean(), cc.mean()])
        if labels[int(pt[0]), int(pt[1])] != i:
            pt = np.array([rr[len(rr) // 2], cc[len(cc) // 2]], float)
        out.append((int(i), pt))
        if len(out) == n:
            break
    return out


def test_needs_tiling():
    assert needs_tiling((4096, 4096), 256) and not needs_tiling((512, 512), 256)
    assert not needs_tiling((2048, 2048), 1024) and needs_tiling((2049, 300), 1024)


def test_click_on_large_plane_matches_click_on_crop(big):
    image, labels, cl = big
    r0, c0 = 1088, 2112
    crop = image[r0:r0 + 512, c0:c0 + 512]
    ref = napari_sam.make_predictor("builtin", device="cpu")
    ref.set_image(crop, contrast_limits=cl)
    tiled = TiledPrompter(_Counting(napari_sam.make_predictor("builtin", device="cpu")), image,
                          contrast_limits=cl)
    objects = _interior_objects(labels[r0:r0 + 512, c0:c0 + 512], 3)
    windows = set()
    for _, pt in objects:
        masks, scores, _ = ref.predict(pt[None], [1])
        expected = masks[int(np.argmax(scores))]
        res = tiled.predict((pt + [r0, c0])[None], [1])
        got = res.masks[int(np.argmax(res.scores))]
        assert _iou(got[r0:r0 + 512, c0:c0 + 512], expected) >= 0.9
        assert not got[:r0].any() and not got[r0 + 512:].any()
        # decoded in the tile whose interior holds the click
        assert res.window == tiled.tile_window(tiled.tile_index(pt + [r0, c0]))
        windows.add(res.window)
    # only the tiles holding the clicks were embedded (the plane has 32 x 32 tiles)
    assert tiled.predictor.calls == len(windows) == tiled.n_encoded
    assert tiled.n_tiles() == (32, 32)
    # a second click in a cached tile runs no encoder
    tiled.predict((objects[0][1] + [r0, c0])[None], [1])
    assert tiled.predictor.calls == len(windows)


def test_mask_crossing_a_tile_border_matches_untiled_crop(big):
    image, labels, cl = big
    tiled = TiledPrompter(napari_sam.make_predictor("builtin", device="cpu"), image, contrast_limits=cl)
    s = tiled.stride
    # an object cut by a tile interior border (row k * stride), away from the plane's edges
    found = None
    for k in range(8, 24):
        row = labels[k * s, 1024:3072]
        for i in np.unique(row[row > 0]):
            rr, cc = np.nonzero(labels[k * s - 40:k * s + 40, 1024:3072] == i)
            if rr.min() > 0 and rr.max() < 79 and (rr + k * s - 40 < k * s).sum() > 0.3 * len(rr) \
                    and (rr + k * s - 40 >= k * s).sum() > 0.3 * len(rr):
                found = (i, k)
                break
        if found:
            break
    assert found is not None
    i, k = found
    rr, cc = np.nonzero(labels == i)
    pt = np.array([rr.mean(), cc.mean()])
    res = tiled.predict(pt[None], [1])
    got = res.masks[int(np.argmax(res.scores))]
    assert got[k * s - 1].any() and got[k * s].any()  # the mask crosses the border
    # untiled: a crop the model sees at native resolution, centred on the object
    cr, cc0 = int(pt[0]) - 128, int(pt[1]) - 128
    ref = napari_sam.make_predictor("builtin", device="cpu")
    ref.set_image(image[cr:cr + 256, cc0:cc0 + 256], contrast_limits=cl)
    masks, scores, _ = ref.predict((pt - [cr, cc0])[None], [1])
    expected = np.zeros_like(got)
    expected[cr:cr + 256, cc0:cc0 + 256] = masks[int(np.argmax(scores))]
    assert _iou(got, expected) >= 0.95


def test_object_larger_than_the_halo_is_decoded_in_a_window_around_it():
    """A bright square of 200 px across tile windows: the mask is not cut at the first window.

    The stand-in predictor answers the bright component under the click (a perfect model).
    """
    from napari_sam._napari._testing import ThresholdPredictor

    image = np.full((1024, 1024), 10, np.uint8)
    image[300:500, 400:600] = 200
    image[::7, ::5] += 5  # not flat, so the per-window threshold is defined
    predictor = ThresholdPredictor()
    predictor.image_size = 256
    tiled = TiledPrompter(predictor, image, contrast_limits=(0, 255))
    res = tiled.predict(np.array([[310.0, 410.0]]), [1])
    got = res.masks[int(np.argmax(res.scores))]
    first = tiled.tile_window(tiled.tile_index((310, 410)))
    assert res.window != first  # re-decoded in a window around the object
    assert _iou(got, image > 100) >= 0.95
    # the first window alone would have cut the object
    r0, c0, r1, c1 = first
    assert (image[r0:r1, c0:c1] > 100).sum() < 0.8 * (image > 100).sum()


def test_lru_keeps_at_most_max_tiles(big):
    image, _, cl = big
    tiled = TiledPrompter(napari_sam.make_predictor("builtin", device="cpu"), image, contrast_limits=cl,
                          max_tiles=2)
    for pt in ((100, 100), (100, 900), (900, 900)):
        tiled.prefetch(pt)
    assert len(tiled.cached_windows()) == 2
    assert tiled.tile_window(tiled.tile_index((100, 100))) not in tiled.cached_windows()


def test_bad_prompts_are_refused(big):
    image, _, cl = big
    tiled = TiledPrompter(napari_sam.make_predictor("builtin", device="cpu"), image, contrast_limits=cl)
    with pytest.raises(ValueError, match="outside"):
        tiled.predict([[5000, 10]], [1])
    with pytest.raises(ValueError, match="no prompt"):
        tiled.predict()
    with pytest.raises(ValueError, match="halo"):
        TiledPrompter(tiled.predictor, image, halo=200)
