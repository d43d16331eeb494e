"""Free functions behind automatic mask generation (AMG).

Everything here is pure maths on numpy arrays or torch tensors: point grids,
crop boxes, stability scores, box extraction, crop-edge tests, non-maximum
suppression and small-region cleanup.  :mod:`napari_sam.amg` only orchestrates.

Conventions
-----------
* Points are ``(row, col)``; normalised grids are ``(row, col)`` in ``[0, 1]``.
* Boxes are ``(r0, c0, r1, c1)`` **half-open**: ``r1``/``c1`` are one past the
  last row/column of the object, so ``image[r0:r1, c0:c1]`` is the box and its
  area is ``(r1 - r0) * (c1 - c0)``.  (The official SAM code stores the last
  index itself; the difference is one pixel and does not change any filter.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "build_point_grid",
    "build_all_layer_point_grids",
    "generate_crop_boxes",
    "stability_score",
    "masks_to_boxes",
    "is_box_near_crop_edge",
    "box_iou",
    "nms",
    "mask_nms",
    "remove_small_regions",
    "postprocess_small_regions",
    "batch_slices",
    "spatial_shape",
    "crop_image",
    "global_contrast_limits",
]

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity, as OpenCV in the official code


def build_point_grid(n_per_side: int) -> np.ndarray:
    """Evenly spaced normalised point grid, cell centres of an ``n x n`` lattice.

    Parameters
    ----------
    n_per_side : int
        Points along each side (>= 1).

    Returns
    -------
    grid : (n_per_side**2, 2) float64 ndarray
        ``(row, col)`` in ``[0, 1]``, row-major (column varies fastest), i.e.
        the official grid with its ``(x, y)`` columns swapped.
    """
    if int(n_per_side) < 1:
        raise ValueError(f"points per side must be at least 1, got {n_per_side}")
    n = int(n_per_side)
    offset = 1.0 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    rows = np.repeat(side, n)
    cols = np.tile(side, n)
    return np.stack([rows, cols], axis=-1)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One normalised grid per crop layer; layer ``i`` has ``int(n / scale**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    image_shape: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Crop boxes of every layer, same formulas and order as the official generator.

    Layer 0 is the whole image; layer ``i >= 1`` has ``2**i x 2**i`` overlapping
    crops whose overlap is ``int(overlap_ratio * min(H, W) * 2 / 2**i)`` pixels.

    Parameters
    ----------
    image_shape : (H, W)
    n_layers : int
        Number of extra layers (``crop_n_layers``).
    overlap_ratio : float
        ``crop_overlap_ratio``.

    Returns
    -------
    boxes : (M, 4) int64 ndarray
        ``(r0, c0, r1, c1)`` half-open, in image coordinates.
    layer_idx : (M,) int64 ndarray
        Crop layer of each box.
    """
    im_h, im_w = int(image_shape[0]), int(image_shape[1])
    boxes = [(0, 0, im_h, im_w)]
    layers = [0]
    short_side = min(im_h, im_w)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops))
        crop_w = crop_len(im_w, n_crops, overlap)
        crop_h = crop_len(im_h, n_crops, overlap)
        c0s = [int((crop_w - overlap) * i) for i in range(n_crops)]
        r0s = [int((crop_h - overlap) * i) for i in range(n_crops)]
        for c0 in c0s:  # official order: x outer, y inner
            for r0 in r0s:
                boxes.append((r0, c0, min(r0 + crop_h, im_h), min(c0 + crop_w, im_w)))
                layers.append(i_layer + 1)
    return np.asarray(boxes, dtype=np.int64), np.asarray(layers, dtype=np.int64)


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


def is_box_near_crop_edge(
    boxes_rc: np.ndarray, crop_box_rc: Sequence[int], image_box_rc: Sequence[int], *, atol: float = 20.0
) -> np.ndarray:
    """Which boxes lie within ``atol`` pixels of an edge of the crop that is not an image edge.

    Parameters
    ----------
    boxes_rc : (K, 4) array
        Boxes in image coordinates.
    crop_box_rc, image_box_rc : (4,) sequences
        The crop and the whole image (``(0, 0, H, W)``), half-open.

    Returns
    -------
    (K,) bool ndarray
    """
    boxes = np.asarray(boxes_rc, dtype=np.float64).reshape(-1, 4)
    crop = np.asarray(crop_box_rc, dtype=np.float64)[None, :]
    whole = np.asarray(image_box_rc, dtype=np.float64)[None, :]
    near_crop = np.abs(boxes - crop) <= atol
    near_image = np.abs(boxes - whole) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of half-open boxes.

    Parameters
    ----------
    a : (N, 4) array, b : (M, 4) array

    Returns
    -------
    (N, M) float64 ndarray (0 where both boxes are empty)
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


