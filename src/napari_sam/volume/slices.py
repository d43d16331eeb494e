"""Volumes as stacks of 2-D slices: axis handling, global contrast, label ids, 3-D linking.

A volume with axes such as ``TZCYX`` is viewed as a stack of 2-D slices:
``(*loop, Y, X)`` or ``(*loop, Y, X, k)`` where ``loop`` are the ``T``/``Z``
axes and ``k`` (1 to 3) the selected channels.  Every slice is segmented on
its own; its labels ``1..n`` are written with a fixed offset
``(slice_index + 1) * id_block`` so that ids are unique across the volume no
matter in which order the slices finish.  Afterwards an optional relabelling
(compaction to ``1..N`` and/or linking objects across neighbouring ``Z``
slices) is computed as a graph -> connected components -> per-slice lookup
table, and applied slice by slice.  Because final ids are ``<= id_block`` and
raw ids are ``> id_block``, applying the lookup table is idempotent per pixel,
so an interrupted relabelling can simply be run again.

Id policy of the lazy result (no output path): with ``compact=True`` (the
default) ids are ``1..N`` over the volume, each slice offset by the object
count of the slices before it, so ``skimage.measure.regionprops_table`` and
``dask_image.ndmeasure`` work on it; ``compact=False`` keeps a fixed id block
per slice (every slice computable on its own, ids up to ``2**32``).  See
:mod:`napari_sam.volume.ids`, which holds the id arithmetic.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from napari_sam.volume.cache import array_digest
from napari_sam.volume.ids import (
    UINT32_MAX,
    apply_table,
    id_block_for,
    offset_slices,
    relabel_tables,
    sequential_labels,
    slice_overlap_edges,
)
from napari_sam.volume.io import open_image
from napari_sam.volume.scheduling import compute_tasks

__all__ = [
    "UINT32_MAX",
    "canonical_view",
    "volume_contrast_limits",
    "id_block_for",
    "slice_overlap_edges",
    "relabel_tables",
    "apply_table",
    "sequential_labels",
    "compute_tasks",
    "lazy_labels",
]

#: folder inside an output array holding the per-slice done markers and lookup tables
STATE_DIR = ".napari_sam"


def canonical_view(
    data: da.Array, axes: str, *, channel: int | None = None, channels: Sequence[int] | None = None
) -> tuple[da.Array, str, bool]:
    """Reorder ``data`` to ``(*loop, Y, X[, k])`` and select channels.

    Parameters
    ----------
    data : dask.array.Array
        Pixel data with one axis per letter of ``axes``.
    axes : str
        Letters from ``T Z C Y X S`` (see :mod:`napari_sam.volume.io`).
    channel : int, optional
        Index along ``C``/``S`` of the one channel to segment (grayscale).
    channels : sequence of int, optional
        One to three indices along ``C``/``S`` mapped to R, G, B.

    Returns
    -------
    view : dask.array.Array
        ``(*loop, Y, X)`` or ``(*loop, Y, X, k)``, same dtype, lazy.
    loop_axes : str
        The letters of the leading axes (``""``, ``"Z"``, ``"T"``, ``"TZ"``).
    has_channels : bool
        Whether ``view`` ends with a channel axis.
    """
    if channel is not None and channels is not None:
        raise ValueError("give either channel (one grayscale channel) or channels (up to three), not both")
    chan_axes = [a for a in "CS" if a in axes]
    if len(chan_axes) == 2:
        raise ValueError(f"axes {axes!r} has both C and S; pass --axes so that only one channel axis remains")
    loop = "".join(a for a in "TZ" if a in axes)
    order = [axes.index(a) for a in loop + "YX"]
    cname = chan_axes[0] if chan_axes else None
    if cname is not None:
        order.append(axes.index(cname))
    view = data.transpose(order) if order != list(range(data.ndim)) else data
    if cname is None:
        if channel is not None or channels is not None:
            raise ValueError(f"axes {axes!r} have no channel axis (C or S); remove --channel/--channels")
        return view, loop, False
    nchan = view.shape[-1]
    if channel is not None:
        _check_index(channel, nchan, cname)
        return view[..., int(channel)], loop, False
    if channels is not None:
        idx = [int(c) for c in channels]
        if not 1 <= len(idx) <= 3:
            raise ValueError(f"channels must list one to three indices, got {list(channels)}")
        for c in idx:
            _check_index(c, nchan, cname)
        return view[..., idx], loop, True
    if nchan == 1:
        return view[..., 0], loop, False
    if cname == "S" and nchan in (3, 4):
        return view[..., :3], loop, True
    raise ValueError(
        f"the image has {nchan} channels along axis {cname}; choose one with --channel I "
        "(channel=I) or up to three to map to RGB with --channels I J K (channels=[I, J, K])"
    )


def _check_index(index: int, n: int, name: str) -> None:
    if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise ValueError(f"channel index {index!r} is out of range: axis {name} has {n} channels (0..{n - 1})")


def volume_contrast_limits(
    view: da.Array,
    *,
    has_channels: bool,
    percentiles: tuple[float, float] = (0.5, 99.5),
    max_slices: int = 8,
    max_samples: int = 1_000_000,
    valid: da.Array | None = None,
) -> np.ndarray:
    """One set of contrast limits for the whole volume, from a few sampled slices.

    Every slice is normalised with the same limits, so neighbouring slices and
    tiles get the same contrast.  ``uint8`` data keeps its full range (SAM's own
    preprocessing); other dtypes use the given percentiles of up to
    ``max_samples`` pixels from up to ``max_slices`` evenly spaced slices.
    ``valid`` (boolean, shaped like ``view``) marks the pixels that hold data:
    the others (e.g. missing zarr chunks) are not sampled.

    Returns
    -------
    numpy.ndarray
        ``(k, 2)`` float64, one ``(low, high)`` row per channel (``k = 1`` without channels).
    """
    nchan = view.shape[-1] if has_channels else 1
    if view.dtype == np.uint8:
        return np.tile(np.array([[0.0, 255.0]]), (nchan, 1))
    nloop = view.ndim - (3 if has_channels else 2)
    loop_shape = view.shape[:nloop]
    nslices = int(np.prod(loop_shape)) if nloop else 1
    picks = np.unique(np.linspace(0, nslices - 1, min(max_slices, nslices)).round().astype(int))
    per_slice = max(1, max_samples // len(picks))
    samples = []
    for flat in picks:
        idx = np.unravel_index(flat, loop_shape) if nloop else ()
        plane = view[tuple(int(i) for i in idx)]
        npix = plane.shape[0] * plane.shape[1]
        step = max(1, int(np.sqrt(npix / per_slice)))
        sub = np.asarray(plane[::step, ::step].compute(), dtype=np.float64).reshape(-1, nchan)
        if valid is not None:
            ok = np.asarray(valid[tuple(int(i) for i in idx)][::step, ::step].compute()).reshape(-1, nchan)
            sub = sub[ok.all(axis=1)]
        samples.append(sub)
    values = np.concatenate(samples, axis=0)
    finite = np.isfinite(values).all(axis=1)
    values = values[finite] if finite.any() else np.zeros((1, nchan))
    limits = np.percentile(values, percentiles, axis=0).T.astype(np.float64)
    flat = limits[:, 1] <= limits[:, 0]
    limits[flat, 1] = limits[flat, 0] + 1.0
    return limits



# ------------------------------------------------------------------ per-slice tasks


def _reopen(path: str, axes: str, level: int, channel: int | None, channels: tuple | None) -> da.Array:
    """The slice view of a file, opened once per process while the file is unchanged.

    The file's inode, size and modification time are part of the cache key: a file
    rewritten between two runs in one process is opened again, never read stale.
    """
    try:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    return _open_view(path, axes, level, channel, channels, stamp)


@functools.lru_cache(maxsize=8)
def _open_view(path: str, axes: str, level: int, channel: int | None, channels: tuple | None,
               stamp: tuple | None) -> da.Array:
    data, axes, _ = open_image(path, axes=axes, level=level)
    view, _, _ = canonical_view(data, axes, channel=channel, channels=channels)
    return view


def read_slice(image: Any, src: tuple | None, loop_index: tuple) -> np.ndarray:
    """The slice as numpy: ``image`` itself, or re-read from the file described by ``src``.

    ``src = (path, axes, level, channel, channels)``; files are reopened once per
    process (tasks on process or cluster workers cannot share open file handles).
    """
    if src is not None:
        image = _reopen(*src)[loop_index]
    return np.asarray(image.compute(scheduler="synchronous") if hasattr(image, "compute") else image)


def read_marker(path: Path) -> int:
    """Object count stored in a slice's done marker."""
    return int(json.loads(Path(path).read_text())["n_labels"])


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _segment_slice(
    image: Any, *, k: int, src: tuple | None, loop_index: tuple, out_path: str, out_index: tuple,
    block: int, contrast_limits: np.ndarray, has_channels: bool, segment_fn: Callable,
) -> int:
    """Segment slice ``k``, write ``(k+1)*block + local`` ids, then mark it done; returns n.

    A segment function may return ``(labels, scores)`` (see
    :func:`napari_sam.automatic.labels.label_scores`): the scores are stored
    beside the done marker with the slice's local ids, for the object table.
    """
    state = Path(out_path) / STATE_DIR
    marker = state / f"slice-{k}.json"
    if marker.exists():
        return read_marker(marker)
    image = read_slice(image, src, loop_index)
    digest = array_digest(image)  # stored with the marker: --resume checks that this slice is unchanged
    labels, scores = _call_segment(segment_fn, image, k=k, contrast_limits=contrast_limits, has_channels=has_channels)
    raw, n = sequential_labels(labels, offset=(k + 1) * block)
    if n >= block:
        raise ValueError(f"slice {k} has {n} objects, more than its id block of {block}")
    zarr.open_array(out_path, mode="r+")[out_index] = raw
    if scores is not None:
        tmp = state / f".scores-{k}.{os.getpid()}.{threading.get_ident()}.tmp.npz"
        np.savez(tmp, **local_scores(labels, scores))
        os.replace(tmp, state / f"scores-{k}.npz")
    write_atomic(marker, json.dumps({"n_labels": n, "digest": digest}))
    return n


