"""Seeded synthetic fluorescence-like images with ground-truth instance labels.

Used for sample data, demos, tests and for training the built-in model.  Only
numpy, scipy and scikit-image are needed.

Objects are star-convex blobs (an ellipse whose radius is modulated by a few
low harmonics): round or irregular nuclei with chromatin-like texture, and
cells with a bright membrane and a dim interior.  They vary in size (5-80 px
diameter), brightness, may touch, and may overlap a little (the object drawn
later is on top in the labels; intensities add as in fluorescence).  Background
offset, a smooth illumination gradient, optical blur and Poisson + Gaussian
noise are drawn per image.

Every function is deterministic for a given ``seed``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "make_nuclei_image",
    "make_nuclei_stack",
    "sample_point_prompts",
    "boxes_from_labels",
    "MIN_DIAMETER",
    "MAX_DIAMETER",
]

#: smallest and largest object diameter (pixels) the generator draws
MIN_DIAMETER = 5.0
MAX_DIAMETER = 80.0

_DTYPES = ("uint8", "uint16", "float32")
_KINDS = ("nuclei", "cells", "mixed")


# --------------------------------------------------------------------------- shapes
def _shape_params(rng: np.random.Generator, *, irregular: bool) -> dict:
    """Random shape parameters of one star-convex blob (independent of its size)."""
    n_harm = 4
    amp_scale = rng.uniform(0.04, 0.12) if irregular else rng.uniform(0.0, 0.03)
    return {
        "axis_ratio": rng.uniform(0.6, 1.0) if irregular else rng.uniform(0.8, 1.0),
        "angle": rng.uniform(0, np.pi),
        "amps": amp_scale * rng.uniform(0.3, 1.0, n_harm) / np.arange(1, n_harm + 1) ** 0.5,
        "phases": rng.uniform(0, 2 * np.pi, n_harm),
    }


def _rasterize(center: tuple[float, float], radius: float, params: dict, shape: tuple[int, int]):
    """Rasterize a blob; return (slices, inside mask, depth in [0, 1]) or None if off-image.

    ``depth`` is 0 on the boundary and 1 at the centre (normalised star-convex radius).
    """
    r_major = radius / np.sqrt(params["axis_ratio"])  # keeps the area of a disk of `radius`
    r_minor = radius * np.sqrt(params["axis_ratio"])
    ext = r_major * (1 + params["amps"].sum()) + 2
    r0, r1 = int(np.floor(center[0] - ext)), int(np.ceil(center[0] + ext)) + 1
    c0, c1 = int(np.floor(center[1] - ext)), int(np.ceil(center[1] + ext)) + 1
    r0, c0 = max(r0, 0), max(c0, 0)
    r1, c1 = min(r1, shape[0]), min(c1, shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    dy, dx = rr - center[0], cc - center[1]
    ca, sa = np.cos(params["angle"]), np.sin(params["angle"])
    u, v = (dx * ca + dy * sa) / r_major, (-dx * sa + dy * ca) / r_minor
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    k = np.arange(1, len(params["amps"]) + 1)[:, None, None] + 1  # harmonics 2..5
    boundary = 1 + np.sum(params["amps"][:, None, None] * np.cos(k * theta + params["phases"][:, None, None]), axis=0)
    depth = 1 - rho / boundary
    inside = depth >= 0
    if not inside.any():
        return None
    return (slice(r0, r1), slice(c0, c1)), inside, np.clip(depth, 0, 1)


def _intensity(rng, inside, depth, radius, *, kind: str, brightness: float) -> np.ndarray:
    """Fluorescence of one object on its local crop (float, 0 outside)."""
    if kind == "cell":
        thickness = rng.uniform(1.2, 2.5) / max(radius, 1.0)  # membrane in depth units
        interior = rng.uniform(0.15, 0.35)
        value = np.where(depth < thickness, 1.0, interior)
    else:
        value = 0.7 + 0.3 * np.sqrt(depth)
        sigma = max(radius / 4, 1.0)
        tex = ndi.gaussian_filter(rng.standard_normal(inside.shape), sigma)
        tex /= tex.std() + 1e-9
        value = value * (1 + rng.uniform(0.05, 0.2) * tex)
    return np.where(inside, np.clip(value, 0.05, None) * brightness, 0.0)


# --------------------------------------------------------------------------- placement
def _check_args(shape, dtype, ndim: int) -> tuple[tuple[int, ...], str]:
    if len(shape) != ndim or any(int(s) < 16 for s in shape[-2:]) or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be {ndim} positive integers with Y and X >= 16; got {shape!r}")
    dtype = np.dtype(dtype).name
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}; got {dtype!r}")
    return tuple(int(s) for s in shape), dtype


def _try_place(labels, obj_id, sl, inside, *, max_overlap: float, areas: dict, bboxes: dict) -> bool:
    """Paint ``inside`` as ``obj_id`` on top of ``labels`` if earlier objects stay whole enough."""
    crop = labels[sl]
    under = crop[inside]
    hit, counts = np.unique(under[under > 0], return_counts=True)
    new_area = int(inside.sum())
    for oid, n in zip(hit, counts):
        if n > max_overlap * min(new_area, areas[oid]):
            return False
    for oid in hit:  # each occluded object must stay one connected piece
        bsl = bboxes[oid]
        trial = labels[bsl] == oid
        r0, c0 = max(sl[0].start, bsl[0].start), max(sl[1].start, bsl[1].start)
        r1, c1 = min(sl[0].stop, bsl[0].stop), min(sl[1].stop, bsl[1].stop)
        trial[r0 - bsl[0].start : r1 - bsl[0].start, c0 - bsl[1].start : c1 - bsl[1].start] &= ~inside[
            r0 - sl[0].start : r1 - sl[0].start, c0 - sl[1].start : c1 - sl[1].start
        ]
        if ndi.label(trial)[1] != 1:
            return False
    crop[inside] = obj_id
    for oid, n in zip(hit, counts):
        areas[oid] -= int(n)
    return True


def _finish(canvas: np.ndarray, rng: np.random.Generator, dtype: str, *, blur_axes: int = 2) -> np.ndarray:
    """Blur, add background, illumination, Poisson + read noise, convert to ``dtype``."""
    shape = canvas.shape
    sigma = rng.uniform(0.5, 1.5)
    sig = (0,) * (canvas.ndim - blur_axes) + (sigma,) * blur_axes
    img = ndi.gaussian_filter(canvas, sig)
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[-2]), np.linspace(-1, 1, shape[-1]), indexing="ij")
    gy, gx = rng.uniform(-0.3, 0.3, 2)
    illum = 1 + gy * yy + gx * xx
    background = rng.uniform(0.02, 0.15)
    img = (img + background) * illum
    photons = rng.uniform(80, 600)  # photons at brightness 1: sets the shot noise
    img = rng.poisson(np.clip(img, 0, None) * photons) / photons
    img = img + rng.normal(0, rng.uniform(0.003, 0.015), shape)
    img = np.clip(img, 0, None)
    if dtype == "float32":
        return img.astype(np.float32)
    top = 255.0 if dtype == "uint8" else float(rng.choice([4095.0, 16383.0, 65535.0]))
    gain = top * rng.uniform(0.5, 0.9) / max(float(np.percentile(img, 99.9)), 1e-6)
    return np.clip(np.round(img * gain), 0, top).astype(dtype)


def make_nuclei_image(
    shape: tuple[int, int] = (512, 512),
    *,
    n_objects: int | None = None,
    kind: Literal["nuclei", "cells", "mixed"] = "nuclei",
    dtype: str = "uint16",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a 2D fluorescence-like image and its instance labels.

    Parameters
    ----------
    shape : (int, int)
        Image shape (Y, X); both at least 16.
    n_objects : int, optional
        Number of objects to try to place.  Default: enough to cover 15-45 %
        of the image (nuclei) or 50-80 % (cells).  Fewer may fit.
    kind : {"nuclei", "cells", "mixed"}
        Filled textured nuclei, cells with bright membranes, or both.
    dtype : {"uint16", "uint8", "float32"}
        Output image dtype.  Integer images use a random part of the range.
    seed : int
        Seed; equal seeds give equal outputs.

    Returns
    -------
    image : (Y, X) ndarray of ``dtype``
    labels : (Y, X) uint32 ndarray
        0 is background, objects are 1..N (consecutive).
    """
    shape, dtype = _check_args(shape, dtype, 2)
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}; got {kind!r}")
    if n_objects is not None and (not isinstance(n_objects, (int, np.integer)) or n_objects < 0):
        raise ValueError(f"n_objects must be a non-negative integer or None; got {n_objects!r}")
    rng = np.random.default_rng(seed)
    typical = {
        "nucleus": np.exp(rng.uniform(np.log(8), np.log(45))),
        "cell": np.exp(rng.uniform(np.log(25), np.log(70))),
    }
    p_cell = {"nuclei": 0.0, "cells": 1.0, "mixed": 0.5}[kind]
    p_irregular = rng.uniform(0.2, 0.8)
    p_touch = rng.uniform(0.2, 0.5)
    if n_objects is None:
        cover = rng.uniform(0.5, 0.8) if kind == "cells" else rng.uniform(0.15, 0.45)
        mean_d = (1 - p_cell) * typical["nucleus"] + p_cell * typical["cell"]
        n_objects = int(np.clip(cover * shape[0] * shape[1] / (np.pi * mean_d**2 / 4), 1, 2000))

    labels = np.zeros(shape, np.uint32)
    canvas = np.zeros(shape, np.float64)
    areas: dict[int, int] = {}
    bboxes: dict[int, tuple[slice, slice]] = {}
    centers: list[tuple[float, float, float]] = []
    placed, attempts = 0, 0
    while placed < n_objects and attempts < 8 * n_objects + 20:
        attempts += 1
        okind = "cell" if rng.random() < p_cell else "nucleus"
        diameter = float(np.clip(typical[okind] * np.exp(rng.normal(0, 0.2)), MIN_DIAMETER, MAX_DIAMETER))
        radius = diameter / 2
        params = _shape_params(rng, irregular=rng.random() < p_irregular or okind == "cell")
        if centers and rng.random() < p_touch:
            cr, cc, rad = centers[rng.integers(len(centers))]
            ang = rng.uniform(0, 2 * np.pi)
            dist = (rad + radius) * rng.uniform(0.85, 1.05)
            center = (cr + dist * np.sin(ang), cc + dist * np.cos(ang))
        else:
            center = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
        ir, ic = int(center[0]), int(center[1])
        if 0 <= ir < shape[0] and 0 <= ic < shape[1] and labels[ir, ic]:
            continue  # centre inside an earlier object: would overlap too much anyway
        raster = _rasterize(center, radius, params, shape)
        if raster is None:
            continue
        sl, inside, depth = raster
        full_area = np.pi * radius**2
        if inside.sum() < max(15, 0.4 * full_area):  # mostly outside the image
            continue
        max_overlap = 0.15 if rng.random() < 0.3 else 0.0
        oid = placed + 1
        bboxes[oid] = sl
        if not _try_place(labels, oid, sl, inside, max_overlap=max_overlap, areas=areas, bboxes=bboxes):
            del bboxes[oid]
            continue
        areas[oid] = int(inside.sum())
        brightness = rng.uniform(0.3, 1.0)
        canvas[sl] += _intensity(rng, inside, depth, radius, kind=okind, brightness=brightness)
        centers.append((center[0], center[1], radius))
        placed += 1
    image = _finish(canvas, rng, dtype)
    return image, labels


