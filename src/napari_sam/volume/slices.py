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
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, is_cancelled, report
from napari_sam.volume.cache import array_digest
from napari_sam.volume.io import open_image

__all__ = [
    "canonical_view",
    "volume_contrast_limits",
    "id_block_for",
    "slice_overlap_edges",
    "relabel_tables",
    "apply_table",
    "sequential_labels",
    "compute_tasks",
]

UINT32_MAX = np.iinfo(np.uint32).max
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


def compute_tasks(
    tasks: Sequence[Any],
    *,
    scheduler: Any = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
    desc: str = "",
    offset: int = 0,
    total: int | None = None,
) -> list:
    """Compute dask delayed ``tasks`` and return their results in order.

    Parameters
    ----------
    scheduler : None, str or distributed.Client
        ``None``/``"threads"``, ``"processes"``, ``"synchronous"`` run locally;
        any other string is a dask.distributed scheduler address
        (``"tcp://host:8786"``); a ``Client`` is used as is.
    workers : int, optional
        Number of local workers (ignored for a cluster).
    progress, cancel
        ``progress(offset + done, total, desc)`` after each task; ``cancel`` is
        checked before each task starts locally and after each result on a cluster.
    """
    tasks = list(tasks)
    total = len(tasks) + offset if total is None else total
    if not tasks:
        return []
    report(progress, offset, total, desc)
    local = {None: "threads", "threads": "threads", "processes": "processes",
             "synchronous": "synchronous", "sync": "synchronous"}
    if isinstance(scheduler, str) and scheduler in local or scheduler is None:
        from dask.callbacks import Callback

        keys = {t.key for t in tasks}
        done = [0]

        def _pre(key, dsk, state):
            check_cancelled(cancel)

        def _post(key, result, dsk, state, worker_id):
            if key in keys:
                done[0] += 1
                report(progress, offset + done[0], total, desc)

        kwargs = {"num_workers": workers} if workers and local[scheduler] != "synchronous" else {}
        with Callback(pretask=_pre, posttask=_post):
            return list(dask.compute(*tasks, scheduler=local[scheduler], **kwargs))
    from distributed import Client, as_completed

    if isinstance(scheduler, Client):
        client = scheduler
    else:
        try:
            client = Client(str(scheduler), timeout=5)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot reach the dask scheduler {scheduler} within 5 s ({exc}); check the "
                                  "address and that `dask scheduler` runs there, or drop --scheduler") from None
    try:
        futures = client.compute(tasks)
        order = {f.key: i for i, f in enumerate(futures)}
        results: list = [None] * len(futures)
        done = 0
        for fut in as_completed(futures):
            results[order[fut.key]] = fut.result()
            done += 1
            report(progress, offset + done, total, desc)
            if is_cancelled(cancel):
                client.cancel(futures)
                check_cancelled(cancel)
        return results
    finally:
        if client is not scheduler:
            client.close()


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


def _write_atomic(path: Path, text: str) -> None:
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
    """Segment slice ``k``, write ``(k+1)*block + local`` ids, then mark it done; returns n."""
    marker = Path(out_path) / STATE_DIR / f"slice-{k}.json"
    if marker.exists():
        return read_marker(marker)
    image = read_slice(image, src, loop_index)
    digest = array_digest(image)  # stored with the marker: --resume checks that this slice is unchanged
    extra = {"slice_index": k} if _takes_slice_index(segment_fn) else {}
    labels = segment_fn(image, channel_axis=-1 if has_channels else None, contrast_limits=contrast_limits,
                        **extra)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"the segment function returned shape {labels.shape} for a slice of {image.shape[:2]}")
    raw, n = sequential_labels(labels, offset=(k + 1) * block)
    if n >= block:
        raise ValueError(f"slice {k} has {n} objects, more than its id block of {block}")
    zarr.open_array(out_path, mode="r+")[out_index] = raw
    _write_atomic(marker, json.dumps({"n_labels": n, "digest": digest}))
    return n


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


def _lazy_slice(image: Any, *, k: int, block: int, contrast_limits, has_channels, segment_fn,
                src: tuple | None = None, loop_index: tuple = ()) -> np.ndarray:
    image = read_slice(image, src, loop_index)
    extra = {"slice_index": k} if _takes_slice_index(segment_fn) else {}
    labels = segment_fn(image, channel_axis=-1 if has_channels else None, contrast_limits=contrast_limits,
                        **extra)
    out, n = sequential_labels(labels, offset=k * block)
    if n >= block:
        raise ValueError(f"slice {k} has {n} objects, more than its id block of {block}")
    return out


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
    _write_atomic(marker, "done\n")
    return 1
