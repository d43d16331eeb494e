"""The per-image caches of the interactive click give the uncached results.

``Predictor.predict`` reuses, per image, the dense positional encoding, the
"no mask" dense embedding and the first transformer block's image-side
projections (``MaskDecoder.prepare_image``), and skips the identity resize in
``upsample_logits``.  These tests compare with a decoder written here in the
structure of the official ``segment_anything`` code (every projection computed
per call, image embedding repeated per prompt set, two interpolations), using
the model's weights.  The official-code agreement itself is checked on the
fixtures by ``test_predictor_reference.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny_sam import tiny_sam_config

from napari_sam.model import build_model
from napari_sam.predict.predictor import Predictor

CONFIG = tiny_sam_config(decoder_depth=2, iou_head_depth=3)


# ---------------------------------------------------------------- reference
def _attention(attn, q, k, v):
    """Official ``Attention.forward``: separate heads, softmax(q k^T / sqrt(d)) v."""
    def heads(x):
        b, n, c = x.shape
        return x.reshape(b, n, attn.num_heads, c // attn.num_heads).transpose(1, 2)

    q, k, v = heads(attn.q_proj(q)), heads(attn.k_proj(k)), heads(attn.v_proj(v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / np.sqrt(q.shape[-1]), dim=-1)
    out = (weights @ v).transpose(1, 2)
    return attn.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


def _reference_decoder(model, features, sparse, dense, multimask):
    """Official ``MaskDecoder.forward`` structure with the weights of ``model``."""
    dec = model.mask_decoder
    tr = dec.transformer
    pe = model.prompt_encoder.get_dense_pe()
    bs = sparse.shape[0]
    out_tok = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tok[None].expand(bs, -1, -1), sparse], dim=1)
    src = torch.repeat_interleave(features, bs, dim=0) + dense
    pos = torch.repeat_interleave(pe, bs, dim=0)
    b, c, h, w = src.shape
    keys = src.flatten(2).permute(0, 2, 1)
    key_pe = pos.flatten(2).permute(0, 2, 1)
    queries = tokens
    for i, layer in enumerate(tr.layers):
        if i == 0:
            queries = layer.self_attn(queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + _attention(layer.self_attn, q, q, queries)
        queries = layer.norm1(queries)
        q, k = queries + tokens, keys + key_pe
        queries = layer.norm2(queries + _attention(layer.cross_attn_token_to_image, q, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q, k = queries + tokens, keys + key_pe
        keys = layer.norm4(keys + _attention(layer.cross_attn_image_to_token, k, q, queries))
    q, k = queries + tokens, keys + key_pe
    queries = tr.norm_final_attn(queries + _attention(tr.final_attn_token_to_image, q, k, keys))
    up = dec.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack(
        [mlp(queries[:, 1 + i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
    )
    masks = (hyper @ up.flatten(2)).view(b, -1, *up.shape[2:])
    iou = dec.iou_prediction_head(queries[:, 0])
    sl = slice(1, None) if multimask else slice(0, 1)
    return masks[:, sl], iou[:, sl]


def _reference_predict(predictor, points_rc, labels, multimask=True):
    """Official ``SamPredictor.predict`` structure: prompts -> decoder -> 2 interpolations."""
    model = predictor.model
    (oh, ow), (nh, nw) = predictor.original_size, predictor.input_size
    rc = np.asarray(points_rc, dtype=np.float64)
    xy = np.stack([rc[:, 1] * nw / ow, rc[:, 0] * nh / oh], axis=-1)
    coords = torch.as_tensor(xy, dtype=torch.float)[None]
    lab = torch.as_tensor(labels, dtype=torch.int)[None]
    sparse, dense = model.prompt_encoder(points=(coords, lab), boxes=None, masks=None)
    low, iou = _reference_decoder(model, predictor.features, sparse, dense, multimask)
    size = predictor.image_size
    up = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
    up = F.interpolate(up[..., :nh, :nw], (oh, ow), mode="bilinear", align_corners=False)
    return up[0], iou[0], low[0]


def _predictor(seed=0):
    torch.manual_seed(seed)
    return Predictor(build_model(CONFIG), device="cpu")


def _image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


# -------------------------------------------------------------------- tests
@pytest.mark.parametrize("shape", [(128, 128), (50, 80)])  # identity resize / real resize
def test_cached_click_equals_official_structure(shape):
    predictor = _predictor()
    predictor.set_image(_image(shape))
    rng = np.random.default_rng(1)
    with torch.inference_mode():
        for n in (1, 3):
            points = rng.uniform(0, np.array(shape) - 1, size=(n, 2))
            labels = rng.integers(0, 2, size=n)
            for multimask in (True, False):
                masks, scores, logits = predictor.predict(points, labels, multimask=multimask)
                ref_up, ref_iou, ref_low = _reference_predict(predictor, points, labels, multimask)
                np.testing.assert_allclose(logits, ref_low.numpy(), atol=1e-5, rtol=0)
                np.testing.assert_allclose(scores, ref_iou.numpy(), atol=1e-5, rtol=0)
                ref_masks = (ref_up > predictor.mask_threshold).numpy()
                near_zero = np.abs(ref_up.numpy()) < 1e-4  # a rounding may flip these
                assert masks.shape == ref_masks.shape
                assert np.array_equal(masks[~near_zero], ref_masks[~near_zero])


def test_prepared_decoder_equals_forward_without_cache():
    """``forward(..., image_cache=prepare_image(...))`` == the uncached ``forward``."""
    model = _predictor().model
    torch.manual_seed(3)
    features = torch.randn(1, 32, 8, 8)
    pe = model.prompt_encoder.get_dense_pe()
    coords = torch.rand(4, 2, 2) * 128
    labels = torch.tensor([[1, 0], [1, -1], [0, 1], [1, 1]], dtype=torch.int)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        cache = model.mask_decoder.prepare_image(features, pe, dense[:1])
        for multimask in (True, False):
            low, iou = model.mask_decoder(None, None, sparse, None, multimask, image_cache=cache)
            ref_low, ref_iou = _reference_decoder(model, features, sparse, dense, multimask)
            plain_low, plain_iou = model.mask_decoder(features, pe, sparse, dense, multimask)
            torch.testing.assert_close(low, ref_low, atol=1e-5, rtol=0)
            torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=0)
            torch.testing.assert_close(low, plain_low, atol=1e-5, rtol=0)
            torch.testing.assert_close(iou, plain_iou, atol=1e-5, rtol=0)


def test_cache_follows_the_image():
    """After set_image / set_embedding / reset_image no stale cache is used."""
    first, second = _image((60, 90), seed=1), _image((70, 40), seed=2)
    predictor = _predictor()
    fresh = _predictor()
    point, label = np.array([[20.0, 30.0]]), np.array([1])
    predictor.set_image(first)
    predictor.predict(point, label)  # fills the cache of the first image
    predictor.set_image(second)
    fresh.set_image(second)
    for got, want in zip(predictor.predict(point, label), fresh.predict(point, label)):
        np.testing.assert_array_equal(got, want)
    fresh.set_image(first)
    embedding = fresh.get_embedding()
    predictor.set_embedding(embedding)
    for got, want in zip(predictor.predict(point, label), fresh.predict(point, label)):
        np.testing.assert_array_equal(got, want)
    predictor.reset_image()
    assert predictor._decoder_cache is None
    with pytest.raises(ValueError, match="no image is set"):
        predictor.predict(point, label)


def test_identity_resize_skip_is_exact():
    predictor = _predictor()
    predictor.set_image(_image((128, 128)))
    low = torch.randn(3, 32, 32)
    up = F.interpolate(low[:, None], (128, 128), mode="bilinear", align_corners=False)
    twice = F.interpolate(up, (128, 128), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(predictor.upsample_logits(low), twice, atol=0, rtol=0)


def test_batch_with_cache_equals_single_clicks():
    predictor = _predictor()
    predictor.set_image(_image((50, 80)))
    rng = np.random.default_rng(4)
    points = rng.uniform([0, 0], [49, 79], size=(5, 2, 2))
    labels = np.array([[1, 0], [1, 1], [0, 1], [1, 1], [0, 0]])
    out = predictor.predict_batch(points, labels, multimask=True)
    for b in range(5):
        masks, scores, logits = predictor.predict(points[b], labels[b])
        np.testing.assert_allclose(out.low_res_logits[b].numpy(), logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(out.scores[b].numpy(), scores, atol=1e-5, rtol=0)
        agree = np.mean((out.mask_logits[b] > 0).numpy() == masks)
        assert agree >= 0.999


# ------------------------------------------- first upscaling product, low rank
def _wide_decoder_model(depth, seed=0):
    """vit_b's decoder width (256 channels, 8 heads) on a tiny encoder with a 16 x 16 embedding."""
    config = tiny_sam_config(decoder_depth=depth, iou_head_depth=3)
    config["image_encoder"].update(img_size=256, out_chans=256)
    config.update(prompt_embed_dim=256, image_size=256)
    config["decoder"].update(num_heads=8, mlp_dim=64)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():  # trained-like norms: not all ones and zeros
        for layer in model.mask_decoder.transformer.layers:
            layer.norm4.weight.uniform_(0.5, 1.5)
            layer.norm4.bias.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_low_rank_first_upscaling_equals_direct_product(depth, monkeypatch):
    """The folded rank-(heads x tokens) form of ``keys @ W`` gives the official decoder's logits.

    Depth 2 is SAM's; 1 and 3 check the unrolling over blocks (the limit is
    lifted so that depth 3 uses it too).  Batch 1 and 4, one to three points
    (two to four with the padding point), one and three outputs.
    """
    from napari_sam.model import mask_decoder as md

    monkeypatch.setattr(md, "LOW_RANK_LIMIT", 1.0)
    model = _wide_decoder_model(depth)
    dec = model.mask_decoder
    used = []
    original = md.MaskDecoder._first_upscaling_low_rank

    def spy(self, cache, record, batch):
        out = original(self, cache, record, batch)
        used.append(out is not None)
        return out

    monkeypatch.setattr(md.MaskDecoder, "_first_upscaling_low_rank", spy)
    torch.manual_seed(5)
    features = torch.randn(1, 256, 16, 16)
    pe = model.prompt_encoder.get_dense_pe()
    for n_points in (1, 3):
        coords = torch.rand(4, n_points, 2) * 256
        labels = torch.randint(0, 2, (4, n_points), dtype=torch.int)
        with torch.inference_mode():
            sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            cache = dec.prepare_image(features, pe, dense[:1])
            assert cache.upscale_image is not None
            for batch in (1, 4):
                for multimask in (True, False):
                    low, iou = dec(None, None, sparse[:batch], None, multimask, image_cache=cache)
                    ref_low, ref_iou = _reference_decoder(
                        model, features, sparse[:batch], dense[:batch], multimask
                    )
                    torch.testing.assert_close(low, ref_low, atol=2e-5, rtol=0)
                    torch.testing.assert_close(iou, ref_iou, atol=2e-5, rtol=0)
    assert used and all(used)


