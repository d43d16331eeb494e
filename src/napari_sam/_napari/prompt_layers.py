"""The layers of an interactive session: prompt points, prompt shapes, preview, target labels.

Pure napari model code (works with ``ViewerModel``); the Qt widget only calls
these functions.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

from napari_sam._napari.layers import PlaneRef

__all__ = [
    "POSITIVE_COLOR",
    "NEGATIVE_COLOR",
    "make_points_layer",
    "make_shapes_layer",
    "make_preview_layer",
    "make_labels_layer",
    "toggle_polarity",
    "set_polarity",
    "show_preview",
    "clear_prompts",
]

POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"
#: (min, max) size of a prompt dot on screen, in screen pixels, whatever the image size and zoom
POINT_SCREEN_PX = (7, 12)
#: Above this many voxels a new labels layer is a zarr array on disk instead of numpy.
ZARR_LABELS_ABOVE = 512 * 1024 * 1024


def _spatial(image_layer: Any) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    data = image_layer.data[0] if image_layer.multiscale else image_layer.data
    shape = tuple(int(s) for s in data.shape)
    if image_layer.rgb:
        shape = shape[:-1]
    return shape, np.asarray(image_layer.scale), np.asarray(image_layer.translate)


def make_points_layer(viewer: Any, image_layer: Any, *, name: str = "SAM points") -> Any:
    """A Points layer for prompts: feature ``prompt`` (positive/negative), lime/red faces.

    Dots are drawn :data:`POINT_SCREEN_PX` screen pixels across, so they never
    hide the object clicked on a large image.
    """
    shape, scale, translate = _spatial(image_layer)
    import pandas as pd  # imported here: a dock opens without it

    features = pd.DataFrame({"prompt": pd.Categorical([], categories=["negative", "positive"])})
    layer = viewer.add_points(
        np.zeros((0, len(shape))), ndim=len(shape), name=name, features=features,
        face_color="prompt", face_color_cycle=[NEGATIVE_COLOR, POSITIVE_COLOR],
        border_color="white", size=max(3.0, min(shape[-2:]) / 60) * float(scale[-1]),
        canvas_size_limits=POINT_SCREEN_PX, scale=scale, translate=translate,
    )
    layer.feature_defaults["prompt"] = "positive"
    layer.mode = "add"
    return layer


def make_shapes_layer(viewer: Any, image_layer: Any, *, name: str = "SAM boxes") -> Any:
    """A Shapes layer for box / polygon / ellipse prompts (transparent faces)."""
    shape, scale, translate = _spatial(image_layer)
    layer = viewer.add_shapes(
        ndim=len(shape), name=name, face_color="transparent", edge_color="yellow",
        edge_width=max(1.0, min(shape[-2:]) / 200), scale=scale, translate=translate,
    )
    return layer


def make_preview_layer(viewer: Any, image_layer: Any, *, name: str = "SAM preview") -> Any:
    """A 2D Labels layer showing the preview on the displayed plane (last two axes' transform)."""
    shape, scale, translate = _spatial(image_layer)
    layer = viewer.add_labels(  # 16-bit labels are drawn without napari's per-pixel recolouring
        np.zeros(shape[-2:], dtype=np.uint16), name=name, opacity=0.5,
        scale=scale[-2:], translate=translate[-2:],
    )
    layer.editable = False
    return layer


def make_labels_layer(viewer: Any, image_layer: Any, *, name: str = "SAM labels") -> Any:
    """A new empty target Labels layer with the image's shape and transform.

    numpy below :data:`ZARR_LABELS_ABOVE` voxels, else a zarr array in a
    temporary folder (chunked per plane, written slice by slice).
    """
    shape, scale, translate = _spatial(image_layer)
    if int(np.prod(shape)) > ZARR_LABELS_ABOVE:
        import zarr

        path = tempfile.mkdtemp(prefix="napari-sam-labels-")
        data = zarr.create_array(store=path, shape=shape, dtype="uint32", fill_value=0,
                                 chunks=(1,) * (len(shape) - 2) + tuple(min(s, 1024) for s in shape[-2:]))
    else:  # 16 bits are drawn without napari's per-pixel recolouring; commits widen the dtype when needed
        data = np.zeros(shape, dtype=np.uint16)
    return viewer.add_labels(data, name=name, scale=scale, translate=translate)


def toggle_polarity(points_layer: Any) -> str:
    """Switch the polarity of the points added next; returns it (``"positive"``/``"negative"``).

    Existing points keep theirs (select a point and use :func:`set_polarity` to change it).
    """
    new = "negative" if points_layer.feature_defaults["prompt"].iloc[0] == "positive" else "positive"
    points_layer.feature_defaults["prompt"] = new
    return new


def set_polarity(points_layer: Any, indices: Any, polarity: str) -> None:
    """Set the polarity of existing points ``indices`` (and refresh their colours)."""
    if polarity not in ("positive", "negative"):
        raise ValueError(f"polarity must be 'positive' or 'negative', got {polarity!r}")
    default = points_layer.feature_defaults["prompt"].iloc[0]
    feats = points_layer.features.copy()
    feats.loc[list(indices), "prompt"] = polarity
    points_layer.features = feats  # napari resets the defaults from the data here
    points_layer.feature_defaults["prompt"] = default
    points_layer.refresh_colors()


def show_preview(preview_layer: Any, image_layer: Any, ref: PlaneRef | None, label_image: np.ndarray | None) -> None:
    """Put the preview ``(H, W)`` label image (or nothing) into the preview layer."""
    if ref is None or label_image is None:
        if preview_layer.data.any():
            preview_layer.data = np.zeros_like(preview_layer.data)
        return
    scale = np.asarray(image_layer.scale)[list(ref.axes)]
    translate = np.asarray(image_layer.translate)[list(ref.axes)]
    preview_layer.scale = scale
    preview_layer.translate = translate
    preview_layer.data = label_image.astype(np.uint16) if label_image.max(initial=0) <= 65535 else label_image


def clear_prompts(points_layer: Any | None, shapes_layer: Any | None) -> None:
    """Remove every prompt point and shape."""
    if points_layer is not None and len(points_layer.data):
        points_layer.data = np.zeros((0, points_layer.ndim))
    if shapes_layer is not None and shapes_layer.nshapes:
        shapes_layer.selected_data = set(range(shapes_layer.nshapes))
        shapes_layer.remove_selected()
