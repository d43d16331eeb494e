"""Tiled automatic segmentation of 2D images of any size.

:func:`segment_image` is the single 2D entry point of the batch runner and
the napari widget.  The image (numpy, dask or zarr) is read one window at a
time (tile core + halo), every window is segmented by
:class:`~napari_sam.automatic.generator.AutomaticMaskGenerator` with contrast limits
estimated ONCE for the whole image, records are merged across tiles by
:func:`~napari_sam.tiled.stitching.stitch_tiles` and painted into ``out`` block by
block by :func:`~napari_sam.tiled.stitching.write_labels`.  Only the mask records
(bbox-local) and one window are ever in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.automatic.grid import crop_image, global_contrast_limits, spatial_shape
from napari_sam.automatic.labels import masks_to_labels
from napari_sam.automatic.params import AmgParams
from napari_sam.automatic.records import MaskRecord
from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, report
from napari_sam.tiled.stitching import Tile, shift_record, stitch_tiles, write_labels

__all__ = ["MIN_TILE", "Tile", "tile_grid", "segment_image", "segment_records", "check_image_shape"]

#: smallest tile side and image side segmented automatically (SAM's patch size): a thinner
#: image or tile holds less than one patch and cannot give meaningful masks
MIN_TILE = 16


def check_image_shape(shape: Sequence[int]) -> None:
    """ValueError unless both sides of a 2-D ``shape`` are at least :data:`MIN_TILE` pixels."""
    h, w = (int(s) for s in shape)
    if min(h, w) < MIN_TILE:
        raise ValueError(
            f"the image is {h} x {w} pixels: too small to segment, each side needs at least {MIN_TILE} "
            "pixels (SAM's patch size); pad or crop it, or check the axes (--axes / axes=)"
        )


def _fold_amg(amg: AmgParams | None, keywords: dict[str, Any]) -> AmgParams:
    """``amg`` (default: all from the model card) with the loose keywords folded in."""
    if amg is not None and not isinstance(amg, AmgParams):
        raise TypeError(f"amg must be an AmgParams, got {type(amg).__name__}")
    return (amg or AmgParams()).replace(**keywords)


def _pair(value: int | Sequence[int], name: str, *, minimum: int) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    else:
        try:
            a, b = value  # type: ignore[misc]
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        pair = (int(a), int(b))
    if min(pair) < minimum:
        raise ValueError(f"{name} must be at least {minimum} along each axis, got {value!r}")
    return pair


def tile_grid(
    image_shape: tuple[int, int], tile_shape: int | Sequence[int], halo: int | Sequence[int] = 0
) -> list[Tile]:
    """Tiles whose cores partition the image, each with a window = core + halo.

    Parameters
    ----------
    image_shape : (H, W)
    tile_shape : int or (th, tw)
        Core size; the last row/column of tiles may be smaller.
    halo : int or (hr, hc)
        Context added on every side of the core (clipped at the image border).

    Returns
    -------
    list of Tile, in row-major tile order.

    Examples
    --------
    A 100 x 150 image in 64 px tiles with an 8 px halo; cores and windows are
    half-open ``(r0, c0, r1, c1)`` boxes:

    >>> tiles = tile_grid((100, 150), 64, halo=8)
    >>> len(tiles)
    6
    >>> tiles[4]
    Tile(index=(1, 1), core=(64, 64, 100, 128), window=(56, 56, 100, 136))
    """
    h, w = (int(s) for s in image_shape)
    th, tw = _pair(tile_shape, "tile_shape", minimum=1)
    hr, hc = _pair(halo, "halo", minimum=0)
    tiles = []
    for i, r0 in enumerate(range(0, h, th)):
        for j, c0 in enumerate(range(0, w, tw)):
            r1, c1 = min(r0 + th, h), min(c0 + tw, w)
            window = (max(r0 - hr, 0), max(c0 - hc, 0), min(r1 + hr, h), min(c1 + hc, w))
            tiles.append(Tile((i, j), (r0, c0, r1, c1), window))
    return tiles


def segment_records(
    image: Any,
    predictor: Any,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: Any = None,
    tile_shape: int | Sequence[int] | None = None,
    halo: int | Sequence[int] | None = None,
    merge_iou: float = 0.5,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
    amg: AmgParams | None = None,
    **amg_params: Any,
) -> tuple[list[MaskRecord], tuple[int, int]]:
    """Mask records of a whole image, stitched across tiles (see :func:`segment_image`).

    Returns
    -------
    records : list of MaskRecord in image coordinates, one per object
    image_shape : (H, W)
    """
    params = _fold_amg(amg, amg_params)
    shape = spatial_shape(image, channel_axis)
    check_image_shape(shape)
    if tile_shape is not None and min(_pair(tile_shape, "tile_shape", minimum=0)) < MIN_TILE:
        raise ValueError(f"tile_shape {tile_shape!r} is too small: each side needs at least {MIN_TILE} pixels "
                         "(e.g. 1024, the size SAM sees)")
    if tile_shape is None:
        if halo not in (None, 0):
            raise ValueError("halo needs tile_shape: pass tile_shape= to tile the image, or drop halo")
        tiles = tile_grid(shape, shape, 0)
    else:
        tiles = tile_grid(shape, tile_shape, 0 if halo is None else halo)
    if contrast_limits is None:
        contrast_limits = global_contrast_limits(image, channel_axis, channels)
    generator = AutomaticMaskGenerator(predictor, params)
    per_tile: dict[tuple[int, int], list[MaskRecord]] = {}
    n = len(tiles)
    for t, tile in enumerate(tiles):
        check_cancelled(cancel)
        window = np.asarray(crop_image(image, tile.window, channel_axis))

        def sub(done: int, total: int, desc: str, t: int = t) -> None:
            report(progress, t * total + done, n * total, f"tile {t + 1}/{n}: {desc}")

        recs = generator.generate(
            window, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits, progress=sub, cancel=cancel
        )
        per_tile[tile.index] = [shift_record(r, tile.window[0], tile.window[1]) for r in recs]
    return stitch_tiles(per_tile, tiles, shape, merge_iou=merge_iou), shape


def segment_image(
    image: Any,
    predictor: Any,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: Any = None,
    tile_shape: int | Sequence[int] | None = None,
    halo: int | Sequence[int] | None = None,
    out: Any = None,
    overlap: str = "smaller_on_top",
    merge_iou: float = 0.5,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
    return_scores: bool = False,
    amg: AmgParams | None = None,
    **amg_params: Any,
) -> Any:
    """Segment everything in a 2D image, optionally tile by tile.

    Parameters
    ----------
    image : (H, W), (H, W, 3) or 3D with ``channel_axis``; numpy, dask or zarr
        Read one window at a time; never modified.
    predictor : napari_sam.predict.predictor.Predictor
    channel_axis : int, optional
    channels : sequence of int, optional
        Up to three channels / bands mapped to RGB (see :func:`napari_sam.normalize.to_rgb_uint8`).
    contrast_limits : (C, 2) array-like, optional
        Default: estimated once from a subsample of the whole image with
        :func:`napari_sam.normalize.estimate_contrast_limits` and used for
        every tile (uint8 RGB is used as is).
    tile_shape : int or (th, tw), optional
        Tile core size; ``None`` runs one AMG over the whole image.
    halo : int or (hr, hc), optional
        Context around each core; make it at least the radius of the largest
        object (better: its diameter).  Default 0.
    out : (H, W) array, optional
        Written block by block (e.g. a zarr array on disk: the label image is
        never held in memory).  Default: a new numpy array.
    overlap : {"smaller_on_top", "score"}
        Overlap policy (see :func:`napari_sam.automatic.labels.paint_order`).
    merge_iou : float
        Mask IoU above which records of neighbouring tiles are the same object.
    progress, cancel
        See :mod:`napari_sam.progress`.
    return_scores : bool
        Also return the per-label scores (predicted IoU, stability score,
        prompt point) of the record behind each label; see
        :func:`napari_sam.automatic.labels.label_scores` and :func:`napari_sam.object_table`.
    amg : AmgParams, optional
        Automatic-generation parameters (fields left unset follow the model card).
    **amg_params
        :class:`~napari_sam.automatic.generator.AutomaticMaskGenerator` options
        (``points_per_side``, ``pred_iou_thresh``, ...), folded into ``amg``
        (a keyword wins); applied to every tile.

    Returns
    -------
    labels : (H, W) uint32 (or ``out``)
        0 background, objects 1..N; independent of tile processing order.
    scores : dict of str -> (N,) ndarray
        Only with ``return_scores``: row ``i`` describes label ``i + 1``.

    Raises
    ------
    ValueError
        A side of the image or of ``tile_shape`` under :data:`MIN_TILE` pixels, or a
        parameter out of range (see :class:`~napari_sam.automatic.params.AmgParams`).
    """
    if out is not None:
        shape = spatial_shape(image, channel_axis)
        if tuple(int(s) for s in out.shape) != shape:
            raise ValueError(f"out has shape {tuple(out.shape)} but the image is {shape}")
        if not np.issubdtype(np.dtype(out.dtype), np.integer):
            raise TypeError(f"out must have an integer dtype (uint32 recommended), got {out.dtype}")
    records, shape = segment_records(
        image,
        predictor,
        channel_axis=channel_axis,
        channels=channels,
        contrast_limits=contrast_limits,
        tile_shape=tile_shape,
        halo=halo,
        merge_iou=merge_iou,
        progress=progress,
        cancel=cancel,
        amg=_fold_amg(amg, amg_params),
    )
    if out is None:
        return masks_to_labels(records, shape, overlap=overlap, return_scores=return_scores)
    return write_labels(records, out, overlap=overlap, return_scores=return_scores)
