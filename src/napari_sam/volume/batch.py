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
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from napari_sam.automatic.params import AmgParams
from napari_sam.threads import ThreadLimited
from napari_sam.tiled.tiles import check_image_shape
from napari_sam.volume import slices as vol
from napari_sam.volume.cache import EmbeddingCache, data_identity, weights_identity
from napari_sam.volume.io import json_safe, ome_zarr_root, prepare_labels_array, write_ome_labels_metadata
from napari_sam.volume.ome import write_label_pyramid
from napari_sam.volume.options import (
    OutputOptions,
    RunOptions,
    SourceOptions,
    TileOptions,
    split_options,
)
from napari_sam.volume.output import (
    OutputLock,
    check_no_overlap,
    refuse_foreign,
    staging_path,
    store_paths,
    swap_in,
)
from napari_sam.volume.source import (
    DEFAULT_CHUNK,
    default_tiles,
    model_amg_params,
    model_input_size,
    prepare_source,
    volume_cache_key,
    worker_predictor,
)
from napari_sam.volume.streaming import segment_slice_streamed, takes_out
from napari_sam.volume.writers import finish_output, resolve_output

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
    return_scores: bool = False,
    out: Any = None,
) -> Any:
    """The default per-slice function: tiled automatic SAM labelling of one 2-D slice.

    With ``cache`` (an :class:`~napari_sam.volume.cache.EmbeddingCache` folder) and its
    ``cache_key``, tile embeddings of slice ``slice_index`` are read from / written to it.
    With ``out`` (a 2-D writable array, e.g. :class:`~napari_sam.volume.streaming.OffsetLabels`)
    the labels are written into it block by block and ``image`` may be lazy: nothing of the
    slice's size is held in memory (see :mod:`napari_sam.volume.streaming`).

    Returns
    -------
    numpy.ndarray
        ``(Y, X)`` uint32 labels (or ``out``), 0 background (with ``return_scores``:
        ``(labels, scores)``, see :func:`napari_sam.tiled.tiles.segment_image`).
    """
    from napari_sam.tiled.tiles import segment_image

    predictor = worker_predictor(model, checkpoint, device)
    if cache is not None:
        from napari_sam.volume.cache import CachingPredictor, EmbeddingCache

        predictor = CachingPredictor(predictor, EmbeddingCache(cache, cache_key))
        predictor.start_slice(slice_index)
    return segment_image(
        image, predictor, channel_axis=channel_axis, contrast_limits=contrast_limits,
        tile_shape=tile_shape, halo=halo, out=out, return_scores=return_scores,
        **model_amg_params(model, amg_params),
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
    source_options: SourceOptions | None = None,
    tiles: TileOptions | None = None,
    output_options: OutputOptions | None = None,
    run: RunOptions | None = None,
    cache: str | os.PathLike | None = None,
    segment_fn: Callable[..., np.ndarray] | None = None,
    table: str | os.PathLike | None = None,
    amg: AmgParams | None = None,
    **options: Any,
) -> da.Array:
    """Label every 2-D slice of an image or volume with automatic SAM segmentation.

    Parameters
    ----------
    source : path or array
        A path understood by :func:`napari_sam.volume.io.open_image`, or a numpy/dask array.
    output : path, optional
        Labels to write, the format chosen by the suffix (:mod:`napari_sam.volume.writers`):
        ``.zarr`` a uint32 zarr array (chunks ``(1, ..., tile, tile)``, ``zarr_format`` 3 or
        2), ``.ome.zarr`` an NGFF image-label group (0.5 on zarr v3, 0.4 on v2), ``.tif`` / ``.tiff`` / ``.ome.tif`` a TIFF (BigTIFF when large; a GeoTIFF input's
        CRS and transform are kept); any other suffix is a ``ValueError``.  Without
        it (and without ``label_name``) the result is a lazy dask array computed on demand.
    model, checkpoint, device
        Model for the default segment function (``load_model`` name, or a config ``.json``).
        It is loaded before any output is touched, so a wrong name fails early.
    source_options : SourceOptions, optional
        ``axes``, ``level``, ``channel``, ``channels``, ``contrast_limits`` (default:
        estimated once for the volume, :func:`napari_sam.volume.slices.volume_contrast_limits`),
        ``strict`` (chunks missing from a zarr input are an error, not a warning).
    tiles : TileOptions, optional
        ``tile_shape``, ``halo`` for :func:`napari_sam.tiled.tiles.segment_image`.
    output_options : OutputOptions, optional
        ``resume`` (skip slices with a done marker), ``overwrite`` (replace an output
        napari-sam wrote: the new one is written beside it and swapped in when complete),
        ``compact`` (renumber ids to ``1..N``), ``label_name`` (OME-Zarr input: write to its
        ``labels/<label_name>`` group), ``link_3d`` / ``link_iou`` (join objects of
        neighbouring Z slices whose IoU exceeds ``link_iou``), ``zarr_format`` (2 or 3).
    run : RunOptions, optional
        ``scheduler`` (None, "threads", "processes", "synchronous", an address such as
        ``"tcp://host:8786"`` or a ``distributed.Client``), ``workers`` (default 1 with the
        SAM model, which uses all cores itself), ``progress(done, total, desc)``, ``cancel``
        token (see ``napari_sam.progress``), ``threads`` (torch and BLAS threads per running
        slice; default: one per worker thread on a dask cluster, the cores divided by
        ``workers`` locally; see :mod:`napari_sam.threads`).
    cache : path, optional
        An :class:`~napari_sam.volume.cache.EmbeddingCache` folder (``napari-sam embed``) whose
        tile embeddings are reused (and filled when missing); a cache made for other
        data, model, normalisation or tiles raises :class:`~napari_sam.volume.cache.CacheMismatchError`.
    segment_fn : callable, optional
        ``segment_fn(image2d, *, channel_axis, contrast_limits) -> (Y, X) int labels``;
        replaces the SAM model (used by tests and custom pipelines; must be picklable for
        process and cluster schedulers).  It may return ``(labels, scores)`` (see
        :func:`napari_sam.automatic.labels.label_scores`) to fill the object table.
    table : path, optional
        Write the object table (CSV, one row per object and slice: id, slice, area, bbox,
        centroid, predicted IoU, stability score, prompt point; see
        :func:`napari_sam.object_table`) once the output is complete.  Needs an output.
    amg : AmgParams, optional
        Automatic-generation parameters for ``segment_image`` (fields left unset follow
        the model card).
    **options
        Any field of the four option classes by name (``overwrite=True``, ``axes="ZYX"``,
        ...); everything else is an AMG parameter (``points_per_side``,
        ``pred_iou_thresh``, ...), folded into ``amg`` (a keyword wins).

    Returns
    -------
    dask.array.Array
        ``(*loop, Y, X)`` uint32 labels (for an OME-Zarr label, the image's axes with C of size 1).
    """
    (so, to, oo, ro), amg_params = split_options(
        {SourceOptions: source_options, TileOptions: tiles, OutputOptions: output_options, RunOptions: run},
        options)
    if segment_fn is None:  # names and ranges checked before anything is opened
        if amg is not None and not isinstance(amg, AmgParams):
            raise TypeError(f"amg must be an AmgParams, got {type(amg).__name__}")
        amg_params = (amg or AmgParams()).replace(**amg_params).as_dict()
    elif amg is not None:
        raise TypeError("amg parameters are only used by the SAM model, not by a custom segment_fn")
    if output is not None and oo.label_name is not None:
        raise ValueError("give either an output path or label_name, not both")
    if output is not None:  # checks that need no reading, before the input is opened
        check_no_overlap(Path(output), [Path(source)] if isinstance(source, (str, os.PathLike))
                         else store_paths(source))
    fmt, final, output = resolve_output(output, resume=oo.resume, overwrite=oo.overwrite)
    if output is not None and (oo.overwrite or Path(output).is_file()):
        refuse_foreign(Path(output))
    src = prepare_source(source, axes=so.axes, level=so.level, channel=so.channel, channels=so.channels,
                         contrast_limits=so.contrast_limits, strict=so.strict)
    if oo.link_3d and "Z" not in src.in_axes:
        raise ValueError(f"--link-3d joins objects across Z, but the input axes {src.in_axes!r} have no Z")
    view, meta = src.view, src.meta
    limits, indices = src.limits, src.indices
    ny, nx, n_slices = src.ny, src.nx, src.n_slices
    block = vol.id_block_for(n_slices)
    if table is not None and output is None and oo.label_name is None:
        raise ValueError("table (--table) needs an output; for a lazy result use napari_sam.object_table")
    if segment_fn is None:
        check_image_shape((ny, nx))  # before the model is loaded
    input_size = None if segment_fn is not None else model_input_size(  # loads the model: fails early
        worker_predictor(str(model), None if checkpoint is None else str(checkpoint), device))
    tile_shape, halo = default_tiles(ny, nx, to.tile_shape, to.halo, input_size=input_size)
    workers = ro.workers
    weights = None
    if segment_fn is None:
        worker_predictor(str(model), None if checkpoint is None else str(checkpoint), device)  # fail early
        key = None
        if cache is not None:
            key = volume_cache_key(view, meta, model, checkpoint, limits, tile_shape, halo, amg_params)
            EmbeddingCache(cache, key)  # raises CacheMismatchError now rather than in a worker
        segment_fn = functools.partial(
            sam_segment, model=str(model), checkpoint=None if checkpoint is None else str(checkpoint),
            device=device, tile_shape=tile_shape, halo=halo, amg_params=dict(amg_params),
            cache=None if cache is None else str(cache), cache_key=key, return_scores=table is not None,
        )
        fn_name = f"sam:{model}"
        weights = weights_identity(model, checkpoint)  # by content: new weights at the same path are noticed
        workers = 1 if workers is None else workers
    else:
        if cache is not None:
            raise ValueError("an embedding cache is only used by the SAM model, not by a custom segment_fn")
        if amg_params:
            raise TypeError(f"unexpected options {sorted(amg_params)} with a custom segment_fn")
        fn_name = _callable_name(segment_fn)
    segment_fn = ThreadLimited(segment_fn, threads=ro.threads, workers=workers, scheduler=ro.scheduler)

    if output is None and oo.label_name is None:
        if oo.link_3d:
            raise ValueError("link_3d needs an output path (the linking reads the written slices)")
        return vol.lazy_labels(src, segment_fn, compact=oo.compact)  # id policy: napari_sam.volume.ids

    target = _output_target(output, oo, src, tile_shape)
    signature = json_safe({
        "data": data_identity(view, path=meta.get("path")), "axes": src.in_axes, "level": so.level,
        "channel": so.channel, "channels": src.channels, "block": block, "contrast_limits": limits,
        "segment_fn": fn_name, "weights": weights,
        "tile_shape": tile_shape, "halo": halo, "amg_params": amg_params,
        "compact": oo.compact, "link_3d": oo.link_3d, "link_iou": oo.link_iou, "out_axes": target.axes,
        "slice_check": "sha1",  # finished slices carry a checksum of their pixels (checked on --resume)
    })
    if fmt == "ome-zarr":
        final.mkdir(parents=True, exist_ok=True)  # the group folder holds the array and its lock
    with OutputLock(target.path):
        write_path = _choose_write_path(target.path, oo)
        if target.ome is not None and not target.path.exists():
            scale = list(meta.get("scale") or [1.0] * len(target.axes))
            scale = [1.0 if a == "C" else s for a, s in zip(target.axes, scale)]
            shift = meta.get("translation")
            shift = None if shift is None else [0.0 if a == "C" else t for a, t in zip(target.axes, shift)]
            write_ome_labels_metadata(target.ome["root"], oo.label_name, axes=list(target.ome["multiscale"]["axes"]),
                                      scale=scale, translation=shift, version=target.ome["version"],
                                      zarr_format=target.zarr_format)
        prepare_labels_array(write_path, shape=target.shape, chunks=target.chunks, signature=signature,
                             attrs=target.attrs, resume=oo.resume and write_path.exists(), overwrite=False,
                             zarr_format=target.zarr_format, dimension_names=target.dims)
        _run_slices(write_path, src, oo, ro, workers, block, segment_fn, target.axes)
        if table is not None:
            from napari_sam.volume.tables import volume_table

            volume_table(write_path, n_slices=n_slices, block=block, path=table,
                         out_index=[_out_index(target.axes, src.loop_axes, idx) for idx in indices])
        if write_path != target.path:
            swap_in(write_path, target.path)
        if target.ome is not None:  # label levels matching the image's coarser levels
            write_label_pyramid(target.ome["root"], oo.label_name, base_level=so.level)
        if fmt in ("ome-zarr", "tiff"):
            return finish_output(fmt, final, target.path, axes=target.axes, zarr_format=target.zarr_format, meta=meta)
    return da.from_zarr(zarr.open_array(str(target.path), mode="r"))


