"""Damaged inputs: truncated TIFFs, missing and corrupt zarr chunks.

* :func:`check_tiff` refuses a TIFF whose page table is broken, whose pixel data
  runs past the end of the file, or whose series is shorter than its metadata says.
* :class:`NamedChunks` wraps a zarr array so that a chunk that cannot be decoded
  raises a ``ValueError`` naming the store and the chunk.
* :func:`missing_chunks` lists the chunks absent from a local zarr store (zarr
  reads them as the fill value); :func:`present_mask` is a lazy boolean array that
  lets the contrast limits leave those pixels out.

See ``docs/reliability.md``.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import product
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["DataWarning", "tiff_log", "check_tiff", "NamedChunks", "missing_chunks", "present_mask"]


class DataWarning(UserWarning):
    """The input is readable but incomplete (for example missing zarr chunks)."""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.messages.append(" ".join(record.getMessage().split()))


@contextmanager
def tiff_log() -> Iterator[list[str]]:
    """Collect tifffile's error log lines (it logs, rather than raises, a broken page table)."""
    logger = logging.getLogger("tifffile")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def check_tiff(tif: Any, series: Any, path: Path, errors: list[str]) -> None:
    """Raise ``ValueError`` naming ``path`` when the TIFF is truncated or shorter than its metadata.

    ``tif`` is an open ``tifffile.TiffFile``, ``series`` the series (level) to be read,
    ``errors`` the messages collected by :func:`tiff_log` while it was parsed.
    """
    size = path.stat().st_size
    len(tif.pages)  # walks the whole page chain: a cut file logs an invalid page offset
    hint = "copy or export the file again (an interrupted copy or download leaves such files)"
    planes = int(np.prod([n for n, a in zip(series.shape, series.axes) if a not in "YXS"], dtype=np.int64))
    if tif.is_imagej:
        images = int((tif.imagej_metadata or {}).get("images", 1) or 1)
        if planes < images:
            raise ValueError(f"{path} is truncated: its ImageJ metadata lists {images} images but "
                             f"{planes} can be read; {hint}")
    if errors:
        raise ValueError(f"{path} is damaged or truncated ({size} bytes): {errors[0]}; {hint}")
    offset = getattr(series, "dataoffset", None)
    if offset is not None:
        if offset + series.nbytes > size:
            raise ValueError(f"{path} is truncated: its pixel data needs {offset + series.nbytes} bytes, "
                             f"the file has {size}; {hint}")
        return
    for i, page in enumerate(series.pages):
        if page is None:
            raise ValueError(f"{path} is incomplete: page {i} of the series is missing; {hint}")
        fsize = getattr(getattr(getattr(page, "parent", None), "filehandle", None), "size", size)
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
        if ends and max(ends) > fsize:
            raise ValueError(f"{path} is truncated: the pixels of page {i} run past the end of the file "
                             f"({fsize} bytes); {hint}")


class NamedChunks:
    """Read-only array view of a zarr array whose read errors name the store and the chunk.

    Used as the source of the input's dask array, so every read of the pipeline
    (contrast limits, slices) reports a damaged chunk as
    ``ValueError("cannot read chunk (i, j, k) of STORE ...")``.
    """

    def __init__(self, array: Any, where: str) -> None:
        self.array = array
        self.where = where
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(array.chunks)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.array[key]
        except Exception as exc:  # any codec or store error: name the chunk
            keys = key if isinstance(key, tuple) else (key,)
            coords = tuple(int(k.start or 0) // c if isinstance(k, slice) else int(k) // c
                           for k, c in zip(keys, self.chunks))
            raise ValueError(f"cannot read chunk {coords} of {self.where} ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())}); the stored chunk is damaged: copy or export "
                             "the data again") from None

    def to_dask(self) -> da.Array:
        return da.from_array(self, chunks=self.chunks, asarray=True, fancy=False, name=False,
                             meta=np.empty((0,) * self.ndim, self.dtype))


def _grid(array: Any) -> tuple[int, ...]:
    shards = getattr(array, "shards", None)
    return tuple(int(s) for s in (shards or array.chunks))


def missing_chunks(array: Any) -> tuple[list[tuple[int, ...]], int]:
    """Chunk (or shard) grid coordinates absent from a local zarr store, and the number of chunks.

    Stores that are not local folders are not inspected (``([], total)``).
    """
    grid = _grid(array)
    counts = [math.ceil(s / g) for s, g in zip(array.shape, grid)]
    total = int(np.prod(counts, dtype=np.int64))
    root = getattr(array.store, "root", None)
    if root is None or not Path(root).is_dir():
        return [], total
    folder = Path(root) / array.path if array.path else Path(root)
    stored = set()
    for dirpath, _, files in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        for name in files:
            stored.add(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    missing = [c for c in product(*(range(n) for n in counts))
               if array.metadata.encode_chunk_key(c) not in stored]
    return missing, total


def _present_block(*, missing: frozenset, grid: tuple, block_info: Any = None) -> np.ndarray:
    info = block_info[None]
    coords = tuple(lo // g for (lo, _), g in zip(info["array-location"], grid))
    return np.full(info["chunk-shape"], coords not in missing)


def present_mask(data: da.Array, array: Any, missing: list[tuple[int, ...]]) -> da.Array:
    """Lazy boolean array like ``data``: False where a pixel lies in a missing chunk."""
    return da.map_blocks(_present_block, chunks=data.chunks, dtype=bool, missing=frozenset(missing),
                         grid=_grid(array), meta=np.empty((0,) * data.ndim, bool))
