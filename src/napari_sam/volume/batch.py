"""Headless automatic labelling of images and volumes, slice by slice, with dask.

``segment_volume`` views the input as a stack of 2-D slices
(:func:`napari_sam.volume.slices.canonical_view`), estimates one set of contrast
limits for the whole volume, and runs one dask task per slice.  A task reads
its slice, calls the per-slice segment function (by default
:func:`napari_sam.tiled.tiles.segment_image` with a model cached once per worker
thread), writes the labels with the slice's fixed id offset, and only then
records the slice as done with an atomic marker file.  Memory is bounded by a
slice, not by the volume.  See ``docs/batch.md``.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from napari_sam.progress import CancelToken, ProgressCallback
from napari_sam.volume import slices as vol
from napari_sam.volume.cache import EmbeddingCache, data_identity
from napari_sam.volume.io import json_safe, ome_zarr_root, prepare_labels_array, write_ome_labels_metadata
from napari_sam.volume import source as _source
from napari_sam.volume.source import (
    DEFAULT_CHUNK,
    default_tiles,
    model_amg_params,
    prepare_source,
    worker_predictor,
)

__all__ = ['sam_segment', 'segment_volume']


def sam_segment(
    image: np.ndarray,
    *,
    channel_axis: int | None,
    contrast_limits: np.ndarray,
    model: str = "builtin",
    checkpoint: str | None = None,
    device: str | None = None,
    tile_shape: Sequence[int] | None = None,
    halo: Sequence[int] | None = None,
    amg_params: dict | None = None,
    cache: str | None = None,
    cache_key: dict | None = None,
    slice_index: int = 0,
) -> np.ndarray:
    """The default per-slice function: tiled automatic SAM labelling of one 2-D slice.

    With ``cache`` (an :class:`~napari_sam.volume.cache.EmbeddingCache` folder) and its
    ``cache_key``, tile embeddings of slice ``slice_index`` are read from / written to it.

    Returns
    -------
    numpy.ndarray
        ``(Y, X)`` uint32 labels, 0 background.
    """
    from napari_sam.tiled.tiles import segment_image

    predictor = worker_predictor(model, checkpoint, device)
    if cache is not None:
        from napari_sam.volume.cache import CachingPredictor, EmbeddingCache

        predictor = CachingPredictor(predictor, EmbeddingCache(cache, cache_key))
        predictor.start_slice(slice_index)
    return segment_image(
        image, predictor, channel_axis=channel_axis, contrast_limits=contrast_limits,
        tile_shape=tile_shape, halo=halo, **model_amg_params(model, amg_params),
    )


def _out_index(out_axes: str, loop_axes: str, loop_index: tuple) -> tuple:
    pos = dict(zip(loop_axes, loop_index))
    return tuple(pos[a] if a in pos else (0 if a == "C" else slice(None)) for a in out_axes)


def segment_volume(
    source: str | os.PathLike | np.ndarray | da.Array,
    output: str | os.PathLike | None = None,
    *,
    model: str = "builtin",
    checkpoint: str | os.PathLike | None = None,
    device: str | None = None,
    axes: str | None = None,
    level: int = 0,
    channel: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: Any = None,
    tile_shape: Sequence[int] | None = None,
    halo: Sequence[int] | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    compact: bool = True,
    link_3d: bool = False,
    link_iou: float = 0.5,
    label_name: str | None = None,
    cache: str | os.PathLike | None = None,
    segment_fn: Callable[..., np.ndarray] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
    **amg_params: Any,
) -> da.Array:
    """Label every 2-D slice of an image or volume with automatic SAM segmentation.

    Parameters
    ----------
    source : path or array
        A path understood by :func:`napari_sam.volume.io.open_image`, or a numpy/dask array.
    output : path, optional
        Zarr labels array to write (uint32, chunks ``(1, ..., tile, tile)``).  Without
        it (and without ``label_name``) the result is a lazy dask array computed on demand.
    model, checkpoint, device
        Model for the default segment function (``load_model`` name, or a config ``.json``).
    axes, level, channel, channels
        Input axes override, multiscale level, one channel or up to three channels as RGB.
    contrast_limits : array-like ``(k, 2)``, optional
        Default: estimated once for the volume (:func:`napari_sam.volume.slices.volume_contrast_limits`).
    tile_shape, halo, **amg_params
        Passed to :func:`napari_sam.tiled.tiles.segment_image`.
    scheduler : None, "threads", "processes", "synchronous", address or ``distributed.Client``
        Local dask scheduler by default; an address like ``"tcp://host:8786"`` submits to a cluster.
    workers : int, optional
        Local workers (default 1 with the SAM model, which uses all cores itself).
    resume, overwrite : bool
        Continue an interrupted run (slices with a done marker are skipped) / replace the output.
    compact : bool
        Renumber ids to ``1..N`` after all slices are written (else slice ``k`` keeps
        ``(k+1) * id_block + 1..n_k``).
    link_3d, link_iou
        Join objects of neighbouring Z slices whose IoU exceeds ``link_iou`` into 3-D objects.
    cache : path, optional
        An :class:`~napari_sam.volume.cache.EmbeddingCache` folder (``napari-sam embed``) whose
        tile embeddings are reused (and filled when missing); a cache made for other
        data, model, normalisation or tiles raises :class:`~napari_sam.volume.cache.CacheMismatchError`.
    label_name : str, optional
        For an OME-Zarr input: write to its ``labels/<label_name>`` group (with NGFF metadata).
    segment_fn : callable, optional
        ``segment_fn(image2d, *, channel_axis, contrast_limits) -> (Y, X) int labels``;
        replaces the SAM model (used by tests and custom pipelines; must be picklable for
        process and cluster schedulers).
    progress, cancel
        ``progress(done, total, desc)`` per finished slice; cancel token (see ``napari_sam.progress``).

    Returns
    -------
    dask.array.Array
        ``(*loop, Y, X)`` uint32 labels (for an OME-Zarr label, the image's axes with C of size 1).
    """
    if link_3d and not 0.0 <= float(link_iou) < 1.0:
        raise ValueError(f"link_iou must be in [0, 1), got {link_iou}")
    if resume and overwrite:
        raise ValueError("choose either resume or overwrite, not both")
    src = prepare_source(source, axes=axes, level=level, channel=channel, channels=channels,
                          contrast_limits=contrast_limits)
    if link_3d and "Z" not in src.in_axes:
        raise ValueError(f"--link-3d joins objects across Z, but the input axes {src.in_axes!r} have no Z")
    view, loop_axes, has_ch, src_spec, meta = src.view, src.loop_axes, src.has_ch, src.spec, src.meta
    in_axes, chan_tuple, limits, indices = src.in_axes, src.channels, src.limits, src.indices
    loop_shape, ny, nx, n_slices, nloop = src.loop_shape, src.ny, src.nx, src.n_slices, len(src.loop_axes)
    block = vol.id_block_for(n_slices)
    tile_shape, halo = default_tiles(ny, nx, tile_shape, halo)
    if segment_fn is None:
        key = None
        if cache is not None:
            key = _source.cache_key(view, meta, model, checkpoint, limits, tile_shape, halo, amg_params)
            EmbeddingCache(cache, key)  # raises CacheMismatchError now rather than in a worker
        segment_fn = functools.partial(
            sam_segment, model=str(model), checkpoint=None if checkpoint is None else str(checkpoint),
            device=device, tile_shape=tile_shape, halo=halo, amg_params=dict(amg_params),
            cache=None if cache is None else str(cache), cache_key=key,
        )
        fn_name = f"sam:{model}"
        workers = 1 if workers is None else workers
    else:
        if cache is not None:
            raise ValueError("an embedding cache is only used by the SAM model, not by a custom segment_fn")
        if amg_params:
            raise TypeError(f"unexpected options {sorted(amg_params)} with a custom segment_fn")
        fn_name = _callable_name(segment_fn)

    if output is None and label_name is None:
        if link_3d:
            raise ValueError("link_3d needs an output path (the linking reads the written slices)")
        parts = [
            da.from_delayed(dask.delayed(vol._lazy_slice)(
                view[idx] if src_spec is None else None, k=k, block=block, contrast_limits=limits,
                has_channels=has_ch, segment_fn=segment_fn, src=src_spec, loop_index=idx),
                shape=(ny, nx), dtype=np.uint32)
            for k, idx in enumerate(indices)
        ]
        return da.stack(parts).reshape(loop_shape + (ny, nx)) if nloop else parts[0]

    # ---------------- output target
    chunk = int(tile_shape[0]) if tile_shape else DEFAULT_CHUNK
    attrs: dict[str, Any] = {}
    ome = None
    if label_name is not None:
        ome = ome_zarr_root(meta["path"]) if meta.get("format") == "ome-zarr" else None
        if ome is None:
            raise ValueError("label_name (--label-name) needs an OME-Zarr image as input")
        if output is not None:
            raise ValueError("give either an output path or label_name, not both")
        out_axes = ome["axes"]
        out_path = Path(ome["root"]) / "labels" / label_name / "0"
        zarr_format = int(ome["zarr_format"])
    else:
        out_axes = loop_axes + "YX"
        out_path = Path(output)
        if meta.get("path"):
            src_path, dst = Path(meta["path"]).resolve(), out_path.resolve()
            if dst == src_path or dst in src_path.parents or src_path in dst.parents:
                raise ValueError(f"the output {out_path} overlaps the input {meta['path']}; choose another "
                                 "output path (for OME-Zarr labels inside the image use --label-name)")
        zarr_format = 3
    out_shape = tuple(1 if a == "C" else view.shape[loop_axes.index(a)] if a in loop_axes
                      else (ny if a == "Y" else nx) for a in out_axes)
    out_chunks = tuple(min(chunk, s) if a in "YX" else 1 for a, s in zip(out_axes, out_shape))
    signature = json_safe({
        "data": data_identity(view, path=meta.get("path")), "axes": in_axes, "level": level,
        "channel": channel, "channels": chan_tuple, "block": block, "contrast_limits": limits,
        "segment_fn": fn_name, "checkpoint": None if checkpoint is None else str(checkpoint),
        "tile_shape": tile_shape, "halo": halo, "amg_params": amg_params,
        "compact": compact, "link_3d": link_3d, "link_iou": link_iou, "out_axes": out_axes,
    })
    attrs["napari_sam"] = {"axes": out_axes, "id_block": block, "source": meta.get("path"), "state": "running"}
    if "geotiff" in meta:
        attrs["geotiff"] = meta["geotiff"]
    if meta.get("scale") is not None:
        attrs["napari_sam"]["scale"] = meta["scale"]
    if ome is not None and not out_path.exists():
        scale = list(meta.get("scale") or [1.0] * len(out_axes))
        scale = [1.0 if a == "C" else s for a, s in zip(out_axes, scale)]
        axes_meta = [a for a in ome["multiscale"]["axes"]]
        write_ome_labels_metadata(ome["root"], label_name, axes=axes_meta, scale=scale,
                                  version=ome["version"], zarr_format=zarr_format)
    prepare_labels_array(out_path, shape=out_shape, chunks=out_chunks, signature=signature, attrs=attrs,
                         resume=resume, overwrite=overwrite, zarr_format=zarr_format)
    state = out_path / vol.STATE_DIR
    state.mkdir(exist_ok=True)
    out_idx = [_out_index(out_axes, loop_axes, idx) for idx in indices]

    # ---------------- slices
    tasks = [
        dask.delayed(vol._segment_slice, pure=False)(
            view[idx] if src_spec is None else None, k=k, src=src_spec, loop_index=idx, out_path=str(out_path),
            out_index=out_idx[k], block=block, contrast_limits=limits, has_channels=has_ch, segment_fn=segment_fn)
        for k, idx in enumerate(indices) if not (state / f"slice-{k}.json").exists()
    ]
    done_before = n_slices - len(tasks)
    vol.compute_tasks(tasks, scheduler=scheduler, workers=workers, progress=progress, cancel=cancel,
                      desc="slices", offset=done_before, total=n_slices)
    counts = [vol.read_marker(state / f"slice-{k}.json") for k in range(n_slices)]

    # ---------------- relabel (compaction and/or 3-D linking)
    arr = zarr.open_array(str(out_path), mode="r+")
    n_final = int(sum(counts))
    if compact or link_3d:
        tables_path = state / "tables.npz"
        if not tables_path.exists():
            edges: list = []
            if link_3d:
                zpos = loop_axes.index("Z")
                pairs = [(k, j) for k, idx in enumerate(indices) for j in [k + _stride(loop_shape, zpos)]
                         if idx[zpos] + 1 < loop_shape[zpos]]
                etasks = [dask.delayed(vol._edges_task)(str(out_path), out_idx[a], out_idx[b], (a + 1) * block,
                                                        (b + 1) * block, float(link_iou)) for a, b in pairs]
                results = vol.compute_tasks(etasks, scheduler=scheduler, workers=workers, progress=progress,
                                            cancel=cancel, desc="linking")
                edges = [(a, b, e) for (a, b), e in zip(pairs, results)]
            tables = vol.relabel_tables(counts, edges)
            n_final = int(max((int(t.max()) for t in tables if t.size), default=0))
            if n_final > block:
                raise ValueError(
                    f"{n_final} objects do not fit the relabelling scheme (at most {block}); "
                    "run with compact=False (--no-compact) and without link_3d"
                )
            tmp = state / ".tables.tmp.npz"
            np.savez(tmp, **{f"t{k}": t for k, t in enumerate(tables)})
            os.replace(tmp, tables_path)
        with np.load(tables_path) as tabs:
            n_final = int(max((int(tabs[f"t{k}"].max()) for k in range(n_slices) if tabs[f"t{k}"].size), default=0))
        rtasks = [dask.delayed(vol._relabel_task, pure=False)(str(out_path), k, out_idx[k], (k + 1) * block)
                  for k in range(n_slices)]
        vol.compute_tasks(rtasks, scheduler=scheduler, workers=workers, progress=progress, cancel=cancel,
                          desc="relabelling")
    info = dict(arr.attrs.get("napari_sam", {}))
    info.update({"state": "complete", "n_labels": n_final, "ids": "1..N" if (compact or link_3d) else "block"})
    arr.attrs["napari_sam"] = json_safe(info)
    return da.from_zarr(zarr.open_array(str(out_path), mode="r"))


def _callable_name(fn: Callable) -> str:
    """A stable name for a segment function (recorded in the run signature for --resume)."""
    if isinstance(fn, functools.partial):
        kws = ", ".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
        return f"{_callable_name(fn.func)}({kws})"
    return f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _stride(shape: tuple, axis: int) -> int:
    return int(np.prod(shape[axis + 1:])) if axis + 1 < len(shape) else 1
