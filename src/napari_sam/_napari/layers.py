"""napari layers <-> core prompts: world/data coordinates, the current slice, planes.

Everything here is pure napari model code (no Qt) and works with
``napari.components.ViewerModel``.  A *plane* is the 2D slice of a layer that
the viewer shows: the two displayed axes of the layer, every other axis fixed
at the index given by ``viewer.dims.point`` converted to the layer's data
coordinates (so layer ``scale`` and ``translate`` are honoured).

Coordinates follow the project convention: ``(row, col)`` inside the plane,
where *row* is the first displayed layer axis and *col* the second, in pixel
index units like napari's data coordinates and
:class:`napari_sam.predict.predictor.Predictor`: the centre of pixel ``i`` is ``i``,
the image spans ``[-0.5, H - 0.5]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PlaneRef",
    "plane_ref",
    "get_plane",
    "points_to_prompts",
    "shapes_to_prompts",
    "polygon_mask",
]


@dataclass(frozen=True)
class PlaneRef:
    """Where a 2D plane sits inside a layer's data.

    Attributes
    ----------
    index : tuple of (int or None)
        One entry per layer data axis (channel axis of RGB data excluded):
        the integer slice index for non-displayed axes, ``None`` for the two
        displayed axes.
    axes : tuple of int
        The two displayed layer axes, ``(row_axis, col_axis)``, increasing.
    shape : tuple of int
        ``(H, W)``, the size of the plane.
    """

    index: tuple[int | None, ...]
    axes: tuple[int, int]
    shape: tuple[int, int]

    @property
    def key(self) -> tuple[int, ...]:
        """The integer indices of the non-displayed axes (hashable slice id)."""
        return tuple(i for i in self.index if i is not None)

    def with_index(self, axis: int, value: int) -> PlaneRef:
        """Return a copy with the non-displayed ``axis`` set to ``value``."""
        if axis in self.axes:
            raise ValueError(f"axis {axis} is displayed; choose a non-displayed axis")
        index = list(self.index)
        index[axis] = int(value)
        return PlaneRef(tuple(index), self.axes, self.shape)

    def selection(self) -> tuple[int | slice, ...]:
        """A basic-indexing tuple selecting the plane from the layer data."""
        return tuple(slice(None) if i is None else i for i in self.index)


def _level0(layer: Any) -> Any:
    """The full-resolution array of a (possibly multiscale) image/labels layer."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        return data[0]
    return data


def _data_shape(layer: Any) -> tuple[int, ...]:
    """Shape of the layer's level-0 data without the RGB channel axis."""
    shape = tuple(int(s) for s in _level0(layer).shape)
    if getattr(layer, "rgb", False):
        shape = shape[:-1]
    return shape


def _displayed_layer_axes(layer: Any, dims: Any) -> tuple[int, int]:
    """The two layer axes shown by ``dims`` (sorted), or a ValueError in 3D view."""
    if int(dims.ndisplay) != 2:
        raise ValueError(
            "SAM works on 2D planes: switch the viewer to 2D display (ndisplay=2) first."
        )
    offset = int(dims.ndim) - int(layer.ndim)
    axes = sorted(int(d) - offset for d in dims.displayed)
    if len(axes) != 2 or min(axes) < 0:
        raise ValueError(
            f"layer {layer.name!r} has {layer.ndim} dimensions but the viewer displays "
            f"world axes {tuple(dims.displayed)}; the layer must span both displayed axes."
        )
    return axes[0], axes[1]


def plane_ref(layer: Any, dims: Any) -> PlaneRef:
    """Locate the currently displayed plane of ``layer``.

    Parameters
    ----------
    layer : napari.layers.Image or napari.layers.Labels
        The layer; multiscale data uses level 0; RGB data drops the colour axis.
    dims : napari.components.Dims
        ``viewer.dims``; ``dims.point`` (world coordinates of the current step)
        is converted to the layer's data coordinates with ``layer.world_to_data``.

    Returns
    -------
    PlaneRef
        Integer indices of the non-displayed axes, the displayed axes and the
        plane shape ``(H, W)``.

    Raises
    ------
    ValueError
        When the viewer is in 3D display or the current point lies outside the
        layer along a non-displayed axis.
    """
    axes = _displayed_layer_axes(layer, dims)
    shape = _data_shape(layer)
    data_point = np.asarray(layer.world_to_data(np.asarray(dims.point, dtype=float)), dtype=float)
    index: list[int | None] = []
    for ax in range(len(shape)):
        if ax in axes:
            index.append(None)
            continue
        i = int(np.round(data_point[ax]))
        if not 0 <= i < shape[ax]:
            raise ValueError(
                f"the current slice lies outside layer {layer.name!r} along axis {ax} "
                f"(index {i}, size {shape[ax]}); move the slider onto the layer."
            )
        index.append(i)
    return PlaneRef(tuple(index), axes, (shape[axes[0]], shape[axes[1]]))


def get_plane(layer: Any, ref: PlaneRef) -> np.ndarray:
    """Read the plane ``ref`` of ``layer`` as a numpy array.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` for grayscale/labels data, ``(H, W, C)`` for RGB(A) image
        layers, in the layer's dtype.  Only the plane is read (lazy dask / zarr
        data is never loaded whole).
    """
    data = _level0(layer)
    plane = np.asarray(data[ref.selection()])
    return plane


