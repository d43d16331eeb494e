"""The decoder's fast paths for automatic generation give the plain decoder's results.

* Prompt sets decoded in groups (:data:`napari_sam.model.mask_decoder.PROMPT_GROUP_BYTES`)
  give what one batch gives.
* ``MaskDecoder.forward(min_iou=...)`` / ``Predictor.predict_batch(min_score=...)``
  upscale masks only for the prompts with a predicted IoU above the floor: the
  kept prompts are exactly those (checked against the scores of an ungated
  call) and their masks are the ungated ones.
* The generator gates at its IoU floor and returns the same candidates as
  without gating.

Random-weight models of the tiny config: decoder depth 1 takes the low-rank
first-upscaling path (its record is subset for the kept prompts), depth 2 the
direct product.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_sam import tiny_sam_config

import napari_sam.automatic._candidates as cand
import napari_sam.model.mask_decoder as md
from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.model import build_model
from napari_sam.predict.predictor import Predictor

ATOL = 1e-5
RTOL = 1e-5  # float rounding: groups of one prompt take 2-D products


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to float rounding: 1e-6 of the largest magnitude (the logits of these weights reach ~10-100)."""
    torch.testing.assert_close(got, ref, atol=1e-6 * float(ref.abs().max()) + ATOL, rtol=RTOL)


def _midway(scores: torch.Tensor) -> float:
    """A floor halfway between two middle scores (no score within rounding of it)."""
    v = torch.sort(scores.flatten()).values
    i = len(v) // 2
    return float(v[i - 1] + v[i]) / 2


def _predictor(depth: int) -> Predictor:
    torch.manual_seed(depth)
    model = build_model(tiny_sam_config(decoder_depth=depth)).eval()
    # sharper logits and a spread of predicted IoUs, so that thresholds split the prompts
    with torch.no_grad():
        for p in model.mask_decoder.parameters():
            p.mul_(3.0)
    pred = Predictor(model, device="cpu")
    rng = np.random.default_rng(depth)
    pred.set_image((rng.random((96, 128, 3)) * 255).astype(np.uint8))
    return pred


