"""The prompt pipeline's zoom: a second pass on a window around the object (napari_sam.predict.zoom,
napari_sam.predict.window, napari_sam.predict.refine, napari_sam.predict.correction)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_sam.model.registry import load_model, recommended_zoom
from napari_sam.normalize import to_rgb_uint8
from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.predict.predictor import Predictor
from napari_sam.predict.window import OUTSIDE_LOGIT, mask_prompt_to_window
from napari_sam.predict.zoom import interior_point, zoom_window
from napari_sam.synthetic import boxes_from_labels, make_nuclei_image, sample_point_prompts
from napari_sam.training.evaluate import correction_click

EVAL_SEED = 1_001_000  # the evaluation seeds of scripts/eval_builtin.py (never trained on)


@pytest.fixture(scope="module")
def builtin():
    return load_model("builtin", device="cpu")


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def _assert_is_the_window_prompt(masks, scores, crop, rgb, win, p, pl):
    """``masks``/``scores`` are the plain ``crop`` predictor's click on window ``win`` of ``rgb``, pasted back."""
    r0, c0, r1, c1 = win
    crop.set_image(rgb[r0:r1, c0:c1])
    cm, cs, _ = crop.predict(p - (r0, c0), pl, multimask=True)
    expected = np.zeros_like(masks)
    expected[:, r0:r1, c0:c1] = cm
    assert np.array_equal(masks, expected)
    np.testing.assert_allclose(scores, cs, rtol=1e-6)


def test_zoom_window_geometry():
    # 10 px object, context 4, at least 32 px: a 40 px window centred on it
    assert zoom_window((50, 60, 60, 70), (256, 256), context=4, min_side=32) == (35, 45, 75, 85)
    # tiny object: min_side wins
    assert zoom_window((50, 60, 52, 62), (256, 256), context=4, min_side=32) == (35, 45, 67, 77)
    # at the image border the window shifts inside, same size
    assert zoom_window((0, 250, 10, 256), (256, 256), context=4, min_side=32) == (0, 216, 40, 256)
    # non-square image: the window never exceeds it
    r0, c0, r1, c1 = zoom_window((5, 5, 15, 100), (40, 400), context=2, min_side=8)
    assert (r0, r1) == (0, 40) and c1 - c0 == 190 and 0 <= c0 and c1 <= 400
    # a window nearly as large as the image magnifies too little: None
    assert zoom_window((0, 0, 100, 100), (256, 256), context=2.2, min_side=32) is None
    assert zoom_window((0, 0, 100, 100), (256, 256), context=2.2, min_side=32, min_zoom=1.0) is not None


def test_builtin_recommends_zoom():
    zoom = recommended_zoom("builtin")
    assert zoom is not None and zoom["context"] >= 1 and zoom["min_side"] >= 1
    assert recommended_zoom("vit_b") is None


