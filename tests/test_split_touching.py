"""Cutting a click's mask that spans touching objects (napari_sam.predict.touching.split_touching and
PromptPipeline(split_touching=...))."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from test_zoom import EVAL_SEED, _iou, builtin  # noqa: F401 (builtin: a fixture used by pytest)

import napari_sam.predict.pipeline as pipeline_module
from napari_sam.model.registry import recommended_zoom
from napari_sam.normalize import to_rgb_uint8
from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.predict.touching import split_touching
from napari_sam.synthetic import boxes_from_labels, make_nuclei_image, sample_point_prompts

CENTRES = ((30.0, 26.0), (31.0, 40.5))  # two nuclei of radius 8, 14.5 px apart: they overlap
BOXES_CHECKED = slice(0, 100)  # boxes of the dense test image checked against the function (5 are cut, model v3)


def _two_objects(kind="nuclei", bright=True, radius=8.0, seed=0):
    """A blurred, noisy image of two touching objects, their true masks and the union (the bad mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :72]
    canvas = np.zeros(yy.shape)
    truths = []
    for (r, c), brightness in zip(CENTRES, (1.0, 0.8)):
        dist = np.hypot(yy - r, xx - c)
        inside = dist <= radius
        depth = np.clip(1 - dist / radius, 0, 1)
        if kind == "nuclei":  # brighter towards the centre, as the generator's nuclei
            value = 0.7 + 0.3 * np.sqrt(depth)
        else:  # a cell: bright 2 px membrane, dim interior
            value = np.where(dist > radius - 2, 1.0, 0.25)
        canvas += np.where(inside, value * brightness, 0.0)
        truths.append(inside)
    truths[0] &= ~truths[1]  # the second lies on top, as the generator paints
    image = ndi.gaussian_filter(canvas, 1.0) + 0.05 + rng.normal(0, 0.02, canvas.shape)
    if not bright:
        image = 1.2 - image
    return (image * 200).astype(np.float32), truths, truths[0] | truths[1]


@pytest.mark.parametrize("bright", [True, False])
def test_cuts_two_touching_nuclei_at_the_click(bright):
    """The union of two touching nuclei, clicked in either: the clicked nucleus comes back
    (bright on dark or dark on bright)."""
    image, truths, union = _two_objects(bright=bright)
    for truth, click in zip(truths, CENTRES):
        assert _iou(union, truth) < 0.6
        out = split_touching(union, image, [click])
        assert _iou(out, truth) > 0.85, (bright, click, _iou(out, truth))
        assert not (out & ~union).any()  # only ever removes pixels
    # clicks in both: both parts kept
    np.testing.assert_array_equal(split_touching(union, image, list(CENTRES)), union)


@pytest.mark.parametrize("bright", [True, False])
def test_a_box_keeps_the_parts_mostly_inside_it(bright):
    """The union of two touching nuclei from a box prompt: a box on either nucleus (its first
    and last rows and columns, or 3 px looser) gives that nucleus back; a box around both
    keeps both."""
    image, truths, union = _two_objects(bright=bright)
    for truth in truths:
        rows, cols = np.nonzero(truth)
        for pad in (0, 3):
            box = (rows.min() - pad, cols.min() - pad, rows.max() + pad, cols.max() + pad)
            out = split_touching(union, image, box_rc=box)
            assert _iou(out, truth) > 0.85, (bright, box, _iou(out, truth))
            assert not (out & ~union).any()
    rows, cols = np.nonzero(union)
    both = (rows.min(), cols.min(), rows.max(), cols.max())
    np.testing.assert_array_equal(split_touching(union, image, box_rc=both), union)


