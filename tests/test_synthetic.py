"""Tests of the synthetic image generator and prompt helpers (napari_sam.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.synthetic import (
    MAX_DIAMETER,
    MIN_DIAMETER,
    boxes_from_labels,
    make_nuclei_image,
    make_nuclei_stack,
    sample_point_prompts,
)


@pytest.mark.parametrize("kind", ["nuclei", "cells", "mixed"])
def test_deterministic_per_seed(kind):
    a = make_nuclei_image((128, 160), kind=kind, seed=3)
    b = make_nuclei_image((128, 160), kind=kind, seed=3)
    c = make_nuclei_image((128, 160), kind=kind, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_dtypes_and_shapes(dtype):
    image, labels = make_nuclei_image((96, 130), dtype=dtype, seed=1)
    assert image.shape == labels.shape == (96, 130)
    assert image.dtype == np.dtype(dtype)
    assert labels.dtype == np.uint32
    assert image.min() >= 0
    if dtype != "float32":
        assert image.max() > np.iinfo(dtype).max // 20  # uses a real part of the range
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # 0..N consecutive


def test_stack_dtypes_and_persistence():
    stack, labels = make_nuclei_stack((12, 96, 96), seed=2, dtype="uint8")
    assert stack.shape == labels.shape == (12, 96, 96)
    assert stack.dtype == np.uint8 and labels.dtype == np.uint32
    n_slices = [(labels == i).any(axis=(1, 2)).sum() for i in range(1, labels.max() + 1)]
    assert labels.max() >= 3
    assert np.median(n_slices) >= 2  # objects persist across z
    for i in range(1, labels.max() + 1):
        z = np.flatnonzero((labels == i).any(axis=(1, 2)))
        np.testing.assert_array_equal(z, np.arange(z[0], z[-1] + 1))  # contiguous in z
        areas = [(labels[k] == i).sum() for k in z]
        # sphere-like: widest slice is not at both ends unless cut by the stack
        if 0 < z[0] and z[-1] < 11 and len(z) >= 3:
            assert max(areas) >= max(areas[0], areas[-1])


@pytest.mark.parametrize("kind", ["nuclei", "cells"])
def test_sizes_within_bounds(kind):
    for seed in range(4):
        _, labels = make_nuclei_image((256, 256), kind=kind, seed=seed)
        for sl_i, sl in enumerate(ndi.find_objects(labels)):
            obj = labels[sl] == sl_i + 1
            touches_border = (
                sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == 256 or sl[1].stop == 256
            )
            extent = max(obj.shape)
            assert extent <= MAX_DIAMETER / np.sqrt(0.6) * 1.6 + 4  # elongation and harmonics
            if not touches_border:
                eq_diam = 2 * np.sqrt(obj.sum() / np.pi)
                assert eq_diam >= MIN_DIAMETER * 0.6  # occlusion may remove up to ~15 %
            assert ndi.label(obj)[1] == 1  # every object is one connected piece


@pytest.mark.parametrize("kind", ["nuclei", "cells", "mixed"])
def test_labels_match_image_foreground(kind):
    """Objects are brighter than the background around them, background is dark."""
    for seed in range(3):
        image, labels = make_nuclei_image((192, 192), kind=kind, seed=seed, dtype="float32")
        bg = image[ndi.binary_dilation(labels > 0, iterations=3) == 0]
        bg_level, bg_spread = np.median(bg), np.percentile(bg, 99)
        for i, sl in enumerate(ndi.find_objects(labels)):
            obj = labels[sl] == i + 1
            # the brightest part of each object (membrane or body) beats the background noise
            assert np.percentile(image[sl][obj], 90) > bg_spread
        fg = image[labels > 0]
        assert np.median(fg) > 1.5 * bg_level
        # a global threshold recovers most foreground: labels describe the image
        thr = (np.median(fg) + bg_level) / 2
        if kind == "nuclei":
            agree = np.mean((image > thr) == (labels > 0))
            assert agree > 0.85


def test_n_objects_and_input_errors():
    _, labels = make_nuclei_image((256, 256), n_objects=5, seed=0)
    assert 1 <= labels.max() <= 5
    _, labels = make_nuclei_image((64, 64), n_objects=0, seed=0)
    assert labels.max() == 0
    with pytest.raises(ValueError, match="kind"):
        make_nuclei_image((64, 64), kind="blobs")
    with pytest.raises(ValueError, match="dtype"):
        make_nuclei_image((64, 64), dtype="int8")
    with pytest.raises(ValueError, match="shape"):
        make_nuclei_image((8, 64))
    with pytest.raises(ValueError, match="shape"):
        make_nuclei_stack((64, 64))


def _brute_boxes(labels):
    out = {}
    for i in np.unique(labels)[1:]:
        rr, cc = np.nonzero(labels == i)
        out[int(i)] = (rr.min(), cc.min(), rr.max(), cc.max())
    return out


def test_boxes_from_labels_brute_force():
    _, labels = make_nuclei_image((128, 128), kind="mixed", seed=5)
    boxes, ids = boxes_from_labels(labels)
    ref = _brute_boxes(labels)
    assert sorted(ref) == ids.tolist()
    for box, i in zip(boxes, ids):
        assert tuple(box) == ref[int(i)]
    sub, sub_ids = boxes_from_labels(labels, ids=[ids[-1]])
    assert sub.shape == (1, 4) and tuple(sub[0]) == ref[int(ids[-1])]
    with pytest.raises(ValueError, match="not present"):
        boxes_from_labels(labels, ids=[10_000])


def test_point_prompts():
    _, labels = make_nuclei_image((160, 160), seed=7)
    before = labels.copy()
    pts, plab, ids = sample_point_prompts(labels, n_positive=2, n_negative=2, seed=1)
    np.testing.assert_array_equal(labels, before)  # input untouched
    assert pts.shape == (ids.size, 4, 2) and plab.shape == (ids.size, 4)
    np.testing.assert_array_equal(plab, [[1, 1, 0, 0]] * ids.size)
    r, c = pts[..., 0].astype(int), pts[..., 1].astype(int)
    hit = labels[r, c]
    assert np.all(hit[:, :2] == ids[:, None])  # positives inside their object
    assert np.all(hit[:, 2:] != ids[:, None])  # negatives outside it
    # "center" picks the maximum of the distance transform (brute force)
    cpts, _, cids = sample_point_prompts(labels, mode="center")
    for p, i in zip(cpts[:, 0], cids):
        dist = ndi.distance_transform_edt(np.pad(labels == i, 1))[1:-1, 1:-1]
        assert dist[int(p[0]), int(p[1])] == dist.max()
    again = sample_point_prompts(labels, n_positive=2, n_negative=2, seed=1)[0]
    np.testing.assert_array_equal(again, pts)
    with pytest.raises(ValueError, match="mode"):
        sample_point_prompts(labels, mode="edge")
