"""Point grids, crop boxes and image crops for automatic mask generation.

Points are ``(row, col)``; normalised grids are ``(row, col)`` in ``[0, 1]``.
Boxes are ``(r0, c0, r1, c1)`` half-open.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ['build_point_grid', 'build_all_layer_point_grids', 'generate_crop_boxes', 'batch_slices', 'spatial_shape', 'crop_image', 'global_contrast_limits']


def build_point_grid(n_per_side: int) -> np.ndarray:
    """Evenly spaced normalised point grid, cell centres of an ``n x n`` lattice.

    Parameters
    ----------
    n_per_side : int
        Points along each side (>= 1).

    Returns
    -------
    grid : (n_per_side**2, 2) float64 ndarray
        ``(row, col)`` in ``[0, 1]``, row-major (column varies fastest), i.e.
        the official grid with its ``(x, y)`` columns swapped.

    Examples
    --------
    >>> build_point_grid(2)
    array([[0.25, 0.25],
           [0.25, 0.75],
           [0.75, 0.25],
           [0.75, 0.75]])

    Multiply by the image's ``(height, width)`` for pixel coordinates:

    >>> (build_point_grid(2) * (100, 200))[1]
    array([ 25., 150.])
    """
    if int(n_per_side) < 1:
        raise ValueError(f"points per side must be at least 1, got {n_per_side}")
    n = int(n_per_side)
    offset = 1.0 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    rows = np.repeat(side, n)
    cols = np.tile(side, n)
    return np.stack([rows, cols], axis=-1)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One normalised grid per crop layer; layer ``i`` has ``int(n / scale**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    image_shape: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Crop boxes of every layer, same formulas and order as the official generator.

    Layer 0 is the whole image; layer ``i >= 1`` has ``2**i x 2**i`` overlapping
    crops whose overlap is ``int(overlap_ratio * min(H, W) * 2 / 2**i)`` pixels.

    Parameters
    ----------
    image_shape : (H, W)
    n_layers : int
        Number of extra layers (``crop_n_layers``).
    overlap_ratio : float
        ``crop_overlap_ratio``.

    Returns
    -------
    boxes : (M, 4) int64 ndarray
        ``(r0, c0, r1, c1)`` half-open, in image coordinates.
    layer_idx : (M,) int64 ndarray
        Crop layer of each box.
    """
    im_h, im_w = int(image_shape[0]), int(image_shape[1])
    boxes = [(0, 0, im_h, im_w)]
    layers = [0]
    short_side = min(im_h, im_w)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops))
        crop_w = crop_len(im_w, n_crops, overlap)
        crop_h = crop_len(im_h, n_crops, overlap)
        c0s = [int((crop_w - overlap) * i) for i in range(n_crops)]
        r0s = [int((crop_h - overlap) * i) for i in range(n_crops)]
        for c0 in c0s:  # official order: x outer, y inner
            for r0 in r0s:
                boxes.append((r0, c0, min(r0 + crop_h, im_h), min(c0 + crop_w, im_w)))
                layers.append(i_layer + 1)
    return np.asarray(boxes, dtype=np.int64), np.asarray(layers, dtype=np.int64)


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)`` in steps of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _resolve_axis(shape: tuple[int, ...], channel_axis: int | None) -> int | None:
    """Index of the channel axis (None for 2D); ``(H, W, 3)`` with None is RGB, as in normalize."""
    if channel_axis is None:
        if len(shape) == 2:
            return None
        if len(shape) == 3 and shape[2] == 3:
            return 2
        raise ValueError(
            f"image has shape {shape}; expected (H, W) grayscale or (H, W, 3) RGB when "
            "channel_axis is None. Pass channel_axis= for other multi-channel images."
        )
    if len(shape) != 3:
        raise ValueError(f"image with a channel axis must be 3D, got shape {shape}")
    if not -3 <= int(channel_axis) < 3:
        raise ValueError(f"channel_axis={channel_axis} is out of range for a 3D image")
    return int(channel_axis) % 3


def spatial_shape(image: Any, channel_axis: int | None) -> tuple[int, int]:
    """``(H, W)`` of a 2D image: grayscale, RGB ``(H, W, 3)`` or with a channel axis."""
    shape = tuple(int(s) for s in np.shape(image))
    ax = _resolve_axis(shape, channel_axis)
    rest = [s for i, s in enumerate(shape) if i != ax]
    return rest[0], rest[1]


def crop_image(image: Any, box: Sequence[int], channel_axis: int | None) -> Any:
    """``image[r0:r1, c0:c1]`` (all channels) of a numpy, dask or zarr image; no copy is forced."""
    r0, c0, r1, c1 = (int(v) for v in box)
    spatial = [slice(r0, r1), slice(c0, c1)]
    ax = _resolve_axis(tuple(np.shape(image)), channel_axis)
    if ax is None:
        return image[tuple(spatial)]
    index: list[slice] = []
    for i in range(3):
        index.append(slice(None) if i == ax else spatial.pop(0))
    return image[tuple(index)]


def global_contrast_limits(image: Any, channel_axis: int | None, channels: Sequence[int] | None) -> Any:
    """Contrast limits estimated once on (a subsample of) the whole image.

    Returns None for ``uint8`` RGB without a channel selection: it is used as
    is, exactly like :func:`napari_sam.normalize.to_rgb_uint8` does.
    """
    from napari_sam.normalize import estimate_contrast_limits

    shape = tuple(int(s) for s in np.shape(image))
    dtype = getattr(image, "dtype", None)
    dtype = np.asarray(image).dtype if dtype is None else np.dtype(dtype)
    ax = _resolve_axis(shape, channel_axis)
    if channels is None and dtype == np.uint8 and ax is not None and shape[ax] == 3:
        return None
    return estimate_contrast_limits(image, channel_axis=channel_axis, channels=channels)
