"""Faster encoder engines (``napari_sam.model.engines``) against the float32 PyTorch encoder."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from napari_sam.model import build_model, load_model
from napari_sam.model.engines import ENGINES, use_engine
from napari_sam.predict.predictor import Predictor

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("builtin").eval()


def _reference_and_engine(engine: str, tmp_path):
    ref = _tiny()
    fast = _tiny()
    use_engine(fast, engine, cache_dir=tmp_path)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return ref.image_encoder(x), fast.image_encoder(x)


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be one of"):
        use_engine(_tiny(), "tensorrt")
    assert "torch" in ENGINES


def test_torch_engine_leaves_the_model_unchanged():
    model = _tiny()
    encoder = model.image_encoder
    assert use_engine(model, "torch").image_encoder is encoder


def test_bf16_encoder_is_close_to_float32(tmp_path):
    ref, out = _reference_and_engine("bf16", tmp_path)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.05  # bfloat16 keeps 8 mantissa bits: close, not equal


def test_engine_cannot_be_stacked(tmp_path):
    model = use_engine(_tiny(), "bf16")
    with pytest.raises(ValueError, match="already runs on an engine"):
        use_engine(model, "bf16")


def test_predictor_on_bf16_engine_gives_the_float32_masks_on_a_clear_object(tmp_path):
    """A bright disc on black: both engines' masks agree except on a few boundary pixels."""
    yy, xx = np.mgrid[:128, :128]
    image = ((yy - 64) ** 2 + (xx - 64) ** 2 < 30**2).astype(np.uint8) * 200
    masks = []
    for engine in ("torch", "bf16"):
        model = use_engine(load_model("builtin", device="cpu"), engine)  # the shipped weights
        predictor = Predictor(model, device="cpu")
        predictor.set_image(image)
        m, _, _ = predictor.predict(np.array([[64, 64]]), np.array([1]))
        masks.append(m)
    assert masks[0][0].sum() > 1000  # the float32 model finds the disc
    differ = np.count_nonzero(masks[0] != masks[1]) / masks[0].size
    assert differ < 0.01


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO not installed (optional engine)")
def test_openvino_encoder_equals_torch_and_is_cached(tmp_path):
    ref, out = _reference_and_engine("openvino", tmp_path)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-4, rtol=1e-4)
    assert len(list(tmp_path.glob("encoder-*.xml"))) == 1
    # a second load reads the compiled model from the cache and gives the same features
    _, again = _reference_and_engine("openvino", tmp_path)
    np.testing.assert_array_equal(again.numpy(), out.numpy())


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO not installed (optional engine)")
def test_openvino_encoder_refuses_training(tmp_path):
    model = use_engine(_tiny(), "openvino", cache_dir=tmp_path)
    x = torch.zeros(1, 3, 256, 256, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference only"):
        model.image_encoder(x)


def test_exported_graph_path_equals_eager():
    """Under tracing the encoder takes out-of-place paths (for graph export); results are the same."""
    torch.manual_seed(0)
    model = build_model({"image_encoder": {"type": "vit", "embed_dim": 32, "depth": 2, "num_heads": 2,
                                           "global_attn_indexes": [1], "window_size": 6, "patch_size": 8,
                                           "img_size": 120, "mlp_ratio": 2.0, "out_chans": 16},
                         "prompt_embed_dim": 16, "image_size": 120, "mask_in_chans": 4,
                         "decoder": {"depth": 1, "mlp_dim": 32, "num_heads": 2, "num_multimask_outputs": 3,
                                     "iou_head_depth": 2, "iou_head_hidden_dim": 16}}).eval()
    x = torch.randn(1, 3, 120, 120)  # 15 x 15 token grid: windows of 6 need padding
    with torch.inference_mode():
        eager = model.image_encoder(x)
    with torch.no_grad():
        traced = torch.jit.trace(model.image_encoder, (x,), check_trace=False)
        out = traced(x)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
