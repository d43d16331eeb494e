"""Writing SAM objects into a napari Labels layer: undoable, per plane, no overwrite.

All writes go through ``Labels.data_setitem``, napari's undoable path, so
``layer.undo()`` (Ctrl-Z) reverts a commit.  Only the touched pixels of the
current plane are read and written: zarr-backed labels volumes are never
loaded or copied whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_sam._napari.layers import PlaneRef

__all__ = ["check_writable", "labels_plane_ref", "next_free_id", "widen_for", "write_mask", "write_masks"]


def check_writable(labels_layer: Any) -> None:
    """Raise ValueError when the labels data cannot be written in place.

    numpy arrays and zarr arrays (anything with ``__setitem__`` that is not a
    dask array) are writable; dask arrays and multiscale pyramids are not.
    """
    data = labels_layer.data
    if getattr(labels_layer, "multiscale", False):
        raise ValueError(
            f"labels layer {labels_layer.name!r} is multiscale; commit into a "
            "single-scale (numpy or zarr) Labels layer instead."
        )
    if type(data).__module__.startswith("dask") or not hasattr(data, "__setitem__"):
        raise ValueError(
            f"labels layer {labels_layer.name!r} holds read-only {type(data).__name__} data; "
            "use a numpy array or a zarr array (e.g. zarr.open_array(...)) as labels data."
        )


def labels_plane_ref(labels_layer: Any, dims: Any, plane_shape: tuple[int, int]) -> PlaneRef:
    """The plane of ``labels_layer`` at the viewer's current point, checked against the image.

    Raises
    ------
    ValueError
        When the labels plane shape differs from ``plane_shape``.
    """
    from napari_sam._napari.layers import plane_ref

    ref = plane_ref(labels_layer, dims)
    if tuple(ref.shape) != tuple(plane_shape):
        raise ValueError(
            f"labels layer {labels_layer.name!r} plane has shape {ref.shape} but the image "
            f"plane has shape {tuple(plane_shape)}; create the labels with the image's shape."
        )
    return ref


def next_free_id(labels_layer: Any, *, known_max: int = 0, ref: PlaneRef | None = None) -> int:
    """The smallest id greater than every label in the layer.

    numpy data is scanned whole (cheap).  For other (zarr) data the whole-volume
    maximum is only computed when ``known_max`` is 0 (through dask, chunk by
    chunk; skipped for a zarr array with no stored chunk); otherwise ``max(known_max, max of plane ref) + 1`` is returned,
    which stays unique as long as ``known_max`` tracks this session's commits.
    """
    data = labels_layer.data
    if isinstance(data, np.ndarray):
        return int(data.max(initial=0)) + 1
    if known_max > 0 and ref is not None:
        plane_max = int(np.asarray(data[ref.selection()]).max(initial=0))
        return max(known_max, plane_max) + 1
    try:  # a fresh zarr array has no stored chunk: nothing to scan
        if int(getattr(data, "nchunks_initialized")) == 0:
            return known_max + 1
    except (AttributeError, TypeError, ValueError, NotImplementedError):
        pass
    import dask.array as da

    chunks = getattr(data, "chunks", "auto")
    total = da.from_array(data, chunks=chunks if isinstance(chunks, tuple) else "auto").max()
    return max(int(total.compute()), known_max) + 1


def widen_for(labels_layer: Any, max_id: int) -> bool:
    """Make ``labels_layer`` able to hold id ``max_id``: a wider integer dtype for numpy data.

    Returns True when the dtype was widened (napari then starts a new undo
    history for the layer).

    Raises
    ------
    ValueError
        The id does not fit and the data is not a numpy array (a zarr array
        keeps its dtype on disk).
    """
    data = labels_layer.data
    dtype = np.dtype(data.dtype)
    if not np.issubdtype(dtype, np.integer) or int(max_id) <= np.iinfo(dtype).max:
        return False
    if not isinstance(data, np.ndarray):
        raise ValueError(
            f"label id {int(max_id)} does not fit the {dtype} labels layer {labels_layer.name!r} (its data is "
            "stored on disk and keeps its type): choose or create a uint32 labels layer as the target."
        )
    wider = np.promote_types(dtype, np.min_scalar_type(int(max_id)))
    labels_layer.data = data.astype(wider)
    return True


def _mask_indices(
    labels_layer: Any, ref: PlaneRef, mask: np.ndarray, *, overwrite: bool
) -> tuple[np.ndarray, ...] | None:
    """Full-dimensional fancy indices of the mask pixels that may be written."""
    if mask.shape != tuple(ref.shape):
        raise ValueError(f"mask shape {mask.shape} does not match the plane shape {ref.shape}")
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    if not overwrite:
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        sel = list(ref.selection())
        sel[ref.axes[0]] = slice(r0, r1)
        sel[ref.axes[1]] = slice(c0, c1)
        existing = np.asarray(labels_layer.data[tuple(sel)])
        free = existing[rows - r0, cols - c0] == 0
        rows, cols = rows[free], cols[free]
        if rows.size == 0:
            return None
    indices = []
    for ax, i in enumerate(ref.index):
        if ax == ref.axes[0]:
            indices.append(rows)
        elif ax == ref.axes[1]:
            indices.append(cols)
        else:
            indices.append(np.full(rows.shape, i, dtype=np.intp))
    return tuple(indices)


def write_mask(
    labels_layer: Any, ref: PlaneRef, mask: np.ndarray, value: int, *, overwrite: bool = False
) -> int:
    """Write one object into a plane of the labels layer (one undo step).

    Parameters
    ----------
    labels_layer : napari.layers.Labels
        Target layer; numpy or zarr data (see :func:`check_writable`).
    ref : PlaneRef
        The labels plane (from :func:`labels_plane_ref`).
    mask : numpy.ndarray of bool, shape (H, W)
        The object; not modified.
    value : int
        The label id to write (> 0).
    overwrite : bool, keyword-only
        False (default) writes only where the labels are 0, so existing objects
        are never changed; True paints over them.

    Returns
    -------
    int
        Number of pixels written.
    """
    return write_masks(labels_layer, {ref: [(mask, value)]}, overwrite=overwrite)


def write_masks(
    labels_layer: Any,
    items: Mapping[PlaneRef, list[tuple[np.ndarray, int]]],
    *,
    overwrite: bool = False,
) -> int:
    """Write several ``(mask, value)`` objects on several planes as ONE undo step.

    Objects are written in order; with ``overwrite=False`` a later object never
    covers an earlier one.  Returns the number of pixels written.
    """
    if int(min((v for objs in items.values() for _, v in objs), default=1)) <= 0:
        raise ValueError("label ids must be positive integers (0 is the background)")
    check_writable(labels_layer)
    widen_for(labels_layer, max((int(v) for objs in items.values() for _, v in objs), default=0))
    written = 0
    with labels_layer.block_history():
        for ref, objects in items.items():
            for mask, value in objects:
                idx = _mask_indices(labels_layer, ref, np.asarray(mask, dtype=bool), overwrite=overwrite)
                if idx is None:
                    continue
                labels_layer.data_setitem(idx, int(value), refresh=False)
                written += int(idx[0].size)
    if written:
        labels_layer.refresh()
    return written
