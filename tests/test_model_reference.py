"""Our SAM model computes what the official SAM / MobileSAM code computes.

Reference: ``sam_reference/{tiny_vit,tiny_tinyvit}`` -- random-weight models run
through the official ``segment_anything`` / ``mobile_sam`` packages (float32, CPU).
image_0 is 768 x 1024 so the official preprocessing only normalises and pads;
the prompt transform scale is exactly 1.0.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_sam.model import build_model
from napari_sam.model.sam import Sam

MODELS = ["tiny_vit", "tiny_tinyvit"]
CASES = ["one_point", "pos_pos_neg", "box", "box_neg_point", "point_plus_mask"]
TOL = 1e-3


def _load(ref_dir) -> Sam:
    config = json.loads((ref_dir / "config.json").read_text())
    model = build_model(config)
    state = torch.load(ref_dir / "weights.pt", map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


@pytest.fixture(scope="module", params=MODELS)
def encoded(request, sam_reference_dir):
    """(model, our features, reference npz) for image_0 of one reference model."""
    ref_dir = sam_reference_dir / request.param
    model = _load(ref_dir)
    image = np.load(ref_dir / "image_0.npy")
    ref = dict(np.load(ref_dir / "predict_0.npz"))
    assert image.shape == (768, 1024, 3) and image.dtype == np.uint8
    image_before = image.copy()
    with torch.inference_mode():
        x = torch.from_numpy(image).permute(2, 0, 1).to(torch.float32)
        features = model.image_encoder(model.preprocess(x)[None])
    np.testing.assert_array_equal(image, image_before)  # input untouched
    return model, features, ref


def test_config_round_trip(encoded):
    model, _, _ = encoded
    rebuilt = build_model(model.config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert model.image_size == 1024 and model.mask_threshold == 0.0


def test_features_match_official(encoded):
    _, features, ref = encoded
    assert tuple(features.shape) == ref["features"].shape == (1, 256, 64, 64)
    err = np.abs(features.numpy() - ref["features"]).max()
    assert err <= TOL, f"max |features - official| = {err}"


def _decode(model: Sam, features: torch.Tensor, ref: dict, case: str):
    """Run prompt encoder + mask decoder as the official SamPredictor.predict does."""
    points = boxes = masks = None
    if f"{case}/points_xy" in ref:
        coords = torch.as_tensor(ref[f"{case}/points_xy"], dtype=torch.float32)[None]
        labels = torch.as_tensor(ref[f"{case}/point_labels"], dtype=torch.int64)[None]
        points = (coords, labels)
    if f"{case}/box_xyxy" in ref:
        boxes = torch.as_tensor(ref[f"{case}/box_xyxy"], dtype=torch.float32)[None]
    if f"{case}/mask_input" in ref:
        masks = torch.as_tensor(ref[f"{case}/mask_input"], dtype=torch.float32)[None]
    multimask = bool(ref[f"{case}/multimask"])
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, scores = model.mask_decoder(
            image_embeddings=features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        input_size = tuple(int(v) for v in ref["input_size"])
        original_size = tuple(int(v) for v in ref["original_size"])
        logits = model.postprocess_masks(low_res, input_size, original_size)
    return low_res[0].numpy(), scores[0].numpy(), (logits[0] > model.mask_threshold).numpy()


@pytest.mark.parametrize("case", CASES)
def test_prompts_match_official(encoded, case):
    model, features, ref = encoded
    low_res, scores, masks = _decode(model, features, ref, case)
    ref_low = ref[f"{case}/low_res_logits"]
    assert low_res.shape == ref_low.shape
    err = np.abs(low_res - ref_low).max()
    assert err <= TOL, f"{case}: max |low_res_logits - official| = {err}"
    np.testing.assert_allclose(scores, ref[f"{case}/scores"], atol=TOL, rtol=0)
    ref_masks = ref[f"{case}/masks"]
    assert masks.shape == ref_masks.shape
    agreement = (masks == ref_masks).mean()
    assert agreement >= 0.999, f"{case}: masks agree on only {agreement:.5f} of pixels"


def test_decoder_is_sensitive_to_prompts(encoded):
    """Guard against a comparison that cannot fail: different prompts differ."""
    model, features, ref = encoded
    a, _, _ = _decode(model, features, ref, "box")
    b, _, _ = _decode(model, features, ref, "pos_pos_neg")
    assert np.abs(a - b).max() > 10 * TOL


def test_batched_prompts_equal_one_by_one(encoded):
    """Many prompt sets against one image (the AMG path) = each decoded alone."""
    model, features, _ = encoded
    gen = torch.Generator().manual_seed(0)
    coords = torch.rand(5, 2, 2, generator=gen) * torch.tensor([1024.0, 768.0])
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [1, -1], [1, 0]])
    masks_in = torch.randn(5, 1, 256, 256, generator=gen)
    pe = model.prompt_encoder.get_dense_pe()
    with torch.inference_mode():
        for mask_input in (None, masks_in):
            sparse, dense = model.prompt_encoder((coords, labels), None, mask_input)
            low, iou = model.mask_decoder(features, pe, sparse, dense, True)
            assert low.shape == (5, 3, 256, 256) and iou.shape == (5, 3)
            for i in range(5):
                one_mask = None if mask_input is None else mask_input[i : i + 1]
                s1, d1 = model.prompt_encoder((coords[i : i + 1], labels[i : i + 1]), None, one_mask)
                low1, iou1 = model.mask_decoder(features, pe, s1, d1, True)
                torch.testing.assert_close(low[i : i + 1], low1, atol=1e-4, rtol=0)
                torch.testing.assert_close(iou[i : i + 1], iou1, atol=1e-5, rtol=0)


def _plain_window_attention(attn, x, ws):
    """SAM's definition, written plainly: zero-pad, partition, softmax(qk^T*s + rel), merge."""
    from napari_sam.model.image_encoder import (
        get_rel_pos,
        window_partition,
        window_unpartition,
    )

    h, w = x.shape[1:3]
    windows, pad_hw = window_partition(x, ws)
    bw, _, _, c = windows.shape
    heads = attn.num_heads
    qkv = attn.qkv(windows).reshape(bw, ws * ws, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    logits = (q @ k.transpose(-1, -2)) * (c // heads) ** -0.5
    r_h = get_rel_pos(ws, ws, attn.rel_pos_h)
    r_w = get_rel_pos(ws, ws, attn.rel_pos_w)
    q_grid = q.reshape(bw, heads, ws, ws, -1)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, r_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, r_w)
    logits = logits.view(bw, heads, ws, ws, ws, ws) + rel_h[..., None] + rel_w[..., None, :]
    probs = logits.view(bw, heads, ws * ws, ws * ws).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(bw, ws, ws, c)
    return attn.proj(window_unpartition(out, ws, pad_hw, (h, w)))


@pytest.mark.parametrize(("h", "w", "ws"), [(10, 13, 4), (8, 8, 4), (7, 9, 14)])
def test_windowed_attention_matches_plain_definition(h, w, ws):
    from napari_sam.model.image_encoder import Attention

    torch.manual_seed(0)
    attn = Attention(16, 2, qkv_bias=True, use_rel_pos=True, input_size=(ws, ws))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
        attn.qkv.bias.normal_()
    x = torch.randn(2, h, w, 16)
    x_before = x.clone()
    with torch.inference_mode():
        ours = attn.forward_windows(x, ws)
        plain = _plain_window_attention(attn, x, ws)
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(x, x_before)


def test_global_attention_in_row_blocks_matches_official(sam_reference_dir, monkeypatch):
    """The memory-bounded path (bias built for a few query rows at a time) gives the same features."""
    from napari_sam.model import image_encoder

    ref_dir = sam_reference_dir / "tiny_vit"
    model = _load(ref_dir)
    # 2 heads x 64 x 4096 x 4 bytes = 2 MiB of bias per query row: 5 rows per block here
    monkeypatch.setattr(image_encoder, "_BIAS_BUDGET", 10 * 2**20)
    image = np.load(ref_dir / "image_0.npy")
    ref = np.load(ref_dir / "predict_0.npz")["features"]
    with torch.inference_mode():
        x = torch.from_numpy(image).permute(2, 0, 1).to(torch.float32)
        features = model.image_encoder(model.preprocess(x)[None]).numpy()
    assert np.abs(features - ref).max() <= TOL


def test_global_attention_row_blocks_match_plain_definition(monkeypatch):
    """Global attention on a 9 x 9 grid = one 9 x 9 window of the plain definition."""
    from napari_sam.model import image_encoder

    torch.manual_seed(0)
    attn = image_encoder.Attention(16, 2, qkv_bias=True, use_rel_pos=True, input_size=(9, 9))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(2, 9, 9, 16)
    with torch.inference_mode():
        plain = _plain_window_attention(attn, x, 9)
        whole = attn(x)
        monkeypatch.setattr(image_encoder, "_BIAS_BUDGET", 1)  # one query row per block
        rows = attn(x)
    torch.testing.assert_close(whole, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows, plain, atol=1e-5, rtol=1e-5)


def test_bias_scratch_shares_one_buffer_and_changes_nothing(monkeypatch):
    """Inside ``bias_scratch`` every bias piece (all row blocks, global and windowed
    attention) is written into one buffer, released at exit; outputs are identical."""
    from napari_sam.model import image_encoder

    torch.manual_seed(1)
    glob = image_encoder.Attention(16, 2, qkv_bias=True, use_rel_pos=True, input_size=(9, 9))
    win = image_encoder.Attention(16, 2, qkv_bias=True, use_rel_pos=True, input_size=(4, 4))
    for attn in (glob, win):
        with torch.no_grad():
            attn.rel_pos_h.normal_()
            attn.rel_pos_w.normal_()
    x = torch.randn(2, 9, 9, 16)
    monkeypatch.setattr(image_encoder, "_BIAS_BUDGET", 2 * 2 * 9 * 81 * 4 * 3)  # 3 query rows per piece
    allocated = []
    real_empty = torch.empty

    def counting_empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        allocated.append(out.numel())
        return out

    with torch.inference_mode():
        fresh = (glob(x), win.forward_windows(x, 4))
        with image_encoder.bias_scratch():
            monkeypatch.setattr(image_encoder.torch, "empty", counting_empty)
            shared = (glob(x), win.forward_windows(x, 4), glob(x))
            monkeypatch.setattr(image_encoder.torch, "empty", real_empty)
            buffer = image_encoder._scratch.buffer
            assert buffer is not None
        assert image_encoder._scratch.buffer is None  # released with the context
    for a, b in zip((*fresh, fresh[0]), shared):
        assert torch.equal(a, b)
    # one bias allocation in all: 3 row pieces x 2 global calls + 1 windowed call reuse it
    bias_sized = [n for n in allocated if n >= 2 * 2 * 3 * 9 * 81]
    assert bias_sized == [buffer.numel()]


def test_encoder_token_grid_is_channels_last():
    """Every block sees a contiguous (B, H, W, C) grid: a channel-major grid (the
    permuted patch-embedding output) makes every residual add and LayerNorm run on
    transposed memory."""
    from builtin_recipe import builtin_config

    from napari_sam.model import build_model

    model = build_model(builtin_config()).eval()
    seen = []
    for blk in model.image_encoder.blocks:
        blk.register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous()))
    with torch.inference_mode():
        model.image_encoder(torch.randn(2, 3, 256, 256))
    assert seen == [True] * len(model.image_encoder.blocks)