def test_second_pass_is_a_plain_prompt_on_the_window(builtin):
    """The zoomed masks are exactly what a plain Predictor gives on the crop, pasted back."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED)
    zp = PromptPipeline(builtin, device="cpu", context=4, min_side=64, keep_better=False)
    better = PromptPipeline(builtin, device="cpu", context=4, min_side=64)  # keep_better=True
    zp.set_image(img)
    better.set_image(img)
    plain, crop = Predictor(builtin, device="cpu"), Predictor(builtin, device="cpu")
    plain.set_image(img)
    pts, plab, ids = sample_point_prompts(lab, seed=0)
    checked = 0
    for p, pl in zip(pts[:10], plab[:10]):
        masks, scores, logits = zp.predict(p, pl, multimask=True)
        m0, s0, _ = plain.predict(p, pl, multimask=True)
        win = zp.window_for(p, pl, None, m0, s0)
        if win is None:  # the whole-view mask was large: nothing to zoom, plain result
            assert np.array_equal(masks, m0)
            continue
        _assert_is_the_window_prompt(masks, scores, crop, to_rgb_uint8(img), win, p, pl)
        assert logits.shape == (3, *zp.mask_input_size)
        assert (logits == OUTSIDE_LOGIT).any()  # outside the window
        # keep_better: the pass the model rates higher, whole view or window
        kept = better.predict(p, pl, multimask=True)
        winner = (masks, scores) if scores.max() >= s0.max() else (m0, s0)
        assert np.array_equal(kept[0], winner[0]) and np.array_equal(kept[1], winner[1])
        checked += 1
    assert checked >= 6


def test_no_zoom_when_it_cannot_help(builtin):
    """Whole-image windows, mask prompts and stored embeddings: identical to Predictor."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 2)
    plain = Predictor(builtin, device="cpu")
    plain.set_image(img)
    p, pl = np.array([[128.0, 128.0]]), np.array([1])
    box = np.array([10.0, 10.0, 240.0, 240.0])  # large box: no window magnifies 1.25x
    zp = PromptPipeline(builtin, device="cpu", context=4, min_side=64)
    zp.set_image(img)
    for kw in ({"box_rc": box, "multimask": False},
               {"points_rc": p, "point_labels": pl, "mask_input": np.zeros((1, *plain.mask_input_size), np.float32)}):
        for a, b in zip(zp.predict(**kw), plain.predict(**kw)):
            assert np.array_equal(a, b)
    zp.set_embedding(plain.get_embedding())  # no pixels to crop: plain behaviour
    for a, b in zip(zp.predict(p, pl), plain.predict(p, pl)):
        assert np.array_equal(a, b)


def test_returned_logits_work_as_mask_prompt(builtin):
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 3)
    zp = PromptPipeline(builtin, device="cpu", **recommended_zoom("builtin"))
    zp.set_image(img)
    boxes, _ = boxes_from_labels(lab)
    masks, _, logits = zp.predict(box_rc=boxes[0], multimask=False)
    # the logits, read back at full resolution, outline the zoomed mask
    back = zp.masks_from_logits(__import__("torch").from_numpy(logits)).numpy()[0]
    assert _iou(back, masks[0]) > 0.6
    zp.predict(box_rc=boxes[0], mask_input=logits, multimask=False)  # accepted as a mask prompt


def test_bad_parameters():
    with pytest.raises(ValueError, match="must be >= 1"):
        PromptPipeline(load_model("builtin", device="cpu"), context=0.5)


def test_flips_average_the_four_flipped_window_passes(builtin):
    """flips=True against an independent computation: a plain Predictor on each flipped
    crop, logits upsampled to the crop, flipped back, averaged, thresholded."""
    import torch

    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 6)
    zp = PromptPipeline(builtin, device="cpu", context=4, min_side=128, keep_better=False, flips=True)
    zp.set_image(img)
    plain, crop = Predictor(builtin, device="cpu"), Predictor(builtin, device="cpu")
    plain.set_image(img)
    boxes, _ = boxes_from_labels(lab)
    pts, plab, _ = sample_point_prompts(lab, seed=6)
    checked = 0
    for kw in [{"box_rc": b, "multimask": False} for b in boxes[:3]] + \
              [{"points_rc": p, "point_labels": pl, "multimask": True} for p, pl in zip(pts[:3], plab[:3])]:
        m0, s0, _ = plain.predict(**kw)
        win = zp.window_for(kw.get("points_rc"), kw.get("point_labels"), kw.get("box_rc"), m0, s0)
        if win is None:
            continue
        r0, c0, r1, c1 = win
        h, w = r1 - r0, c1 - c0
        total, scores = 0.0, 0.0
        for fr in (False, True):
            for fc in (False, True):
                crop.set_image(np.ascontiguousarray(to_rgb_uint8(img)[r0:r1, c0:c1][:: -1 if fr else 1, :: -1 if fc else 1]))
                q = {"multimask": kw["multimask"]}
                if "box_rc" in kw:
                    b = np.asarray(kw["box_rc"], float) - (r0, c0, r0, c0)
                    if fr:
                        b[[0, 2]] = h - b[[2, 0]]
                    if fc:
                        b[[1, 3]] = w - b[[3, 1]]
                    q["box_rc"] = b
                else:
                    p = np.asarray(kw["points_rc"], float) - (r0, c0)
                    if fr:
                        p[:, 0] = h - 1 - p[:, 0]
                    if fc:
                        p[:, 1] = w - 1 - p[:, 1]
                    q.update(points_rc=p, point_labels=kw["point_labels"])
                _, s, lg = crop.predict(**q)
                up = crop.upsample_logits(torch.from_numpy(lg)).numpy()[:, :: -1 if fr else 1, :: -1 if fc else 1]
                total, scores = total + up, scores + s
        masks, got_scores, _ = zp.predict(**kw)
        expected = np.zeros_like(masks)
        expected[:, r0:r1, c0:c1] = total / 4 > 0
        assert (masks == expected).mean() > 0.999
        np.testing.assert_allclose(got_scores, scores / 4, rtol=1e-5)
        checked += 1
    assert checked >= 4