def make_nuclei_stack(
    shape: tuple[int, int, int] = (16, 256, 256),
    *,
    seed: int = 0,
    dtype: str = "uint16",
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a 3D stack of nuclei (sphere-like objects persisting across z).

    Each object is a blob whose radius in a slice follows a sphere (ellipsoid
    when the z spacing is coarser than xy): ``r(z) = R sqrt(1 - ((z - z0) / Rz)^2)``.
    Object ids are the same in every slice.

    Parameters
    ----------
    shape : (int, int, int)
        Stack shape (Z, Y, X); Y and X at least 16.
    seed : int
        Seed; equal seeds give equal outputs.
    dtype : {"uint16", "uint8", "float32"}
        Output image dtype.

    Returns
    -------
    stack : (Z, Y, X) ndarray of ``dtype``
    labels : (Z, Y, X) uint32 ndarray, 0 background, objects 1..N
    """
    shape, dtype = _check_args(shape, dtype, 3)
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z_scale = rng.uniform(1.0, 3.0)  # z step in xy pixels
    typical = np.exp(rng.uniform(np.log(12), np.log(40)))
    n_try = int(np.clip(0.3 * ny * nx / (np.pi * typical**2 / 4), 1, 1000))
    labels = np.zeros(shape, np.uint32)
    canvas = np.zeros(shape, np.float64)
    placed = 0
    for _ in range(6 * n_try):
        if placed >= n_try:
            break
        radius = float(np.clip(typical * np.exp(rng.normal(0, 0.2)), MIN_DIAMETER, MAX_DIAMETER)) / 2
        rz = radius / z_scale
        center = (rng.uniform(0, nz), rng.uniform(0, ny), rng.uniform(0, nx))
        params = _shape_params(rng, irregular=rng.random() < 0.4)
        brightness = rng.uniform(0.3, 1.0)
        pieces = []
        for z in range(max(0, int(center[0] - rz)), min(nz, int(np.ceil(center[0] + rz)) + 1)):
            frac = 1 - ((z - center[0]) / rz) ** 2
            if frac <= 0 or radius * np.sqrt(frac) < 1.5:
                continue
            raster = _rasterize(center[1:], radius * np.sqrt(frac), params, (ny, nx))
            if raster is not None:
                pieces.append((z, *raster, radius * np.sqrt(frac)))
        if not pieces or any(labels[z][sl][inside].any() for z, sl, inside, _, _ in pieces):
            continue  # no overlap in 3D keeps every object one piece in every slice
        placed += 1
        for z, sl, inside, depth, r in pieces:
            labels[z][sl][inside] = placed
            canvas[z][sl] += _intensity(rng, inside, depth, r, kind="nucleus", brightness=brightness)
    stack = _finish(canvas, rng, dtype)
    return stack, labels


# --------------------------------------------------------------------------- prompts
def _objects(labels: np.ndarray, ids) -> tuple[np.ndarray, list]:
    if not isinstance(labels, np.ndarray) or labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("labels must be a 2D integer array (Y, X) with 0 as background")
    slices = ndi.find_objects(labels)
    present = np.array([i + 1 for i, s in enumerate(slices) if s is not None], dtype=np.int64)
    if ids is None:
        ids = present
    else:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        missing = np.setdiff1d(ids, present)
        if missing.size:
            raise ValueError(f"label ids {missing[:5].tolist()} are not present in labels")
    return ids, slices


def boxes_from_labels(labels: np.ndarray, *, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Tight boxes of labelled objects.

    Parameters
    ----------
    labels : (Y, X) integer ndarray
        Instance labels, 0 background.
    ids : sequence of int, optional
        Which objects; default all present ids in increasing order.

    Returns
    -------
    boxes_rc : (K, 4) float64 ndarray
        ``(r0, c0, r1, c1)``: first and last (inclusive) row and column of each
        object, as SAM's ``batched_mask_to_box`` (``x1 = c1``, ``y1 = r1``).
    ids : (K,) int64 ndarray
    """
    ids, slices = _objects(labels, ids)
    boxes = np.array(
        [[slices[i - 1][0].start, slices[i - 1][1].start, slices[i - 1][0].stop - 1, slices[i - 1][1].stop - 1]
         for i in ids],
        dtype=np.float64,
    ).reshape(-1, 4)
    return boxes, ids


def sample_point_prompts(
    labels: np.ndarray,
    *,
    n_positive: int = 1,
    n_negative: int = 0,
    ids=None,
    mode: Literal["center", "interior", "uniform"] = "interior",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clicks a user would give on labelled objects.

    Parameters
    ----------
    labels : (Y, X) integer ndarray
        Instance labels, 0 background (not modified).
    n_positive, n_negative : int
        Positive clicks inside each object; negative clicks outside it, near it
        (within its box grown by half its size, on background or other objects).
    ids : sequence of int, optional
        Which objects; default all present ids in increasing order.
    mode : {"center", "interior", "uniform"}
        First positive click: the most interior pixel (``"center"``, maximum of
        the distance transform), a random pixel at least half the maximum depth
        inside (``"interior"``), or any object pixel (``"uniform"``).  Further
        positive clicks are ``"interior"``.
    seed : int
        Seed for the random choices.

    Returns
    -------
    points_rc : (K, n_positive + n_negative, 2) float64 ndarray
        (row, col) pixel coordinates.
    point_labels : (K, n_positive + n_negative) int32 ndarray
        1 for positive, 0 for negative clicks.
    ids : (K,) int64 ndarray
    """
    if mode not in ("center", "interior", "uniform"):
        raise ValueError(f"mode must be 'center', 'interior' or 'uniform'; got {mode!r}")
    if n_positive < 0 or n_negative < 0 or n_positive + n_negative < 1:
        raise ValueError("n_positive and n_negative must be >= 0 with at least one point in total")
    ids, slices = _objects(labels, ids)
    rng = np.random.default_rng(seed)
    n = n_positive + n_negative
    points = np.zeros((len(ids), n, 2))
    plabels = np.zeros((len(ids), n), np.int32)
    plabels[:, :n_positive] = 1
    H, W = labels.shape
    for k, oid in enumerate(ids):
        sr, sc = slices[oid - 1]
        obj = np.pad(labels[sr, sc] == oid, 1)
        dist = ndi.distance_transform_edt(obj)[1:-1, 1:-1]
        for j in range(n_positive):
            if j == 0 and mode == "center":
                flat = int(np.argmax(dist))
            else:
                ok = dist > 0 if (j == 0 and mode == "uniform") else dist >= 0.5 * dist.max()
                cand = np.flatnonzero(ok)
                flat = int(cand[rng.integers(cand.size)])
            r, c = np.unravel_index(flat, dist.shape)
            points[k, j] = (sr.start + r, sc.start + c)
        if n_negative:
            hr, hc = (sr.stop - sr.start) // 2 + 2, (sc.stop - sc.start) // 2 + 2
            gr = slice(max(sr.start - hr, 0), min(sr.stop + hr, H))
            gc = slice(max(sc.start - hc, 0), min(sc.stop + hc, W))
            cand = np.argwhere(labels[gr, gc] != oid)
            if cand.size == 0:
                raise ValueError(f"object {oid} fills its whole neighbourhood; no negative click possible")
            pick = cand[rng.integers(len(cand), size=n_negative)]
            points[k, n_positive:] = pick + (gr.start, gc.start)
    return points, plabels, ids
