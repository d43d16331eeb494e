"""``threshold_upsampled`` gives the masks of SAM's dense postprocessing.

The reference is the official chain written out with ``F.interpolate``:
upsample to the encoder size, crop the padding, resize to the original size,
threshold.  The sparse path may differ only where the dense logit is within
float rounding of the threshold.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny_sam import tiny_sam_config

from napari_sam.model import build_model
from napari_sam.predict.predictor import Predictor, preprocess_shape
from napari_sam.predict.upsample import make_plan, threshold_polyphase, threshold_upsampled


def _dense(low, image_size, input_size, original_size):
    up = F.interpolate(low[:, None], (image_size, image_size), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    if tuple(up.shape[-2:]) != tuple(original_size):
        up = F.interpolate(up, original_size, mode="bilinear", align_corners=False)
    return up[:, 0]


def _smooth_logits(k, m, seed):
    """Blob-like logits (large smooth structure plus fine noise), like real masks."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(k, 1, max(2, m // 8), max(2, m // 8), generator=g) * 8
    return F.interpolate(coarse, (m, m), mode="bilinear")[:, 0] + 0.3 * torch.randn(k, m, m, generator=g)


SIZES = [(1024, 1024), (768, 1024), (300, 200), (3000, 1200), (37, 1000), (64, 64), (5, 7), (2048, 2048)]


