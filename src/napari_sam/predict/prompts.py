"""Validation of SAM prompts given in (row, col) pixel coordinates.

Used by :class:`napari_sam.predict.predictor.Predictor`: every user-facing prompt check
lives here, so that each error message says what to change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def check_prompts(
    points_rc: Any,
    point_labels: Any,
    boxes_rc: Any,
    mask_input: Any,
    *,
    image_shape: tuple[int, int],
    mask_input_size: tuple[int, int],
    allow_padding: bool,
    single: bool,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate batched prompts; return float64 points (B,N,2), int labels (B,N),
    float64 boxes (B,4), float32 masks (B,1,m,m) (each or None).

    ``single`` words the messages for :meth:`Predictor.predict` (no batch axis).
    """
    pre = "" if single else "B, "
    box_name = "box_rc" if single else "boxes_rc"
    height, width = image_shape
    shape = f"the image of shape ({height}, {width})"
    point_where = (
        f"{shape}: point rows must lie in [-0.5, {height - 0.5}] and columns in "
        f"[-0.5, {width - 0.5}] (row, col order)"
    )
    box_where = f"{shape}: box rows must lie in [-0.5, {height}] and columns in [-0.5, {width}]"
    sizes = {}
    points = labels = boxes = masks = None
    if (points_rc is None) != (point_labels is None):
        raise ValueError(
            "points_rc and point_labels go together: give one label per point "
            "(1 = foreground, 0 = background)."
        )
    if points_rc is not None:
        points = as_numpy(points_rc).astype(np.float64)
        labels_raw = as_numpy(point_labels)
        if points.ndim != 3 or points.shape[-1] != 2:
            shown = points.shape[1:] if single else points.shape
            raise ValueError(f"points_rc must have shape ({pre}N, 2) as (row, col), got {shown}.")
        if labels_raw.shape != points.shape[:2]:
            shown = labels_raw.shape[1:] if single and labels_raw.ndim else labels_raw.shape
            raise ValueError(
                f"got {points.shape[1]} points but point_labels has shape {shown}; "
                f"give exactly one label per point, shape ({pre}N,)."
            )
        allowed = (-1, 0, 1) if allow_padding else (0, 1)
        if labels_raw.size and not np.isin(labels_raw, allowed).all():
            raise ValueError(
                f"point_labels must be in {set(allowed)} (1 = foreground, 0 = background"
                + (", -1 = padding)" if allow_padding else ")")
                + f", got {np.unique(labels_raw).tolist()}."
            )
        labels = labels_raw.astype(np.int64)
        if not np.isfinite(points).all():
            raise ValueError("points_rc contains NaN or infinite coordinates.")
        real = points[labels >= 0]
        outside = (real < -0.5).any(axis=1) | (real > [height - 0.5, width - 0.5]).any(axis=1)
        if outside.any():
            raise ValueError(f"point {real[outside][0].tolist()} is outside {point_where}.")
        if points.shape[1] == 0:
            points = labels = None
        else:
            sizes["points_rc"] = points.shape[0]
    if boxes_rc is not None:
        boxes = as_numpy(boxes_rc).astype(np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            shown = boxes.shape[1:] if single else boxes.shape
            raise ValueError(f"{box_name} must have shape ({pre}4) as (r0, c0, r1, c1), got {shown}.")
        if not np.isfinite(boxes).all():
            raise ValueError(f"{box_name} contains NaN or infinite coordinates.")
        bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bad.any():
            raise ValueError(
                f"box {boxes[bad][0].tolist()} has r1 < r0 or c1 < c0; boxes are (r0, c0, r1, c1) "
                "with the top-left corner first."
            )
        corners = boxes.reshape(-1, 2)
        if ((corners < -0.5) | (corners > [height, width])).any():
            raise ValueError(f"a box corner is outside {box_where}.")
        sizes[box_name] = boxes.shape[0]
    if mask_input is not None:
        masks = as_numpy(mask_input).astype(np.float32)
        expected = (1, *mask_input_size)
        if masks.ndim != 4 or masks.shape[1:] != expected:
            shown = masks.shape[1:] if single else masks.shape
            raise ValueError(
                f"mask_input must have shape ({pre}{', '.join(map(str, expected))}) (low-res "
                f"logits of an earlier prediction), got {shown}."
            )
        if not np.isfinite(masks).all():
            raise ValueError("mask_input contains NaN or infinite values.")
        sizes["mask_input"] = masks.shape[0]
    if not sizes:
        raise ValueError(
            "no prompt given: pass points_rc with point_labels, "
            f"{box_name}, and/or mask_input."
        )
    if len(set(sizes.values())) > 1:
        raise ValueError(f"prompts disagree on the batch size B: {sizes}.")
    if 0 in sizes.values():
        raise ValueError("the batch of prompts is empty (B = 0).")
    return points, labels, boxes, masks
