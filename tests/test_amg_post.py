"""Fast paths of automatic generation's post-processing against plain references.

* box NMS compares each kept box only with boxes near it: checked against
  comparing with every box (the plain loop, kept as ``_nms_all``) and against
  a brute-force greedy NMS written here, on random boxes with many overlaps,
  ties and degenerate (one-pixel) boxes;
* the windowed resizes call PyTorch's bilinear kernel directly: checked
  against ``F.interpolate``;
* hole filling builds its padded background without ``np.pad``: checked
  against labelling the whole image with scipy.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_sam.automatic import _window
from napari_sam.automatic.nms import _nms_all, nms
from napari_sam.automatic.regions import remove_small_regions


def _random_boxes(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    r0 = rng.integers(0, side, n)
    c0 = rng.integers(0, side, n)
    h = rng.integers(1, 40, n)
    h[rng.random(n) < 0.05] = 1  # one-pixel-high boxes: area 0 the torchvision way
    w = rng.integers(1, 40, n)
    return np.stack([r0, c0, r0 + h, c0 + w], axis=1)


def _brute_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """Greedy NMS pair by pair, float32 IoU on inclusive corners (torchvision's CPU kernel)."""
    b = (boxes - np.array([0, 0, 1, 1])).astype(np.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        dropped = False
        for j in keep:
            h = max(min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]), np.float32(0))
            w = max(min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]), np.float32(0))
            inter = np.float32(h * w)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.float32(inter / np.float32(area[i] + area[j] - inter))
            if float(iou) > thresh:
                dropped = True
                break
        if not dropped:
            keep.append(int(i))
    return keep


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.7, 1.0])
def test_nms_near_boxes_only_equals_all_boxes(seed: int, thresh: float) -> None:
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 400, 200)
    scores = rng.integers(0, 20, len(boxes)).astype(np.float32)  # many ties: input order decides
    got = nms(boxes, scores, thresh)
    order = np.argsort(-scores, kind="stable")
    plain = _nms_all((boxes - np.array([0, 0, 1, 1])).astype(np.float32), order, thresh)
    np.testing.assert_array_equal(got, plain)
    if seed == 0:
        assert got.tolist() == _brute_nms(boxes, scores, thresh)


def test_nms_negative_threshold_still_compares_all_boxes() -> None:
    boxes = np.array([[0, 0, 5, 5], [50, 50, 60, 60], [100, 100, 104, 104]])
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    # IoU 0 > -0.5: the first box drops the far ones, as the plain loop does
    assert nms(boxes, scores, -0.5).tolist() == [0]


def test_direct_bilinear_kernel_equals_interpolate() -> None:
    g = torch.Generator().manual_seed(1)
    for hin, win, hout, wout in ((7, 64, 7, 256), (64, 9, 256, 9), (11, 256, 11, 687), (256, 31, 749, 31)):
        x = torch.randn(1, 1, hin, win, generator=g) * 10
        ref = F.interpolate(x, (hout, wout), mode="bilinear", align_corners=False)
        assert torch.equal(_window._resize(x, (hout, wout)), ref)


@pytest.mark.parametrize("seed", range(6))
def test_box_local_hole_filling_equals_whole_image(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (60, 70)
    full = ndimage.binary_dilation(rng.random(shape) < 0.08, iterations=2) & (rng.random(shape) < 0.9)
    rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    local = full[box[0] : box[2], box[1] : box[3]]
    thresh = 6
    # whole image: background regions (8-connected) smaller than thresh are filled
    regions, n = ndimage.label(~full, structure=np.ones((3, 3)))
    sizes = np.bincount(regions.ravel(), minlength=n + 1)
    small = sizes < thresh
    small[0] = False
    want = full | small[regions]
    got, changed = remove_small_regions(local, thresh, "holes", bbox_rc=box, image_shape=shape)
    assert changed == bool((want != full).any())
    expect = np.zeros(shape, dtype=bool)
    expect[box[0] : box[2], box[1] : box[3]] = got
    expect |= full & ~np.pad(np.ones_like(local), ((box[0], shape[0] - box[2]), (box[1], shape[1] - box[3])))
    np.testing.assert_array_equal(expect, want)
