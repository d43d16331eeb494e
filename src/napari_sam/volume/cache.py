"""On-disk cache of SAM image embeddings (zarr), shared by the CLI and the napari plugin.

A cache holds the encoder output of every (slice, tile) of one dataset for one
model, normalisation and tile layout.  Those four things form the cache *key*,
stored in the cache; opening a cache with another key raises
:class:`CacheMismatchError` naming what differs, so embeddings computed for
other data or settings are never used silently.  The key's data identity is
cheap: path, shape, dtype and checksums of a few small sampled windows
(:func:`data_identity`).  Every entry also stores the checksum of the pixels it
was computed from (:func:`array_digest`, taken when the tile is encoded anyway);
reusing an entry for other pixels raises :class:`CacheMismatchError` naming the
entry, so a changed pixel anywhere in the data is noticed without a pass of its own.

Layout::

    cache.zarr/                 group, attrs["napari_sam_cache"] = {"version": 1, "key": {...}}
      s<slice>/t<tile>          float32 (1, C, h, w) features; attrs = Embedding fields,
                                "data_digest" of the tile's pixels,
                                "complete": true written last (a killed write is never read)

An entry is written under a temporary name (``s<slice>/.t<tile>.<pid>.<thread>.tmp``)
and renamed into place, so concurrent writers (several ``napari-sam embed`` runs on
one cache) never leave an entry that mixes two writes or holds zeros: the first
rename wins and the other writer's copy is discarded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from napari_sam.model.download import sha256_of
from napari_sam.volume.io import json_safe

__all__ = ['CacheMismatchError', 'array_digest', 'data_identity', 'weights_identity', 'file_sha256', 'make_key', 'EmbeddingCache', 'CachingPredictor',
           'SliceTiles']


_VERSION = 1


class CacheMismatchError(ValueError):
    """The cache on disk was made for another model, normalisation, tile layout or data."""


def array_digest(data: Any) -> str:
    """``"sha1:<hex>"`` of an in-memory array's shape, dtype and bytes (a slice or a tile being processed)."""
    arr = np.ascontiguousarray(np.asarray(data))
    h = hashlib.sha1(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr).cast("B"))
    return f"sha1:{h.hexdigest()}"


def data_identity(data: Any, *, path: str | os.PathLike | None = None, n_samples: int = 3,
                  window: int = 64) -> dict:
    """A cheap identity of an array: path, shape, dtype and checksums of sampled windows.

    ``n_samples`` windows of at most ``window`` pixels per axis are read along the
    diagonal of the array (start, middle, end) and hashed with SHA-1; nothing else is read.

    Returns
    -------
    dict
        ``{"path", "shape", "dtype", "samples": [hex digest, ...]}`` (JSON types).
    """
    shape = tuple(int(s) for s in data.shape)
    digests = []
    for f in np.linspace(0.0, 1.0, n_samples):
        sl = tuple(slice(int(round(f * (s - min(s, window)))), int(round(f * (s - min(s, window)))) + min(s, window))
                   for s in shape)
        block = data[sl]
        block = np.ascontiguousarray(block.compute() if hasattr(block, "compute") else block)
        digests.append(hashlib.sha1(block.tobytes()).hexdigest())
    return {"path": None if path is None else str(Path(path).resolve()), "shape": list(shape),
            "dtype": str(np.dtype(data.dtype)), "samples": digests}