def _output_target(output: Any, oo: OutputOptions, src: Any, tile_shape: Any) -> SimpleNamespace:
    """Path, axes, shape, chunks and attributes of the output, checked against the input."""
    meta, loop_axes, view = src.meta, src.loop_axes, src.view
    chunk = int(tile_shape[0]) if tile_shape else DEFAULT_CHUNK
    ome = None
    inputs = [Path(meta["path"])] if meta.get("path") else store_paths(src.data)
    if oo.label_name is not None:
        ome = ome_zarr_root(meta["path"]) if meta.get("format") == "ome-zarr" else None
        if ome is None:
            raise ValueError("label_name (--label-name) needs an OME-Zarr image as input")
        out_axes = ome["axes"]
        out_path = Path(ome["root"]) / "labels" / oo.label_name / "0"
        zarr_format = int(ome["zarr_format"])
        inputs = [Path(ome["root"]) / d["path"] for d in ome["datasets"]]
        what = f"label group labels/{oo.label_name}"
    else:
        out_axes = loop_axes + "YX"
        out_path = Path(output)
        zarr_format = int(oo.zarr_format)
        what = "output"
    check_no_overlap(out_path, inputs, what=what)
    if out_path.exists() and not (oo.resume or oo.overwrite):
        refuse_foreign(out_path)
        raise ValueError(f"output {out_path} already exists; pass --resume to continue an interrupted run "
                         "or --overwrite to replace it (resume=True / overwrite=True in Python)")
    if out_path.exists():
        refuse_foreign(out_path)
    out_shape = tuple(1 if a == "C" else view.shape[loop_axes.index(a)] if a in loop_axes
                      else (src.ny if a == "Y" else src.nx) for a in out_axes)
    out_chunks = tuple(min(chunk, s) if a in "YX" else 1 for a, s in zip(out_axes, out_shape))
    attrs: dict[str, Any] = {"napari_sam": {"axes": out_axes, "id_block": vol.id_block_for(src.n_slices),
                                            "source": meta.get("path"), "state": "running"}}
    if "geotiff" in meta:
        attrs["geotiff"] = meta["geotiff"]
    if meta.get("scale") is not None:
        attrs["napari_sam"]["scale"] = meta["scale"]
    dims = ([str(a["name"] if isinstance(a, dict) else a) for a in ome["multiscale"]["axes"]] if ome is not None
            else [a.lower() for a in out_axes])
    return SimpleNamespace(path=out_path, axes=out_axes, shape=out_shape, chunks=out_chunks, attrs=attrs,
                           ome=ome, zarr_format=zarr_format, dims=dims)


