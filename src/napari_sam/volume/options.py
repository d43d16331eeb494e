"""The options of :func:`~napari_sam.volume.batch.segment_volume`, grouped by what they control.

Each group is a small frozen dataclass that checks its values when it is made,
so a bad option fails before any file is opened or written.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from napari_sam.automatic.params import AmgParams
from napari_sam.progress import CancelToken, ProgressCallback
from napari_sam.tiled.tiles import MIN_TILE

__all__ = ["MIN_TILE", "SourceOptions", "TileOptions", "OutputOptions", "RunOptions", "split_options",
           "check_amg_params"]


def _pair(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    vals = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(vals) != 2 or not all(isinstance(v, (int, float)) and float(v).is_integer() for v in vals):
        raise ValueError(f"{name} must be an integer or a pair of integers, got {value!r}")
    return int(vals[0]), int(vals[1])


@dataclass(frozen=True)
class SourceOptions:
    """How to read the input: axes override, multiscale level, channel selection, contrast limits.

    ``strict``: chunks missing from a zarr input are an error instead of a warning.
    """

    axes: str | None = None
    level: int = 0
    channel: int | None = None
    channels: Sequence[int] | None = None
    contrast_limits: Any = None
    strict: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.level, int) or isinstance(self.level, bool) or self.level < 0:
            raise ValueError(f"level must be a non-negative integer, got {self.level!r}")


@dataclass(frozen=True)
class TileOptions:
    """Tiling of large slices: core ``tile_shape`` and ``halo`` in pixels (None = the default)."""

    tile_shape: Sequence[int] | None = None
    halo: Sequence[int] | None = None

    def __post_init__(self) -> None:
        tile = _pair(self.tile_shape, "tile_shape (--tile)")
        halo = _pair(self.halo, "halo (--halo)")
        if tile is not None and min(tile) < MIN_TILE:
            raise ValueError(f"tile side {min(tile)} is too small: use --tile {MIN_TILE} or more "
                             "(e.g. 1024, the size SAM sees)")
        if halo is not None and min(halo) < 0:
            raise ValueError(f"halo must be >= 0, got {self.halo!r}")
        object.__setattr__(self, "tile_shape", tile)
        object.__setattr__(self, "halo", halo)


@dataclass(frozen=True)
class OutputOptions:
    """What to do with the output: resume/overwrite, id compaction, OME-Zarr label name, 3-D linking,
    zarr format of a ``.zarr`` output (2 or 3)."""

    resume: bool = False
    overwrite: bool = False
    compact: bool = True
    label_name: str | None = None
    link_3d: bool = False
    link_iou: float = 0.5
    zarr_format: int = 3

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("choose either resume or overwrite, not both")
        if self.zarr_format not in (2, 3):
            raise ValueError(f"zarr_format (--zarr-format) must be 2 or 3, got {self.zarr_format!r}")
        iou = float(self.link_iou)
        if not (math.isfinite(iou) and 0.0 <= iou < 1.0):
            raise ValueError(f"link_iou (--link-iou) must be in [0, 1), got {self.link_iou}")
        if self.label_name is not None:
            from napari_sam.volume.output import check_label_name

            check_label_name(self.label_name)


@dataclass(frozen=True)
class RunOptions:
    """How to run: dask scheduler, local workers, progress callback, cancel token, threads per slice.

    ``threads``: torch and BLAS threads of each running slice (default: see :mod:`napari_sam.threads`).
    """

    scheduler: Any = None
    workers: int | None = None
    progress: ProgressCallback | None = None
    cancel: CancelToken = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        from napari_sam.threads import check_threads

        check_threads(self.threads)


_GROUPS = (SourceOptions, TileOptions, OutputOptions, RunOptions)


def split_options(given: dict[str, Any], kwargs: dict[str, Any]) -> tuple[list, dict]:
    """Build the four option groups from ``given`` objects plus loose keywords of their fields.

    ``given`` maps each class to an instance or None; ``kwargs`` fields of a group
    are merged into it (a field given both ways raises).  Returns the groups in
    the order of ``_GROUPS`` and the keywords left over (the AMG parameters).
    """
    rest = dict(kwargs)
    groups = []
    for cls in _GROUPS:
        base = given.get(cls)
        if base is not None and not isinstance(base, cls):
            raise TypeError(f"expected a {cls.__name__}, got {type(base).__name__}")
        names = {f.name for f in fields(cls)}
        loose = {k: rest.pop(k) for k in list(rest) if k in names}
        if base is None:
            groups.append(cls(**loose))
            continue
        values = {f.name: getattr(base, f.name) for f in fields(cls)}
        twice = sorted(k for k in loose if values[k] != getattr(cls(), k))
        if twice:
            raise TypeError(f"{twice} given both in {cls.__name__} and as keywords")
        groups.append(cls(**{**values, **loose}))
    return groups, rest


def check_amg_params(params: dict[str, Any]) -> None:
    """Clear errors for thresholds outside [0, 1] (or NaN), non-positive grid sizes and unknown names.

    The checks are those of :class:`~napari_sam.automatic.params.AmgParams`.
    """
    AmgParams.from_dict(params)