def _inclusive_box_of_clicked_part(mask, point_rc):
    """Reference for the refinement box: the connected part under the click, first/last row and column."""
    from scipy import ndimage as ndi

    parts, _ = ndi.label(mask)
    r, c = (int(round(v)) for v in point_rc)
    rows, cols = np.nonzero(parts == parts[r, c])
    return np.array([rows.min(), cols.min(), rows.max(), cols.max()], float)


def test_refine_box_prompts_the_click_masks_box_in_the_same_window(builtin):
    """refine_box=1 against an independent computation: the click's best mask (refine_box=0),
    the box of its part under the click, prompted alone on the click's window crop."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 7)
    base = PromptPipeline(builtin, device="cpu", context=4, min_side=128, keep_better=False)
    refined = PromptPipeline(builtin, device="cpu", context=4, min_side=128, keep_better=False, refine_box=1)
    plain, crop = Predictor(builtin, device="cpu"), Predictor(builtin, device="cpu")
    for p in (base, refined, plain):
        p.set_image(img)
    pts, plab, _ = sample_point_prompts(lab, seed=7)
    checked = 0
    for p, pl in zip(pts[:8], plab[:8]):
        m0, s0, _ = base.predict(p, pl, multimask=True)
        b = int(np.argmax(s0))
        if not m0[b][int(round(p[0, 0])), int(round(p[0, 1]))]:
            continue  # click outside its own mask: the reference above needs a part under it
        win = base.window_for(p, pl, None, *plain.predict(p, pl, multimask=True)[:2])
        r0, c0, r1, c1 = win
        box = _inclusive_box_of_clicked_part(m0[b], p[0])
        if box[0] < r0 or box[1] < c0 or box[2] >= r1 or box[3] >= c1:
            continue  # a new window would be chosen
        crop.set_image(np.ascontiguousarray(to_rgb_uint8(img)[r0:r1, c0:c1]))
        cm, cs, _ = crop.predict(box_rc=box - (r0, c0, r0, c0), multimask=False)
        masks, scores, _ = refined.predict(p, pl, multimask=True)
        expected = np.zeros(lab.shape, bool)
        expected[r0:r1, c0:c1] = cm[0]
        assert (masks[b] == expected).mean() > 0.999
        assert scores[b] == pytest.approx(cs[0], rel=1e-5)
        others = [k for k in range(3) if k != b]  # the other masks are the click's
        assert np.array_equal(masks[others], m0[others])
        checked += 1
    assert checked >= 4


def test_refine_box_leaves_corrections_and_boxes_alone(builtin):
    """Negative clicks (a user correcting) and box prompts are not refined."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 8)
    base = PromptPipeline(builtin, device="cpu", context=4, min_side=128)
    refined = PromptPipeline(builtin, device="cpu", context=4, min_side=128, refine_box=2)
    base.set_image(img)
    refined.set_image(img)
    pts, plab, _ = sample_point_prompts(lab, seed=8)
    boxes, _ = boxes_from_labels(lab)
    neg = np.array([[pts[0, 0, 0] + 3, pts[0, 0, 1] + 3]])
    for kw in ({"points_rc": np.vstack([pts[0], neg]), "point_labels": np.array([1, 0])},
               {"box_rc": boxes[0], "multimask": False},
               {"points_rc": pts[1], "point_labels": plab[1], "box_rc": boxes[1]}):
        for a, b in zip(base.predict(**kw), refined.predict(**kw)):
            assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="refine_box"):
        PromptPipeline(builtin, refine_box=-1)