_DIGESTS: dict[tuple, str] = {}
_DIGESTS_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file's content, computed once per (path, size, mtime).

    The digest is remembered in this process and in ``digests.json`` of the
    checkpoint cache folder (when writable), so a large checkpoint is hashed once.
    """
    path = Path(path).resolve()
    st = path.stat()
    memo_key = (str(path), st.st_size, st.st_mtime_ns)
    with _DIGESTS_LOCK:
        if memo_key in _DIGESTS:
            return _DIGESTS[memo_key]
    disk_key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = None
    try:
        from napari_sam.model.registry import cache_dir

        memo_file = Path(cache_dir()) / "digests.json"
        known = json.loads(memo_file.read_text()) if memo_file.is_file() else {}
    except (OSError, ValueError, ImportError):
        known = {}
    digest = known.get(disk_key) if isinstance(known, dict) else None
    if digest is None:
        digest = f"sha256:{sha256_of(path)}"
        if memo_file is not None:
            try:
                known = {**(known if isinstance(known, dict) else {}), disk_key: digest}
                memo_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = memo_file.with_name(f".digests.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(known))
                os.replace(tmp, memo_file)
            except OSError:
                pass
    with _DIGESTS_LOCK:
        _DIGESTS[memo_key] = digest
    return digest


def weights_identity(model: Any, checkpoint: str | os.PathLike | None) -> str:
    """Identity of a model's weights by content: ``"<model>|sha256:<hex>"``.

    A checkpoint file is hashed (:func:`file_sha256`); a registry model without one
    uses its known hash (downloads are hash-checked); a config ``.json`` alone
    (random weights) is identified by the config's content.
    """
    if checkpoint is not None:
        return f"{model}|{file_sha256(checkpoint)}"
    if isinstance(model, (str, os.PathLike)) and str(model).endswith(".json") and Path(model).is_file():
        return f"config|{file_sha256(model)}|random-weights"
    try:
        from napari_sam.model.registry import get_card

        known = get_card(str(model)).sha256
    except (KeyError, ValueError, ImportError):
        known = None
    return f"{model}|{known}"


def make_key(*, model_id: str, contrast_limits: Any, tile_layout: dict, data: dict) -> dict:
    """Build a cache key (JSON-safe dict) from its four parts.

    Parameters
    ----------
    model_id : str
        Model identity (architecture and weights, e.g. name + checkpoint path).
    contrast_limits : array-like ``(k, 2)``
        The normalisation used for every slice.
    tile_layout : dict
        E.g. ``{"tile_shape": [1024, 1024], "halo": [64, 64], "crop_n_layers": 0}``.
    data : dict
        From :func:`data_identity`.
    """
    limits = np.round(np.asarray(contrast_limits, dtype=np.float64), 6)
    return json_safe({"model": str(model_id), "contrast_limits": limits, "tile_layout": tile_layout, "data": data})


class EmbeddingCache:
    """Embeddings of one dataset in a zarr group at ``path``.

    Parameters
    ----------
    path : str or PathLike
        The cache folder (created on first :meth:`put` when a key is given).
    key : dict, optional
        From :func:`make_key`.  When the cache exists with another key a
        :class:`CacheMismatchError` lists the differing parts; ``reset=True``
        empties the cache and starts again with ``key``.  Without a key the
        stored one is used (reading only).
    reset : bool
        Empty the cache first (made with another key, or holding entries of
        pixels that have since changed).
    """

    def __init__(self, path: str | os.PathLike, key: dict | None = None, *, reset: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_file():
            raise ValueError(f"the embedding cache {self.path} is a file; give a folder (new or made by "
                             "napari-sam embed)")
        stored = self._stored_key()
        if key is None:
            if stored is None:
                raise ValueError(f"{self.path} is not an embedding cache; create it with a key (napari-sam embed)")
            self.key = stored
            return
        key = json_safe(key)
        if stored is not None and reset:
            shutil.rmtree(self.path)
            stored = None
        if stored is not None and stored != key:
            diff = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
            raise CacheMismatchError(
                f"the embedding cache {self.path} was made for another {', '.join(diff)}; "
                "use a new cache path or reset it (--reset-cache / reset=True)"
            )
        if stored is None:
            if self.path.exists() and any(self.path.iterdir()):
                raise ValueError(f"{self.path} exists and is not an embedding cache; choose another path")
            group = zarr.open_group(str(self.path), mode="a", zarr_format=3)
            group.attrs["napari_sam_cache"] = {"version": _VERSION, "key": key}
        self.key = key

    def _stored_key(self) -> dict | None:
        if not (self.path / "zarr.json").exists():
            return None
        info = zarr.open_group(str(self.path), mode="r").attrs.get("napari_sam_cache")
        return None if not isinstance(info, dict) else info.get("key")

    def _name(self, slice_index: int, tile_index: int) -> str:
        if int(slice_index) < 0 or int(tile_index) < 0:
            raise ValueError("slice_index and tile_index must be non-negative")
        return f"s{int(slice_index)}/t{int(tile_index)}"

    def get(self, slice_index: int, tile_index: int = 0, *, digest: str | None = None) -> Any:
        """The stored :class:`~napari_sam.predict.predictor.Embedding`, or None when absent or incomplete.

        With ``digest`` (:func:`array_digest` of the pixels about to be encoded) an entry
        computed from other pixels raises :class:`CacheMismatchError` naming it.
        """
        found = self._complete_entry(slice_index, tile_index)
        if found is None:
            return None
        arr, attrs = found
        if digest is not None:
            self._check_digest(slice_index, tile_index, attrs.get("data_digest"), digest)
        from napari_sam.predict.predictor import Embedding

        try:
            features = np.asarray(arr[...], dtype=np.float32)
        except Exception as exc:  # a damaged chunk file: say which entry, and how to start again
            raise ValueError(
                f"the embedding cache {self.path} has an unreadable entry {self._name(slice_index, tile_index)} "
                f"({type(exc).__name__}: {exc}); rebuild it with `napari-sam embed ... --reset-cache` "
                f"or delete {self.path}") from None
        return Embedding(features=features,
                         original_size=tuple(attrs["original_size"]), input_size=tuple(attrs["input_size"]),
                         image_size=int(attrs["image_size"]), model_id=str(attrs["model_id"]))

    def _complete_entry(self, slice_index: int, tile_index: int) -> tuple[Any, dict] | None:
        """The entry's array and attributes when it exists and is complete, else None."""
        try:
            arr = zarr.open_array(str(self.path / self._name(slice_index, tile_index)), mode="r")
        except (FileNotFoundError, zarr.errors.NodeTypeValidationError, KeyError, ValueError):
            return None
        attrs = dict(arr.attrs)
        return (arr, attrs) if attrs.get("complete") else None

    def _check_digest(self, slice_index: int, tile_index: int, stored: str | None, digest: str) -> None:
        if stored == digest:
            return
        why = ("was computed from other pixels: the input changed since the cache was filled" if stored
               else "has no checksum of its pixels (an older napari-sam wrote it)")
        raise CacheMismatchError(
            f"the embedding cache {self.path} entry {self._name(slice_index, tile_index)} {why}; refill it "
            "with `napari-sam embed ... --reset-cache` (reset_cache=True) or use a new cache path")

    def check(self, slice_index: int, tile_index: int, digest: str) -> bool:
        """Whether a complete entry exists; raise :class:`CacheMismatchError` if it holds other pixels."""
        found = self._complete_entry(slice_index, tile_index)
        if found is None:
            return False
        self._check_digest(slice_index, tile_index, found[1].get("data_digest"), digest)
        return True

    def put(self, slice_index: int, tile_index: int, embedding: Any, *, digest: str | None = None) -> None:
        """Store an embedding (anything with the fields of ``Embedding``) and the digest of its pixels."""
        features = np.asarray(embedding.features, dtype=np.float32)
        final = self.path / self._name(slice_index, tile_index)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        arr = zarr.create_array(store=str(tmp), shape=features.shape, dtype="float32",
                                chunks=features.shape, zarr_format=3)
        arr[...] = features
        arr.attrs.update(json_safe({
            "original_size": embedding.original_size, "input_size": embedding.input_size,
            "image_size": embedding.image_size, "model_id": embedding.model_id, "data_digest": digest,
            "complete": True}))
        if final.exists() and (slice_index, tile_index) not in self:  # an incomplete entry of an older version
            old = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.old")
            try:
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass  # another writer moved it first
        # a complete entry is never moved (a reader may be reading it): the first writer's entry stays
        try:
            os.rename(tmp, final)
        except OSError:  # another writer's complete entry is already in place
            shutil.rmtree(tmp, ignore_errors=True)

    def __contains__(self, index: tuple[int, int]) -> bool:
        arr_path = self.path / self._name(*index) / "zarr.json"
        if not arr_path.exists():
            return False
        return bool(zarr.open_array(str(arr_path.parent), mode="r").attrs.get("complete"))

    def entries(self) -> list[tuple[int, int]]:
        """Complete (slice, tile) entries, sorted."""
        out = []
        for sdir in self.path.glob("s*"):
            for tdir in sdir.glob("t*"):
                idx = (int(sdir.name[1:]), int(tdir.name[1:]))
                if idx in self:
                    out.append(idx)
        return sorted(out)


