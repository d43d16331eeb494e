"""Memory of the batch path on one large 2-D image: tiles are streamed to the output.

Structural, not timed: the peak of numpy allocations (tracemalloc) while
``segment_volume`` labels a 2048 x 2048 image must stay well below the size of one
full-slice label image, and the streamed result must equal the in-memory one.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zarr
from skimage.measure import label, regionprops

from napari_sam.automatic.labels import masks_to_labels
from napari_sam.automatic.records import MaskRecord
from napari_sam.tiled.stitching import stitch_tiles, write_labels
from napari_sam.tiled.tiles import tile_grid
from napari_sam.volume.batch import segment_volume

SIDE, TILE = 2048, 256


def _records(image, contrast_limits, tile):
    """A cheap stand-in for SAM: per tile, threshold + connected components as mask records."""
    shape = tuple(int(s) for s in image.shape[:2])
    lo, hi = np.asarray(contrast_limits, dtype=np.float64).reshape(-1, 2)[0]
    tiles = tile_grid(shape, tile, 0)
    per_tile = {}
    for t in tiles:
        r0, c0, r1, c1 = t.window
        window = np.asarray(image[r0:r1, c0:c1])
        recs = []
        for p in regionprops(label(window > (lo + hi) / 2)):
            b0, b1, b2, b3 = p.bbox
            recs.append(MaskRecord(p.image.copy(), (b0 + r0, b1 + c0, b2 + r0, b3 + c0), int(p.area), 0.9, 0.95,
                                   ((b0 + b2) / 2 + r0, (b1 + b3) / 2 + c0), t.window))
        per_tile[t.index] = recs
    return stitch_tiles(per_tile, tiles, shape), shape


def streaming_standin(image, *, channel_axis=None, contrast_limits=None, out=None):
    records, shape = _records(image, contrast_limits, TILE)
    if out is None:
        return masks_to_labels(records, shape)
    return write_labels(records, out, block_shape=(TILE, TILE))


def inmemory_standin(image, *, channel_axis=None, contrast_limits=None):
    """The same function without ``out``: the batch path must hold the whole slice."""
    return streaming_standin(image, channel_axis=channel_axis, contrast_limits=contrast_limits)


def _image(path):
    rng = np.random.default_rng(0)
    img = np.zeros((SIDE, SIDE), np.uint8)
    for r, c in rng.integers(8, SIDE - 8, size=(400, 2)):
        img[r - 5:r + 5, c - 5:c + 5] = 200
    arr = zarr.create_array(store=str(path), shape=img.shape, chunks=(TILE, TILE), dtype="uint8")
    arr[:] = img
    return img


def _peak(fn, src, out):
    tracemalloc.start()
    try:
        segment_volume(str(src), str(out), segment_fn=fn, contrast_limits=[[0, 255]], tile_shape=TILE,
                       compact=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_single_image_is_streamed_tile_by_tile(tmp_path):
    _image(tmp_path / "in.zarr")
    _peak(streaming_standin, tmp_path / "in.zarr", tmp_path / "warm.zarr")  # imports and caches
    full_slice = SIDE * SIDE * 4  # one uint32 label image
    peak = _peak(streaming_standin, tmp_path / "in.zarr", tmp_path / "a.zarr")
    assert peak < full_slice / 2, f"peak numpy/python allocations {peak / 2**20:.1f} MiB"
    streamed = np.asarray(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:])
    segment_volume(str(tmp_path / "in.zarr"), str(tmp_path / "b.zarr"), segment_fn=inmemory_standin,
                   contrast_limits=[[0, 255]], tile_shape=TILE, compact=False)
    reference = np.asarray(zarr.open_array(str(tmp_path / "b.zarr"), mode="r")[:])
    assert streamed.max() > 0
    np.testing.assert_array_equal(streamed, reference)
