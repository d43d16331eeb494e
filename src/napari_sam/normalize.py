"""Any image (dtype, channels, bands) -> the RGB ``uint8`` image SAM expects.

SAM's image encoder was trained on 8-bit RGB photographs.  Scientific images are
grayscale, 16-bit, float, multi-channel or multi-band, so they are mapped to
``(H, W, 3) uint8`` by a linear contrast stretch between two *contrast limits*
per channel (by default the 0.5th and 99.5th percentiles).

Rules of :func:`to_rgb_uint8`
-----------------------------
- ``(H, W, 3) uint8`` (or any ``uint8`` image with exactly three selected
  channels) and no ``contrast_limits``: values pass through unchanged, this is
  the official SAM input.
- Every other input is stretched: ``round((x - lo) * 255 / (hi - lo))`` computed
  in float64 and clipped to ``0..255`` (16-bit data stays faithful).  When
  ``hi == lo`` the pixels above ``lo`` become 255 and the others 0.
- ``bool`` input: ``False -> 0``, ``True -> 255`` (limits ``(0, 1)``).
- Channels after selection: 1 -> gray repeated to ``(g, g, g)``;
  2 -> ``(c0, c1, 0)`` (red, green, empty blue); 3 -> ``(c0, c1, c2)``.
  More than three channels need ``channels=`` (up to three indices).

The limits must be computed once per image and passed to every tile (tiling)
or slice: per-tile stretching gives tiles different contrasts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["estimate_contrast_limits", "to_rgb_uint8"]

_ROW_BLOCK = 512  # rows scaled at a time (bounds float64 temporaries)
_MIN_BLOCKS = 64  # chunked images: read at least this many random chunks (spatial spread)


def _is_dask(image: Any) -> bool:
    return type(image).__module__.split(".")[0] == "dask" and hasattr(image, "dask")


def _as_array(image: Any) -> Any:
    """Return a numpy array, or a dask array for lazy/chunked inputs (dask, zarr)."""
    if isinstance(image, np.ndarray) or _is_dask(image):
        return image
    if getattr(image, "chunks", None) is not None and hasattr(image, "shape") and hasattr(image, "dtype"):
        import dask.array as da  # zarr and other chunked stores: read lazily

        return da.from_array(image, chunks=image.chunks)
    if hasattr(image, "detach") and hasattr(image, "numpy"):  # torch tensor
        return image.detach().cpu().numpy()
    return np.asarray(image)


def _check_dtype(dtype: np.dtype) -> None:
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating):
        return
    raise ValueError(
        f"image has dtype {dtype}, which is not a real number type; convert it to an "
        "integer, float or bool array first (complex data: take np.abs or the real part)."
    )


def _normalize_channel_axis(shape: tuple[int, ...], channel_axis: int | None) -> int | None:
    """Validate ``channel_axis`` for ``shape`` and return it as a non-negative axis."""
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(
            f"expected a 2-D image (Y, X) or a 3-D image with a channel axis, got shape {shape}; "
            "select one plane (e.g. image[z]) before segmenting."
        )
    if channel_axis is not None:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
            raise ValueError(f"channel_axis must be an int or None, got {channel_axis!r}.")
        if ndim == 2:
            raise ValueError(
                f"channel_axis={channel_axis} was given but the image has shape {shape}, which is "
                "2-D (Y, X) with no channel axis; pass channel_axis=None."
            )
        if not -ndim <= channel_axis < ndim:
            raise ValueError(
                f"channel_axis={channel_axis} is out of range for an image with {ndim} dimensions "
                f"(shape {shape}); use 0, 1, 2 or -1."
            )
        return int(channel_axis) % ndim
    if ndim == 2:
        return None
    if shape[-1] == 3 and shape[0] != 3:
        return 2  # (Y, X, 3): the RGB layout of SAM itself
    rgba = " (RGBA: channel_axis=-1, channels=(0, 1, 2))" if shape[-1] == 4 else ""
    raise ValueError(
        f"cannot tell which axis of the 3-D image of shape {shape} holds the channels; pass "
        f"channel_axis=-1 for (Y, X, C) or channel_axis=0 for (C, Y, X){rgba}."
    )


def _select_channels(n_channels: int, channels: Sequence[int] | None) -> list[int]:
    if channels is None:
        if n_channels > 3:
            raise ValueError(
                f"the image has {n_channels} channels/bands but SAM takes at most three; choose "
                "them with channels=(i, j, k), e.g. channels=(0, 1, 2)."
            )
        return list(range(n_channels))
    if isinstance(channels, (int, np.integer)):
        channels = [int(channels)]
    chosen = list(channels)
    if not 1 <= len(chosen) <= 3:
        raise ValueError(f"channels must list one to three channel indices, got {channels!r}.")
    out = []
    for c in chosen:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise ValueError(f"channels must be integer indices, got {channels!r}.")
        if not -n_channels <= c < n_channels:
            raise ValueError(
                f"channel index {c} is out of range: the image has {n_channels} channels "
                f"(valid indices 0..{n_channels - 1})."
            )
        out.append(int(c) % n_channels)
    return out


def _channels_last(image: Any, channel_axis: int | None, channels: Sequence[int] | None) -> Any:
    """Return ``image`` as ``(Y, X, C')`` with the selected channels (a view for numpy/dask)."""
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape}).")
    _check_dtype(np.dtype(image.dtype))
    axis = _normalize_channel_axis(tuple(image.shape), channel_axis)
    if axis is None:
        if channels is not None and list(np.atleast_1d(channels)) not in ([0], [-1]):
            raise ValueError(
                f"channels={channels!r} was given but the image of shape {image.shape} is 2-D with "
                "a single channel; pass channel_axis= for a multi-channel image."
            )
        return image[:, :, None]
    if axis != 2:
        image = image.transpose([a for a in range(3) if a != axis] + [axis])
    chosen = _select_channels(int(image.shape[2]), channels)
    if chosen == list(range(int(image.shape[2]))):
        return image
    return image[:, :, chosen]


