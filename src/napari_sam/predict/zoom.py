"""Where to zoom: the object a prompt is about and the window around it (pure geometry).

SAM resizes the whole image so that its longest side is the model's input
size.  Small objects then cover few encoder tokens, and a small model (the
built-in one sees 256 x 256 px) segments them poorly.  The prompt pipeline
(:class:`~napari_sam.predict.pipeline.PromptPipeline`) prompts as usual, then
encodes a window around the object (``context`` times its size, at least
``min_side`` px) and prompts again there.  This module decides which object
and which window; :mod:`napari_sam.predict.window` runs the window pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["clicked_part", "interior_point", "object_extent", "pixels", "positive_points", "zoom_window"]


def zoom_window(
    extent_rc: Sequence[float],
    image_shape: Sequence[int],
    *,
    context: float = 8.0,
    min_side: int = 96,
    min_zoom: float = 1.25,
) -> tuple[int, int, int, int] | None:
    """The window to re-encode around an object, or None when zooming gains little.

    Parameters
    ----------
    extent_rc : (r0, c0, r1, c1)
        Bounding box of the object (pixels, ``r1``/``c1`` exclusive or not).
    image_shape : (H, W)
    context : float
        Window side as a multiple of the object's larger side.
    min_side : int
        Smallest window side (caps the magnification for tiny objects).
    min_zoom : float
        No window (None) when ``max(H, W) / side`` is below this.

    Returns
    -------
    (r0, c0, r1, c1) int, inside the image, or None.

    Examples
    --------
    >>> zoom_window((50, 60, 60, 70), (256, 256), context=4, min_side=32)
    (35, 45, 75, 85)
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    r0, c0, r1, c1 = (float(v) for v in extent_rc)
    size = max(r1 - r0, c1 - c0, 1.0)
    side = max(float(min_side), context * size)
    if max(h, w) / side < min_zoom:
        return None
    side_i = int(math.ceil(side))
    wh, ww = min(h, side_i), min(w, side_i)
    top = int(round((r0 + r1) / 2 - wh / 2))
    left = int(round((c0 + c1) / 2 - ww / 2))
    top = min(max(top, 0), h - wh)
    left = min(max(left, 0), w - ww)
    return top, left, top + wh, left + ww


def pixels(points_rc: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(N, 2)`` int indices of the pixels under ``(N, 2)`` (row, col) points, clipped to ``shape``."""
    return np.clip(np.rint(points_rc).astype(int), 0, np.array(shape[:2]) - 1)


def positive_points(points_rc: Any, point_labels: Any) -> np.ndarray:
    """The ``(K, 2)`` float points whose label is positive (``(0, 2)`` when there are none or no points)."""
    if points_rc is None:
        return np.zeros((0, 2))
    return np.asarray(points_rc, float).reshape(-1, 2)[np.asarray(point_labels).ravel() > 0]


def clicked_part(mask: np.ndarray, points_rc: Any, point_labels: Any) -> np.ndarray:
    """The connected parts of ``mask`` under the positive clicks (else the part nearest the first).

    A whole-view mask of a small object often carries far-away fragments; its
    full bounding box would make the zoom window needlessly large.  Without
    positive clicks, or with a mask of one part, ``mask`` itself is returned.

    Parameters
    ----------
    mask : (H, W) bool array
    points_rc : (N, 2) array-like or None
    point_labels : (N,) array-like or None

    Returns
    -------
    (H, W) bool array
    """
    if points_rc is None or not mask.any():
        return mask
    pos = positive_points(points_rc, point_labels)
    if not len(pos):
        return mask
    parts, n = ndi.label(mask)
    if n <= 1:
        return mask
    rc = pixels(pos, mask.shape)
    hit = np.unique(parts[rc[:, 0], rc[:, 1]])
    hit = hit[hit > 0]
    if not hit.size:  # the click fell just outside the mask: the nearest part
        rows, cols = np.nonzero(mask)
        k = int(np.argmin((rows - pos[0, 0]) ** 2 + (cols - pos[0, 1]) ** 2))
        hit = np.array([parts[rows[k], cols[k]]])
    return np.isin(parts, hit)


def object_extent(
    points_rc: Any, point_labels: Any, box_rc: Any, object_mask: np.ndarray | None
) -> tuple[float, float, float, float] | None:
    """``(r0, c0, r1, c1)`` (``r1``/``c1`` exclusive) of the prompted object, or None.

    The box prompt if there is one, else the bounding box of ``object_mask``
    (the part of a mask the prompt is about, e.g. :func:`clicked_part`); the
    positive clicks are always inside.  None when there is neither a box, nor
    a non-empty mask, nor a positive click.
    """
    if box_rc is not None:
        r0, c0, r1, c1 = (float(v) for v in np.asarray(box_rc, float).ravel())
    else:
        rows, cols = (np.array([]), np.array([])) if object_mask is None else np.nonzero(object_mask)
        if rows.size == 0:
            r0 = r1 = c0 = c1 = math.nan
        else:
            r0, c0, r1, c1 = rows.min(), cols.min(), rows.max() + 1.0, cols.max() + 1.0
    pos = positive_points(points_rc, point_labels)
    if len(pos):
        r0, c0 = np.nanmin([r0, pos[:, 0].min()]), np.nanmin([c0, pos[:, 1].min()])
        r1, c1 = np.nanmax([r1, pos[:, 0].max() + 1]), np.nanmax([c1, pos[:, 1].max() + 1])
    if math.isnan(r0):
        return None
    return float(r0), float(c0), float(r1), float(c1)


def interior_point(mask: np.ndarray) -> np.ndarray | None:
    """``(row, col)`` of the pixel of ``mask`` farthest from its background (None if empty).

    The most interior point of an object: where an annotator would click it
    (outside the array counts as background).

    """
    if not mask.any():
        return None
    depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(depth)), depth.shape), float)
