"""Precompute embeddings of a volume into an :class:`~napari_sam.volume.cache.EmbeddingCache`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.progress import CancelToken, ProgressCallback
from napari_sam.volume.cache import EmbeddingCache, array_digest

__all__ = ['embed_volume']


def _embed_slice(image: Any, *, k: int, src: tuple | None, loop_index: tuple, has_channels: bool,
                 contrast_limits: np.ndarray, model: str, checkpoint: str | None, device: str | None,
                 tile_shape: Any, halo: Any, cache: str, cache_key: dict) -> int:
    """Encode the tiles of slice ``k`` missing from the cache; returns how many were computed."""
    from napari_sam.automatic.grid import crop_image
    from napari_sam.tiled.tiles import tile_grid
    from napari_sam.volume import source
    from napari_sam.volume.slices import read_slice

    store = EmbeddingCache(cache, cache_key)
    image = read_slice(image, src, loop_index)
    shape = image.shape[:2]
    tiles = tile_grid(shape, shape, 0) if tile_shape is None else tile_grid(shape, tile_shape, halo or 0)
    channel_axis = -1 if has_channels else None
    computed = 0
    for t, tile in enumerate(tiles):
        window = np.asarray(crop_image(image, tile.window, channel_axis))
        digest = array_digest(window)
        if store.check(k, t, digest):  # present, and computed from these very pixels
            continue
        predictor = source.worker_predictor(model, checkpoint, device)
        predictor.set_image(window, channel_axis=channel_axis, contrast_limits=contrast_limits)
        store.put(k, t, predictor.get_embedding(), digest=digest)
        computed += 1
    return computed


def embed_volume(
    source: Any,
    cache: str | os.PathLike,
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
    reset_cache: bool = False,
    strict: bool = False,
    scheduler: Any = None,
    workers: int | None = 1,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
) -> int:
    """Fill an :class:`~napari_sam.volume.cache.EmbeddingCache` with the embeddings of every slice and tile.

    Uses the same source handling, contrast limits and tile layout as
    :func:`~napari_sam.volume.batch.segment_volume` with the same options, so ``segment_volume(..., cache=cache)``
    then skips the image encoder.  Entries already present are kept.

    ``strict`` makes chunks missing from a zarr input an error (see ``segment_volume``).

    Returns
    -------
    int
        Number of (slice, tile) embeddings in the cache.
    """
    import dask

    from napari_sam.volume.slices import compute_tasks
    from napari_sam.volume.source import (
        default_tiles,
        model_input_size,
        prepare_source,
        volume_cache_key,
        worker_predictor,
    )

    src = prepare_source(source, axes=axes, level=level, channel=channel, channels=channels,
                         contrast_limits=contrast_limits, strict=strict)
    input_size = model_input_size(
        worker_predictor(str(model), None if checkpoint is None else str(checkpoint), device))
    tile_shape, halo = default_tiles(src.ny, src.nx, tile_shape, halo, input_size=input_size)
    key = volume_cache_key(src.view, src.meta, model, checkpoint, src.limits, tile_shape, halo, {})
    store = EmbeddingCache(cache, key, reset=reset_cache)
    tasks = [
        dask.delayed(_embed_slice, pure=False)(
            src.view[idx] if src.spec is None else None, k=k, src=src.spec, loop_index=idx,
            has_channels=src.has_ch, contrast_limits=src.limits, model=str(model),
            checkpoint=None if checkpoint is None else str(checkpoint), device=device,
            tile_shape=tile_shape, halo=halo, cache=str(cache), cache_key=key)
        for k, idx in enumerate(src.indices)
    ]
    compute_tasks(tasks, scheduler=scheduler, workers=workers, progress=progress, cancel=cancel,
                      desc="embedding")
    return len(store.entries())