def _call_segment(segment_fn: Callable, image: np.ndarray, *, k: int, contrast_limits: Any,
                  has_channels: bool) -> tuple[np.ndarray, dict | None]:
    """``segment_fn`` on one slice: its labels (shape checked) and its scores (None when it gives none)."""
    extra = {"slice_index": k} if _takes_slice_index(segment_fn) else {}
    result = segment_fn(image, channel_axis=-1 if has_channels else None, contrast_limits=contrast_limits,
                        **extra)
    labels, scores = result if isinstance(result, tuple) else (result, None)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"the segment function returned shape {labels.shape} for a slice of {image.shape[:2]}")
    return labels, scores


def local_scores(labels: np.ndarray, scores: dict) -> dict[str, np.ndarray]:
    """Score columns re-keyed from ``labels``' ids to the local ids :func:`sequential_labels` gives them.

    Rows of labels that do not occur in ``labels`` are dropped.
    """
    present = np.unique(np.asarray(labels))
    present = present[present > 0].astype(np.int64)
    ids = np.asarray(scores["label"], dtype=np.int64)
    pos = np.minimum(np.searchsorted(present, ids), max(present.size - 1, 0))
    keep = (present.size > 0) & (present[pos] == ids) if present.size else np.zeros(ids.size, bool)
    out = {name: np.asarray(col)[keep] for name, col in scores.items()}
    out["label"] = (pos[keep] + 1).astype(np.uint32)
    return out