class CachingPredictor:
    """Wraps a Predictor so that ``set_image`` reads/writes an :class:`EmbeddingCache`.

    The n-th ``set_image`` call after :meth:`start_slice` is tile ``n`` of that
    slice (tiling visits tiles in a fixed order for a fixed layout, which is part
    of the cache key).  Everything else is delegated to the wrapped predictor.
    """

    def __init__(self, predictor: Any, cache: EmbeddingCache) -> None:
        self._predictor = predictor
        self._cache = cache
        self._slice = 0
        self._tile = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def start_slice(self, slice_index: int) -> None:
        self._slice, self._tile = int(slice_index), 0

    def set_image(self, image: Any, **kwargs: Any) -> None:
        tile = self._tile
        self._tile += 1
        digest = array_digest(image)  # the tile is in memory anyway: its checksum costs one read of it
        emb = self._cache.get(self._slice, tile, digest=digest)
        if emb is not None and tuple(emb.original_size) == tuple(np.shape(image)[:2]):
            self._predictor.set_embedding(emb)
            self.hits += 1
            return
        self._predictor.set_image(image, **kwargs)
        self._cache.put(self._slice, tile, self._predictor.get_embedding(), digest=digest)
        self.misses += 1

    def __getattr__(self, name: str) -> Callable:
        return getattr(self._predictor, name)