def _choose_write_path(out_path: Path, oo: OutputOptions) -> Path:
    """Where this run writes: the output itself, or (replacing one) a staging folder beside it."""
    staged = staging_path(out_path)
    if staged.exists():
        refuse_foreign(staged)
        if oo.resume:
            return staged  # continue an interrupted --overwrite run
        if oo.overwrite:
            shutil.rmtree(staged)
    if oo.overwrite and out_path.exists():
        return staged
    return out_path


def _run_slices(out_path: Path, src: Any, oo: OutputOptions, ro: RunOptions, workers: Any, block: int,
                segment_fn: Callable, out_axes: str) -> None:
    """Segment the slices without a done marker, then relabel, then mark the output complete."""
    view, loop_axes, loop_shape, indices, n_slices = src.view, src.loop_axes, src.loop_shape, src.indices, src.n_slices
    scheduler, progress, cancel = ro.scheduler, ro.progress, ro.cancel
    state = out_path / vol.STATE_DIR
    state.mkdir(exist_ok=True)
    out_idx = [_out_index(out_axes, loop_axes, idx) for idx in indices]
    _check_finished_slices(out_path, src, ro, workers)
    task_fn = segment_slice_streamed if takes_out(segment_fn) else vol._segment_slice  # stream when it can
    tasks = [
        dask.delayed(task_fn, pure=False)(
            view[idx] if src.spec is None else None, k=k, src=src.spec, loop_index=idx, out_path=str(out_path),
            out_index=out_idx[k], block=block, contrast_limits=src.limits, has_channels=src.has_ch,
            segment_fn=segment_fn)
        for k, idx in enumerate(indices) if not (state / f"slice-{k}.json").exists()
    ]
    done_before = n_slices - len(tasks)
    vol.compute_tasks(tasks, scheduler=scheduler, workers=workers, progress=progress, cancel=cancel,
                      desc="slices", offset=done_before, total=n_slices)
    counts = [vol.read_marker(state / f"slice-{k}.json") for k in range(n_slices)]

    # ---------------- relabel (compaction and/or 3-D linking)
    arr = zarr.open_array(str(out_path), mode="r+")
    n_final = int(sum(counts))
    if oo.compact or oo.link_3d:
        tables_path = state / "tables.npz"
        if not tables_path.exists():
            edges: list = []
            if oo.link_3d:
                zpos = loop_axes.index("Z")
                pairs = [(k, j) for k, idx in enumerate(indices) for j in [k + _stride(loop_shape, zpos)]
                         if idx[zpos] + 1 < loop_shape[zpos]]
                etasks = [dask.delayed(vol._edges_task)(str(out_path), out_idx[a], out_idx[b], (a + 1) * block,
                                                        (b + 1) * block, float(oo.link_iou)) for a, b in pairs]
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
    info.update({"state": "complete", "n_labels": n_final, "ids": "1..N" if (oo.compact or oo.link_3d) else "block"})
    arr.attrs["napari_sam"] = json_safe(info)


