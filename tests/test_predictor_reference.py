"""Predictor vs the official SamPredictor: features, logits, scores and masks of the fixtures.

The fixtures (``sam_reference/<model>/predict_<k>.npz``) hold what the official
``segment_anything`` / ``mobile_sam`` code computed for the same weights, image
and prompts (given there both as SAM's (x, y) and as our (row, col)).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_sam.model import build_model
from napari_sam.predict.predictor import Predictor

MODELS = ["tiny_vit", "tiny_tinyvit"]
CASES = ["one_point", "pos_pos_neg", "box", "box_neg_point", "point_plus_mask"]
ATOL = 1e-3
MASK_AGREEMENT = 0.999


@pytest.fixture(scope="module", params=MODELS)
def reference_predictor(request, sam_reference_dir):
    folder = sam_reference_dir / request.param
    model = build_model(json.loads((folder / "config.json").read_text()))
    state = torch.load(folder / "weights.pt", map_location="cpu")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return folder, Predictor(model, device="cpu")


@pytest.fixture(scope="module", params=[0, 1], ids=["image_0_768x1024", "image_1_300x500"])
def embedded(request, reference_predictor):
    folder, predictor = reference_predictor
    image = np.load(folder / f"image_{request.param}.npy")
    before = image.copy()
    predictor.set_image(image)
    np.testing.assert_array_equal(image, before)
    with np.load(folder / f"predict_{request.param}.npz") as data:
        reference = {key: data[key] for key in data.files}
    return predictor, reference


def _case(reference, case):
    def get(name):
        return reference.get(f"{case}/{name}")

    return {
        "points_rc": get("points_rc"),
        "point_labels": get("point_labels"),
        "box_rc": get("box_rc"),
        "mask_input": get("mask_input"),
        "multimask": bool(get("multimask")),
    }


def test_features_and_sizes_match_official(embedded):
    predictor, reference = embedded
    assert predictor.original_size == tuple(int(v) for v in reference["original_size"])
    assert predictor.input_size == tuple(int(v) for v in reference["input_size"])
    features = predictor.features.numpy()
    assert features.shape == reference["features"].shape
    np.testing.assert_allclose(features, reference["features"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", CASES)
def test_predict_matches_official(embedded, case):
    predictor, reference = embedded
    masks, scores, logits = predictor.predict(**_case(reference, case))
    assert masks.dtype == bool and scores.dtype == np.float32 and logits.dtype == np.float32
    assert masks.shape == reference[f"{case}/masks"].shape
    np.testing.assert_allclose(logits, reference[f"{case}/low_res_logits"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(scores, reference[f"{case}/scores"], rtol=0, atol=ATOL)
    assert (masks == reference[f"{case}/masks"]).mean() >= MASK_AGREEMENT


def test_predict_batch_equals_official_and_individual_predicts(embedded):
    predictor, reference = embedded
    height, width = predictor.original_size
    rng = np.random.default_rng(0)
    # B = 4 prompts of 2 points + a box each; prompt 0 is the fixture's box case.
    boxes = np.array(
        [reference["box/box_rc"], [10, 20, 0.6 * height, 0.5 * width],
         [0.3 * height, 0.1 * width, height - 1, width - 1], [0, 0, height / 2, width / 3]],
        dtype=np.float64,
    )
    points = rng.uniform([0, 0], [height - 1, width - 1], size=(4, 2, 2))
    labels = np.array([[1, 0], [1, 1], [0, 1], [1, 0]])
    out = predictor.predict_batch(points, labels, boxes, multimask=True)
    assert out.low_res_logits.shape[:2] == (4, 3) and out.scores.shape == (4, 3)
    assert out.mask_logits.shape == (4, 3, height, width)
    for b in range(4):
        masks, scores, logits = predictor.predict(points[b], labels[b], boxes[b], multimask=True)
        np.testing.assert_allclose(out.low_res_logits[b].numpy(), logits, rtol=0, atol=1e-4)
        np.testing.assert_allclose(out.scores[b].numpy(), scores, rtol=0, atol=1e-4)
        agree = ((out.mask_logits[b] > predictor.mask_threshold).numpy() == masks).mean()
        assert agree >= MASK_AGREEMENT

    # The fixture's box case, batched with other boxes (no points), equals the official output.
    official = predictor.predict_batch(boxes_rc=boxes, multimask=False, upsample=False)
    assert official.mask_logits is None
    np.testing.assert_allclose(
        official.low_res_logits[0].numpy(), reference["box/low_res_logits"], rtol=0, atol=ATOL
    )
    np.testing.assert_allclose(official.scores[0].numpy(), reference["box/scores"], rtol=0, atol=ATOL)
    masks = (predictor.upsample_logits(official.low_res_logits[0]) > 0).numpy()
    assert (masks == reference["box/masks"]).mean() >= MASK_AGREEMENT
