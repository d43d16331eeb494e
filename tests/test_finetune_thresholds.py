"""Automatic thresholds chosen on annotations: the re-filtered grid equals fresh runs (brute force)."""

from __future__ import annotations

import numpy as np
import pytest

import napari_sam
from napari_sam.predict.predictor import Predictor
from napari_sam.synthetic import make_nuclei_image
from napari_sam.training.evaluate import automatic_scores
from napari_sam.training.thresholds import tune_amg_thresholds

AMG = {"crop_n_layers": 0, "points_per_side": 8, "min_mask_region_area": 0}


@pytest.fixture(scope="module")
def builtin():
    return napari_sam.load_model("builtin", device="cpu")


def test_chosen_pair_is_the_best_of_fresh_runs(builtin):
    pairs = [make_nuclei_image((128, 128), n_objects=10, seed=s) for s in (1, 2)]
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    iou_grid, stab_grid = (0.5, 0.86), (0.7, 0.95)
    got = tune_amg_thresholds(builtin, images, labels, amg=AMG, pred_iou_grid=iou_grid, stability_grid=stab_grid)
    fresh = {}
    for i in iou_grid:
        for s in stab_grid:
            scores, _ = automatic_scores(Predictor(builtin), images, labels, **AMG,
                                         pred_iou_thresh=i, stability_score_thresh=s)
            fresh[(i, s)] = scores["f1"]
    best = max(fresh.values())
    assert got["f1"] == pytest.approx(best)
    assert fresh[(got["pred_iou_thresh"], got["stability_score_thresh"])] == pytest.approx(best)
    card = automatic_scores(Predictor(builtin), images, labels, **AMG)[0]["f1"]
    assert got["f1_card"] == pytest.approx(card)


def test_mismatched_inputs_are_refused(builtin):
    with pytest.raises(ValueError, match="one label image per image"):
        tune_amg_thresholds(builtin, [np.zeros((64, 64))], [])


def test_finetune_puts_better_thresholds_in_the_card(monkeypatch, builtin):
    from napari_sam.training import thresholds

    monkeypatch.setattr(thresholds, "tune_amg_thresholds", lambda *a, **k: {
        "pred_iou_thresh": 0.5, "stability_score_thresh": 0.7, "f1": 0.9, "f1_card": 0.4})
    image, labels = make_nuclei_image((96, 96), n_objects=4, seed=0)
    tuned = napari_sam.finetune(builtin, image, labels, steps=1, device="cpu")
    assert tuned.card.amg["pred_iou_thresh"] == 0.5 and tuned.card.amg["stability_score_thresh"] == 0.7
    assert builtin.card.amg["pred_iou_thresh"] != 0.5  # the base model's card is untouched
    assert tuned.finetune_report["thresholds"]["f1"] == 0.9
    monkeypatch.setattr(thresholds, "tune_amg_thresholds", lambda *a, **k: {
        "pred_iou_thresh": 0.5, "stability_score_thresh": 0.7, "f1": 0.4, "f1_card": 0.4})
    same = napari_sam.finetune(builtin, image, labels, steps=1, device="cpu")
    assert same.card.amg == builtin.card.amg  # no gain: the base thresholds stay