def test_low_rank_first_upscaling_only_where_it_is_cheaper():
    """Used for a click on a 256-channel decoder (rank 116); not for four points (rank 164
    > 0.6 x 256), not when gradients are recorded (training)."""
    model = _wide_decoder_model(2)
    dec = model.mask_decoder
    features = torch.randn(1, 256, 16, 16)
    pe = model.prompt_encoder.get_dense_pe()
    conv1 = dec.output_upscaling[0]
    for n_points, rank in ((1, 116), (4, 164)):
        coords = torch.rand(1, n_points, 2) * 256
        labels = torch.ones(1, n_points, dtype=torch.int)
        with torch.inference_mode():
            sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            cache = dec.prepare_image(features, pe, dense)
            record = []
            _, keys = dec.transformer.forward_prepared(cache.prepared, _tokens(dec, sparse), record)
            assert sum(r[0].shape[1] + 2 for r in record) == rank
            got = dec._first_upscaling_low_rank(cache, record, 1)
            direct = torch.addmm(conv1.bias.repeat(4), keys[0], conv1.weight.permute(0, 2, 3, 1).reshape(256, -1))
        if n_points == 1:
            torch.testing.assert_close(got, direct, atol=2e-5, rtol=0)
        else:
            assert got is None
    assert dec.prepare_image(features, pe, dense).upscale_image is None  # gradients on: not prepared


