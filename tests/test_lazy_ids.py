"""The lazy result of segment_volume has ids 1..N that skimage and dask-image can measure."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops_table
from test_batch import LIMITS, blobs_volume, reference_slices
from test_batch_standins import threshold_segment

from napari_sam.volume.batch import segment_volume

CALLS: list[int] = []


def counting_segment(image, *, channel_axis=None, contrast_limits=None, slice_index=0):
    CALLS.append(slice_index)
    return threshold_segment(image, channel_axis=channel_axis, contrast_limits=contrast_limits)


def brute_force_areas(volume_labels):
    return np.bincount(np.asarray(volume_labels).ravel())[1:]


def test_lazy_ids_are_compact_and_each_slice_runs_once():
    vol = blobs_volume(nz=5, seed=7)
    CALLS.clear()
    lazy = segment_volume(vol, segment_fn=counting_segment, contrast_limits=LIMITS)
    out = lazy.compute()
    assert sorted(CALLS) == list(range(5))  # the running count of objects does not segment any slice twice
    n = sum(int(r.max()) for r in reference_slices(vol))
    np.testing.assert_array_equal(np.unique(out), np.arange(n + 1))


def test_regionprops_table_on_the_lazy_result():
    vol = blobs_volume(nz=6, seed=8)
    lazy = segment_volume(vol, segment_fn=threshold_segment, contrast_limits=LIMITS)
    labels = lazy.compute()
    props = regionprops_table(labels, properties=("label", "area", "bbox"))  # ran out of memory with 2**32 ids
    np.testing.assert_array_equal(props["area"], brute_force_areas(labels))
    for lab, z0, z1 in zip(props["label"], props["bbox-0"], props["bbox-3"]):
        assert z1 - z0 == 1  # an object of the lazy result lies in one slice
        assert (labels[z0] == lab).any()


def test_dask_image_measures_the_lazy_result():
    ndmeasure = pytest.importorskip("dask_image.ndmeasure")
    vol = blobs_volume(nz=4, seed=9)
    lazy = segment_volume(vol, segment_fn=threshold_segment, contrast_limits=LIMITS)
    n = int(lazy.max().compute())
    index = np.arange(1, n + 1)
    areas = ndmeasure.area(lazy, lazy, index).compute()  # the label image as its own image: area in pixels
    labels = lazy.compute()
    np.testing.assert_array_equal(areas, brute_force_areas(labels))
    centres = ndmeasure.center_of_mass(lazy > 0, lazy, index).compute()
    for lab, (z, r, c) in zip(index, centres):
        zz, rr, cc = np.nonzero(labels == lab)
        np.testing.assert_allclose((z, r, c), (zz.mean(), rr.mean(), cc.mean()))
