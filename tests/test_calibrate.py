"""Stage 3 of the built-in model: the IoU head re-fitted on the zoom's prompts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import TINY, _one_thread, tiny_pool  # noqa: F401 (fixtures used by pytest)
from test_training import _model as _training_model

from napari_sam.predictor import Predictor
from napari_sam.training.calibrate import (
    KINDS,
    IouSamples,
    _decode_all,
    _TokenRecorder,
    collect_iou_samples,
    comparison_pairs,
    fit_iou_head,
)
from napari_sam.training.data import make_pool

HEAD = "mask_decoder.iou_prediction_head."


@pytest.fixture(scope="module")
def pool10():
    return make_pool(range(10), shape=(64, 64))


def _model(seed=0):
    return _training_model(seed).eval()


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def test_decode_all_records_the_heads_input_and_the_true_ious(pool10):
    model = _model()
    p = Predictor(model)
    p.set_image(pool10.images[0])
    truth = pool10.labels[0] == pool10.labels[0].max()
    click = np.argwhere(truth)[0].astype(float)
    with _TokenRecorder(model) as rec:
        tokens, ious, masks, scores = _decode_all(p, rec, click[None, None], None, truth[None])
    multi_masks, multi_scores, _ = p.predict(click[None], [1], multimask=True)
    single_masks, single_scores, _ = p.predict(click[None], [1], multimask=False)
    with torch.no_grad():
        head = model.mask_decoder.iou_prediction_head(torch.from_numpy(tokens))[0].numpy()
    np.testing.assert_allclose(head, np.r_[single_scores, multi_scores], atol=1e-5)
    expected = [_iou(m, truth) for m in (single_masks[0], *multi_masks)]
    np.testing.assert_allclose(ious[0], expected, atol=1e-6)
    np.testing.assert_array_equal(masks[0], multi_masks)
    np.testing.assert_allclose(scores[0], multi_scores, atol=1e-6)
    assert not model.mask_decoder.iou_prediction_head._forward_hooks  # the recorder unhooked itself


def test_collect_iou_samples_covers_every_kind_and_pairs_view_with_window(tiny_pool):  # noqa: F811
    pool = tiny_pool
    s = collect_iou_samples(_model(), pool, objects_per_image=3, context=4, min_side=16, seed=1)
    assert s.tokens.shape == (len(s), TINY["prompt_embed_dim"]) and s.ious.shape == (len(s), 4)
    assert set(np.unique(s.kinds)) == set(range(len(KINDS)))
    assert np.all((s.ious >= 0) & (s.ious <= 1)) and np.isfinite(s.tokens).all()
    assert set(np.unique(s.images)) <= {0, 1, 2}
    view = {(o, q) for o, q, k in zip(s.objects, s.prompts, s.kinds) if k == 0}
    for o, q, k in zip(s.objects, s.prompts, s.kinds):
        if k in (2, 4):  # every window click and refinement box has its click on the whole view
            assert (o, q) in view
    again = collect_iou_samples(_model(), pool, objects_per_image=3, context=4, min_side=16, seed=1)
    np.testing.assert_array_equal(again.tokens, s.tokens)  # seeded


def test_comparison_pairs_brute_force():
    rng = np.random.default_rng(0)
    kinds = np.array([0, 0, 2, 2, 1, 3, 4, 2])
    objects = np.array([0, 0, 0, 0, 0, 0, 0, 1])
    prompts = np.array([0, 1, 0, 1, 0, 0, 0, 0])
    ious = rng.uniform(size=(8, 4)).astype(np.float32)
    ious[2, 1] = ious[0, 1] + 0.01  # too close to carry an order
    s = IouSamples(np.zeros((8, 4), np.float32), ious, kinds, np.zeros(8, int), objects, prompts)
    expected = set()
    for r in np.nonzero(np.isin(kinds, (0, 2)))[0]:
        expected |= {(r, 1, r, 2), (r, 1, r, 3), (r, 2, r, 3)}
    expected |= {(0, k, 2, k) for k in (1, 2, 3)} | {(1, k, 3, k) for k in (1, 2, 3)} | {(4, 0, 5, 0)}
    expected = {p for p in expected if abs(ious[p[0], p[1]] - ious[p[2], p[3]]) > 0.02}
    got = {tuple(int(v) for v in p) for p in comparison_pairs(s)}
    assert got == expected and (0, 1, 2, 1) not in got  # row 7 (another object) pairs with nothing across views


def test_fit_iou_head_changes_only_the_head_and_lowers_held_out_error(pool10):
    model = _model()
    samples = collect_iou_samples(model, pool10, objects_per_image=3, context=4, min_side=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit_iou_head(model, samples, epochs=20, lr=3e-3)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(HEAD) for k in changed)
    assert result["after"]["mse"] < result["before"]["mse"]
    assert 0 <= result["after"]["pair_accuracy"] <= 1 and result["n_val"] > 0 and result["n_pairs"] > 0
    assert all(p.requires_grad for p in model.parameters())  # as before the fit


def test_fit_iou_head_needs_held_out_images():
    s = IouSamples(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32), np.zeros(4, int),
                   np.zeros(4, int), np.zeros(4, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="at least 10 images"):
        fit_iou_head(_model(), s)


def test_train_script_stage3_writes_a_head_only_change(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "train_builtin", Path(__file__).resolve().parents[1] / "scripts" / "train_builtin.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model = _model()
    torch.save(model.state_dict(), tmp_path / "stage2.pt")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    out = tmp_path / "stage3"
    assert script.main(["--calibrate-iou", str(tmp_path / "stage2.pt"), "--config", str(tmp_path / "tiny.json"),
                        "--out", str(out), "--pool-size", "10", "--calibrate-epochs", "2",
                        "--objects-per-image", "2", "--threads", "1"]) == 0
    new = torch.load(out / "calibrated.pt", weights_only=True)
    old = model.state_dict()
    assert set(new) == set(old)
    assert {k for k in old if not torch.equal(old[k], new[k])} <= {k for k in old if k.startswith(HEAD)}
    summary = json.loads((out / "calibration.json").read_text())
    assert summary["n_images"] == 10 and summary["epochs"] == 2 and "after" in summary
