"""Label ids across the slices of a volume: id blocks, renumbering, lookup tables, lazy compact ids.

Two id policies, chosen with ``compact`` (``OutputOptions.compact``, ``--no-compact``):

* ``compact=True`` (the default): ids ``1..N`` over the whole volume, slice
  by slice in slice order.  Written outputs are renumbered at the end through
  per-slice lookup tables (:func:`relabel_tables`, :func:`apply_table`).  The
  lazy result of :func:`~napari_sam.segment_volume` adds to each slice's local
  ids ``1..n_k`` the number of objects of the slices before it
  (:func:`offset_slices`): the offsets are a running sum of per-slice counts
  in the dask graph, so nothing is segmented twice when the whole array is
  computed, and the ids stay small enough for
  ``skimage.measure.regionprops_table`` and ``dask_image.ndmeasure`` (which
  size their work by the largest id).  Computing slice ``k`` alone also
  segments slices ``0..k-1`` (to count their objects); ``persist()`` the
  array to browse it.
* ``compact=False``: every slice owns a fixed block of ids
  (:func:`id_block_for`), so every slice can be computed on its own; ids then
  reach ``2**32``, which tools that size arrays by the largest id cannot handle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "UINT32_MAX",
    "id_block_for",
    "sequential_labels",
    "slice_overlap_edges",
    "relabel_tables",
    "apply_table",
    "offset_slices",
]

UINT32_MAX = np.iinfo(np.uint32).max


def id_block_for(n_slices: int) -> int:
    """Size of the id block of each slice: raw ids of slice ``k`` are ``(k+1)*block + 1..n_k``.

    ``block = (2**32 - 1) // (n_slices + 1)``, so every raw id fits in uint32
    and every raw id is larger than every final (relabelled) id ``<= block``.
    """
    if n_slices < 1:
        raise ValueError("the volume has no slices")
    block = UINT32_MAX // (n_slices + 1)
    if block < 2:
        raise ValueError(f"{n_slices} slices are too many for uint32 label ids")
    return int(block)


def sequential_labels(labels: np.ndarray, *, offset: int = 0) -> tuple[np.ndarray, int]:
    """Renumber a label image to ``offset + 1..n`` in order of id value (background 0 kept).

    Returns
    -------
    relabelled : numpy.ndarray
        Same shape, uint32.
    n : int
        Number of objects.

    Examples
    --------
    >>> import numpy as np
    >>> relabelled, n = sequential_labels(np.array([[0, 7, 7], [3, 0, 9]]), offset=10)
    >>> relabelled
    array([[ 0, 12, 12],
           [11,  0, 13]], dtype=uint32)
    >>> n
    3
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" and labels.dtype != bool:
        raise TypeError(f"a segment function must return integer labels, got dtype {labels.dtype}")
    if labels.size == 0:
        return labels.astype(np.uint32), 0
    if labels.dtype.kind == "i" and labels.min() < 0:
        raise ValueError("a segment function returned negative labels")
    top = int(labels.max())
    if top <= 4 * labels.size + 1024:  # dense ids: O(N) lookup table instead of a sort
        present = np.bincount(labels.ravel().astype(np.intp, copy=False), minlength=top + 1) > 0
        present[0] = True
        table = (np.cumsum(present) - 1).astype(np.uint32)
        table[1:] += np.uint32(offset) * present[1:]
        return table[labels], int(present[1:].sum())
    uniq, inverse = np.unique(labels, return_inverse=True)
    has_bg = uniq[0] == 0
    new = np.arange(uniq.size, dtype=np.uint32) + (0 if has_bg else 1)
    new[new > 0] += np.uint32(offset)
    return new[inverse.reshape(labels.shape)], int(uniq.size - (1 if has_bg else 0))


def slice_overlap_edges(a: np.ndarray, b: np.ndarray, *, min_iou: float = 0.5) -> np.ndarray:
    """Pairs of objects of two neighbouring slices that overlap with IoU > ``min_iou``.

    Parameters
    ----------
    a, b : numpy.ndarray
        ``(Y, X)`` integer labels with *local* ids (``0`` background).
    min_iou : float
        With ``min_iou >= 0.5`` every object links to at most one object of the
        other slice (two disjoint objects cannot both overlap it by more than half).

    Returns
    -------
    numpy.ndarray
        ``(K, 2)`` int64 pairs ``(id in a, id in b)``.
    """
    a = np.asarray(a).ravel().astype(np.int64)
    b = np.asarray(b).ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    area_a = np.bincount(a)
    area_b = np.bincount(b)
    width = int(b.max()) + 1
    keys, inter = np.unique(a[both] * width + b[both], return_counts=True)
    ia, ib = keys // width, keys % width
    iou = inter / (area_a[ia] + area_b[ib] - inter)
    keep = iou > min_iou
    return np.stack([ia[keep], ib[keep]], axis=1)


