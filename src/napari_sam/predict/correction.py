"""Corrections: a prompt that refines a result already shown, passed in explicitly.

A correction adds points to a prompt whose result the user is looking at.
The caller says which result that is with a :class:`PreviousResult` (from
:meth:`PromptResult.previous <napari_sam.predict.pipeline.PromptResult.previous>`);
nothing is matched or remembered by the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.predict.zoom import pixels

__all__ = ["PreviousResult", "extends_prompt", "localise_correction"]


@dataclass(frozen=True)
class PreviousResult:
    """The result a correction corrects: one output of an earlier prompt.

    Attributes
    ----------
    mask : (H, W) bool array
        The mask shown.
    logits : (m, m) float32 array
        Its low-res logits (the correction's mask prompt).
    points_rc : (N, 2) float array or None
        The earlier prompt's points.
    point_labels : (N,) array or None
        Their labels.
    window_logits : ((r0, c0, r1, c1), (h, w) float32 array) or None
        When the mask came from a zoomed window: that window and the logits at
        its image pixels (finer than ``logits``); None otherwise.
    """

    mask: np.ndarray
    logits: np.ndarray
    points_rc: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    window_logits: tuple[tuple[int, int, int, int], np.ndarray] | None = None

    def __post_init__(self) -> None:
        mask, logits = np.asarray(self.mask), np.asarray(self.logits, np.float32)
        if mask.ndim != 2:
            raise ValueError(f"PreviousResult.mask must be an (H, W) mask; got shape {mask.shape}.")
        logits = logits[0] if logits.ndim == 3 and logits.shape[0] == 1 else logits
        if logits.ndim != 2:
            raise ValueError(f"PreviousResult.logits must be (m, m) low-res logits; got shape {logits.shape}.")
        object.__setattr__(self, "mask", mask.astype(bool, copy=False))
        object.__setattr__(self, "logits", logits)
        if (self.points_rc is None) != (self.point_labels is None):
            raise ValueError("PreviousResult needs both points_rc and point_labels, or neither.")
        if self.points_rc is not None:
            object.__setattr__(self, "points_rc", np.asarray(self.points_rc, float).reshape(-1, 2))
            object.__setattr__(self, "point_labels", np.asarray(self.point_labels).ravel())


def extends_prompt(previous: PreviousResult, points_rc: Any, point_labels: Any) -> bool:
    """Whether ``points_rc``/``point_labels`` are ``previous``'s points and labels plus one more."""
    if points_rc is None or previous.points_rc is None:
        return False
    pts = np.asarray(points_rc, float).reshape(-1, 2)
    lab = np.asarray(point_labels).ravel()
    prev_pts, prev_lab = previous.points_rc, previous.point_labels
    return len(pts) == len(prev_pts) + 1 and np.array_equal(pts[:-1], prev_pts) and np.array_equal(lab[:-1], prev_lab)


def localise_correction(masks: np.ndarray, shown: np.ndarray, point_rc: Any, positive: bool,
                        k: float, c: float) -> np.ndarray:
    """``masks`` inside a disk around the correction's point, ``shown`` outside it.

    The disk's radius is ``k * d + c``, ``d`` being the point's distance to
    ``shown``'s edge: to the mask for a positive point outside it, to the
    background for a negative point inside it (0 when the point is already on
    the side it asks for).  A click fixes the error it is put on, not the
    rest of a mask the user accepted.

    Parameters
    ----------
    masks : (C, H, W) bool array
        The correction's masks.
    shown : (H, W) bool array
        The mask being corrected.
    point_rc : (2,) array-like
        The new point (row, col).
    positive : bool
        Its label.
    k, c : float
        Radius = ``k * d + c`` pixels.

    Returns
    -------
    (C, H, W) bool array
    """
    click = np.asarray(point_rc, float).reshape(2)
    r, col = pixels(click[None], shown.shape)[0]
    region = ~shown if positive else shown
    d = 0.0
    if region[r, col]:  # the point is on the wrong side of the shown mask's edge
        rows, cols = np.nonzero(shown if positive else ~shown)
        d = float(np.sqrt(((rows - click[0]) ** 2 + (cols - click[1]) ** 2).min())) if rows.size else math.inf
    radius = k * d + c
    yy, xx = np.ogrid[: shown.shape[0], : shown.shape[1]]
    disk = (yy - click[0]) ** 2 + (xx - click[1]) ** 2 <= radius**2
    return np.where(disk[None], masks, shown[None])