def nms(boxes_rc: np.ndarray, scores: np.ndarray, iou_thresh: float, *, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression (the torchvision rule, written in numpy).

    Boxes are visited by decreasing score; a box is dropped when its IoU with
    an already kept box is strictly greater than ``iou_thresh``.  Equal scores
    are ordered by decreasing ``tiebreak`` (if given), then by index, so the
    result is deterministic.

    Parameters
    ----------
    boxes_rc : (N, 4) array
    scores : (N,) array
    iou_thresh : float
    tiebreak : (N,) array, optional

    Returns
    -------
    keep : (K,) int64 ndarray
        Indices of kept boxes, in decreasing score order.
    """
    boxes = np.asarray(boxes_rc, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    keys = [np.arange(n)]
    if tiebreak is not None:
        keys.append(-np.asarray(tiebreak, dtype=np.float64))
    keys.append(-scores)
    order = np.lexsort(keys)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    # Work in blocks of the IoU matrix so memory stays O(block * N).
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        ious = box_iou(boxes[i : i + 1], boxes)[0]
        suppressed |= ious > iou_thresh
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
        Bbox-local masks (as :class:`napari_sam.amg.MaskRecord`).
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


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)`` in steps of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _resolve_axis(shape: tuple[int, ...], channel_axis: int | None) -> int | None:
    """Index of the channel axis (None for 2D); ``(H, W, 3)`` with None is RGB, as in normalize."""
    if channel_axis is None:
        if len(shape) == 2:
            return None
        if len(shape) == 3 and shape[2] == 3:
            return 2
        raise ValueError(
            f"image has shape {shape}; expected (H, W) grayscale or (H, W, 3) RGB when "
            "channel_axis is None. Pass channel_axis= for other multi-channel images."
        )
    if len(shape) != 3:
        raise ValueError(f"image with a channel axis must be 3D, got shape {shape}")
    if not -3 <= int(channel_axis) < 3:
        raise ValueError(f"channel_axis={channel_axis} is out of range for a 3D image")
    return int(channel_axis) % 3


def spatial_shape(image: Any, channel_axis: int | None) -> tuple[int, int]:
    """``(H, W)`` of a 2D image: grayscale, RGB ``(H, W, 3)`` or with a channel axis."""
    shape = tuple(int(s) for s in np.shape(image))
    ax = _resolve_axis(shape, channel_axis)
    rest = [s for i, s in enumerate(shape) if i != ax]
    return rest[0], rest[1]


def crop_image(image: Any, box: Sequence[int], channel_axis: int | None) -> Any:
    """``image[r0:r1, c0:c1]`` (all channels) of a numpy, dask or zarr image; no copy is forced."""
    r0, c0, r1, c1 = (int(v) for v in box)
    spatial = [slice(r0, r1), slice(c0, c1)]
    ax = _resolve_axis(tuple(np.shape(image)), channel_axis)
    if ax is None:
        return image[tuple(spatial)]
    index: list[slice] = []
    for i in range(3):
        index.append(slice(None) if i == ax else spatial.pop(0))
    return image[tuple(index)]


def global_contrast_limits(image: Any, channel_axis: int | None, channels: Sequence[int] | None) -> Any:
    """Contrast limits estimated once on (a subsample of) the whole image.

    Returns None for ``uint8`` RGB without a channel selection: it is used as
    is, exactly like :func:`napari_sam.normalize.to_rgb_uint8` does.
    """
    from napari_sam.normalize import estimate_contrast_limits

    shape = tuple(int(s) for s in np.shape(image))
    dtype = getattr(image, "dtype", None)
    dtype = np.asarray(image).dtype if dtype is None else np.dtype(dtype)
    ax = _resolve_axis(shape, channel_axis)
    if channels is None and dtype == np.uint8 and ax is not None and shape[ax] == 3:
        return None
    return estimate_contrast_limits(image, channel_axis=channel_axis, channels=channels)


def postprocess_small_regions(records: list[Any], min_area: int, nms_thresh: float) -> list[Any]:
    """Fill small holes, then remove small islands of every record, then NMS preferring unchanged masks.

    Parameters
    ----------
    records : list of napari_sam.amg.MaskRecord
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
