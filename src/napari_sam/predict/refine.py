"""Rules that re-prompt a click from its own first result: box refinement, recentring, small masks.

Each rule is a pure decision on arrays; :class:`~napari_sam.predict.pipeline.PromptPipeline`
runs the prompts they ask for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from napari_sam.predict.zoom import interior_point, pixels

__all__ = ["accept_recentred", "is_small_mask", "recentre_point", "refinement_box", "window_contains"]

#: a click nearer than this (px) to its object's interior point is not moved
RECENTRE_MIN_SHIFT = 1.5


def refinement_box(extent: Sequence[float]) -> np.ndarray:
    """The box prompt ``(r0, c0, r1, c1)`` (first and last row and column, as SAM's training boxes)
    of an object extent ``(r0, c0, r1, c1)`` whose ``r1``/``c1`` are exclusive."""
    r0, c0, r1, c1 = (float(v) for v in extent)
    return np.array([r0, c0, r1 - 1.0, c1 - 1.0])


def window_contains(win: Sequence[int] | None, extent: Sequence[float]) -> bool:
    """Whether the extent ``(r0, c0, r1, c1)`` lies inside window ``win`` (False for no window)."""
    if win is None:
        return False
    r0, c0, r1, c1 = extent
    return not (r0 < win[0] or c0 < win[1] or r1 > win[2] or c1 > win[3])


def recentre_point(object_mask: np.ndarray, click_rc: Sequence[float]) -> np.ndarray | None:
    """The object's most interior point (:func:`~napari_sam.predict.zoom.interior_point`), or None
    when the object is empty or the click is already within ``RECENTRE_MIN_SHIFT`` px of it."""
    inner = interior_point(object_mask)
    if inner is None or np.hypot(*(inner - np.asarray(click_rc, float))) < RECENTRE_MIN_SHIFT:
        return None
    return inner


def accept_recentred(click_rc: Sequence[float], first_scores: np.ndarray, again_masks: np.ndarray,
                     again_scores: np.ndarray) -> bool:
    """Whether a click's re-run from the interior replaces its first result: the user's click must
    stay inside the re-run's best mask, then the model's own quality estimate decides (at least as
    high as the first result's)."""
    best = again_masks[int(np.argmax(again_scores))]
    r, c = pixels(np.asarray(click_rc, float).reshape(1, 2), best.shape)[0]
    return bool(best[r, c]) and float(np.max(again_scores)) >= float(np.max(first_scores))


def is_small_mask(mask: np.ndarray, diameter_px: float) -> bool:
    """Whether ``mask`` is non-empty and smaller (by area) than a disk of ``diameter_px`` pixels."""
    area = int(np.count_nonzero(mask))
    return 0 < area < math.pi * diameter_px**2 / 4
