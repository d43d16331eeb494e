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
from test_batch_standins import tiled_threshold_segment, write_blob_image

from napari_sam.volume.batch import segment_volume

SIDE, TILE = 2048, 256


def streaming_standin(image, *, channel_axis=None, contrast_limits=None, out=None):
    """The tiled stand-in writing ``out`` in tile-sized blocks."""
    return tiled_threshold_segment(image, contrast_limits=contrast_limits, out=out, tile=TILE,
                                   block_shape=(TILE, TILE))


def inmemory_standin(image, *, channel_axis=None, contrast_limits=None):
    """The same function without ``out``: the batch path must hold the whole slice."""
    return tiled_threshold_segment(image, contrast_limits=contrast_limits, tile=TILE)


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
    write_blob_image(tmp_path / "in.zarr", SIDE, chunk=TILE)
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
