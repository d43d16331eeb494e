"""Properties of the randomised microscopy generator (napari_sam.synthetic_microscopy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from napari_sam._synthetic_layout import clean_labels
from napari_sam.synthetic_microscopy import (
    HELD_OUT_STYLES,
    TRAIN_STYLES,
    VALIDATION_STYLES,
    make_training_image,
    make_validation_image,
)

SHAPE = (192, 192)


def _grey(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64).mean(axis=2) if image.ndim == 3 else image.astype(np.float64)


def _inside_outside(image: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Median intensity of object cores (eroded) and of background pixels away from objects."""
    grey = _grey(image)
    core = ndi.binary_erosion(labels > 0, iterations=1)
    far = ~ndi.binary_dilation(labels > 0, iterations=4)
    return float(np.median(grey[core])), float(np.median(grey[far]))


def _fraction_brighter_than_ring(image: np.ndarray, labels: np.ndarray, gap: int = 2, width: int = 4) -> float:
    """Fraction of objects whose mean is above the mean of the background ring around them."""
    grey = _grey(image)
    ids = np.arange(1, labels.max() + 1)
    near = expand_labels(labels, gap)
    ring = np.where(near > 0, 0, expand_labels(labels, gap + width))
    ring[labels > 0] = 0
    has_ring = ndi.sum_labels(np.ones_like(ring), ring, ids) > 0
    inside = ndi.mean(grey, labels, ids)[has_ring]
    around = ndi.mean(grey, ring, ids)[has_ring]
    return float(np.mean(inside > around))


def test_seeded_determinism():
    for style in ("fluorescence", "he", "em"):
        a = make_validation_image(style, 3, shape=SHAPE)
        b = make_validation_image(style, 3, shape=SHAPE)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    t1, t2 = make_training_image(5), make_training_image(5)
    assert np.array_equal(t1[0], t2[0]) and np.array_equal(t1[1], t2[1]) and t1[2] == t2[2]
    other = make_training_image(6)
    assert other[0].shape != t1[0].shape or not np.array_equal(other[0], t1[0])


def test_training_and_validation_streams_differ():
    tr = make_training_image(0, style="fluorescence")
    va = make_validation_image("fluorescence", 0)
    assert tr[0].shape != va[0].shape or not np.array_equal(tr[0], va[0])


@pytest.mark.parametrize("style", VALIDATION_STYLES)
def test_labels_consistent_with_image(style):
    image, labels, info = make_validation_image(style, 1, shape=SHAPE)
    assert image.shape[:2] == labels.shape == SHAPE
    assert labels.dtype == np.int32 and labels.min() == 0
    ids = np.unique(labels)[1:]
    assert ids.size >= 3 and np.array_equal(ids, np.arange(1, ids.size + 1))  # sequential
    # every object is one 4-connected region
    comp, n = ndi.label(labels > 0)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        assert ndi.label(labels[sl] == i)[1] == 1
    # objects are visible: their cores differ from the background
    inside, outside = _inside_outside(image, labels)
    if style not in ("dic", "em"):  # relief; EM: interiors vs resin is not the contrast: objects are brighter on one side, darker on the other
        assert abs(inside - outside) > 0.02 * (np.ptp(_grey(image)) + 1e-9), style
    if image.ndim == 3:
        assert image.dtype == np.uint8 and image.shape[2] == 3
    else:
        assert image.dtype in (np.uint8, np.uint16)
    assert info["style"] == style


@pytest.mark.parametrize("seed", range(3))
def test_polarity_of_styles(seed):
    """Fluorescence: objects brighter; inverted and stained RGB: objects darker than their surroundings."""
    for style, brighter in (("fluorescence", True), ("cells", True), ("inverted", False), ("he", False),
                            ("ihc", False)):
        image, labels, _ = make_validation_image(style, seed, shape=SHAPE)
        frac = _fraction_brighter_than_ring(image, labels)
        assert (frac > 0.8) if brighter else (frac < 0.2), (style, seed, frac)


def test_em_membranes_darker_than_interiors():
    for seed in range(3):
        image, labels, _ = make_validation_image("em", seed, shape=SHAPE)
        grey = _grey(image)
        membrane = (labels == 0) & (expand_labels(labels, 1) > 0)
        core = ndi.binary_erosion(labels > 0, iterations=2)
        assert np.median(grey[membrane]) < np.median(grey[core])


def test_phase_contrast_has_bright_halo():
    hits = 0
    for seed in range(4):
        image, labels, _ = make_validation_image("phase", seed, shape=SHAPE)
        grey = _grey(image)
        ring = ndi.binary_dilation(labels > 0, iterations=2) & ~(labels > 0)
        far = ~ndi.binary_dilation(labels > 0, iterations=8)
        hits += np.median(grey[ring]) != np.median(grey[far])
    assert hits >= 3


def test_fluorescence_hard_is_low_dynamic_range_uint16():
    for seed in range(3):
        image, _, info = make_validation_image("fluorescence_hard", seed, shape=SHAPE)
        assert image.dtype == np.uint16 and image.max() <= 450
        assert set(info["extremes"]) == {"low_dr", "noisy", "vignette", "blur"}


def test_training_never_draws_held_out_settings():
    assert not set(HELD_OUT_STYLES) & set(TRAIN_STYLES)
    seen = set()
    for seed in range(30):
        image, labels, info = make_training_image(seed, max_side=256)
        seen.add(info["style"])
        assert info["style"] in TRAIN_STYLES
        assert len(info["extremes"]) <= 2  # 3+ extremes together are held out
        assert max(image.shape[:2]) <= 256 and labels.shape == image.shape[:2]
        assert 128 <= min(info["native_shape"]) and max(info["native_shape"]) <= 2048
        assert labels.max() >= 1
    assert len(seen) >= 4
    with pytest.raises(ValueError, match="training style"):
        make_training_image(0, style="ihc")
    with pytest.raises(ValueError, match="validation style"):
        make_validation_image("nope", 0)


def test_training_dtypes_and_sizes_vary():
    infos = [make_training_image(s, max_side=192)[2] for s in range(30)]
    assert {i["dtype"] for i in infos} >= {"uint8", "uint16"}
    natives = [max(i["native_shape"]) for i in infos]
    assert min(natives) < 400 and max(natives) > 1000


def test_clean_labels_keeps_largest_part():
    lab = np.zeros((10, 10), np.int32)
    lab[0:3, 0:3] = 5  # 9 px
    lab[6:8, 6:8] = 5  # 4 px, a second part of the same object: dropped
    lab[0:1, 8:10] = 2  # 2 px: below min_area
    out = clean_labels(lab, min_area=3)
    assert out.max() == 1 and (out == 1).sum() == 9 and out[0, 0] == 1
