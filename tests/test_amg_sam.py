"""AMG and segment_image end to end with the real model code (random weights, small config)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_sam import automatic as U
from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.model import build_model
from napari_sam.predict.predictor import Predictor
from napari_sam.tiled.tiles import segment_image


@pytest.fixture(scope="module")
def predictor(sam_reference_dir):
    """The reference tiny ViT SAM shrunk to a 256-pixel input (random weights, seeded)."""
    config = json.loads((sam_reference_dir / "tiny_vit" / "config.json").read_text())
    config["image_size"] = 256
    config["image_encoder"]["img_size"] = 256
    torch.manual_seed(0)
    return Predictor(build_model(config).eval())


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(5)
    rr, cc = np.mgrid[:96, :120]
    img = rng.normal(300, 20, size=(96, 120))
    for r, c, rad in [(25, 30, 10), (60, 80, 14), (70, 25, 8), (20, 95, 9)]:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] += 2000
    return img.astype(np.uint16)


def _brute_force(predictor, image, n_side, iou_t, stab_t, nms_t):
    """Official single-crop AMG with every mask upsampled first (no early IoU filter, full masks)."""
    predictor.set_image(image, contrast_limits=(float(image.min()), float(image.max())))
    h, w = image.shape
    pts = U.build_point_grid(n_side) * np.array([h, w])
    pred = predictor.predict_batch(pts[:, None, :], np.ones((len(pts), 1)), multimask=True, upsample=True)
    logits = pred.mask_logits.flatten(0, 1).numpy()
    scores = pred.scores.flatten().numpy()
    cands = []
    for k in range(len(scores)):
        mask = logits[k] > 0
        stab = np.sum(logits[k] > 1.0) / max(np.sum(logits[k] > -1.0), 1)
        if not mask.any() or not scores[k] > iou_t or not stab >= stab_t:
            continue
        rr, cc = np.nonzero(mask)
        cands.append(((rr.min(), cc.min(), rr.max() + 1, cc.max() + 1), float(scores[k]), mask))
    boxes = np.array([b for b, _, _ in cands]).reshape(-1, 4)
    keep = U.nms(boxes, np.array([s for _, s, _ in cands]), nms_t)
    return [cands[i] for i in keep], scores


def test_generate_equals_upsample_everything_reference(predictor, image):
    _, scores = _brute_force(predictor, image, 4, 0.0, 0.0, 0.7)
    iou_t = float(np.median(scores))  # a threshold that really splits the random model's masks
    ref, _ = _brute_force(predictor, image, 4, iou_t, 0.0, 0.7)
    gen = AutomaticMaskGenerator(predictor, points_per_side=4, pred_iou_thresh=iou_t, stability_score_thresh=0.0)
    got = gen.generate(image, contrast_limits=(float(image.min()), float(image.max())))
    assert len(got) == len(ref) > 0
    got_boxes = sorted(r.bbox_rc for r in got)
    assert got_boxes == sorted(tuple(int(v) for v in b) for b, _, _ in ref)
    for rec in got:
        match = [m for b, _, m in ref if tuple(int(v) for v in b) == rec.bbox_rc][0]
        r0, c0, r1, c1 = rec.bbox_rc
        np.testing.assert_array_equal(rec.mask, match[r0:r1, c0:c1])


def _valid_labels(labels, shape):
    assert labels.shape == shape and labels.dtype == np.uint32
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    return len(ids)


def test_segment_image_untiled_and_tiled_with_real_model(predictor, image, tmp_path):
    import zarr

    params = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    untiled = segment_image(image, predictor, **params)
    assert _valid_labels(untiled, image.shape) > 0
    out = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=image.shape, chunks=(32, 32), dtype="uint32")
    tiled = segment_image(image, predictor, tile_shape=64, halo=16, out=out, **params)
    assert tiled is out
    _valid_labels(np.asarray(out[:]), image.shape)  # random masks are often cut by windows: may be empty
    # a halo as large as the image: every window is the whole image, every tile finds the same masks,
    # stitching must keep each object exactly once -> identical to the untiled result
    whole = segment_image(image, predictor, tile_shape=64, halo=120, **params)
    np.testing.assert_array_equal(whole, untiled)
