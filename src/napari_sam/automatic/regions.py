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


def _outside_parts(bbox_rc: tuple[int, int, int, int], image_shape: tuple[int, int]) -> list[tuple[int, int, int]]:
    """The background outside a box, as connected parts: ``(frame_row, frame_col, area)`` each.

    ``frame_row/col`` is a pixel of the one-pixel frame that
    :func:`remove_small_regions` puts around the bbox-local mask (on the sides
    that are not image edges) lying in that part.  The outside of a box is one
    8-connected region unless the box spans the image's whole width (height)
    and leaves a band above and below (left and right).
    """
    r0, c0, r1, c1 = bbox_rc
    im_h, im_w = image_shape
    top, left = int(r0 > 0), int(c0 > 0)
    h, w = r1 - r0, c1 - c0
    if c0 == 0 and c1 == im_w and r0 > 0 and r1 < im_h:
        return [(0, 0, r0 * im_w), (top + h, 0, (im_h - r1) * im_w)]
    if r0 == 0 and r1 == im_h and c0 > 0 and c1 < im_w:
        return [(0, 0, c0 * im_h), (0, left + w, (im_w - c1) * im_h)]
    area = im_h * im_w - h * w
    if area == 0:
        return []
    if r0 > 0:
        return [(0, left, area)]
    if r1 < im_h:
        return [(top + h, left, area)]
    return [(0, 0, area)] if c0 > 0 else [(0, w, area)]


