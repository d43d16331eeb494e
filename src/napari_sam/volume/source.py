"""Opening a volume for segmentation: slice view, contrast limits, tile layout, cache key and the per-thread predictor.
"""
from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import dask.array as da
import numpy as np

from napari_sam.volume import slices as vol
from napari_sam.volume.cache import data_identity, make_key, weights_identity
from napari_sam.volume.io import DataWarning, infer_axes, open_image, validate_axes

__all__ = ['DEFAULT_CHUNK', 'DEFAULT_TILE', 'DEFAULT_HALO', 'worker_predictor', 'model_amg_params', 'model_input_size', 'prepare_source', 'default_tiles', 'volume_cache_key']


#: side of the output chunks (1, chunk, chunk) when no tile shape is given
DEFAULT_CHUNK = 1024


#: tile core and halo for slices larger than one tile when neither tile_shape nor the model's input size is known
DEFAULT_TILE = 1024


#: halo of a DEFAULT_TILE tile; other tile sizes keep the same ratio (1/16)
DEFAULT_HALO = 64


_LOCAL = threading.local()


def worker_predictor(model: str, checkpoint: str | None, device: str | None) -> Any:
    """One Predictor per (model, checkpoint, device) per worker thread; the weights are loaded once per process."""
    cache = getattr(_LOCAL, "predictors", None)
    if cache is None:
        cache = _LOCAL.predictors = {}
    key = (str(model), None if checkpoint is None else str(checkpoint), device)
    if key not in cache:
        from napari_sam.predict.factory import predictor_for_model

        with _MODELS_LOCK:
            if key not in _MODELS:
                _MODELS[key] = _load_sam(*key)
        cache[key] = predictor_for_model(_MODELS[key], device=device)
    return cache[key]


_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


def _load_sam(model: str, checkpoint: str | None, device: str | None) -> Any:
    from napari_sam.model.registry import is_card_file

    if model.endswith(".json") and checkpoint is None and not is_card_file(model):  # a config alone: random weights
        from napari_sam.model.build import build_sam

        return build_sam(model).eval()
    from napari_sam.model.registry import load_model  # strict reader: wrappers, shapes, corrupt files

    return load_model(model, checkpoint=checkpoint, device=device)


def model_amg_params(model: Any, amg_params: dict | None) -> dict:
    """The explicit AMG parameters (the generator adds the model card's recommendations itself).

    ``model`` is unused: the card travels with the predictor's model
    (:class:`~napari_sam.AutomaticMaskGenerator` reads ``predictor.model.card``).
    """
    return dict(amg_params or {})


def prepare_source(source: Any, *, axes: str | None, level: int, channel: int | None,
                    channels: Sequence[int] | None, contrast_limits: Any, strict: bool = False) -> SimpleNamespace:
    """Open ``source``, view it as 2-D slices, and fix the volume's contrast limits.

    Chunks missing from a zarr input are an error with ``strict``, else a
    :class:`~napari_sam.volume.io.DataWarning`; either way their pixels are left out
    of the estimated contrast limits, so they never change the other slices.
    """
    if isinstance(source, (str, os.PathLike)):
        data, in_axes, meta = open_image(source, axes=axes, level=level)
    else:
        if not hasattr(source, "shape") or not hasattr(source, "dtype"):
            raise TypeError(f"source must be a path or an array, got {type(source).__name__}")
        shape = tuple(int(n) for n in source.shape)
        in_axes = validate_axes(axes, len(shape)) if axes is not None else infer_axes(shape)
        data = source if isinstance(source, da.Array) else da.from_array(
            np.asarray(source), chunks=tuple(1 if a in "TZ" else -1 for a in in_axes))  # one chunk per slice
        meta = {"format": "array", "path": None}
    if 0 in tuple(data.shape):
        raise ValueError(f"the input has shape {tuple(data.shape)}: it holds no pixels to segment")
    if data.dtype.kind not in "uif" and data.dtype != bool:
        raise TypeError(f"cannot segment an image of dtype {data.dtype}; use integer or float data")
    chan_tuple = tuple(int(c) for c in channels) if channels is not None else None
    view, loop_axes, has_ch = vol.canonical_view(data, in_axes, channel=channel, channels=chan_tuple)
    spec = (meta["path"], in_axes, int(level), channel, chan_tuple) if meta.get("path") else None
    nloop = len(loop_axes)
    loop_shape = tuple(int(s) for s in view.shape[:nloop])
    n_slices = int(np.prod(loop_shape)) if nloop else 1
    nchan = int(view.shape[-1]) if has_ch else 1
    valid = _check_missing_chunks(meta, in_axes, channel, chan_tuple, strict)
    if contrast_limits is None:
        limits = vol.volume_contrast_limits(view, has_channels=has_ch, valid=valid)
    else:
        limits = np.asarray(contrast_limits, dtype=np.float64)
        if limits.size != 2 * nchan or not np.all(limits.reshape(-1, 2)[:, 1] > limits.reshape(-1, 2)[:, 0]):
            raise ValueError(f"contrast limits must be {nchan} pair(s) LOW HIGH with HIGH > LOW, got "
                             f"{limits.tolist()}")
        limits = limits.reshape(-1, 2)
    indices = [tuple(int(i) for i in np.unravel_index(k, loop_shape)) if nloop else () for k in range(n_slices)]
    return SimpleNamespace(data=data, in_axes=in_axes, meta=meta, view=view, loop_axes=loop_axes, has_ch=has_ch,
                           spec=spec, channels=chan_tuple, loop_shape=loop_shape, n_slices=n_slices,
                           ny=int(view.shape[nloop]), nx=int(view.shape[nloop + 1]), limits=limits,
                           indices=indices)