def _check_finished_slices(out_path: Path, src: Any, ro: RunOptions, workers: Any) -> None:
    """Before resuming: every finished slice must still hold the pixels it was segmented from.

    Only the finished slices are read (the others are read when they are segmented), so
    a resumed run reads the input once, as an uninterrupted run does.
    """
    state = out_path / vol.STATE_DIR
    done = [k for k in range(src.n_slices) if (state / f"slice-{k}.json").exists()]
    if not done:
        return
    checks = [dask.delayed(vol._slice_unchanged, pure=False)(
        src.view[src.indices[k]] if src.spec is None else None, src=src.spec, loop_index=src.indices[k],
        marker=str(state / f"slice-{k}.json")) for k in done]
    same = vol.compute_tasks(checks, scheduler=ro.scheduler, workers=workers, progress=ro.progress,
                             cancel=ro.cancel, desc="checking finished slices")
    changed = [k for k, ok in zip(done, same) if not ok]
    if changed:
        shown = ", ".join(str(k) for k in changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise ValueError(f"cannot resume {out_path}: the input changed since slice{'s' if len(changed) > 1 else ''} "
                         f"{shown} {'were' if len(changed) > 1 else 'was'} segmented; use --overwrite "
                         "(overwrite=True) to start again")


def _callable_name(fn: Callable) -> str:
    """A stable name for a segment function (recorded in the run signature for --resume)."""
    if isinstance(fn, functools.partial):
        kws = ", ".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
        return f"{_callable_name(fn.func)}({kws})"
    return f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _stride(shape: tuple, axis: int) -> int:
    return int(np.prod(shape[axis + 1:])) if axis + 1 < len(shape) else 1
