"""Mask quality scores, mask boxes and small-region cleanup for automatic mask generation.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from napari_sam.automatic.nms import nms

__all__ = ['stability_score', 'masks_to_boxes', 'remove_small_regions', 'postprocess_small_regions']


_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity, as OpenCV in the official code


def _on_cpu(x: Any) -> bool:
    return not isinstance(x, torch.Tensor) or x.device.type == "cpu"


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def stability_score(logits: Any, mask_threshold: float, offset: float) -> np.ndarray:
    """Stability score: IoU of the masks thresholded at ``threshold +/- offset``.

    ``|logits > t + offset| / |logits > t - offset|`` per mask (the first is a
    subset of the second, so this is their IoU).  An empty mask scores 0.

    Parameters
    ----------
    logits : (..., H, W) float ndarray or tensor
        On CPU the counts run in numpy (much faster than torch's boolean
        reductions there); on an accelerator they stay in torch.
    mask_threshold, offset : float

    Returns
    -------
    (...,) float32 ndarray
    """
    if _on_cpu(logits):
        arr = _as_numpy(logits)
        inter = np.count_nonzero(arr > (mask_threshold + offset), axis=(-1, -2))
        union = np.count_nonzero(arr > (mask_threshold - offset), axis=(-1, -2))
    else:
        inter = (logits > (mask_threshold + offset)).sum(dim=(-1, -2)).cpu().numpy()
        union = (logits > (mask_threshold - offset)).sum(dim=(-1, -2)).cpu().numpy()
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0).astype(np.float32)


def masks_to_boxes(masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Tight half-open bounding boxes of boolean masks.

    Parameters
    ----------
    masks : (K, H, W) bool ndarray or tensor

    Returns
    -------
    boxes : (K, 4) int64 ndarray
        ``(r0, c0, r1, c1)``; ``(0, 0, 0, 0)`` for an empty mask.
    nonempty : (K,) bool ndarray
    """
    if _on_cpu(masks):
        m = _as_numpy(masks)
        rows, cols = m.any(axis=2), m.any(axis=1)
    else:
        rows, cols = masks.any(dim=2).cpu().numpy(), masks.any(dim=1).cpu().numpy()
    h, w = rows.shape[1], cols.shape[1]
    nonempty = rows.any(axis=1)
    r0 = rows.argmax(axis=1)
    r1 = h - rows[:, ::-1].argmax(axis=1)
    c0 = cols.argmax(axis=1)
    c1 = w - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([r0, c0, r1, c1], axis=1).astype(np.int64)
    boxes[~nonempty] = 0
    return boxes, nonempty


def remove_small_regions(mask: np.ndarray, area_thresh: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill small holes or remove small islands of a bbox-local boolean mask.

    Same rule as the official ``remove_small_regions`` (8-connectivity,
    strictly smaller than ``area_thresh`` is small; if every island is small
    the largest is kept), except that background touching the mask's bounding
    box is never treated as a hole: it is connected to the rest of the image.

    Parameters
    ----------
    mask : (h, w) bool ndarray
        Not modified.
    area_thresh : int
    mode : {"holes", "islands"}

    Returns
    -------
    new_mask : (h, w) bool ndarray
    changed : bool
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    if mode == "holes":
        padded = np.pad(~mask, 1, constant_values=True)
        regions, n = ndimage.label(padded, structure=_EIGHT)
        if n == 0:
            return mask.copy(), False
        sizes = np.bincount(regions.ravel(), minlength=n + 1)
        outside = regions[0, 0]
        small = (sizes < area_thresh) & (np.arange(n + 1) != outside)
        small[0] = False
        if not small.any():
            return mask.copy(), False
        return mask | small[regions][1:-1, 1:-1], True
    regions, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return mask.copy(), False
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = sizes < area_thresh
    if not small.any():
        return mask.copy(), False
    keep = ~small
    if not keep.any():
        keep[int(np.argmax(sizes))] = True
    lut = np.concatenate([[False], keep])
    return lut[regions], True


def postprocess_small_regions(records: list[Any], min_area: int, nms_thresh: float) -> list[Any]:
    """Fill small holes, then remove small islands of every record, then NMS preferring unchanged masks.

    Parameters
    ----------
    records : list of napari_sam.automatic.records.MaskRecord
    min_area : int
        Holes and islands smaller than this many pixels are changed.
    nms_thresh : float
        Box IoU of the final NMS (unchanged masks score 1, changed ones 0).

    Returns
    -------
    list of MaskRecord with tightened boxes and recomputed areas, in input order.
    """
    new: list[Any] = []
    unchanged = np.zeros(len(records))
    for k, rec in enumerate(records):
        m, ch1 = remove_small_regions(rec.mask, min_area, "holes")
        m, ch2 = remove_small_regions(m, min_area, "islands")
        unchanged[k] = float(not (ch1 or ch2))
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows) == 0:
            new.append(rec)
            continue
        r0, c0 = rec.bbox_rc[0], rec.bbox_rc[1]
        m = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        bbox = (r0 + int(rows[0]), c0 + int(cols[0]), r0 + int(rows[-1]) + 1, c0 + int(cols[-1]) + 1)
        new.append(dataclasses.replace(rec, mask=m, bbox_rc=bbox, area=int(m.sum())))
    boxes = np.array([r.bbox_rc for r in new], dtype=np.int64)
    keep = nms(boxes, unchanged, nms_thresh)
    return [new[i] for i in sorted(keep)]
