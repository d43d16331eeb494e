"""Edge snapping: each mask thresholded where its boundary follows the image's edges.

:func:`edge_snap_threshold` picks the logit threshold; :func:`snap_masks`
applies it to a prompt's masks, reading the image gradient only around each
mask.  Both are pure: the image, the logits and the range are arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["EDGE_SNAP_SIGMA", "EDGE_SNAP_STEP", "edge_snap_threshold", "grey_around", "snap_masks"]

#: spacing of the logit thresholds edge snapping tries
EDGE_SNAP_STEP = 0.25
#: Gaussian sigma (px) of the image gradient edge snapping follows
EDGE_SNAP_SIGMA = 1.0


def filter_margin(sigma: float) -> int:
    """Pixels a Gaussian filter of ``sigma`` reads beyond a crop (scipy's default truncation, + 1)."""
    return int(4.0 * sigma + 0.5) + 1


def grey_around(rgb: np.ndarray, r0: int, c0: int, r1: int, c1: int, margin: int):
    """``((a0, b0, a1, b1), grey)``: rows r0:r1, columns c0:c1 grown by ``margin`` (clipped to the
    image) and the grey image (channel mean of ``rgb``, float32) there."""
    h, w = rgb.shape[:2]
    a0, b0, a1, b1 = max(r0 - margin, 0), max(c0 - margin, 0), min(r1 + margin, h), min(c1 + margin, w)
    return (a0, b0, a1, b1), rgb[a0:a1, b0:b1].astype(np.float32).mean(axis=-1)


def gradient_around(rgb: np.ndarray, r0: int, c0: int, r1: int, c1: int, sigma: float = EDGE_SNAP_SIGMA) -> np.ndarray:
    """Gradient magnitude (Gaussian, ``sigma``) of ``rgb``'s grey image on rows r0:r1, columns c0:c1.

    Computed on the crop plus the filter's radius, so it equals the whole image's gradient
    there (``mode="nearest"`` at the image's own edges).
    """
    (a0, b0, _, _), grey = grey_around(rgb, r0, c0, r1, c1, filter_margin(sigma))
    grad = ndi.gaussian_gradient_magnitude(grey, sigma, mode="nearest")
    return grad[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]


def edge_snap_threshold(
    logits: np.ndarray,
    gradient: np.ndarray,
    lo: float,
    hi: float,
    *,
    step: float = EDGE_SNAP_STEP,
) -> float:
    """The logit threshold whose mask boundary follows the image's edges best.

    Of the thresholds ``lo, lo + step, ... <= hi``, the one whose mask
    ``logits > t`` has the largest mean ``gradient`` over its inner boundary
    (mask pixels with a 4-neighbour outside the mask or the array); the
    lowest such threshold on ties.  Thresholds whose mask is empty are not
    candidates; if every mask is empty, ``lo`` is returned.

    Parameters
    ----------
    logits : (H, W) float array
        Mask logits at image resolution.
    gradient : (H, W) float array
        Image gradient magnitude on the same pixels (e.g.
        ``scipy.ndimage.gaussian_gradient_magnitude``).
    lo, hi : float
        Range of thresholds tried (``lo <= hi``).
    step : float
        Spacing of the thresholds.

    Returns
    -------
    float
    """
    logits = np.asarray(logits)
    gradient = np.asarray(gradient)
    if logits.shape != gradient.shape or logits.ndim != 2:
        raise ValueError(
            f"logits and gradient must be (H, W) arrays of one shape; got {logits.shape} and {gradient.shape}."
        )
    base = logits > lo
    if not base.any():
        return float(lo)
    rows, cols = np.nonzero(base)
    # every mask of a higher threshold lies inside the lowest one: work on its box (+1 px for the erosion)
    r0, r1 = max(int(rows.min()) - 1, 0), int(rows.max()) + 2
    c0, c1 = max(int(cols.min()) - 1, 0), int(cols.max()) + 2
    crop, grad = logits[r0:r1, c0:c1], gradient[r0:r1, c0:c1]
    best_t, best_score = float(lo), -np.inf
    for t in np.arange(lo, hi + step * 1e-6, step):
        mask = crop > t
        if not mask.any():
            break
        boundary = mask & ~ndi.binary_erosion(mask, border_value=0)
        score = float(grad[boundary].mean())
        if score > best_score:
            best_t, best_score = float(t), score
    return best_t


def snap_masks(
    masks: np.ndarray,
    pixel_logits: Sequence[tuple[tuple[int, int, int, int], np.ndarray]],
    rgb: np.ndarray,
    lo: float,
    hi: float,
) -> np.ndarray:
    """``masks`` with each non-empty one re-thresholded by :func:`edge_snap_threshold`.

    Parameters
    ----------
    masks : (C, H, W) bool array
        Not modified; empty masks stay empty.
    pixel_logits : C pairs ``((r0, c0, r1, c1), logits)``
        The logits each mask was made from, at image resolution on that part
        of the image (the window of a zoomed mask, the whole image otherwise).
    rgb : (H, W, 3) uint8
        The image; its grey (channel mean) gradient is what the boundary follows.
    lo, hi : float
        Range of thresholds.

    Returns
    -------
    (C, H, W) bool array (a new array).
    """
    masks = masks.copy()
    for c in range(len(masks)):
        if not masks[c].any():  # an empty output stays empty
            continue
        (wr, wc, _, _), full = pixel_logits[c]
        inside = full > lo
        if not inside.any():
            continue
        rows, cols = np.nonzero(inside)  # every candidate mask lies in this box
        r0, r1 = max(int(rows.min()) - 1, 0), min(int(rows.max()) + 2, full.shape[0])
        c0, c1 = max(int(cols.min()) - 1, 0), min(int(cols.max()) + 2, full.shape[1])
        crop = full[r0:r1, c0:c1]
        t = edge_snap_threshold(crop, gradient_around(rgb, wr + r0, wc + c0, wr + r1, wc + c1), lo, hi)
        masks[c] = False
        masks[c, wr + r0 : wr + r1, wc + c0 : wc + c1] = crop > t
    return masks
