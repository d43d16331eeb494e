"""Propagate one object through a stack, slice by slice, with SAM prompts.

Pure numpy + a predictor-like object (no napari): the loop is headless and
testable.  From the seed mask on slice ``start`` it walks up and down the
stack; on each new slice the prompts come from the previous slice's mask:

- a box: the previous mask's bounding box, enlarged by ``box_margin`` pixels,
- a positive point at the previous mask's innermost pixel (max distance transform),
- a mask prompt: the previous slice's low-resolution logits (or, for the seed,
  the seed mask converted to logits).

A direction stops when the predicted object vanishes (fewer than ``min_area``
pixels), when its IoU with the previous slice's mask falls below
``iou_threshold``, or at the end of the stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from napari_sam.progress import Cancelled, CancelToken, ProgressCallback, check_cancelled, report

__all__ = ["propagate_object", "mask_iou", "mask_prompt_logits", "mask_input_side"]

LOW_RES = 256


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 0.0


def mask_prompt_logits(mask: np.ndarray, *, eps: float = 1e-3, size: int = LOW_RES) -> np.ndarray:
    """A ``(1, size, size)`` float32 SAM mask prompt from a ``(H, W)`` bool mask.

    The mask is resized (area-averaged) into SAM's padded low-resolution frame
    (longest side -> ``size``, padding bottom/right) and mapped through the inverse
    sigmoid of the clipped fraction, so inside ~ +6.9 and outside ~ -6.9.
    ``size`` is the model's mask-input side (``Predictor.mask_input_size``):
    256 for the official models, smaller for the built-in one.
    """
    from skimage.transform import resize

    h, w = mask.shape
    scale = size / max(h, w)
    hh, ww = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    frac = resize(mask.astype(np.float32), (hh, ww), order=1, anti_aliasing=True, preserve_range=True)
    prob = np.full((size, size), eps, dtype=np.float64)
    prob[:hh, :ww] = np.clip(frac, eps, 1 - eps)
    return np.log(prob / (1 - prob)).astype(np.float32)[None]


def mask_input_side(predictor: Any) -> int:
    """Side of the predictor's low-resolution mask input (256 when it does not say)."""
    return int(getattr(predictor, "mask_input_size", (LOW_RES, LOW_RES))[0])


def _box(mask: np.ndarray, margin: float) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return np.array([
        max(rows.min() - margin, -0.5), max(cols.min() - margin, -0.5),
        min(rows.max() + margin, h - 0.5), min(cols.max() + margin, w - 0.5),
    ], dtype=float)


def propagate_object(
    seed_mask: np.ndarray,
    start: int,
    n_slices: int,
    *,
    predictor: Any,
    prepare_slice: Callable[[int], None],
    iou_threshold: float = 0.3,
    min_area: int = 10,
    box_margin: float = 2.0,
    max_distance: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
    keep_partial: bool = False,
) -> dict[int, np.ndarray]:
    """Follow the object ``seed_mask`` from slice ``start`` up and down the stack.

    Parameters
    ----------
    seed_mask : numpy.ndarray of bool, shape (H, W)
        The object on slice ``start`` (not modified, not returned).
    start : int
        Index of the seed slice, ``0 <= start < n_slices``.
    n_slices : int
        Number of slices along the propagation axis.
    predictor : Predictor-like
        Has ``predict(points_rc, point_labels, box_rc, mask_input, *, multimask)``.
    prepare_slice : callable(int) -> None
        Makes ``predictor`` hold slice ``z`` (sets the image or a cached embedding).
    iou_threshold : float, keyword-only
        Stop when IoU(previous slice's mask, new mask) falls below this.
    min_area : int, keyword-only
        Stop when the new mask has fewer pixels than this.
    box_margin : float, keyword-only
        Pixels added around the previous mask's bounding box.
    max_distance : int or None, keyword-only
        At most this many slices in each direction (None: to the stack ends).
    progress, cancel
        See :mod:`napari_sam.progress`; cancellation raises ``Cancelled``.
    keep_partial : bool, keyword-only
        On cancel, return the slices accepted so far instead of raising
        (the returned :class:`Propagated` has ``cancelled=True``).

    Returns
    -------
    Propagated (a dict of int -> numpy.ndarray of bool (H, W))
        The accepted masks of the other slices, keyed by slice index.
    """
    seed_mask = np.asarray(seed_mask, dtype=bool)
    if seed_mask.ndim != 2:
        raise ValueError(f"seed_mask must be 2D (H, W), got shape {seed_mask.shape}")
    if not 0 <= start < n_slices:
        raise ValueError(f"start slice {start} is outside the stack of {n_slices} slices")
    if np.count_nonzero(seed_mask) < max(min_area, 1):
        raise ValueError("the seed object is empty (or smaller than min_area) on the start slice")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
    reach = n_slices if max_distance is None else int(max_distance)
    targets = [range(start + 1, min(n_slices, start + 1 + reach)),
               range(start - 1, max(-1, start - 1 - reach), -1)]
    total = sum(len(t) for t in targets)
    out = Propagated()
    report(progress, 0, total, "propagating")
    try:
        _follow(targets, seed_mask, out, predictor, prepare_slice, iou_threshold, min_area, box_margin,
                progress, cancel, total)
    except Cancelled:
        if not keep_partial:
            raise
        out.cancelled = True
        return out
    report(progress, total, total, "propagation done")
    return out


class Propagated(dict):
    """``{slice index: mask}`` of a propagation; ``cancelled`` says it was stopped early."""

    cancelled = False


def _follow(targets, seed_mask, out, predictor, prepare_slice, iou_threshold, min_area, box_margin,
            progress, cancel, total) -> None:
    from napari_sam.predict.zoom import interior_point  # the same point a recentred click uses

    done = 0
    for direction in targets:
        prev = seed_mask
        prev_logits = mask_prompt_logits(seed_mask, size=mask_input_side(predictor))
        for z in direction:
            check_cancelled(cancel)
            prepare_slice(z)
            masks, _scores, logits = predictor.predict(
                interior_point(prev)[None], np.array([1]), _box(prev, box_margin),
                prev_logits, multimask=False,
            )
            new = np.asarray(masks[0], dtype=bool)
            done += 1
            report(progress, done, total, f"propagating: slice {z}")
            if np.count_nonzero(new) < max(min_area, 1) or mask_iou(prev, new) < iou_threshold:
                break
            out[z] = new
            prev, prev_logits = new, np.asarray(logits[:1], dtype=np.float32)