def _slice_unchanged(image: Any, *, src: tuple | None, loop_index: tuple, marker: str) -> bool:
    """Whether slice pixels still have the digest stored in its done marker (read once, not segmented)."""
    stored = json.loads(Path(marker).read_text()).get("digest")
    return stored is not None and stored == array_digest(read_slice(image, src, loop_index))


def _takes_slice_index(fn: Callable) -> bool:
    import inspect

    try:
        return "slice_index" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _lazy_slice(image: Any, *, k: int, contrast_limits, has_channels, segment_fn,
                src: tuple | None = None, loop_index: tuple = ()) -> np.ndarray:
    """Labels of slice ``k`` with local ids ``1..n``."""
    image = read_slice(image, src, loop_index)
    labels, _ = _call_segment(segment_fn, image, k=k, contrast_limits=contrast_limits, has_channels=has_channels)
    return sequential_labels(labels)[0]


def lazy_labels(src: Any, segment_fn: Callable, *, compact: bool = True) -> da.Array:
    """The labels of every slice of a prepared source as a lazy dask array (nothing is computed yet).

    Parameters
    ----------
    src : SimpleNamespace
        From :func:`napari_sam.volume.source.prepare_source`.
    segment_fn : callable
        The per-slice function (see :func:`~napari_sam.volume.batch.segment_volume`).
    compact : bool
        The id policy (module docstring): ``True`` gives ids ``1..N`` over the
        volume; ``False`` a fixed id block per slice.

    Returns
    -------
    dask.array.Array
        ``(*loop, Y, X)`` uint32, one chunk per slice.
    """
    local = [dask.delayed(_lazy_slice)(
        src.view[idx] if src.spec is None else None, k=k, contrast_limits=src.limits, has_channels=src.has_ch,
        segment_fn=segment_fn, src=src.spec, loop_index=idx) for k, idx in enumerate(src.indices)]
    return offset_slices(local, shape=(src.ny, src.nx), loop_shape=src.loop_shape if src.loop_axes else (),
                         compact=compact, block=id_block_for(src.n_slices))


def _edges_task(out_path: str, ia: tuple, ib: tuple, oa: int, ob: int, min_iou: float) -> np.ndarray:
    arr = zarr.open_array(out_path, mode="r")
    a = np.asarray(arr[ia]).astype(np.int64)
    b = np.asarray(arr[ib]).astype(np.int64)
    return slice_overlap_edges(np.where(a > oa, a - oa, 0), np.where(b > ob, b - ob, 0), min_iou=min_iou)


def _relabel_task(out_path: str, k: int, out_index: tuple, offset: int) -> int:
    state = Path(out_path) / STATE_DIR
    marker = state / f"final-{k}"
    if marker.exists():
        return 0
    with np.load(state / "tables.npz") as tables:
        table = tables[f"t{k}"]
    arr = zarr.open_array(out_path, mode="r+")
    arr[out_index] = apply_table(np.asarray(arr[out_index]), table, offset=offset)
    write_atomic(marker, "done\n")
    return 1
