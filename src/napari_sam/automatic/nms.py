"""Box tests and non-maximum suppression for automatic mask generation.

Boxes are ``(r0, c0, r1, c1)`` half-open: ``image[r0:r1, c0:c1]`` is the box.
Where the official generator makes a decision on mask boxes (the crop-edge
test, box NMS), it uses inclusive boxes (last row / column) and torchvision's
box areas; :func:`is_box_near_crop_edge` and :func:`nms` compute those
decisions on that convention, so they decide exactly as the official code.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ['is_box_near_crop_edge', 'box_iou', 'nms', 'mask_nms']


def _inclusive(boxes_rc: np.ndarray) -> np.ndarray:
    """Half-open ``(r0, c0, r1, c1)`` -> the official inclusive corners ``(r0, c0, r1 - 1, c1 - 1)``."""
    return boxes_rc - np.array([0, 0, 1, 1], dtype=boxes_rc.dtype)


def is_box_near_crop_edge(
    boxes_rc: np.ndarray, crop_box_rc: Sequence[int], image_box_rc: Sequence[int], *, atol: float = 20.0
) -> np.ndarray:
    """Which mask boxes lie within ``atol`` pixels of an edge of the crop that is not an image edge.

    The official test: a mask box's *inclusive* corners (last row / column,
    ``r1 - 1`` and ``c1 - 1`` of a half-open box) are compared with the crop's
    and the image's ``(r0, c0, r1, c1)``, side by side.

    Parameters
    ----------
    boxes_rc : (K, 4) array
        Half-open mask boxes in image coordinates.
    crop_box_rc, image_box_rc : (4,) sequences
        The crop and the whole image (``(0, 0, H, W)``), half-open.

    Returns
    -------
    (K,) bool ndarray
    """
    boxes = _inclusive(np.asarray(boxes_rc, dtype=np.float64).reshape(-1, 4))
    crop = np.asarray(crop_box_rc, dtype=np.float64)[None, :]
    whole = np.asarray(image_box_rc, dtype=np.float64)[None, :]
    near_crop = np.abs(boxes - crop) <= atol
    near_image = np.abs(boxes - whole) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of half-open boxes (areas are pixel counts).

    Parameters
    ----------
    a : (N, 4) array, b : (M, 4) array

    Returns
    -------
    (N, M) float64 ndarray (0 where both boxes are empty)

    Examples
    --------
    Boxes are ``(r0, c0, r1, c1)``; the second box overlaps half of the first:

    >>> import numpy as np
    >>> boxes = np.array([[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30]])
    >>> box_iou(boxes[:1], boxes).round(3)
    array([[1.   , 0.333, 0.   ]])
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    r0 = np.maximum(a[:, None, 0], b[None, :, 0])
    c0 = np.maximum(a[:, None, 1], b[None, :, 1])
    r1 = np.minimum(a[:, None, 2], b[None, :, 2])
    c1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (r1 - r0).clip(0) * (c1 - c0).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes_rc: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy box non-maximum suppression, exactly as the official generator runs it.

    The official generator calls ``torchvision.ops.batched_nms`` on inclusive
    mask boxes, so this does the same on the half-open boxes given here: the
    IoU of two boxes is computed on their inclusive corners
    (``r1 - 1``, ``c1 - 1``) with torchvision's areas
    ``(r1 - 1 - r0) * (c1 - 1 - c0)`` (a one-pixel-wide box has area 0 and
    never suppresses nor is suppressed), in float32 like torchvision's CPU
    kernel.  Boxes are visited by decreasing score, equal scores in input
    order (torchvision sorts stably); a box is dropped when its IoU with an
    already kept box is strictly greater than ``iou_thresh``.

    Parameters
    ----------
    boxes_rc : (N, 4) array
        Half-open ``(r0, c0, r1, c1)``.
    scores : (N,) array
        Compared as given (pass float32 scores to break ties as float32 does).
    iou_thresh : float

    Returns
    -------
    keep : (K,) int64 ndarray
        Indices of kept boxes, in visiting order (decreasing score).

    Examples
    --------
    Box 1 overlaps box 0 and scores lower (IoU 36/126 = 0.29 on the inclusive corners, as torchvision):

    >>> import numpy as np
    >>> boxes = np.array([[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30]])
    >>> scores = np.array([0.9, 0.8, 0.7])
    >>> nms(boxes, scores, iou_thresh=0.25)
    array([0, 2])
    >>> nms(boxes, scores, iou_thresh=0.5)
    array([0, 1, 2])
    """
    boxes = _inclusive(np.asarray(boxes_rc, dtype=np.float64).reshape(-1, 4)).astype(np.float32)
    scores = np.asarray(scores).reshape(-1)
    n = len(boxes)
    if len(scores) != n:
        raise ValueError(f"{n} boxes and {len(scores)} scores: give one score per box")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    if not iou_thresh >= 0:  # boxes that do not meet can be dropped: compare with all of them
        return _nms_all(boxes, order, iou_thresh)
    # Only boxes that meet a kept box can be dropped by it (else IoU 0, or NaN, is not above a
    # threshold >= 0): each kept box is compared with the boxes whose first row lies within the
    # tallest box's height of it, found by bisection on the boxes sorted by first row.  The IoUs
    # are computed elementwise as in ``_nms_all``, so the same boxes are dropped.
    by_r0 = np.argsort(boxes[:, 0], kind="stable")
    r0, c0, r1, c1 = (np.ascontiguousarray(v) for v in boxes[by_r0].T)
    areas = (r1 - r0) * (c1 - c0)
    rank = np.empty(n, dtype=np.int64)
    rank[by_r0] = np.arange(n)
    tallest = max(float(np.max(r1 - r0)), 0.0)
    suppressed = np.zeros(n, dtype=bool)  # by position in ``by_r0``
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in order:
            k = rank[i]
            if suppressed[k]:
                continue
            keep.append(i)
            lo = int(np.searchsorted(r0, r0[k] - tallest, side="left"))
            hi = int(np.searchsorted(r0, r1[k], side="right"))
            sl = slice(lo, hi)
            h = np.maximum(np.minimum(r1[k], r1[sl]) - np.maximum(r0[k], r0[sl]), np.float32(0))
            w = np.maximum(np.minimum(c1[k], c1[sl]) - np.maximum(c0[k], c0[sl]), np.float32(0))
            inter = h * w
            ovr = inter / (areas[k] + areas[sl] - inter)
            suppressed[sl] |= ovr.astype(np.float64) > iou_thresh
    return np.asarray(keep, dtype=np.int64)