def test_interior_point():
    yy, xx = np.mgrid[:40, :50]
    disk = (yy - 20) ** 2 + (xx - 30) ** 2 <= 36
    np.testing.assert_array_equal(interior_point(disk), [20, 30])
    corner = np.zeros((10, 10), bool)
    corner[:3, :3] = True  # outside the image counts as background
    np.testing.assert_array_equal(interior_point(corner), [1, 1])
    assert interior_point(np.zeros((5, 5), bool)) is None


def _part_under(mask, click):
    parts, _ = ndi.label(mask)
    r, c = np.clip(np.rint(click).astype(int), 0, np.array(mask.shape) - 1)
    return parts == parts[r, c] if parts[r, c] else mask


def test_recenter_reruns_the_click_from_the_interior(builtin):
    """recenter=True against an independent computation with a recenter=False predictor:
    the click's result, the same click pipeline from the interior point of its best mask's
    clicked part, and the rule (click still inside, rated at least as high)."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 3)
    kw = dict(context=4, min_side=128, flips=False, refine_box=1)
    plain = PromptPipeline(builtin, device="cpu", **kw)
    rec = PromptPipeline(builtin, device="cpu", recenter=True, **kw)
    plain.set_image(img)
    rec.set_image(img)
    pts, plab, _ = sample_point_prompts(lab, mode="uniform", seed=2)
    outcome = []
    for p, pl in zip(pts[:16], plab[:16]):
        first = plain.predict(p, pl)
        expected, what = first, "centred"
        inner = interior_point(_part_under(first[0][int(np.argmax(first[1]))], p[0]))
        if np.hypot(*(inner - p[0])) >= 1.5:
            again = plain.predict(inner[None], np.array([1]))
            best = again[0][int(np.argmax(again[1]))]
            r, c = np.rint(p[0]).astype(int)
            if best[r, c] and again[1].max() >= first[1].max():
                expected, what = again, "moved"
            else:
                what = "kept"
        for got, want in zip(rec.predict(p, pl), expected):
            np.testing.assert_array_equal(got, want)
        outcome.append(what)
    assert "moved" in outcome and "kept" in outcome, outcome
    # corrections (several points) and boxes: untouched
    two = np.array([p[0], p[0] + 2]), np.array([1, 0])
    for a, b in zip(plain.predict(*two), rec.predict(*two)):
        np.testing.assert_array_equal(a, b)


def test_prompt_mask_threshold_thresholds_every_pass_of_predict_only(builtin):
    """``prompt_mask_threshold``: predict() is a plain prompt on the window crop thresholded
    there (the window chosen from the whole-view masks at that threshold); predict_batch
    and automatic generation keep the model's threshold."""
    thr = 1.0
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 3)
    zp = PromptPipeline(builtin, device="cpu", context=4, min_side=64, keep_better=False,
                       prompt_mask_threshold=thr)
    at_zero = PromptPipeline(builtin, device="cpu", context=4, min_side=64, keep_better=False)
    plain, crop = Predictor(builtin, device="cpu"), Predictor(builtin, device="cpu")
    plain.mask_threshold = crop.mask_threshold = thr
    for p in (zp, at_zero, plain):
        p.set_image(img)
    assert zp.mask_threshold == builtin.mask_threshold == 0.0
    pts, plab, _ = sample_point_prompts(lab, seed=3)
    checked = differs = 0
    for p, pl in zip(pts[:8], plab[:8]):
        masks, scores, _ = zp.predict(p, pl, multimask=True)
        assert zp.mask_threshold == 0.0  # restored after the call
        m0, s0, _ = plain.predict(p, pl, multimask=True)
        win = zp.window_for(p, pl, None, m0, s0)
        if win is None:
            continue
        _assert_is_the_window_prompt(masks, scores, crop, to_rgb_uint8(img), win, p, pl)
        differs += not np.array_equal(masks, at_zero.predict(p, pl, multimask=True)[0])
        checked += 1
    assert checked >= 5 and differs >= 3
    # the batch path (automatic generation) thresholds at the model's value
    res = zp.predict_batch(pts[:2], plab[:2], multimask=True)
    np.testing.assert_array_equal(zp.masks_from_logits(res.low_res_logits[0]).numpy(),
                                  res.mask_logits[0].numpy() > 0.0)
    # restored when predict fails, too
    with pytest.raises(ValueError):
        zp.predict(np.array([[-50.0, 10.0]]), np.array([1]))
    assert zp.mask_threshold == 0.0
    with pytest.raises(ValueError, match="finite"):
        PromptPipeline(builtin, prompt_mask_threshold=float("nan"))