def _check_missing_chunks(meta: dict, axes: str, channel: Any, channels: Any, strict: bool) -> Any:
    """Warn about (or with ``strict`` refuse) missing zarr chunks; the view of the mask of present pixels."""
    info = meta.pop("missing_chunks", None)
    if info is None:
        return None
    missing = info["missing"]
    first = ", ".join(str(tuple(c)) for c in missing[:3]) + (", ..." if len(missing) > 3 else "")
    text = (f"{info['store']}: {len(missing)} of {info['total']} chunks are missing ({first}); zarr reads them as "
            f"the fill value {info['fill_value']}")
    if strict:
        raise ValueError(f"{text}. The copy looks incomplete: copy or export the data again, or run without "
                         "--strict (strict=False) to segment the missing parts as empty")
    warnings.warn(f"{text}, and they are left out of the contrast limits. Expected if the array is sparse on "
                  "purpose; otherwise copy or export the data again. --strict (strict=True) makes this an error",
                  DataWarning, stacklevel=3)
    mask, _, _ = vol.canonical_view(info["present"], axes, channel=channel, channels=channels)
    return mask


def model_input_size(predictor: Any) -> int | None:
    """The side of the square input the predictor's model sees (1024 for SAM, 256 for the built-in model).

    ``None`` when the predictor does not say (then :func:`default_tiles` uses :data:`DEFAULT_TILE`).
    """
    size = getattr(predictor, "image_size", None)
    if size is None:
        size = getattr(getattr(predictor, "model", None), "image_size", None)
    return None if size is None else int(size)


def default_tiles(ny: int, nx: int, tile_shape: Any, halo: Any, *, input_size: int | None = None) -> tuple:
    """``(tile_shape, halo)`` for a ``ny`` x ``nx`` slice: the model's choice where none is given.

    The model's input size decides: a slice larger than the input is cut into
    tiles of ``input_size`` pixels (so objects keep their native scale instead
    of being shrunk to fit one input) with a halo of ``input_size // 16``
    (64 px for SAM's 1024, 16 px for the built-in model's 256); smaller slices
    are one tile.  ``input_size=None`` (a custom segment function) uses
    :data:`DEFAULT_TILE`.  An explicit ``tile_shape`` / ``halo`` always wins.

    Examples
    --------
    >>> default_tiles(1024, 1024, None, None, input_size=256)
    ((256, 256), (16, 16))
    >>> default_tiles(1024, 1024, None, None, input_size=1024)
    (None, None)
    """
    size = DEFAULT_TILE if input_size is None else int(input_size)
    if size < 1:
        raise ValueError(f"input_size must be positive, got {input_size!r}")
    if tile_shape is None and max(ny, nx) > size:
        side = max(1, size // (DEFAULT_TILE // DEFAULT_HALO))
        return (size, size), (side, side) if halo is None else halo
    return tile_shape, halo


def volume_cache_key(view, meta, model, checkpoint, limits, tile_shape, halo, amg_params) -> dict:
    layout = {"tile_shape": None if tile_shape is None else [int(t) for t in tile_shape],
              "halo": None if halo is None else [int(h) for h in halo],
              "crop_n_layers": int(amg_params.get("crop_n_layers", 0))}
    return make_key(model_id=weights_identity(model, checkpoint), contrast_limits=limits, tile_layout=layout,
                    data=data_identity(view, path=meta.get("path")))
