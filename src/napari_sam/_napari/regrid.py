"""Masks made on an image's pixel grid, moved onto a labels layer's grid (scale / translate).

A target Labels layer need not share the image's scale and translate (e.g.
labels at half the resolution, or shifted).  Writing a mask by pixel index
would put the object elsewhere in world space; :func:`mask_to_labels_grid`
resamples it instead (nearest pixel centre).  Rotated, sheared or affine
layers are refused with a message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam._napari.layers import PlaneRef

__all__ = ["mask_to_labels_grid", "same_grid"]


def _plane_transform(layer: Any, axes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    for name in ("rotate", "shear"):
        value = getattr(layer, name, None)
        if value is not None and not np.allclose(np.asarray(value), np.eye(layer.ndim) if name == "rotate"
                                                 else 0):
            raise ValueError(f"layer {layer.name!r} is {name}d: napari-sam writes only into labels that are "
                             "scaled and translated; remove the rotation/shear or use a new labels layer.")
    affine = getattr(layer, "affine", None)
    if affine is not None and not np.allclose(np.asarray(affine.affine_matrix), np.eye(layer.ndim + 1)):
        raise ValueError(f"layer {layer.name!r} has an affine transform: napari-sam writes only into labels "
                         "that are scaled and translated; use a new labels layer.")
    scale = np.asarray(layer.scale, float)[list(axes)]
    translate = np.asarray(layer.translate, float)[list(axes)]
    return scale, translate


def same_grid(image_layer: Any, ref: PlaneRef, labels_layer: Any, lref: PlaneRef) -> bool:
    """Whether the two planes have the same pixel spacing and origin in world space (scale and translate)."""
    si, ti = _plane_transform(image_layer, ref.axes)
    sl, tl = _plane_transform(labels_layer, lref.axes)
    return bool(np.allclose(si, sl) and np.allclose(ti, tl))


def mask_to_labels_grid(mask: np.ndarray, image_layer: Any, ref: PlaneRef, labels_layer: Any,
                        lref: PlaneRef) -> np.ndarray:
    """``mask`` (image plane ``ref``'s pixels) resampled onto labels plane ``lref`` (nearest pixel centre).

    Returns a bool array of ``lref.shape``; parts outside the labels layer are dropped.
    """
    si, ti = _plane_transform(image_layer, ref.axes)
    sl, tl = _plane_transform(labels_layer, lref.axes)
    out = np.zeros(lref.shape, bool)
    src = []
    for k in range(2):
        world = np.arange(lref.shape[k]) * sl[k] + tl[k]  # labels pixel centres in world space
        src.append(np.round((world - ti[k]) / si[k]).astype(np.intp))
    rows_ok = (src[0] >= 0) & (src[0] < ref.shape[0])
    cols_ok = (src[1] >= 0) & (src[1] < ref.shape[1])
    if rows_ok.any() and cols_ok.any():
        out[np.ix_(rows_ok, cols_ok)] = mask[np.ix_(src[0][rows_ok], src[1][cols_ok])]
    return out