def test_small_mask_threshold_reruns_small_masks_at_its_threshold(builtin):
    """``small_mask_threshold=(d, t)``: a click whose best mask (at the usual threshold) is
    smaller than a disk of ``d`` px gets exactly the result of a predictor thresholding at
    ``t`` everywhere; other clicks and boxes get the usual result."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 3)
    kw = dict(device="cpu", context=4, min_side=128, refine_box=1)
    usual = PromptPipeline(builtin, **kw)
    high = PromptPipeline(builtin, prompt_mask_threshold=1.0, **kw)
    pts, plab, _ = sample_point_prompts(lab, seed=3)
    usual.set_image(img)
    high.set_image(img)
    first = [usual.predict(p, pl) for p, pl in zip(pts[:10], plab[:10])]
    diam = np.array([2 * np.sqrt(m[int(np.argmax(s))].sum() / np.pi) for m, s, _ in first])
    d = float(np.median(diam))  # some clicks on each side
    rule = PromptPipeline(builtin, small_mask_threshold=(d, 1.0), **kw)
    rule.set_image(img)
    branches = {True: 0, False: 0}
    changed = 0
    for (m0, s0, l0), dm, p, pl in zip(first, diam, pts, plab):
        masks, scores, logits = rule.predict(p, pl)
        small = bool(dm < d)
        mx, sx, lx = high.predict(p, pl) if small else (m0, s0, l0)
        assert np.array_equal(masks, mx)
        np.testing.assert_array_equal(scores, sx)
        np.testing.assert_array_equal(logits, lx)
        branches[small] += 1
        changed += not np.array_equal(masks, m0)
        assert rule.mask_threshold == 0.0
    assert min(branches.values()) >= 3, branches
    assert changed >= 2  # the re-run at 1.0 did change small clicks' masks
    # boxes (and prompts with a mask_input) keep the usual threshold
    boxes, _ = boxes_from_labels(lab)
    for b in boxes[:3]:
        assert np.array_equal(rule.predict(box_rc=b, multimask=False)[0],
                              usual.predict(box_rc=b, multimask=False)[0])


@pytest.mark.parametrize("bad", [(0, 1.0), (float("nan"), 1.0), (10, float("inf")), (1, 2, 3), "ab", 5])
def test_small_mask_threshold_rejects_bad_values(builtin, bad):
    with pytest.raises(ValueError, match="small_mask_threshold"):
        PromptPipeline(builtin, small_mask_threshold=bad)


def test_a_correction_is_zoomed_with_its_mask_prompt_resampled(builtin):
    """Points with a mask_input (a correction) are zoomed too: the window pass gets the mask
    prompt resampled into the window's low-res frame, covering the same image pixels as the
    full view's (checked at image resolution, independently of the resampling code); the
    result is the window's single output. A mask prompt with a box (propagation, polygons)
    or alone is not zoomed."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 4)
    zp = PromptPipeline(builtin, device="cpu", **{**recommended_zoom("builtin"), "flips": False})
    zp.set_image(img)
    ids, areas = np.unique(lab[lab > 0], return_counts=True)
    rows, cols = np.nonzero(lab == ids[np.argmax(areas)])  # the largest nucleus: a resampled outline is
    click = np.array([[rows.mean(), cols.mean()]])  # ~1 px off, the fraction that is must stay small
    first = zp.predict(click, [1])
    _, scores, logits = first
    prompt = logits[int(np.argmax(scores))][None]
    seen = []
    wp = zp._windows.predictors[0]
    original = wp.predict_batch
    wp.predict_batch = lambda *a, **k: seen.append(a) or original(*a, **k)
    corrected = zp.predict(np.vstack([click, click + [2, 0]]), [1, 0], previous=first.previous(), multimask=False)
    assert len(seen) == 1 and seen[0][3] is not None and corrected[0].shape == (1, 256, 256)
    r0, c0, r1, c1 = zp._windows.window
    full_px = zp.upsample_logits(torch.from_numpy(prompt))[0].numpy()[r0:r1, c0:c1] > 0
    window_px = wp.upsample_logits(torch.as_tensor(seen[0][3])[0])[0].numpy() > 0
    assert full_px.any() and _iou(full_px, window_px) > 0.9, _iou(full_px, window_px)
    # a box with the mask prompt, or the mask prompt alone: the whole view only
    seen.clear()
    box = np.array([rows.min(), cols.min(), rows.max(), cols.max()], float)
    zp.predict(click, [1], box_rc=box, mask_input=prompt, multimask=False)
    zp.predict(mask_input=prompt, multimask=False)
    assert not seen


