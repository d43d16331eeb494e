"""Windowed upsampling of candidate logits equals the predictor's whole-crop upsampling, pixel for pixel.

The reference is the predictor's own ``upsample_logits`` (the official
postprocessing: two bilinear resizes over the whole crop), thresholded and
counted over the whole crop.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.automatic._window import separable_is_exact, windowed_scores
from napari_sam.automatic.regions import stability_score


def _reference(low, image_size, input_size, original_size, t, offset):
    """The whole-crop upsampling of Predictor.upsample_logits, written out."""
    up = torch.nn.functional.interpolate(low[:, None], (image_size, image_size), mode="bilinear",
                                         align_corners=False)[..., : input_size[0], : input_size[1]]
    if tuple(input_size) != tuple(original_size):
        up = torch.nn.functional.interpolate(up, original_size, mode="bilinear", align_corners=False)
    logits = up[:, 0].numpy()
    return logits > t, stability_score(logits, t, offset)


def _logits(seed: int, k: int = 24, m: int = 64) -> torch.Tensor:
    """Blob-like logits (objects of a few low-res pixels, far below zero elsewhere), some noisy, some empty."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:m, :m]
    out = np.empty((k, m, m), dtype=np.float32)
    for i in range(k):
        cy, cx = rng.uniform(-4, m + 4, size=2)
        r = rng.uniform(1, 12)
        out[i] = 6 * (r - np.hypot(yy - cy, xx - cx)) / r
        if i % 4 == 1:
            out[i] += rng.normal(0, 2, size=(m, m))  # noise: many pixels near the thresholds
        if i % 6 == 5:
            out[i] = -20.0  # nothing above any threshold
    return torch.from_numpy(out)


def test_this_pytorch_resizes_separably():
    assert separable_is_exact()


@pytest.mark.parametrize(("input_size", "original_size"), [
    ((256, 256), (256, 256)),     # no second resize
    ((256, 256), (1024, 1024)),   # integer factor: a 1024² tile of a 256-px model
    ((256, 256), (687, 687)),     # a crop of the first crop layer
    ((192, 256), (515, 687)),     # non-square crop
    ((256, 171), (749, 500)),
])
@pytest.mark.parametrize("offset", [1.0, 0.25])
def test_windowed_scores_equal_whole_crop(input_size, original_size, offset):
    low = _logits(seed=sum(original_size) + int(offset * 4))
    t = 0.0
    masks, stab = _reference(low, 256, input_size, original_size, t, offset)
    found = windowed_scores(low, image_size=256, input_size=input_size, original_size=original_size,
                            mask_threshold=t, offset=offset)
    assert len(found) == len(low)
    for k, (mask, (r0, c0), s) in enumerate(found):
        full = np.zeros(original_size, dtype=bool)
        full[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]] = mask
        np.testing.assert_array_equal(full, masks[k], err_msg=f"mask {k}")
        assert s == stab[k], f"mask {k}: stability {s} != {stab[k]}"
