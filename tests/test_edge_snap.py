"""Edge snapping: each mask's threshold chosen where its boundary follows the image's edges
(napari_sam.predict.edges.edge_snap_threshold and PromptPipeline(edge_snap=...))."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from test_zoom import EVAL_SEED, _iou, builtin  # noqa: F401 (builtin: a fixture used by pytest)

from napari_sam.normalize import to_rgb_uint8
from napari_sam.predict.edges import EDGE_SNAP_SIGMA, EDGE_SNAP_STEP, edge_snap_threshold
from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.predict.predictor import Predictor
from napari_sam.synthetic import make_nuclei_image, sample_point_prompts


def _brute_force_threshold(logits, gradient, lo, hi, step=EDGE_SNAP_STEP):
    """Every threshold on the whole frame; boundary = mask pixels with a 4-neighbour outside."""
    best_t, best = lo, -np.inf
    t = lo
    while t <= hi + 1e-9:
        mask = logits > t
        if not mask.any():
            break
        padded = np.pad(mask, 1)
        outside_nb = ~padded[:-2, 1:-1] | ~padded[2:, 1:-1] | ~padded[1:-1, :-2] | ~padded[1:-1, 2:]
        score = gradient[mask & outside_nb].mean()
        if score > best:
            best_t, best = t, score
        t += step
    return best_t


def _grey_gradient(image):
    grey = to_rgb_uint8(image).astype(np.float32).mean(axis=-1)
    return ndi.gaussian_gradient_magnitude(grey, EDGE_SNAP_SIGMA, mode="nearest")


def test_threshold_equals_brute_force_search():
    rng = np.random.default_rng(0)
    for k in range(20):
        shape = (int(rng.integers(8, 60)), int(rng.integers(8, 60)))
        logits = ndi.gaussian_filter(rng.normal(size=shape), 3) * 40 + rng.normal(0, 0.5)
        gradient = np.abs(ndi.gaussian_filter(rng.normal(size=shape), 1))
        lo, hi = sorted(rng.uniform(-3, 3, 2))
        assert edge_snap_threshold(logits, gradient, lo, hi) == pytest.approx(
            _brute_force_threshold(logits, gradient, lo, hi)
        ), k
    # nothing above lo: lo, whatever the gradient
    assert edge_snap_threshold(np.full((5, 5), -4.0), np.ones((5, 5)), -1, 3) == -1
    with pytest.raises(ValueError, match="one shape"):
        edge_snap_threshold(np.zeros((4, 4)), np.zeros((4, 5)), -1, 3)


@pytest.mark.parametrize("bright", [True, False])
def test_snaps_a_too_large_mask_to_a_blurred_disks_edge(bright):
    """Logits whose 0-level lies 2 px outside a blurred disk: the snapped mask is the disk
    (bright object on dark or dark on bright: the gradient magnitude has no polarity)."""
    yy, xx = np.mgrid[:64, :64]
    dist = np.hypot(yy - 31.5, xx - 30.2)
    disk = dist <= 8.0
    image = ndi.gaussian_filter(np.where(disk, 200.0, 40.0) if bright else np.where(disk, 40.0, 200.0), 1.2)
    gradient = ndi.gaussian_gradient_magnitude(image, EDGE_SNAP_SIGMA)
    logits = 10.0 - dist  # > 0 up to 10 px: 2 px too far
    t = edge_snap_threshold(logits, gradient, -1, 3)
    assert _iou(logits > 0, disk) < 0.7
    assert _iou(logits > t, disk) > 0.9, t
    # and a mask that falls short (0-level at 6 px) grows to it
    t = edge_snap_threshold(7.5 - dist, gradient, -3, 3)
    assert _iou(7.5 - dist > t, disk) > 0.9, t


def test_whole_view_masks_are_thresholded_at_the_snapped_logit(builtin):
    """No window (min_zoom too high), no refinement: each non-empty mask is the plain
    predictor's upsampled logits above the threshold an independent search picks on the
    grey image's gradient; scores and logits are the plain ones; empty outputs stay empty."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 1)
    zp = PromptPipeline(builtin, device="cpu", min_zoom=1e6, edge_snap=(-1, 3))
    plain = Predictor(builtin, device="cpu")
    zp.set_image(img)
    plain.set_image(img)
    gradient = _grey_gradient(img)
    pts, plab, _ = sample_point_prompts(lab, seed=1)
    moved = 0
    for p, pl in zip(pts[:6], plab[:6]):
        masks, scores, logits = zp.predict(p, pl, multimask=True)
        m0, s0, l0 = plain.predict(p, pl, multimask=True)
        np.testing.assert_array_equal(scores, s0)
        np.testing.assert_array_equal(logits, l0)
        up = plain.upsample_logits(torch.from_numpy(l0)).numpy()
        for c in range(len(masks)):
            if not m0[c].any():
                assert not masks[c].any()
                continue
            t = _brute_force_threshold(up[c], gradient, -1, 3)
            assert np.array_equal(masks[c], up[c] > t), (c, t)
            moved += t != 0
    assert moved >= 3  # the snapping did move thresholds


def test_window_masks_are_snapped_at_the_windows_resolution(builtin):
    """A zoomed box prompt: the mask is the plain crop predictor's logits (window resolution)
    above the threshold an independent search picks on the whole image's gradient, cropped."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED)
    zp = PromptPipeline(builtin, device="cpu", context=4, min_side=64, keep_better=False, edge_snap=(-1, 3))
    zp.set_image(img)
    crop = Predictor(builtin, device="cpu")
    gradient = _grey_gradient(img)
    ids = np.unique(lab)[1:]
    checked = 0
    for oid in ids[:8]:
        rows, cols = np.nonzero(lab == oid)
        box = np.array([rows.min(), cols.min(), rows.max(), cols.max()], float)
        masks, scores, _ = zp.predict(box_rc=box, multimask=False)
        win = zp.window_around(zp.object_extent(None, None, box, None))
        if win is None:
            continue
        r0, c0, r1, c1 = win
        crop.set_image(to_rgb_uint8(img)[r0:r1, c0:c1])
        _, cs, cl = crop.predict(box_rc=box - (r0, c0, r0, c0), multimask=False)
        np.testing.assert_allclose(scores, cs, rtol=1e-6)
        up = crop.upsample_logits(torch.from_numpy(cl)).numpy()[0]
        t = _brute_force_threshold(up, gradient[r0:r1, c0:c1], -1, 3)
        expected = np.zeros_like(masks[0])
        expected[r0:r1, c0:c1] = up > t
        assert np.array_equal(masks[0], expected), (oid, t)
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("bad", [(3, -1), (float("nan"), 1.0), (-1, float("inf")), (1, 2, 3), "ab", 5])
def test_bad_values_are_refused(builtin, bad):
    with pytest.raises(ValueError, match="edge_snap"):
        PromptPipeline(builtin, edge_snap=bad)