@pytest.fixture(autouse=True)
def _one_thread_budget(monkeypatch):
    """Group sizes below assume the budget of one torch thread."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)


@pytest.fixture(scope="module", params=[1, 2], ids=["depth1-low-rank", "depth2-direct"])
def predictor(request):
    return _predictor(request.param)


def _points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 95, size=(n, 1, 2)).astype(np.float32), np.ones((n, 1), dtype=np.int64)


def _ungrouped(pred: Predictor, pts: np.ndarray, lab: np.ndarray, monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setattr(md, "PROMPT_GROUP_BYTES", 1 << 62)
        return pred.predict_batch(pts, lab, upsample=False, **kw)


def test_low_rank_path_is_exercised():
    """Depth 1 of the tiny config decodes through the low-rank first upscaling, depth 2 does not."""
    for depth, expected in ((1, True), (2, False)):
        pred = _predictor(depth)
        calls = []
        original = pred.model.mask_decoder._first_upscaling_low_rank

        def spy(*args, _orig=original, **kw):
            out = _orig(*args, **kw)
            calls.append(out is not None)
            return out

        pred.model.mask_decoder._first_upscaling_low_rank = spy
        pred.predict_batch(*_points(5), upsample=False)
        assert any(calls) is expected


def test_groups_equal_one_batch(predictor, monkeypatch):
    pts, lab = _points(37)
    ref = _ungrouped(predictor, pts, lab, monkeypatch)
    monkeypatch.setattr(md, "PROMPT_GROUP_BYTES", 3 * 4 * 8 * 8 * 32)  # groups of 3 (8 x 8 tokens of width 32)
    got = predictor.predict_batch(pts, lab, upsample=False)
    assert got.low_res_logits.shape == ref.low_res_logits.shape
    _close(got.low_res_logits, ref.low_res_logits)
    torch.testing.assert_close(got.scores, ref.scores, atol=ATOL, rtol=RTOL)
    assert got.prompt_index is None


@pytest.mark.parametrize("group", [None, 4])
def test_min_score_keeps_exactly_the_prompts_above_it(predictor, monkeypatch, group):
    if group is not None:
        monkeypatch.setattr(md, "PROMPT_GROUP_BYTES", group * 4 * 8 * 8 * 32)
    pts, lab = _points(29, seed=1)
    ref = _ungrouped(predictor, pts, lab, monkeypatch)
    floor = _midway(ref.scores.max(dim=1).values)
    got = predictor.predict_batch(pts, lab, upsample=False, min_score=floor)
    expected = torch.nonzero((ref.scores > floor).any(dim=1)).view(-1)
    assert 0 < len(expected) < len(pts)
    assert torch.equal(got.prompt_index, expected)
    torch.testing.assert_close(got.scores, ref.scores, atol=ATOL, rtol=RTOL)
    assert got.low_res_logits.shape == (len(expected), *ref.low_res_logits.shape[1:])
    _close(got.low_res_logits, ref.low_res_logits[expected])


def test_min_score_with_upsampling_and_single_mask(predictor, monkeypatch):
    pts, lab = _points(9, seed=2)
    ref = predictor.predict_batch(pts, lab, multimask=False)
    floor = _midway(ref.scores[:, 0])
    got = predictor.predict_batch(pts, lab, multimask=False, min_score=floor)
    keep = torch.nonzero(ref.scores[:, 0] > floor).view(-1)
    assert torch.equal(got.prompt_index, keep)
    _close(got.mask_logits, ref.mask_logits[keep])


def test_min_score_above_every_score_returns_no_masks(predictor):
    pts, lab = _points(6, seed=3)
    got = predictor.predict_batch(pts, lab, upsample=False, min_score=1e9)
    assert got.prompt_index.numel() == 0
    assert got.low_res_logits.shape[:2] == (0, 3)
    assert got.scores.shape == (6, 3)


def test_generator_gating_returns_the_ungated_candidates(predictor, monkeypatch):
    image = (np.random.default_rng(5).random((96, 128, 3)) * 255).astype(np.uint8)
    gen = AutomaticMaskGenerator(predictor, points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0,
                                 stability_score_thresh=0.0, crop_n_layers=0, min_mask_region_area=0,
                                 mask_nms_thresh=None, nms_area_bonus=0.0)
    probe = predictor.predict_batch(*_points(64, seed=6), upsample=False).scores
    floor = _midway(probe.max(dim=1).values)
    calls = []
    original = Predictor.predict_batch

    def spy(self, *args, **kw):
        calls.append(kw.get("min_score"))
        return original(self, *args, **kw)

    monkeypatch.setattr(Predictor, "predict_batch", spy)
    monkeypatch.setattr(cand, "_gates_masks", lambda p: isinstance(p, Predictor))
    gated = gen.run_expensive(image, min_pred_iou=floor)
    assert calls and all(c == floor for c in calls)
    calls.clear()
    monkeypatch.setattr(cand, "_gates_masks", lambda p: False)
    plain = gen.run_expensive(image, min_pred_iou=floor)
    assert calls and all(c is None for c in calls)
    assert len(gated.masks) == len(plain.masks) > 0
    np.testing.assert_array_equal(gated.boxes_rc, plain.boxes_rc)
    np.testing.assert_array_equal(gated.points_rc, plain.points_rc)
    np.testing.assert_allclose(gated.predicted_iou, plain.predicted_iou, atol=ATOL)
    np.testing.assert_allclose(gated.stability_score, plain.stability_score, atol=1e-4)
    for a, b in zip(gated.masks, plain.masks):
        np.testing.assert_array_equal(a, b)


def test_stock_predictor_is_gated(predictor):
    """The generator passes ``min_score`` to the stock predictor only (stand-ins keep the plain call)."""

    class Override(Predictor):
        def predict_batch(self, *args, **kwargs):  # pragma: no cover - never called
            return super().predict_batch(*args, **kwargs)

    assert cand._gates_masks(predictor)
    assert not cand._gates_masks(object())
    override = Override.__new__(Override)
    assert not cand._gates_masks(override)