def test_a_correction_prompts_the_window_with_the_shown_masks_own_window_logits(builtin):
    """A correction of a returned mask (passed back as ``previous``, as the plugin does)
    prompts the window with that mask's logits at the first window's pixels,
    not with the full view's low-res frame (4 image pixels per logit here): at image
    resolution, the window's mask prompt then matches the mask shown (the first window's
    logits > 0) better, on small nuclei. Any other mask prompt (edited, or from another
    prompt: no ``previous_window``) takes the full-view path, unchanged."""
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 10)  # small nuclei
    zp = PromptPipeline(builtin, device="cpu", **{**recommended_zoom("builtin"), "flips": False})
    zp.set_image(img)
    own, coarse = [], []
    for oid in np.unique(lab)[1:13]:
        rows, cols = np.nonzero(lab == oid)
        click = np.array([[rows.mean(), cols.mean()]])
        result = zp.predict(click, [1])
        _, scores, logits = result
        best = int(np.argmax(scores))
        fine = result.window_logits[best]
        wp = zp._windows.predictors[0]
        if fine is None:  # the whole view's mask was kept: nothing finer to use
            continue
        (a0, b0, a1, b1), fine_logits = fine
        shown_px = fine_logits > 0
        prompt = logits[best][None]
        win = r0, c0, r1, c1 = a0, b0, a1, b1  # a correction near the click zooms on this window again
        def to_window(mask_prompt, previous_window):
            return mask_prompt_to_window(zp.predictor, wp, mask_prompt, win, previous_window)

        got = wp.upsample_logits(torch.from_numpy(to_window(prompt, fine))[None])[0].numpy() > 0
        old = wp.upsample_logits(torch.from_numpy(to_window(prompt, None))[None])[0].numpy() > 0
        edited = wp.upsample_logits(torch.from_numpy(to_window(prompt + 0.5, None))[None])[0].numpy() > 0
        edited_old = zp.upsample_logits(torch.from_numpy(prompt + 0.5))[0].numpy()[r0:r1, c0:c1] > 0
        assert _iou(edited, edited_old) > 0.8  # not the last result: the full view's frame
        own.append(_iou(got, shown_px))
        coarse.append(_iou(old, shown_px))
    assert len(own) >= 8, len(own)
    assert np.mean(own) > 0.95, own
    assert np.mean(own) > np.mean(coarse) + 0.05, (np.mean(own), np.mean(coarse))