def relabel_tables(counts: Sequence[int], edges: Sequence[tuple[int, int, np.ndarray]] = ()) -> list[np.ndarray]:
    """Per-slice lookup tables from local ids to final ids ``1..N``.

    Nodes are the objects of all slices in slice order; ``edges`` join objects
    of slices ``i`` and ``j`` (``(i, j, pairs)`` with ``pairs`` ``(K, 2)`` local
    ids).  Connected components become final objects, numbered by their first
    node, so the result does not depend on the order in which slices finished.

    Returns
    -------
    list of numpy.ndarray
        ``tables[k]`` is ``(counts[k] + 1,)`` uint32 with ``tables[k][0] == 0``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(counts)])
    total = int(start[-1])
    rows, cols = [], []
    for i, j, pairs in edges:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        rows.append(start[i] + pairs[:, 0] - 1)
        cols.append(start[j] + pairs[:, 1] - 1)
    if rows and total:
        r, c = np.concatenate(rows), np.concatenate(cols)
        graph = coo_matrix((np.ones(r.size, np.int8), (r, c)), shape=(total, total))
        _, comp = connected_components(graph, directed=False)
    else:
        comp = np.arange(total)
    # number components by their lowest node, 1-based
    _, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    comp = (rank[inverse] + 1).astype(np.uint32)
    if total and comp.max() > UINT32_MAX:
        raise ValueError("too many objects for uint32 labels")
    return [np.concatenate([[0], comp[start[k]:start[k + 1]]]).astype(np.uint32) for k in range(counts.size)]


def apply_table(raw: np.ndarray, table: np.ndarray, *, offset: int) -> np.ndarray:
    """Map raw ids ``offset + local`` of one slice to final ids; ids ``<= offset`` are kept.

    Idempotent: pixels already holding final ids (``<= id_block <= offset``)
    are left alone, so a chunk written before an interruption is not mapped twice.
    """
    raw = np.asarray(raw, dtype=np.uint32)
    if int(raw.max(initial=0)) - offset >= table.size:
        raise ValueError("the labels hold ids the relabelling table does not know; rerun with --overwrite")
    is_raw = raw > offset
    local = np.where(is_raw, raw - np.uint32(offset), np.uint32(0))  # uint32 wrap-around masked out
    out = table[local]
    np.copyto(out, raw, where=~is_raw)
    return out



def offset_slices(
    local: Sequence[Any], *, shape: tuple[int, int], loop_shape: tuple[int, ...], compact: bool = True,
    block: int | None = None,
) -> da.Array:
    """Stack lazy per-slice labels with local ids ``1..n_k`` into a volume with unique ids.

    Parameters
    ----------
    local : sequence of dask.delayed
        One per slice, in slice order; each computes a ``(Y, X)`` uint32 array
        with ids ``1..n_k`` (0 background), e.g. from :func:`sequential_labels`.
    shape : (Y, X)
    loop_shape : tuple of int
        Shape of the leading axes (``()`` for a single image).
    compact : bool
        ``True``: slice ``k`` is offset by the object count of slices ``0..k-1``
        (ids ``1..N``); ``False``: by ``k * block`` (see the module docstring).
    block : int, optional
        Id block per slice for ``compact=False`` (default :func:`id_block_for`).

    Returns
    -------
    dask.array.Array
        ``(*loop_shape, Y, X)`` uint32, one chunk per slice.
    """
    local = list(local)
    if not compact and block is None:
        block = id_block_for(len(local))
    parts = []
    offset: Any = 0
    for k, lab in enumerate(local):
        if compact:
            parts.append(dask.delayed(_shift)(lab, offset))
            offset = dask.delayed(_next_offset)(offset, lab)
        else:
            parts.append(dask.delayed(_shift)(lab, k * block, limit=block))
    arrays = [da.from_delayed(p, shape=tuple(shape), dtype=np.uint32) for p in parts]
    if not loop_shape:
        return arrays[0]
    return da.stack(arrays).reshape(tuple(loop_shape) + tuple(shape))


def _next_offset(offset: int, labels: np.ndarray) -> int:
    total = int(offset) + int(np.asarray(labels).max(initial=0))
    if total > UINT32_MAX:
        raise ValueError(f"the volume has more than {UINT32_MAX} objects: too many for uint32 labels")
    return total


def _shift(labels: np.ndarray, offset: int, *, limit: int | None = None) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.uint32)
    n = int(labels.max(initial=0))
    if limit is not None and n >= limit:
        raise ValueError(f"a slice has {n} objects, more than its id block of {limit}")
    if int(offset) + n > UINT32_MAX:
        raise ValueError(f"the volume has more than {UINT32_MAX} objects: too many for uint32 labels")
    if offset == 0:
        return labels
    out = labels + np.uint32(offset)
    out[labels == 0] = 0
    return out