def _tokens(dec, sparse):
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    return torch.cat([output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)


# ------------------------------------------- final attention for wanted tokens
@pytest.mark.parametrize("batch", [1, 3])
def test_final_attention_for_wanted_tokens_equals_rows_of_full_result(batch):
    """``forward_prepared(..., final_tokens=idx)`` returns exactly rows ``idx`` of the full queries
    (each token attends on its own in the final step) and the same keys; gradients too."""
    model = _wide_decoder_model(2)
    tr = model.mask_decoder.transformer
    torch.manual_seed(6)
    features = torch.randn(1, 256, 16, 16)
    pe = model.prompt_encoder.get_dense_pe()
    coords = torch.rand(batch, 2, 2) * 256
    labels = torch.tensor([[1, 0]] * batch, dtype=torch.int)
    sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    tokens = _tokens(model.mask_decoder, sparse).detach().requires_grad_(True)
    idx = [0, 2, 3, 4]  # IoU token and the three multimask tokens; the point tokens are dropped
    prepared = tr.prepare_image(features + dense[:1], pe)
    full_q, full_k = tr.forward_prepared(prepared, tokens)
    some_q, some_k = tr.forward_prepared(prepared, tokens, final_tokens=idx)
    assert some_q.shape == (batch, len(idx), 256)
    torch.testing.assert_close(some_q, full_q[:, idx], atol=1e-6, rtol=0)
    torch.testing.assert_close(some_k, full_k, atol=0, rtol=0)
    (grad_full,) = torch.autograd.grad(full_q[:, idx].sum(), tokens)
    (grad_some,) = torch.autograd.grad(some_q.sum(), tokens)
    torch.testing.assert_close(grad_some, grad_full, atol=1e-5, rtol=0)
