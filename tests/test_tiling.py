"""Tiled segmentation equals untiled segmentation (up to relabelling), on numpy, dask and zarr."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from test_amg_standin import StandInPredictor, blob_image, random_blobs

from napari_sam.progress import Cancelled
from napari_sam.tiled.tiles import segment_image, tile_grid

AMG = {"points_per_side": 40, "pred_iou_thresh": 0.8, "stability_score_thresh": 0.0}


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 120), st.integers(1, 120), st.integers(1, 50), st.integers(1, 50), st.integers(0, 30), st.integers(0, 30)
)
def test_tiles_partition_image_and_halos_stay_inside(h, w, th, tw, hr, hc):
    tiles = tile_grid((h, w), (th, tw), (hr, hc))
    count = np.zeros((h, w), dtype=int)
    for t in tiles:
        r0, c0, r1, c1 = t.core
        count[r0:r1, c0:c1] += 1
        w0, w1, w2, w3 = t.window
        assert 0 <= w0 <= r0 < r1 <= w2 <= h and 0 <= w1 <= c0 < c1 <= w3 <= w
        assert w0 == max(r0 - hr, 0) and w2 == min(r1 + hr, h) and w1 == max(c0 - hc, 0) and w3 == min(c1 + hc, w)
        assert r1 - r0 <= th and c1 - c0 <= tw
    assert (count == 1).all()
    assert len({t.index for t in tiles}) == len(tiles)


def test_tile_grid_rejects_bad_sizes():
    with pytest.raises(ValueError):
        tile_grid((10, 10), 0)
    with pytest.raises(ValueError):
        tile_grid((10, 10), 4, -1)
    with pytest.raises(TypeError):
        tile_grid((10, 10), "big")


def assert_same_up_to_relabelling(a: np.ndarray, b: np.ndarray) -> None:
    """Pixel-equal foreground and a bijection between the label sets."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(a > 0, b > 0)
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]], axis=1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))
    ids_a, ids_b = np.unique(a[a > 0]), np.unique(b[b > 0])
    np.testing.assert_array_equal(ids_a, np.arange(1, len(ids_a) + 1))
    np.testing.assert_array_equal(ids_b, np.arange(1, len(ids_b) + 1))


@pytest.fixture(scope="module")
def scene():
    image, centres, radii = random_blobs((160, 192), 22, rmin=5, rmax=10, gap=5, margin=3, seed=11)
    untiled = segment_image(image, StandInPredictor(), contrast_limits=(0, 1), **AMG)
    return image, centres, untiled


def test_untiled_finds_every_object(scene):
    image, centres, untiled = scene
    assert untiled.dtype == np.uint32
    assert untiled.max() == len(centres)
    np.testing.assert_array_equal(untiled > 0, image > 0.5)


@pytest.mark.parametrize("tile_shape, halo", [(64, 24), ((48, 80), 21), (100, 12)])
def test_tiled_equals_untiled(scene, tile_shape, halo):
    image, _, untiled = scene
    tiled = segment_image(image, StandInPredictor(), contrast_limits=(0, 1), tile_shape=tile_shape, halo=halo, **AMG)
    assert_same_up_to_relabelling(tiled, untiled)


def test_objects_on_tile_corners():
    centres = [(64, 64), (64, 128), (128, 64), (128, 128), (63, 96), (96, 63), (30, 30)]
    radii = [9, 8, 10, 7, 6, 6, 5]
    image = blob_image((192, 192), centres, radii, squares=True)
    untiled = segment_image(image, StandInPredictor(), contrast_limits=(0, 1), **AMG)
    assert untiled.max() == len(centres)
    tiled = segment_image(image, StandInPredictor(), contrast_limits=(0, 1), tile_shape=64, halo=16, **AMG)
    assert_same_up_to_relabelling(tiled, untiled)