def _sample_pixels(image: Any, max_samples: int, seed: int) -> np.ndarray:
    """Deterministic sample of at most ``max_samples`` pixels of a ``(Y, X, C)`` array -> (n, C)."""
    rng = np.random.default_rng(seed)
    n_channels = int(image.shape[2])
    if _is_dask(image):
        import dask

        # Random-chunk sampling: whole spatial chunks in a seeded random order, enough of
        # them for max_samples pixels and at least _MIN_BLOCKS (for spatial spread), each
        # read with a stride so that only ~max_samples pixels come back; the other chunks
        # are never read.  One compute call: the graph is optimised once.
        block_rows, block_cols = image.chunks[0], image.chunks[1]
        row_starts = np.concatenate([[0], np.cumsum(block_rows)])
        col_starts = np.concatenate([[0], np.cumsum(block_cols)])
        n_blocks = len(block_rows) * len(block_cols)
        order = [divmod(int(f), len(block_cols)) for f in rng.permutation(n_blocks)]
        count = 0
        for n_picked, (i, j) in enumerate(order, start=1):
            count += block_rows[i] * block_cols[j]
            if count >= max_samples and n_picked >= min(_MIN_BLOCKS, n_blocks):
                break
        total = int(image.shape[0]) * int(image.shape[1])
        per_block = max(1, -(-max_samples // n_picked))
        pieces = []
        for i, j in order[:n_picked]:
            area = block_rows[i] * block_cols[j]
            step = 1 if total <= max_samples else max(1, math.isqrt(area // per_block))
            rows = slice(int(row_starts[i]), int(row_starts[i + 1]), step)
            cols = slice(int(col_starts[j]), int(col_starts[j + 1]), step)
            pieces.append(image[rows, cols])
        pixels = np.concatenate([np.asarray(p).reshape(-1, n_channels) for p in dask.compute(*pieces)])
    else:
        pixels = np.asarray(image)
        n_pixels = pixels.shape[0] * pixels.shape[1]
        if n_pixels <= max_samples:
            return pixels.reshape(-1, n_channels)
        flat = np.sort(rng.choice(n_pixels, size=max_samples, replace=False))
        return pixels.reshape(-1, n_channels)[flat]
    if pixels.shape[0] > max_samples:
        pixels = pixels[np.sort(rng.choice(pixels.shape[0], size=max_samples, replace=False))]
    return pixels


def _check_finite(values: np.ndarray, what: str) -> None:
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(
            f"{what} contains NaN or infinite values; replace them first "
            "(e.g. np.nan_to_num(image, nan=0.0, posinf=..., neginf=...))."
        )


def estimate_contrast_limits(
    image: Any,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    max_samples: int = 1_000_000,
    seed: int = 0,
) -> np.ndarray:
    """Estimate per-channel contrast limits from percentiles of a pixel sample.

    Parameters
    ----------
    image : array-like, shape (Y, X) or 3-D with a channel axis
        numpy, dask or zarr array of any real dtype (bool, integer, float).
        Chunked arrays are sampled by whole random chunks: only the chunks
        needed for ``max_samples`` pixels are read.
    channel_axis : int, optional
        Axis holding the channels.  ``None`` means 2-D grayscale, or
        ``(Y, X, 3)`` RGB when the last axis has length 3.
    channels : sequence of int, optional
        Up to three channel indices to keep (required above three channels).
    percentiles : (float, float)
        Lower and upper percentile, ``0 <= low <= high <= 100``.
    max_samples : int
        Most pixels used.  Images with at most this many pixels are used whole,
        so the result equals ``np.percentile`` of each channel.
    seed : int
        Seed of the deterministic sampling.

    Returns
    -------
    limits : ndarray, shape (C, 2), float64
        ``(low, high)`` per selected channel, in the order of ``channels``.
        ``bool`` images give ``(0, 1)``.

    Raises
    ------
    ValueError
        Bad shape, channel selection, dtype or percentiles, or NaN/inf values in
        the sample.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    >>> estimate_contrast_limits(image, percentiles=(0, 100))
    array([[  0., 400.]])

    One row per channel of a channels-first stack:

    >>> estimate_contrast_limits(np.stack([image, 2 * image]), channel_axis=0, percentiles=(0, 100))
    array([[  0., 400.],
           [  0., 800.]])
    """
    lo_pct, hi_pct = (float(p) for p in percentiles)
    if not 0.0 <= lo_pct <= hi_pct <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low <= high <= 100, got {percentiles!r}.")
    if isinstance(max_samples, bool) or int(max_samples) < 1:
        raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}.")
    view = _channels_last(_as_array(image), channel_axis, channels)
    n_channels = int(view.shape[2])
    if view.dtype == np.bool_:
        return np.tile(np.array([[0.0, 1.0]]), (n_channels, 1))
    pixels = _sample_pixels(view, int(max_samples), seed)
    _check_finite(pixels, "image")
    limits = np.percentile(pixels.astype(np.float64), [lo_pct, hi_pct], axis=0).T
    return np.ascontiguousarray(limits, dtype=np.float64)


def _check_limits(contrast_limits: Any, n_channels: int) -> np.ndarray:
    limits = np.asarray(contrast_limits, dtype=np.float64)
    if limits.shape == (2,):
        limits = np.tile(limits, (n_channels, 1))
    if limits.shape != (n_channels, 2):
        raise ValueError(
            f"contrast_limits must have shape (2,) or ({n_channels}, 2) (one (low, high) pair per "
            f"selected channel), got shape {limits.shape}."
        )
    if not np.isfinite(limits).all():
        raise ValueError(f"contrast_limits must be finite numbers, got {limits.tolist()}.")
    if (limits[:, 1] < limits[:, 0]).any():
        raise ValueError(f"contrast_limits need low <= high for every channel, got {limits.tolist()}.")
    return limits


def _stretch(plane: np.ndarray, low: float, high: float, out: np.ndarray) -> None:
    """Write ``plane`` (Y, X) linearly mapped from [low, high] to 0..255 into ``out`` (uint8)."""
    for r0 in range(0, plane.shape[0], _ROW_BLOCK):
        rows = plane[r0 : r0 + _ROW_BLOCK].astype(np.float64)
        if high > low:
            scaled = np.rint((rows - low) * (255.0 / (high - low)))
        else:
            scaled = np.where(rows > low, 255.0, 0.0)
        np.clip(scaled, 0.0, 255.0, out=scaled)
        out[r0 : r0 + _ROW_BLOCK] = scaled.astype(np.uint8)


def to_rgb_uint8(
    image: Any,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: Any = None,
) -> np.ndarray:
    """Convert an image to the ``(H, W, 3) uint8`` RGB input of SAM.

    Parameters
    ----------
    image : array-like, shape (Y, X) or 3-D with a channel axis
        numpy, dask (computed here) or zarr array; bool, integer or float.
        Never modified.
    channel_axis : int, optional
        Axis holding the channels.  ``None`` means 2-D grayscale, or
        ``(Y, X, 3)`` RGB when the last axis has length 3.
    channels : sequence of int, optional
        One to three channel indices to use (required above three channels).
        Mapping: 1 -> ``(g, g, g)``, 2 -> ``(c0, c1, 0)``, 3 -> ``(c0, c1, c2)``.
    contrast_limits : array-like, shape (2,) or (C, 2), optional
        ``(low, high)`` for all channels or per selected channel.  ``None``:
        ``uint8`` RGB passes through unchanged, anything else uses
        :func:`estimate_contrast_limits` on this image.  Pass limits estimated
        once on the whole image when converting tiles or slices.

    Returns
    -------
    rgb : ndarray, shape (Y, X, 3), uint8
        A new array.

    Raises
    ------
    ValueError
        Bad shape, dtype, channel selection or limits, or NaN/inf values.

    Examples
    --------
    A grayscale image is stretched linearly from its limits to 0..255 and
    copied into the three channels:

    >>> import numpy as np
    >>> image = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    >>> rgb = to_rgb_uint8(image, contrast_limits=(0, 400))
    >>> rgb.shape, rgb.dtype
    ((2, 2, 3), dtype('uint8'))
    >>> rgb[..., 0]
    array([[  0,  64],
           [127, 255]], dtype=uint8)

    Two channels become red and green, each with its own limits:

    >>> two = np.stack([image, image[::-1]])
    >>> to_rgb_uint8(two, channel_axis=0, contrast_limits=[(0, 400), (0, 200)])[0, 1]
    array([ 64, 255,   0], dtype=uint8)
    """
    array = _as_array(image)
    view = _channels_last(array, channel_axis, channels)
    pixels = np.asarray(view)  # computes dask input (one tile or slice)
    n_channels = pixels.shape[2]
    if pixels.dtype == np.uint8 and n_channels == 3 and contrast_limits is None:
        return np.array(pixels, dtype=np.uint8, order="C", copy=True)
    _check_finite(pixels, "image")
    if pixels.dtype == np.bool_:
        pixels = pixels.view(np.uint8)
        limits = _check_limits((0.0, 1.0) if contrast_limits is None else contrast_limits, n_channels)
    elif contrast_limits is None:
        limits = estimate_contrast_limits(pixels, channel_axis=-1)
    else:
        limits = _check_limits(contrast_limits, n_channels)
    rgb = np.zeros(pixels.shape[:2] + (3,), dtype=np.uint8)
    for c in range(n_channels):
        _stretch(pixels[:, :, c], float(limits[c, 0]), float(limits[c, 1]), rgb[:, :, c])
    if n_channels == 1:
        rgb[:, :, 1] = rgb[:, :, 0]
        rgb[:, :, 2] = rgb[:, :, 0]
    return rgb

