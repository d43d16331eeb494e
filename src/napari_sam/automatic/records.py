"""Mask records: the compact, bbox-local masks automatic generation keeps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ['MaskRecord', 'RawMasks']


@dataclass(frozen=True, eq=False)
class MaskRecord:
    """One automatically generated object.

    Attributes
    ----------
    mask : (r1 - r0, c1 - c0) bool ndarray
        The object inside its bounding box (bbox-local).
    bbox_rc : (r0, c0, r1, c1) ints
        Bounding box in image coordinates, half-open: ``image[r0:r1, c0:c1]``
        is the box, ``r1``/``c1`` are the last row/column + 1.
    area : int
        Number of True pixels.
    predicted_iou : float
        The decoder's IoU prediction.
    stability_score : float
        IoU of the mask thresholded at ``threshold +/- stability_score_offset``.
    point_rc : (row, col) floats
        The grid point that prompted it, in image coordinates.
    crop_box_rc : (r0, c0, r1, c1) ints
        The crop it was found in (half-open, image coordinates).
    """

    mask: np.ndarray
    bbox_rc: tuple[int, int, int, int]
    area: int
    predicted_iou: float
    stability_score: float
    point_rc: tuple[float, float]
    crop_box_rc: tuple[int, int, int, int]


@dataclass
class RawMasks:
    """Output of the expensive phase: every candidate any cheap re-filter may keep.

    Attributes
    ----------
    masks : list of bool ndarrays (bbox-local)
    boxes_rc : (K, 4) int64, half-open image coordinates
    predicted_iou, stability_score : (K,) float32
    points_rc : (K, 2) float64
    crop_index : (K,) int64, index into ``crop_boxes_rc``
    crop_boxes_rc : (M, 4) int64
    image_shape : (H, W)
    min_pred_iou, min_stability_score : floats
        Floors used to keep candidates: thresholds below them cannot be
        re-filtered cheaply (``-inf`` means nothing was dropped).
    """

    masks: list[np.ndarray]
    boxes_rc: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    points_rc: np.ndarray
    crop_index: np.ndarray
    crop_boxes_rc: np.ndarray
    image_shape: tuple[int, int]
    min_pred_iou: float
    min_stability_score: float
    stability_score_offset: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.masks)