def test_local_correction_changes_the_shown_mask_only_near_the_new_point(builtin):
    """With ``local_correction=(k, c)`` a correction returns the plain correction's mask within
    ``k * d + c`` px of the new point (``d``: the point's distance to the shown mask's edge,
    computed here with a distance transform) and the shown mask elsewhere; the logits and
    scores are the model's. Not applied when the points do not extend the previous prompt's or
    the mask prompt is not a previous result."""
    img, lab = make_nuclei_image((256, 256), kind="cells", seed=EVAL_SEED + 2)
    zoom = {k: v for k, v in recommended_zoom("builtin").items() if k != "local_correction"}
    plain = PromptPipeline(builtin, device="cpu", **zoom)
    local = PromptPipeline(builtin, device="cpu", **zoom, local_correction=(2, 2))
    plain.set_image(img)
    local.set_image(img)
    pts, _, ids = sample_point_prompts(lab, seed=0)
    yy, xx = np.mgrid[:256, :256]
    differ = 0
    for p, oid in list(zip(pts, ids))[:8]:
        first = [zp.predict(p, [1]) for zp in (plain, local)]
        for a, b in zip(*first):
            np.testing.assert_array_equal(a, b)
        masks, scores, logits = first[0]
        best = int(np.argmax(scores))
        previous = [f.previous(best) for f in first]
        shown = masks[best]
        q, label = correction_click(shown, lab == oid)
        both, labels = np.vstack([p, q[None]]), np.array([1, label])
        got = local.predict(both, labels, previous=previous[1], multimask=False)
        want = plain.predict(both, labels, previous=previous[0], multimask=False)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[2], want[2])
        wrong_side = ~shown if label else shown
        d = ndi.distance_transform_edt(wrong_side)[int(q[0]), int(q[1])]
        disk = np.hypot(yy - q[0], xx - q[1]) <= 2 * d + 2
        np.testing.assert_array_equal(got[0][0], np.where(disk, want[0][0], shown))
        differ += int(not np.array_equal(got[0][0], want[0][0]))
        # points that do not extend the last prompt's, or an edited mask prompt: plain
        reordered = slice(None, None, -1)
        np.testing.assert_array_equal(
            local.predict(both[reordered], labels[reordered], previous=previous[1], multimask=False)[0],
            plain.predict(both[reordered], labels[reordered], previous=previous[0], multimask=False)[0])
        np.testing.assert_array_equal(
            local.predict(both, labels, mask_input=logits[best][None] + 0.25, multimask=False)[0],
            plain.predict(both, labels, mask_input=logits[best][None] + 0.25, multimask=False)[0])
    assert differ >= 3, differ  # the rule changed several corrections


@pytest.mark.parametrize("bad", [(-1, 2), (float("nan"), 1.0), (1, float("inf")), (1, 2, 3), "ab", 5])
def test_local_correction_rejects_bad_values(builtin, bad):
    with pytest.raises(ValueError, match="local_correction"):
        PromptPipeline(builtin, local_correction=bad)