def test_single_objects_are_not_cut():
    """One nucleus (round, or an ellipse twice as long as wide) with the generator's texture:
    its own mask comes back unchanged."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :64]
    for ry, rx in ((9.0, 9.0), (7.0, 14.0)):
        dist = np.hypot((yy - 32) / ry, (xx - 31) / rx)
        inside = dist <= 1
        texture = ndi.gaussian_filter(rng.normal(size=yy.shape), 2.0)
        value = (0.7 + 0.3 * np.sqrt(np.clip(1 - dist, 0, 1))) * (1 + 0.15 * texture / texture.std())
        image = ndi.gaussian_filter(np.where(inside, value, 0.0), 1.0) + 0.05 + rng.normal(0, 0.02, yy.shape)
        np.testing.assert_array_equal(split_touching(inside, image * 200, [(32, 31)]), inside)


def test_cells_with_bright_membranes_are_not_cut():
    """Two touching cells (bright rim, dim interior): a mask over both is left alone."""
    image, _, union = _two_objects(kind="cells", radius=12.0)
    for click in CENTRES:
        np.testing.assert_array_equal(split_touching(union, image, [click]), union)


def test_degenerate_and_bad_inputs():
    image, _, union = _two_objects()
    empty = np.zeros_like(union)
    assert not split_touching(empty, image, [CENTRES[0]]).any()
    # a click outside the mask: unchanged
    np.testing.assert_array_equal(split_touching(union, image, [(2, 2)]), union)
    with pytest.raises(ValueError, match="one shape"):
        split_touching(union, image[:, :10], [CENTRES[0]])
    with pytest.raises(ValueError, match="h > 0"):
        split_touching(union, image, [CENTRES[0]], h=0)
    with pytest.raises(ValueError, match="either points_rc"):
        split_touching(union, image, [CENTRES[0]], box_rc=(0, 0, 10, 10))
    with pytest.raises(ValueError, match="either points_rc"):
        split_touching(union, image)
    with pytest.raises(ValueError, match="box_rc must be 4"):
        split_touching(union, image, box_rc=(0, 0, 10))
    with pytest.raises(ValueError, match="box_rc must be 4"):  # even with nothing to cut
        split_touching(empty, image, box_rc=(0, 0, 10, float("nan")))


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), "ab", (1, 2)])
def test_bad_values_are_refused(builtin, bad):
    with pytest.raises(ValueError, match="split_touching"):
        PromptPipeline(builtin, split_touching=bad)


def test_predictor_cuts_as_the_function_does_on_the_whole_frame(builtin, monkeypatch):
    """PromptPipeline(split_touching=h): every returned mask of a click equals split_touching of
    the same predictor's uncut final mask (the output of edge snapping) on the whole image's
    grey (checks its crop margins), and so does the mask of a box prompt (``box_rc``); scores
    and logits are not changed by the cut; at least one click and one box on these dense small
    nuclei are cut."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 30_004)
    zoom = {**recommended_zoom("builtin"), "split_touching": 0.2}
    plain = PromptPipeline(builtin, device="cpu", **{**zoom, "split_touching": None})
    cut = PromptPipeline(builtin, device="cpu", **zoom)
    seen, passes = [], []
    snapped, recentred = pipeline_module.snap_masks, cut._recentred

    def spy(*args):  # the final masks before the cut (the output of edge snapping)
        seen.append(snapped(*args))
        return seen[-1]

    def spy_pass(*args):  # the scores and logits of the prompt's passes
        passes.append(recentred(*args))
        return passes[-1]

    monkeypatch.setattr(pipeline_module, "snap_masks", spy)
    cut._recentred = spy_pass
    plain.set_image(img)
    cut.set_image(img)
    grey = to_rgb_uint8(img).astype(np.float32).mean(axis=-1)
    pts, plab, ids = sample_point_prompts(lab, seed=2)
    changed = 0
    for p, pl in zip(pts[:30], plab[:30]):  # clicks 25 and 27 are cut at the end
        m1, s1, l1 = cut.predict(p, pl, multimask=True)
        m0, (_, s0, l0, _) = seen[-1], passes[-1]
        np.testing.assert_array_equal(s1, s0)
        np.testing.assert_array_equal(l1, l0)
        for c in range(len(m0)):
            np.testing.assert_array_equal(m1[c], split_touching(m0[c], grey, p, h=0.2))
            changed += not np.array_equal(m1[c], m0[c])
    assert changed >= 1
    changed = 0
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 30_010)  # denser: boxes get cut
    cut.set_image(img)
    grey = to_rgb_uint8(img).astype(np.float32).mean(axis=-1)
    for box in boxes_from_labels(lab)[0][BOXES_CHECKED]:
        m1, s1, l1 = cut.predict(box_rc=box, multimask=False)
        m0, (_, s0, l0, _) = seen[-1], passes[-1]
        np.testing.assert_array_equal(s1, s0)
        np.testing.assert_array_equal(l1, l0)
        np.testing.assert_array_equal(m1[0], split_touching(m0[0], grey, box_rc=box, h=0.2))
        changed += not np.array_equal(m1[0], m0[0])
    assert changed >= 1
    # points and a box together (a correction inside a box) are not cut
    m1 = cut.predict(pts[0], plab[0], box_rc=box, multimask=False)[0]
    np.testing.assert_array_equal(m1, seen[-1])


def test_the_zoom_decides_from_the_cut_mask(builtin):
    """The window, the refinement box and the recentring point of a click come from the clicked
    nucleus, not from a mask over it and its touching neighbour (``clicked_object``); without
    split_touching, from the whole clicked part as before."""
    image, truths, union = _two_objects()
    big = np.zeros((256, 256), bool)
    big[100:164, 90:162] = union  # the two nuclei somewhere in a 256 x 256 view
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[100:164, 90:162] = np.clip(image, 0, 255).astype(np.uint8)[..., None]
    zoom = {**recommended_zoom("builtin"), "split_touching": 0.2}
    cut = PromptPipeline(builtin, device="cpu", **zoom)
    plain = PromptPipeline(builtin, device="cpu", **{**zoom, "split_touching": None})
    for zp in (cut, plain):
        zp.set_image(rgb)
    for truth, (r, c) in zip(truths, CENTRES):
        click = np.array([[r + 100, c + 90]])
        rows, cols = np.nonzero(truth)
        nucleus = (rows.min() + 100, cols.min() + 90, rows.max() + 101, cols.max() + 91)
        extent = cut.object_extent(click, [1], None, big)
        assert np.abs(np.subtract(extent, nucleus)).max() <= 2, (extent, nucleus)
        rows, cols = np.nonzero(big)
        assert plain.object_extent(click, [1], None, big) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        assert _iou(cut.clicked_object(big, click, [1])[100:164, 90:162], truth) > 0.85
