"""The on-disk embedding cache of the interactive session: which entry holds which slice or tile.

:class:`~napari_sam._napari.session.Session` inherits :class:`DiskCacheMixin`.
A :class:`napari_sam.volume.cache.EmbeddingCache` keeps entries
``(slice number, tile number)``: slices are numbered in C order over the
axes not displayed, and only planes of the last two axes are cached.  On a
plane prompted whole the embedding is tile 0; on a plane prompted in tiles
(:class:`~napari_sam.predict.tiled_embedding.TiledPrompter`) the grid tiles
are numbers ``0 .. n - 1`` (:meth:`TiledPrompter.tile_number
<napari_sam.predict.tiled_embedding.TiledPrompter.tile_number>`) and the
whole-plane embedding (propagation) comes after them, provided the cache
key's tile layout is the session's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from napari_sam._napari.layers import PlaneRef
from napari_sam.predict.tiled_embedding import TiledPrompter, grid_layout

__all__ = ["DiskCacheMixin"]


class DiskCacheMixin:
    """The on-disk embedding cache part of :class:`~napari_sam._napari.session.Session`.

    The class using it provides the attributes annotated below and the
    methods ``contrast_limits()``, ``uses_tiles(ref)``, ``_tiles_shape(shape)``
    and ``_shape()``.
    """

    embedding_cache: Any
    predictor: Any
    image_layer: Any
    tile_halo: int | None
    lock: threading.RLock
    _tilers: OrderedDict[tuple, tuple[PlaneRef, TiledPrompter]]

    def open_disk_cache(self, path: Any, *, model_id: str, reset: bool = False) -> Any:
        """Attach an on-disk :class:`napari_sam.volume.cache.EmbeddingCache` at ``path``.

        The cache key covers ``model_id``, the layer's contrast limits, the
        data identity and, on planes prompted in tiles, the tile layout
        (:func:`~napari_sam.predict.tiled_embedding.grid_layout`), so a cache
        made for other data or settings is refused (``CacheMismatchError``)
        unless ``reset=True``.  The tiles of a tiled plane are then entries
        ``(slice, tile number)``; windows centred on objects crossing tiles
        stay in memory.  Returns the cache.
        """
        from napari_sam.volume.cache import CacheMismatchError, EmbeddingCache, data_identity, make_key

        data = self.image_layer.data[0] if self.image_layer.multiscale else self.image_layer.data
        cl = self.contrast_limits()
        layout = self._disk_layout(self._shape()[-2:])
        key = make_key(model_id=model_id, contrast_limits=[[0, 255]] if cl is None else cl[None],
                       tile_layout=layout, data=data_identity(data))
        try:
            cache = EmbeddingCache(path, key, reset=reset)
        except CacheMismatchError as exc:
            raise CacheMismatchError(_foreign_cache(path, layout) or str(exc)) from None
        with self.lock:
            self.embedding_cache = cache
            for ref, tiler in self._tilers.values():  # tilers made before: their tiles go to the disk too
                tiler.store = self._tile_store(ref)
        return cache

    def _slice_number(self, ref: PlaneRef) -> int:
        """Flat index of the slice among all slices (C order over the non-displayed axes)."""
        shape = self._shape()
        stacked = [shape[ax] for ax, i in enumerate(ref.index) if i is not None]
        return int(np.ravel_multi_index(ref.key, stacked)) if stacked else 0

    def _uses_disk(self, ref: PlaneRef) -> bool:
        n = len(ref.index)
        return self.embedding_cache is not None and ref.axes == (n - 2, n - 1)

    def _disk_layout(self, shape: tuple[int, ...]) -> dict:
        """The ``tile_layout`` of the cache key for planes of ``shape`` (the last two axes)."""
        size = getattr(self.predictor, "image_size", None)
        if size is None or not self._tiles_shape(shape):
            return {"tile_shape": None, "plane": "last two axes"}
        return {**grid_layout(int(size), self.tile_halo), "plane": "last two axes",
                "grid": "interactive"}

    def _tiles_on_disk(self, ref: PlaneRef) -> bool:
        """Whether the grid tiles of ``ref`` go to the on-disk cache (its key has this tile layout)."""
        key = getattr(self.embedding_cache, "key", None)
        return (self._uses_disk(ref) and self.uses_tiles(ref) and isinstance(key, dict)
                and key.get("tile_layout") == self._disk_layout(ref.shape))

    def _tile_store(self, ref: PlaneRef) -> Any:
        if not self._tiles_on_disk(ref):
            return None
        from napari_sam.volume.cache import SliceTiles

        return SliceTiles(self.embedding_cache, self._slice_number(ref))

    def _whole_entry(self, ref: PlaneRef) -> int:
        """The tile number of the whole-plane embedding: 0, or after the grid tiles on a tiled plane."""
        if not self._tiles_on_disk(ref):
            return 0
        stride = self._disk_layout(ref.shape)["stride"][0]
        return int(np.prod([max(1, -(-int(s) // stride)) for s in ref.shape]))

    def _disk_get(self, ref: PlaneRef) -> Any:
        if not self._uses_disk(ref):
            return None
        return self.embedding_cache.get(self._slice_number(ref), self._whole_entry(ref))

    def _disk_put(self, ref: PlaneRef, emb: Any) -> None:
        if self._uses_disk(ref):
            self.embedding_cache.put(self._slice_number(ref), self._whole_entry(ref), emb)


def _foreign_cache(path: Any, layout: dict) -> str | None:
    """Why a cache made by ``napari-sam embed`` cannot serve interactive prompts (None: not such a cache)."""
    from napari_sam.volume.cache import EmbeddingCache

    stored = EmbeddingCache(path).key.get("tile_layout") or {}
    if "crop_n_layers" not in stored:
        return None
    tiles = "whole slices" if stored.get("tile_shape") is None else \
        f"tiles of {stored['tile_shape'][0]} px + a {(stored.get('halo') or [0])[0]} px halo"
    mine = "whole slices" if layout.get("tile_shape") is None else \
        f"{layout['tile_shape'][0]} px tiles {layout['stride'][0]} px apart at native resolution"
    return (f"the embedding cache {path} was made by `napari-sam embed` ({tiles}, for automatic "
            f"segmentation); interactive prompts need {mine}, so its embeddings do not fit: "
            "choose another folder for the interactive embedding cache")