def test_halo_too_small_loses_or_cuts_nothing_silently():
    """With no halo, objects cut by tile edges are dropped, never half-painted."""
    image = blob_image((128, 128), [(64, 64), (20, 20)], [10, 6])
    tiled = segment_image(image, StandInPredictor(), contrast_limits=(0, 1), tile_shape=64, halo=0, **AMG)
    corner = blob_image((128, 128), [(64, 64)], [10]) > 0.5
    assert (tiled[corner] == 0).all()  # the object across the corner is cut in every tile -> dropped whole
    small = blob_image((128, 128), [(20, 20)], [6]) > 0.5
    assert (tiled[small] == 1).all() and tiled.max() == 1


def test_zarr_dask_inputs_and_zarr_out_on_disk(scene, tmp_path):
    image, _, _ = scene
    ref = segment_image(image, StandInPredictor(), contrast_limits=(0, 1), tile_shape=64, halo=24, **AMG)
    src = zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=image.shape, chunks=(50, 50), dtype=image.dtype)
    src[:] = image
    out = zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=image.shape, chunks=(32, 48), dtype="uint32")
    res = segment_image(src, StandInPredictor(), contrast_limits=(0, 1), tile_shape=64, halo=24, out=out, **AMG)
    assert res is out
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")[:], ref)
    lazy = da.from_array(image, chunks=(40, 40))
    np.testing.assert_array_equal(
        segment_image(lazy, StandInPredictor(), contrast_limits=(0, 1), tile_shape=64, halo=24, **AMG), ref
    )


def test_contrast_limits_estimated_once_for_the_whole_image():
    rng = np.random.default_rng(0)
    image = (blob_image((96, 96), [(30, 30), (70, 60)], [8, 9]) * 4000 + rng.integers(0, 50, (96, 96))).astype(np.uint16)
    image[0, 0] = 60000  # a hot pixel that per-tile min/max would let dominate one tile
    pred = StandInPredictor()
    segment_image(image, pred, tile_shape=48, halo=16, points_per_side=8)
    limits = [np.asarray(c["contrast_limits"]) for c in pred.calls]
    assert len(limits) == 4
    expected = np.percentile(image.astype(np.float64), [0.5, 99.5])
    for lim in limits:
        np.testing.assert_allclose(lim.reshape(-1), expected)


def test_progress_cancel_and_errors(scene):
    image = scene[0]
    seen = []
    segment_image(
        image, StandInPredictor(), contrast_limits=(0, 1), tile_shape=96, halo=8, progress=lambda d, t, s: seen.append((d, t)),
        points_per_side=8,
    )
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1][0] == seen[-1][1] and len({t for _, t in seen}) == 1
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        segment_image(image, StandInPredictor(), contrast_limits=(0, 1), tile_shape=96, cancel=ev)
    with pytest.raises(TypeError, match="points_per_sid"):
        segment_image(image, StandInPredictor(), contrast_limits=(0, 1), points_per_sid=8)
    with pytest.raises(ValueError, match="halo"):
        segment_image(image, StandInPredictor(), contrast_limits=(0, 1), halo=8)
    with pytest.raises(ValueError, match="shape"):
        segment_image(image, StandInPredictor(), contrast_limits=(0, 1), out=np.zeros((5, 5), np.uint32))


def test_uint8_rgb_used_as_is_and_bands_selected():
    rgb = (blob_image((64, 64), [(30, 30)], [8]) * 200).astype(np.uint8)
    rgb = np.stack([rgb, rgb, rgb], axis=-1)
    pred = StandInPredictor()
    segment_image(rgb, pred, tile_shape=32, halo=8, points_per_side=4)
    assert all(c["contrast_limits"] is None for c in pred.calls)  # no stretching of 8-bit RGB
    bands = np.stack([blob_image((64, 64), [(30, 30)], [8]) * k for k in (100, 200, 300, 400, 500)]).astype(np.uint16)
    pred = StandInPredictor()
    segment_image(bands, pred, channel_axis=0, channels=(3, 1, 0), tile_shape=32, halo=8, points_per_side=4)
    assert all(c["channels"] == (3, 1, 0) for c in pred.calls)
    expected = np.stack([np.percentile(bands[k].astype(float), [0.5, 99.5]) for k in (3, 1, 0)])
    for c in pred.calls:
        np.testing.assert_allclose(np.asarray(c["contrast_limits"]), expected)
