"""Cutting a mask that spans touching objects along the valley between them.

:func:`split_touching` cuts one mask; :func:`split_masks` cuts a prompt's
masks, reading the image only around each mask.  Both are pure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from napari_sam.predict.edges import filter_margin, grey_around
from napari_sam.predict.zoom import pixels

__all__ = ["SPLIT_DISTANCE_WEIGHT", "SPLIT_SIGMA", "split_masks", "split_touching"]

#: Gaussian sigma (px) of the intensity :func:`split_touching` reads
SPLIT_SIGMA = 1.0
#: weight of the mask's normalised distance transform in :func:`split_touching`'s relief
SPLIT_DISTANCE_WEIGHT = 2.0


#: pixels around a mask's box that :func:`split_touching` reads (its background band, + 1)
SPLIT_BAND_PX = 3


def split_touching(
    mask: np.ndarray,
    grey: np.ndarray,
    points_rc: Any = None,
    *,
    box_rc: Any = None,
    h: float = 0.2,
    distance_weight: float = SPLIT_DISTANCE_WEIGHT,
    sigma: float = SPLIT_SIGMA,
) -> np.ndarray:
    """The part of ``mask`` under the clicks, when the mask spans touching objects.

    A click on one of several touching nuclei often gets a mask that covers
    its neighbour too.  This cuts such a mask along the valley between the
    objects and keeps the parts that hold a click:

    1. relief = the image's intensity (Gaussian, ``sigma``), scaled so that
       the band just outside the mask is 0 and the mask's mean is 1 (bright
       or dark objects alike), plus ``distance_weight`` times the mask's
       distance transform over its maximum (necks between round objects);
    2. one marker per regional maximum of the relief at least ``h`` high
       (:func:`skimage.morphology.h_maxima`); with one marker, no cut;
    3. a watershed of the inverted relief from the markers inside the mask;
       the regions under ``points_rc`` are returned (for a box prompt,
       ``box_rc``: the regions at least half inside the box).

    Only masks of filled objects are cut: the mask's core (deeper than half
    its maximal depth) must differ from the background band at least as
    much as its rim (depth <= 1.5 px) does, and in the same direction.  A
    cell with a bright membrane (rim brighter than core and background) is
    returned as it is.

    Parameters
    ----------
    mask : (H, W) bool array
    grey : (H, W) float array
        The image (one channel) on the same pixels.
    points_rc : (N, 2) array-like, optional
        The positive clicks (row, col).  Clicks outside the mask are ignored;
        if none is inside, ``mask`` is returned unchanged.
    box_rc : (4,) array-like, optional
        Instead of clicks, the box prompt ``(r0, c0, r1, c1)`` (first and last
        row and column, inclusive): the regions with at least half their
        pixels inside it are kept (all of ``mask`` if none is).  Give
        exactly one of ``points_rc`` and ``box_rc``.
    h : float
        Least height of a marker, in units of the object's contrast (> 0).
    distance_weight : float
        Weight of the distance term (>= 0).
    sigma : float
        Smoothing of ``grey`` in pixels (>= 0).

    Returns
    -------
    (H, W) bool array (a new array).
    """
    mask = np.asarray(mask, bool)
    grey = np.asarray(grey, np.float32)
    if mask.ndim != 2 or grey.shape != mask.shape:
        raise ValueError(f"mask and grey must be (H, W) arrays of one shape; got {mask.shape} and {grey.shape}.")
    if not (h > 0 and distance_weight >= 0 and sigma >= 0):
        raise ValueError(f"split_touching needs h > 0, distance_weight >= 0 and sigma >= 0; got {h}, {distance_weight}, {sigma}.")
    if (points_rc is None) == (box_rc is None):
        raise ValueError("split_touching needs either points_rc (clicks) or box_rc (a box prompt), not both or neither.")
    if box_rc is not None:  # checked before any early return: a bad box fails on every mask
        box = np.asarray(box_rc, float).ravel()
        if box.shape != (4,) or not np.isfinite(box).all():
            raise ValueError(f"box_rc must be 4 finite numbers (r0, c0, r1, c1); got {box_rc!r}.")
    out = mask.copy()
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return out
    if points_rc is not None:
        pts = pixels(np.asarray(points_rc, float).reshape(-1, 2), mask.shape)
        pts = pts[mask[pts[:, 0], pts[:, 1]]]
        if not len(pts):
            return out
    # the mask's box, 3 px wider for the background band, and the filter's margin for the smoothing
    b = SPLIT_BAND_PX
    r0, r1 = max(int(rows.min()) - b, 0), min(int(rows.max()) + 1 + b, mask.shape[0])
    c0, c1 = max(int(cols.min()) - b, 0), min(int(cols.max()) + 1 + b, mask.shape[1])
    m = filter_margin(sigma)
    a0, b0, a1, b1 = max(r0 - m, 0), max(c0 - m, 0), min(r1 + m, mask.shape[0]), min(c1 + m, mask.shape[1])
    smooth = ndi.gaussian_filter(grey[a0:a1, b0:b1], sigma, mode="nearest") if sigma > 0 else grey[a0:a1, b0:b1]
    g = smooth[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
    mc = mask[r0:r1, c0:c1]
    depth = ndi.distance_transform_edt(np.pad(mc, 1))[1:-1, 1:-1]
    band = ndi.binary_dilation(mc, iterations=2) & ~mc
    background = float(g[band].mean()) if band.any() else float(g[~mc].mean()) if (~mc).any() else 0.0
    core = float(g[mc & (depth > depth.max() / 2)].mean())
    rim = float(g[mc & (depth <= 1.5)].mean())
    if core == rim or (core - rim) * (rim - background) < 0:  # not a filled object (e.g. a membrane)
        return out
    contrast = float(g[mc].mean()) - background
    relief = (g - background) / max(abs(contrast), 1e-3) * (1.0 if contrast >= 0 else -1.0)
    relief = relief + distance_weight * depth / depth.max()
    relief = np.where(mc, relief, relief[mc].min() - 1.0)
    markers, n = ndi.label(h_maxima(relief, h).astype(bool) & mc)
    if n <= 1:
        return out
    regions = watershed(-relief, markers, mask=mc)
    if points_rc is not None:
        keep = np.unique(regions[pts[:, 0] - r0, pts[:, 1] - c0])
        keep = keep[keep > 0]
    else:  # regions at least half inside the box (pixel centres within it)
        rr, cc = np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :]
        inside = (rr >= box[0]) & (rr <= box[2]) & (cc >= box[1]) & (cc <= box[3])
        total = np.bincount(regions.ravel(), minlength=n + 1)
        within = np.bincount(regions[inside], minlength=n + 1)
        keep = np.nonzero((within * 2 >= total) & (total > 0))[0]
        keep = keep[keep > 0]
    if not keep.size:
        return out
    out[r0:r1, c0:c1] = np.isin(regions, keep)
    return out


def split_masks(masks: np.ndarray, rgb: np.ndarray, h: float, *, points_rc: Any = None,
                point_labels: Any = None, box_rc: Any = None) -> np.ndarray:
    """Each of ``masks`` cut by :func:`split_touching` with marker height ``h``.

    With clicks (``points_rc``, ``point_labels``): the parts under the positive
    clicks (``masks`` unchanged without any); with ``box_rc`` instead: the parts
    at least half inside the box.  The grey image (channel mean of ``rgb``) is
    read only around each mask (its box, band and smoothing margin), which gives
    the same cut as on the whole image.

    Parameters
    ----------
    masks : (C, H, W) bool array
        Not modified.
    rgb : (H, W, 3) uint8
    h : float
        Marker height (> 0).
    points_rc, point_labels, box_rc
        The prompt, in image coordinates: clicks, or a box.

    Returns
    -------
    (C, H, W) bool array
    """
    pts = box = None
    if box_rc is not None:
        box = np.asarray(box_rc, float).ravel()
    else:
        pts = np.asarray(points_rc, float).reshape(-1, 2)
        pts = pts[np.asarray(point_labels).ravel() > 0]
        if not len(pts):
            return masks
    masks = masks.copy()
    for c in range(len(masks)):
        rows, cols = np.nonzero(masks[c])
        if not rows.size:
            continue
        # all that split_touching reads: the mask's box, its band and the smoothing's margin
        (r0, c0, r1, c1), grey = grey_around(rgb, int(rows.min()), int(cols.min()), int(rows.max()) + 1,
                                             int(cols.max()) + 1, SPLIT_BAND_PX + filter_margin(SPLIT_SIGMA))
        if box is None:
            cut = split_touching(masks[c, r0:r1, c0:c1], grey, pts - (r0, c0), h=h)
        else:
            cut = split_touching(masks[c, r0:r1, c0:c1], grey, box_rc=box - (r0, c0, r0, c0), h=h)
        masks[c, r0:r1, c0:c1] = cut
    return masks