@pytest.mark.parametrize("low_res, image_size", [(256, 1024), (128, 256), (64, 256), (32, 128)])
@pytest.mark.parametrize("original", SIZES)
@pytest.mark.parametrize("threshold", [0.0, 0.5, -1.0])
def test_equals_dense_postprocessing(low_res, image_size, original, threshold, monkeypatch):
    monkeypatch.setattr("napari_sam.predict.upsample.DENSE_FRACTION", float("inf"))  # always the sparse path
    input_size = preprocess_shape(original, image_size)
    plan = make_plan(low_res, image_size, input_size, original)
    assert plan is not None
    low = _smooth_logits(3, low_res, seed=sum(original) + low_res)
    dense = _dense(low, image_size, input_size, original)
    fast = threshold_upsampled(low, plan, threshold)
    assert fast.dtype == torch.bool and fast.shape == dense.shape
    differ = fast != (dense > threshold)
    # only rounding-level ties may differ
    assert torch.all((dense[differ] - threshold).abs() < 1e-4)
    assert int(differ.sum()) <= max(1, dense.numel() // 100_000)
    # the test data crosses the threshold: both decided and undecided pixels occur
    assert 0 < int(fast.sum()) < fast.numel()


def test_noise_like_logits_fall_back_to_the_dense_path():
    plan = make_plan(256, 1024, (1024, 1024), (1024, 1024))
    noise = torch.randn(3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert threshold_upsampled(noise, plan, 0.0) is None
    torch.manual_seed(0)
    predictor = Predictor(build_model(tiny_sam_config()), device="cpu")
    predictor.set_image(np.zeros((100, 300, 3), np.uint8))  # 300 -> 128 -> 300: no polyphase plan
    assert not predictor._upsample_plan_for(32).polyphase
    low = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(predictor.masks_from_logits(low), predictor.upsample_logits(low) > 0)


@pytest.mark.parametrize("low_res, image_size", [(256, 1024), (64, 256), (32, 128)])
@pytest.mark.parametrize("original", [(1024, 1024), (768, 1024), (1024, 300), (2048, 2048), (512, 512)])
@pytest.mark.parametrize("kind", ["noise", "smooth"])
def test_polyphase_equals_dense_postprocessing(low_res, image_size, original, kind):
    if image_size != 1024:  # the same kinds of sizes relative to the smaller encoders
        original = tuple(n * image_size // 1024 for n in original)
    input_size = preprocess_shape(original, image_size)
    plan = make_plan(low_res, image_size, input_size, original)
    assert plan.polyphase
    g = torch.Generator().manual_seed(sum(original) + low_res)
    low = torch.randn(3, low_res, low_res, generator=g) if kind == "noise" else _smooth_logits(3, low_res, 7)
    dense = _dense(low, image_size, input_size, original)
    for threshold in (0.0, 0.5):
        fast = threshold_polyphase(low, plan, threshold)
        assert fast.dtype == torch.bool and fast.shape == dense.shape
        differ = fast != (dense > threshold)
        assert torch.all((dense[differ] - threshold).abs() < 1e-5)
        assert int(differ.sum()) <= max(1, dense.numel() // 100_000)
        assert 0 < int(fast.sum()) < fast.numel()


def test_polyphase_plans_where_expected():
    """The long side at the encoder size (second resize the identity) or an integer multiple."""
    for original in [(1024, 1024), (768, 1024), (1024, 300), (2048, 2048), (512, 512)]:
        plan = make_plan(256, 1024, preprocess_shape(original, 1024), original)
        assert plan.polyphase
    assert make_plan(256, 1024, (1024, 1024), (1024, 1024)).factor == 4
    assert make_plan(256, 1024, (1024, 1024), (2048, 2048)).factor == 8
    for original in [(300, 200), (3000, 1200), (1500, 2000), (1000, 1000)]:
        assert not make_plan(256, 1024, preprocess_shape(original, 1024), original).polyphase
    with pytest.raises(ValueError, match="plain upsampling"):
        threshold_polyphase(torch.zeros(1, 256, 256), make_plan(256, 1024, (1024, 683), (1500, 1000)), 0.0)
    plan = make_plan(64, 256, (256, 256), (256, 256))
    assert threshold_polyphase(torch.zeros(0, 64, 64), plan, 0.0).shape == (0, 256, 256)
    assert not threshold_polyphase(torch.zeros(2, 64, 64), plan, 0.0).any()
    with pytest.raises(ValueError, match="must be"):
        threshold_polyphase(torch.zeros(1, 32, 32), plan, 0.0)


@pytest.mark.parametrize("original", [(128, 128), (96, 128), (256, 256)])
def test_predictor_masks_take_the_polyphase_path(original, monkeypatch):
    torch.manual_seed(0)
    predictor = Predictor(build_model(tiny_sam_config()), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, size=(*original, 3), dtype=np.uint8)
    predictor.set_image(image)
    called = []
    real = threshold_polyphase
    monkeypatch.setattr("napari_sam.predict.predictor.threshold_polyphase", lambda *a: called.append(1) or real(*a))
    masks, _, logits = predictor.predict([[20, 30]], [1])
    assert called
    dense = predictor.upsample_logits(logits).numpy()
    near = np.abs(dense) < 1e-5
    assert np.array_equal(masks[~near], (dense > 0)[~near])


def test_constant_and_empty_inputs(monkeypatch):
    monkeypatch.setattr("napari_sam.predict.upsample.DENSE_FRACTION", float("inf"))
    plan = make_plan(64, 256, (256, 256), (256, 256))
    assert not threshold_upsampled(torch.zeros(2, 64, 64), plan, 0.0).any()  # 0 > 0 is False
    assert threshold_upsampled(torch.full((1, 64, 64), 3.0), plan, 0.0).all()
    assert threshold_upsampled(torch.zeros(0, 64, 64), plan, 0.0).shape == (0, 256, 256)
    with pytest.raises(ValueError, match="must be"):
        threshold_upsampled(torch.zeros(1, 32, 32), plan, 0.0)


def test_plan_centres_hold_all_taps():
    """Each output's bilinear taps lie in the 3-neighbourhood of its centre; 4x is a plain repeat."""
    plan = make_plan(256, 1024, (1024, 1024), (1024, 1024))
    assert plan.rows.repeat == 4 and plan.cols.repeat == 4
    torch.testing.assert_close(plan.rows.weights.sum(1), torch.ones(1024))
    resized = make_plan(256, 1024, (1024, 410), (3000, 1200))
    assert resized.cols.repeat == 0
    # impulse response: output column j depends only on low-res columns centre-1..centre+1
    for j in (0, 1, 17, 600, 1199):
        c = int(resized.cols.center[j])
        for src in range(256):
            low = torch.zeros(1, 256, 256)
            low[0, :, src] = 1.0
            value = _dense(low, 1024, (1024, 410), (3000, 1200))[0, 0, j]
            if abs(src - c) > 1:
                assert value == 0
            if src > c + 2:
                break


def test_predictor_masks_use_the_sparse_path_and_fallback(monkeypatch):
    torch.manual_seed(0)
    predictor = Predictor(build_model(tiny_sam_config()), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, size=(50, 80, 3), dtype=np.uint8)  # 80 -> 128 -> 80
    predictor.set_image(image)
    masks, _, logits = predictor.predict([[20, 30]], [1])
    dense = predictor.upsample_logits(logits).numpy()
    near = np.abs(dense) < 1e-4
    assert np.array_equal(masks[~near], (dense > 0)[~near])
    assert predictor._upsample_plan[1] is not None
    monkeypatch.setattr("napari_sam.predict.predictor.make_plan", lambda *a: None)
    predictor.set_image(image)  # new image: plan rebuilt, now the dense fallback
    again, _, _ = predictor.predict([[20, 30]], [1])
    assert predictor._upsample_plan[1] is None
    assert np.array_equal(again, dense > 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
@pytest.mark.parametrize("setting, expected", [("1", "True"), (None, "False"), ("0", "False")])
def test_malloc_tuning_is_opt_in(setting, expected):
    """Off unless NAPARI_SAM_TUNE_MALLOC=1; a Predictor on the CPU does not switch it on by itself."""
    code = ("from napari_sam.predict import _malloc; from napari_sam.model import build_model; "
            "from napari_sam.predict.predictor import Predictor; from _tiny_sam import tiny_sam_config; "
            "Predictor(build_model(tiny_sam_config()), device='cpu'); print(_malloc._done)")
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_SAM_TUNE_MALLOC"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    if setting is not None:
        env["NAPARI_SAM_TUNE_MALLOC"] = setting
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
