"""Streaming slices: a segment function that writes into the output instead of returning labels.

A segment function that accepts ``out=`` (the default SAM function does) is given the
slice as a lazy array (tile windows are read on demand) and a 2-D view of the output
array that adds the slice's id offset on write.  The labels of the slice are then
written tile block by tile block, as :func:`napari_sam.tiled.tiles.segment_image`
does with a zarr ``out``: neither the input slice nor its labels are ever whole in
memory, so peak memory does not grow with the slice size.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from napari_sam.volume.ids import sequential_labels
from napari_sam.volume.slices import STATE_DIR, local_scores, read_marker, write_atomic

__all__ = ["OffsetLabels", "takes_out", "segment_slice_streamed", "streamed_digest"]

#: pixels read at a time when a slice is hashed or scanned (whole rows, bounded memory)
BLOCK_PIXELS = 1 << 18


def takes_out(fn: Callable) -> bool:
    """Whether a segment function accepts an ``out=`` keyword (the streaming protocol)."""
    try:
        return "out" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class OffsetLabels:
    """A 2-D window of a labels array whose ids are shifted by ``offset`` on write.

    ``view[r0:r1, c0:c1] = local`` stores ``local + offset`` where ``local > 0`` (0 stays
    background); reading gives the local ids back.  It has the ``shape``, ``dtype`` and
    ``chunks`` that :func:`napari_sam.tiled.stitching.write_labels` needs.

    Parameters
    ----------
    array : zarr.Array
        The output, ``(*loop, Y, X)``.
    index : tuple
        The slice's index into ``array`` (integers for loop axes, ``slice(None)`` for Y, X).
    offset : int
        Added to every non-zero id written.
    """

    def __init__(self, array: Any, index: tuple, *, offset: int) -> None:
        self.array, self.index, self.offset = array, tuple(index), int(offset)
        yx = [i for i, s in enumerate(self.index) if isinstance(s, slice)]
        if len(yx) != 2:
            raise ValueError(f"the slice index {index!r} must leave exactly two axes (Y, X)")
        self._yx = yx
        self.shape = tuple(int(array.shape[i]) for i in yx)
        self.chunks = tuple(int(array.chunks[i]) for i in yx)
        self.dtype = np.dtype(array.dtype)
        self.max_id = 0

    def _key(self, key: Any) -> tuple:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError("index an OffsetLabels view with two slices [r0:r1, c0:c1]")
        full = list(self.index)
        full[self._yx[0]], full[self._yx[1]] = key
        return tuple(full)

    def __getitem__(self, key: Any) -> np.ndarray:
        stored = np.asarray(self.array[self._key(key)])
        return np.where(stored > 0, stored - self.offset, 0).astype(self.dtype)

    def __setitem__(self, key: Any, value: Any) -> None:
        local = np.asarray(value)
        if local.size:
            self.max_id = max(self.max_id, int(local.max()))
        self.array[self._key(key)] = np.where(local > 0, local.astype(self.dtype) + self.dtype.type(self.offset),
                                              0).astype(self.dtype)


def _row_blocks(n: int, width: int) -> Iterator[slice]:
    step = max(1, BLOCK_PIXELS // max(int(width), 1))
    for r in range(0, n, step):
        yield slice(r, min(r + step, n))


def streamed_digest(image: Any) -> str:
    """:func:`napari_sam.volume.cache.array_digest` of a lazy slice, read a few rows at a time.

    Hashing C-ordered row blocks one after the other gives the same bytes as hashing the
    whole array, so the digest equals the in-memory one (``--resume`` markers stay valid).
    """
    shape = tuple(int(s) for s in image.shape)
    dtype = np.dtype(image.dtype)
    h = hashlib.sha1(f"{shape}|{dtype.str}|".encode())
    for rows in _row_blocks(shape[0], int(np.prod(shape[1:], dtype=np.int64))):
        part = image[rows]
        part = part.compute(scheduler="synchronous") if hasattr(part, "compute") else part
        h.update(memoryview(np.ascontiguousarray(np.asarray(part, dtype=dtype))).cast("B"))
    return f"sha1:{h.hexdigest()}"


def _lazy_slice(image: Any, src: tuple | None, loop_index: tuple) -> Any:
    """The slice as a lazy (dask) array: tile windows are read when the segment function asks."""
    if src is not None:
        from napari_sam.volume.slices import _reopen

        return _reopen(*src)[loop_index]
    return image


def segment_slice_streamed(
    image: Any, *, k: int, src: tuple | None, loop_index: tuple, out_path: str, out_index: tuple,
    block: int, contrast_limits: np.ndarray, has_channels: bool, segment_fn: Callable,
) -> int:
    """Segment slice ``k`` straight into the output with ``(k+1)*block + local`` ids, then mark it done.

    Same contract as :func:`napari_sam.volume.slices._segment_slice` (returns the number of
    objects; scores stored beside the marker) for a ``segment_fn`` that accepts ``out=`` and
    returns ``out`` or ``(out, scores)`` with local ids ``1..n``.
    """
    state = Path(out_path) / STATE_DIR
    marker = state / f"slice-{k}.json"
    if marker.exists():
        return read_marker(marker)
    image = _lazy_slice(image, src, loop_index)
    digest = streamed_digest(image)
    view = OffsetLabels(zarr.open_array(out_path, mode="r+"), out_index, offset=(k + 1) * block)
    extra = {"slice_index": k} if "slice_index" in _parameters(segment_fn) else {}
    result = segment_fn(image, channel_axis=-1 if has_channels else None, contrast_limits=contrast_limits,
                        out=view, **extra)
    labels, scores = result if isinstance(result, tuple) else (result, None)
    if labels is view:
        n = _count_ids(view)
    else:  # the function returned its labels instead of writing them: store them as the in-memory path does
        labels = np.asarray(labels)
        if labels.shape != view.shape:
            raise ValueError(f"the segment function returned shape {labels.shape} for a slice of {view.shape}")
        raw, n = sequential_labels(labels, offset=(k + 1) * block)
        view.array[out_index] = raw
        scores = None if scores is None else local_scores(labels, scores)
    if n >= block:
        raise ValueError(f"slice {k} has {n} objects, more than its id block of {block}")
    if scores is not None:
        tmp = state / f".scores-{k}.{os.getpid()}.{threading.get_ident()}.tmp.npz"
        np.savez(tmp, **{name: np.asarray(col) for name, col in scores.items()})
        os.replace(tmp, state / f"scores-{k}.npz")
    write_atomic(marker, json.dumps({"n_labels": n, "digest": digest}))
    return n


def _count_ids(view: OffsetLabels) -> int:
    """Number of objects in a written slice whose local ids are ``1..n``: its largest id, read row block by row block."""
    top = 0
    for rows in _row_blocks(view.shape[0], view.shape[1]):
        part = view.array[view._key((rows, slice(None)))]
        top = max(top, int(np.max(part)) if part.size else 0)
    return top - view.offset if top > 0 else 0


def _parameters(fn: Callable) -> set:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()