def _largest_label(sizes: np.ndarray, regions: np.ndarray, origin_rc: tuple[int, int]) -> int:
    """Label (1-based) of the largest region; equal sizes go to the one OpenCV labels first.

    OpenCV's 8-connected labelling scans 2 x 2 blocks of the whole image in
    raster order, so of two equal regions the one with a pixel in an earlier
    block (image coordinates) has the smaller label.
    """
    best = np.flatnonzero(sizes == sizes.max()) + 1
    if len(best) == 1:
        return int(best[0])
    rr, cc = np.nonzero(np.isin(regions, best))
    lab = regions[rr, cc]
    key = ((rr + origin_rc[0]) // 2).astype(np.int64) * (1 << 32) + (cc + origin_rc[1]) // 2
    first = {int(b): np.inf for b in best}
    for k, lb in zip(key, lab):
        first[int(lb)] = min(first[int(lb)], k)
    return min(first, key=lambda b: (first[b], b))


def remove_small_regions(
    mask: np.ndarray,
    area_thresh: int,
    mode: str,
    *,
    bbox_rc: tuple[int, int, int, int] | None = None,
    image_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, bool]:
    """Fill small holes or remove small islands of a boolean mask, as the official code does.

    The official ``remove_small_regions`` on the full-image mask:
    8-connected regions strictly smaller than ``area_thresh`` pixels are
    small; "holes" fills every small background region, "islands" removes
    every small island, keeping the largest when every island is small.

    Parameters
    ----------
    mask : (h, w) bool ndarray
        Not modified.  Without ``bbox_rc`` it is the whole image; with it, the
        mask's tight bounding box inside an image of ``image_shape`` (the rest
        of that image is background).
    area_thresh : int
    mode : {"holes", "islands"}
    bbox_rc : (r0, c0, r1, c1), optional
        Where ``mask`` lies in the image (half-open); requires ``image_shape``.
        Background touching a side of the box that is not an image edge
        belongs to the background outside the box, whose whole area counts.
    image_shape : (H, W), optional

    Returns
    -------
    new_mask : (h, w) bool ndarray
        Same shape as ``mask``.  A hole of the box-local mask is never outside
        the box, except when the background outside the box is itself
        smaller than ``area_thresh``: then ``ValueError`` asks for the
        full-image mask (:func:`postprocess_small_regions` handles that case).
    changed : bool
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    if (bbox_rc is None) != (image_shape is None):
        raise ValueError("give both bbox_rc and image_shape (the mask's place in the image), or neither")
    mask = np.asarray(mask, dtype=bool)
    if bbox_rc is None:
        bbox_rc, image_shape = (0, 0, mask.shape[0], mask.shape[1]), mask.shape
    r0, c0, r1, c1 = (int(v) for v in bbox_rc)
    if (r1 - r0, c1 - c0) != mask.shape:
        raise ValueError(f"bbox_rc {bbox_rc} does not fit a mask of shape {mask.shape}")
    if mode == "islands":
        regions, n = ndimage.label(mask, structure=_EIGHT)
        if n == 0:
            return mask.copy(), False
        sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
        small = sizes < area_thresh
        if not small.any():
            return mask.copy(), False
        keep = ~small
        if not keep.any():
            keep[_largest_label(sizes, regions, (r0, c0)) - 1] = True
        return np.concatenate([[False], keep])[regions], True
    im_h, im_w = (int(v) for v in image_shape)
    pads = ((int(r0 > 0), int(r1 < im_h)), (int(c0 > 0), int(c1 < im_w)))
    padded = np.ones((mask.shape[0] + sum(pads[0]), mask.shape[1] + sum(pads[1])), dtype=bool)
    np.logical_not(mask, out=padded[pads[0][0] : pads[0][0] + mask.shape[0], pads[1][0] : pads[1][0] + mask.shape[1]])
    regions, n = ndimage.label(padded, structure=_EIGHT)
    if n == 0:
        return mask.copy(), False
    inner = regions[pads[0][0] : pads[0][0] + mask.shape[0], pads[1][0] : pads[1][0] + mask.shape[1]]
    sizes = np.bincount(inner.ravel(), minlength=n + 1)
    outside = np.zeros(n + 1, dtype=bool)
    for fr, fc, area in _outside_parts((r0, c0, r1, c1), (im_h, im_w)):
        label = regions[fr, fc]
        sizes[label] += area
        outside[label] = True
    small = sizes < area_thresh
    small[0] = False
    if not small.any():
        return mask.copy(), False
    if (small & outside).any():
        raise ValueError("the background outside the mask's box is smaller than area_thresh; "
                         "pass the full-image mask instead")
    return mask | small[inner], True


def _cleanup(rec: Any, min_area: int, image_shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, ...], bool]:
    """Holes then islands of one record; returns the tight mask, its half-open box and whether it changed."""
    r0, c0, r1, c1 = rec.bbox_rc
    ctx = {"bbox_rc": (r0, c0, r1, c1), "image_shape": image_shape}
    try:
        m, ch1 = remove_small_regions(rec.mask, min_area, "holes", **ctx)
    except ValueError:  # the background outside the box is small itself: work on the whole image
        full = np.zeros(image_shape, dtype=bool)
        full[r0:r1, c0:c1] = rec.mask
        m, ch1 = remove_small_regions(full, min_area, "holes")
        r0, c0, r1, c1 = 0, 0, image_shape[0], image_shape[1]
        ctx = {"bbox_rc": (r0, c0, r1, c1), "image_shape": image_shape}
    m, ch2 = remove_small_regions(m, min_area, "islands", **ctx)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if len(rows) == 0:
        return rec.mask, tuple(rec.bbox_rc), bool(ch1 or ch2)
    m = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    bbox = (r0 + int(rows[0]), c0 + int(cols[0]), r0 + int(rows[-1]) + 1, c0 + int(cols[-1]) + 1)
    return m, bbox, bool(ch1 or ch2)


def postprocess_small_regions(
    records: list[Any], min_area: int, nms_thresh: float, *, image_shape: tuple[int, int]
) -> tuple[list[Any], np.ndarray]:
    """Official small-region cleanup: fill small holes, remove small islands, then NMS preferring unchanged masks.

    Parameters
    ----------
    records : list of napari_sam.automatic.records.MaskRecord
        In the order the official generator holds them at this point (after
        its NMS steps): the final NMS scores unchanged masks 1 and changed ones
        0, and breaks the many ties by this order.
    min_area : int
        Holes and islands smaller than this many pixels are changed.
    nms_thresh : float
        Box IoU of the final NMS (the official code uses
        ``max(box_nms_thresh, crop_nms_thresh)``).
    image_shape : (H, W)
        The image the records' boxes refer to (holes are judged on the whole
        image, as the official code does).

    Returns
    -------
    (new_records, keep)
        ``new_records[i]`` is ``records[i]`` cleaned (tight box, recomputed
        area); ``keep`` lists the indices that survive, in visiting order.
    """
    new: list[Any] = []
    unchanged = np.zeros(len(records), dtype=np.float32)
    for k, rec in enumerate(records):
        m, bbox, changed = _cleanup(rec, min_area, image_shape)
        unchanged[k] = float(not changed)
        new.append(rec if not changed else dataclasses.replace(rec, mask=m, bbox_rc=bbox, area=int(m.sum())))
    boxes = np.array([r.bbox_rc for r in new], dtype=np.int64).reshape(-1, 4)
    keep = nms(boxes, unchanged, nms_thresh)
    return new, keep
