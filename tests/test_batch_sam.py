"""End to end with the real model path: a tiny random-weight SAM (reference fixture weights)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.model import build_model
from napari_sam.predict.predictor import Predictor
from napari_sam.synthetic import make_nuclei_stack
from napari_sam.tiled.tiles import segment_image
from napari_sam.volume import embed_volume, segment_volume
from napari_sam.volume.cache import EmbeddingCache

AMG = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)


@pytest.mark.slow
def test_real_model_volume_equals_per_slice_segment_image(tmp_path, sam_reference_dir):
    import torch

    cfg = sam_reference_dir / "tiny_vit" / "config.json"
    weights = sam_reference_dir / "tiny_vit" / "weights.pt"
    stack, _ = make_nuclei_stack((2, 48, 56), seed=2)
    limits = np.array([[float(stack.min()), float(stack.max())]])
    out = segment_volume(stack, tmp_path / "o.zarr", model=str(cfg), checkpoint=weights,
                         contrast_limits=limits, **AMG).compute()
    # reference: the 2-D entry point called directly on each slice with the same weights
    sam = build_model(str(cfg))
    sam.load_state_dict({k: v.float() for k, v in torch.load(weights, weights_only=True).items()})
    predictor = Predictor(sam.eval())
    offset = 0
    for k in range(2):
        ref = np.asarray(segment_image(stack[k], predictor, contrast_limits=limits, **AMG))
        np.testing.assert_array_equal(out[k], np.where(ref > 0, ref.astype(np.int64) + offset, 0))
        offset += int(ref.max())
    assert offset > 0  # thresholds at 0: the random model returns some masks

    # the embedding cache: filled by embed_volume, then segment skips the encoder and agrees
    n = embed_volume(stack, tmp_path / "cache", model=str(cfg), checkpoint=weights, contrast_limits=limits)
    assert n == 2 and EmbeddingCache(tmp_path / "cache").entries() == [(0, 0), (1, 0)]
    stamps = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "cache").rglob("zarr.json"))
    cached = segment_volume(stack, tmp_path / "o2.zarr", model=str(cfg), checkpoint=weights,
                            contrast_limits=limits, cache=tmp_path / "cache", **AMG).compute()
    np.testing.assert_array_equal(cached, out)
    # nothing was re-encoded: a cache miss would have rewritten its entry
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "cache").rglob("zarr.json")) == stamps


def test_builtin_model_gets_its_own_thresholds_by_default(builtin_model):
    """`napari-sam segment` / segment_volume with the default (built-in) model and no
    thresholds uses its card's (with SAM's 0.88 / 0.95 the small model keeps almost nothing:
    benchmarks/quality)."""
    from napari_sam.model.registry import model_card
    from napari_sam.normalize import estimate_contrast_limits
    from napari_sam.predict.factory import predictor_for_model
    from napari_sam.synthetic import make_nuclei_image
    from napari_sam.volume.batch import sam_segment

    shipped = model_card("builtin").amg
    assert shipped["pred_iou_thresh"] < 0.88  # the card's own thresholds
    img, _ = make_nuclei_image((128, 128), kind="nuclei", seed=1_001_003)
    limits = estimate_contrast_limits(img)
    small = {"points_per_side": 8, "crop_n_layers": 0}  # cheap: the thresholds are what is checked
    default = sam_segment(img, channel_axis=None, contrast_limits=limits, amg_params=small)
    # reference: the 2-D entry point with the shipped thresholds passed by hand
    expected = segment_image(img, predictor_for_model(builtin_model, device="cpu"), contrast_limits=limits,
                             **{**shipped, **small})
    np.testing.assert_array_equal(default, np.asarray(expected))
    assert default.max() > 0