def _nms_all(boxes: np.ndarray, order: np.ndarray, iou_thresh: float) -> np.ndarray:
    """:func:`nms` comparing each kept box with every box (float32 inclusive ``boxes``, visiting ``order``)."""
    r0, c0, r1, c1 = boxes.T
    areas = (r1 - r0) * (c1 - c0)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in order:
            if suppressed[i]:
                continue
            keep.append(i)
            h = np.maximum(np.minimum(r1[i], r1) - np.maximum(r0[i], r0), np.float32(0))
            w = np.maximum(np.minimum(c1[i], c1) - np.maximum(c0[i], c0), np.float32(0))
            inter = h * w
            ovr = inter / (areas[i] + areas - inter)  # float32, NaN for two zero-area boxes
            suppressed |= ovr.astype(np.float64) > iou_thresh
    return np.asarray(keep, dtype=np.int64)


def mask_nms(
    masks: Sequence[np.ndarray], boxes_rc: np.ndarray, scores: np.ndarray, overlap_thresh: float
) -> np.ndarray:
    """Greedy NMS on masks: drop a mask that overlaps a kept one by more than ``overlap_thresh``
    of the smaller of the two.

    The overlap is the intersection over the smaller area, so a fragment lying
    inside a kept object is dropped like a duplicate, while touching objects
    (whose bounding boxes may overlap a lot, the masks hardly) are both kept.
    Masks are visited by decreasing score (ties by index).

    Parameters
    ----------
    masks : sequence of (r1 - r0, c1 - c0) bool ndarrays
        Bbox-local masks (as :class:`napari_sam.automatic.records.MaskRecord`).
    boxes_rc : (N, 4) int array
        Half-open ``(r0, c0, r1, c1)`` of each mask in image coordinates.
    scores : (N,) array
    overlap_thresh : float in [0, 1]

    Returns
    -------
    keep : (K,) int64 ndarray
        Indices of kept masks, in decreasing score order.
    """
    boxes = np.asarray(boxes_rc, dtype=np.int64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(boxes)
    if len(masks) != n or len(scores) != n:
        raise ValueError(f"{len(masks)} masks, {n} boxes and {len(scores)} scores: one of each per mask")
    areas = np.array([int(np.count_nonzero(m)) for m in masks], dtype=np.int64)
    kept_boxes = np.empty((n, 4), dtype=np.int64)
    keep: list[int] = []
    for i in np.lexsort((np.arange(n), -scores)):
        b = boxes[i]
        kb = kept_boxes[: len(keep)]
        r0, c0 = np.maximum(kb[:, 0], b[0]), np.maximum(kb[:, 1], b[1])
        r1, c1 = np.minimum(kb[:, 2], b[2]), np.minimum(kb[:, 3], b[3])
        suppressed = False
        for k in np.flatnonzero((r1 > r0) & (c1 > c0)):  # kept masks whose boxes meet this one's
            j = keep[k]
            bj = boxes[j]
            rows, cols = slice(r0[k], r1[k]), slice(c0[k], c1[k])
            inter = np.count_nonzero(
                masks[i][rows.start - b[0] : rows.stop - b[0], cols.start - b[1] : cols.stop - b[1]]
                & masks[j][rows.start - bj[0] : rows.stop - bj[0], cols.start - bj[1] : cols.stop - bj[1]]
            )
            smaller = min(areas[i], areas[j])
            if inter and inter > overlap_thresh * smaller:
                suppressed = True
                break
        if not suppressed:
            kept_boxes[len(keep)] = b
            keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)