def _to_image_data(layer: Any, image_layer: Any, dims: Any, coords: np.ndarray) -> np.ndarray:
    """Convert (N, layer.ndim) data coordinates of ``layer`` into ``image_layer`` data coordinates."""
    point = np.asarray(dims.point, dtype=float)
    out = np.empty((len(coords), image_layer.ndim), dtype=float)
    for k, c in enumerate(coords):
        world = point.copy()
        w = np.asarray(layer.data_to_world(np.asarray(c, dtype=float)), dtype=float)
        world[len(world) - len(w):] = w
        out[k] = image_layer.world_to_data(world)
    return out


def _on_plane(coords: np.ndarray, ref: PlaneRef) -> np.ndarray:
    """Boolean (N,) mask of the image-data coordinates lying on the plane ``ref``."""
    keep = np.ones(len(coords), dtype=bool)
    for ax, i in enumerate(ref.index):
        if i is not None:
            keep &= np.abs(coords[:, ax] - i) < 0.5
    return keep


def points_to_prompts(
    points_layer: Any, image_layer: Any, dims: Any, ref: PlaneRef, *, label_feature: str = "prompt"
) -> tuple[np.ndarray, np.ndarray]:
    """Point prompts on the current plane, in the image plane's ``(row, col)``.

    Parameters
    ----------
    points_layer : napari.layers.Points
        Any dimensionality and transform; points off the current plane are
        ignored.  Polarity comes from the feature ``label_feature``: the value
        ``"negative"`` (or False/0) marks a background point, anything else a
        foreground point; without that feature every point is foreground.
    image_layer : napari.layers.Image
        The segmented image (its data coordinates are the target).
    dims : napari.components.Dims
        ``viewer.dims``.
    ref : PlaneRef
        The image plane, from :func:`plane_ref`.

    Returns
    -------
    points_rc : numpy.ndarray of float64, shape (N, 2)
        Pixel index coordinates (the image data coordinates of the points).
    point_labels : numpy.ndarray of int64, shape (N,)
        1 for foreground, 0 for background.
    """
    data = np.asarray(points_layer.data, dtype=float).reshape(-1, points_layer.ndim)
    if len(data) == 0:
        return np.zeros((0, 2)), np.zeros((0,), dtype=np.int64)
    coords = _to_image_data(points_layer, image_layer, dims, data)
    keep = _on_plane(coords, ref)
    if label_feature in points_layer.features:
        raw = points_layer.features[label_feature].to_numpy()
        labels = np.array([_is_positive(v) for v in raw], dtype=np.int64)
    else:
        labels = np.ones(len(data), dtype=np.int64)
    rc = coords[keep][:, list(ref.axes)]
    return rc, labels[keep]


def _is_positive(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() not in ("negative", "neg", "background", "0", "false")
    if value is None:
        return True
    try:
        if np.isnan(value):
            return True
    except TypeError:
        pass
    return bool(value)


def shapes_to_prompts(
    shapes_layer: Any, image_layer: Any, dims: Any, ref: PlaneRef
) -> list[dict[str, Any]]:
    """Box (and mask) prompts from a Shapes layer, one per object.

    Rectangles become a box prompt.  Polygons and ellipses become a box (their
    bounding box) plus a full-resolution mask (their filled interior), which
    the session turns into SAM's low-resolution mask prompt.  Lines and paths
    are ignored.  Shapes off the current plane are ignored.

    Returns
    -------
    list of dict
        Each with ``"box_rc"`` (4,) float64 ``(r0, c0, r1, c1)``, the shape's
        extent in pixel index coordinates clipped to ``[-0.5, H - 0.5]``, ``"type"`` (str) and ``"mask"`` ((H, W) bool or None).
    """
    out: list[dict[str, Any]] = []
    h, w = ref.shape
    for verts, kind in zip(shapes_layer.data, shapes_layer.shape_type):
        if kind not in ("rectangle", "polygon", "ellipse"):
            continue
        coords = _to_image_data(shapes_layer, image_layer, dims, np.asarray(verts, dtype=float))
        if not _on_plane(coords, ref).all():
            continue
        rc = coords[:, list(ref.axes)]
        r0, c0 = np.clip(rc.min(axis=0), -0.5, [h - 0.5, w - 0.5])
        r1, c1 = np.clip(rc.max(axis=0), -0.5, [h - 0.5, w - 0.5])
        if r1 - r0 < 1 or c1 - c0 < 1:
            continue
        mask = None
        if kind == "polygon":
            mask = polygon_mask(rc, (h, w))
        elif kind == "ellipse":
            mask = _ellipse_mask(rc, (h, w))
        out.append({"box_rc": np.array([r0, c0, r1, c1], dtype=float), "type": kind, "mask": mask})
    return out


def polygon_mask(vertices_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Filled polygon as a ``(H, W)`` bool mask (vertices ``(N, 2)`` in ``(row, col)``)."""
    from skimage.draw import polygon as draw_polygon

    mask = np.zeros(shape, dtype=bool)
    rr, cc = draw_polygon(vertices_rc[:, 0], vertices_rc[:, 1], shape=shape)
    mask[rr, cc] = True
    return mask


def _ellipse_mask(corners_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Filled axis-aligned ellipse inscribed in the bounding box of ``corners_rc``."""
    from skimage.draw import ellipse as draw_ellipse

    lo, hi = corners_rc.min(axis=0), corners_rc.max(axis=0)
    centre, radii = (lo + hi) / 2, np.maximum((hi - lo) / 2, 0.5)
    mask = np.zeros(shape, dtype=bool)
    rr, cc = draw_ellipse(centre[0], centre[1], radii[0], radii[1], shape=shape)
    mask[rr, cc] = True
    return mask