class SliceTiles:
    """The tiles of one slice of an :class:`EmbeddingCache`, as a tile store of
    :class:`~napari_sam.predict.tiled_embedding.TiledPrompter` (entries ``s<slice>/t<number>``).

    Every entry is checked against the :func:`array_digest` of the tile's
    pixels: reading or checking an entry computed from other pixels raises
    :class:`CacheMismatchError` naming it, and every written entry carries the
    digest.
    """

    def __init__(self, cache: EmbeddingCache, slice_index: int) -> None:
        self.cache = cache
        self.slice_index = int(slice_index)
        self._last: tuple[int, int, str] | None = None  # (number, id of pixels, digest) of the last get

    def _digest(self, number: int, pixels: np.ndarray) -> str:
        last = self._last
        if last is not None and last[:2] == (number, id(pixels)):
            return last[2]
        return array_digest(pixels)

    def get(self, number: int, pixels: np.ndarray) -> Any:
        """The stored embedding of tile ``number`` computed from ``pixels``, or None when absent."""
        digest = array_digest(pixels)
        self._last = (int(number), id(pixels), digest)  # the put after a miss needs no second hash
        return self.cache.get(self.slice_index, number, digest=digest)

    def put(self, number: int, pixels: np.ndarray, embedding: Any) -> None:
        """Store the embedding of tile ``number`` with the digest of ``pixels``."""
        digest = self._digest(int(number), pixels)
        self._last = None
        self.cache.put(self.slice_index, number, embedding, digest=digest)

    def has(self, number: int, pixels: np.ndarray) -> bool:
        """Whether a complete entry of tile ``number`` computed from ``pixels`` exists."""
        return self.cache.check(self.slice_index, number, array_digest(pixels))
