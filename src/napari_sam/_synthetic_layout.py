"""Object layouts for :mod:`napari_sam.synthetic_microscopy`.

A layout is an instance label image plus, for every labelled pixel, its
normalised star-convex radius ``rnorm`` (0 at the object's centre, 1 on its
boundary), from which the styles draw intensity profiles.  Objects drawn later
lie on top; every object keeps only its largest visible connected part, and
parts smaller than ``min_area`` pixels are removed, so each label is one
connected region that the image shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.measure import label as connected_label

__all__ = ["Layout", "LayoutParams", "draw_layout", "clean_labels"]


@dataclass
class LayoutParams:
    """How objects are drawn (all lengths in pixels of the generated image).

    Attributes
    ----------
    n_objects : int
        Objects attempted (some are rejected by ``max_overlap`` or cropped away).
    diameter : float
        Median equivalent diameter.
    size_spread : float
        Standard deviation of the log-diameter around the median.
    elongation : float
        Largest major/minor axis ratio (1: round).
    lobes : float
        Amplitude of the radial harmonics (0: ellipse; 0.3: strongly lobed).
    clump : float
        Fraction of objects placed around a few cluster centres.
    max_overlap : float
        Largest fraction of a new object that may cover earlier objects.
    divide : float
        Probability that an object is drawn as a dividing pair of two halves.
    """

    n_objects: int
    diameter: float
    size_spread: float = 0.2
    elongation: float = 1.5
    lobes: float = 0.08
    clump: float = 0.0
    max_overlap: float = 0.15
    divide: float = 0.0


@dataclass
class Layout:
    """Labels ``(H, W) int32`` (0 background) and ``rnorm (H, W) float32`` (1 outside objects)."""

    labels: np.ndarray
    rnorm: np.ndarray


def _blob(rng: np.random.Generator, center, radius: float, params: LayoutParams, shape):
    """Rasterise one star-convex blob: ``(slices, inside, rho)`` or None when off-image."""
    ratio = rng.uniform(1.0, max(1.0, params.elongation))
    a, b = radius * np.sqrt(ratio), radius / np.sqrt(ratio)
    angle = rng.uniform(0, np.pi)
    k = np.arange(2, 6)
    amps = params.lobes * rng.uniform(0, 1, k.size) / np.sqrt(k - 1)
    phases = rng.uniform(0, 2 * np.pi, k.size)
    reach = a * (1 + amps.sum()) + 1.5
    r0, c0 = center
    h, w = shape
    top, bottom = int(max(0, np.floor(r0 - reach))), int(min(h, np.ceil(r0 + reach) + 1))
    left, right = int(max(0, np.floor(c0 - reach))), int(min(w, np.ceil(c0 + reach) + 1))
    if top >= bottom or left >= right:
        return None
    rr, cc = np.mgrid[top:bottom, left:right].astype(np.float32)
    dy, dx = rr - r0, cc - c0
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = dx * ca + dy * sa, -dx * sa + dy * ca
    phi = np.arctan2(v, u)
    mod = 1 + (amps[:, None, None] * np.cos(k[:, None, None] * phi[None] + phases[:, None, None])).sum(0)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2) / mod
    inside = rho < 1.0
    if not inside.any():
        return None
    return (slice(top, bottom), slice(left, right)), inside, rho.astype(np.float32)


def clean_labels(labels: np.ndarray, *, min_area: int) -> np.ndarray:
    """Keep the largest connected part of every label, drop parts below ``min_area``, relabel 1..N.

    Parameters
    ----------
    labels : (H, W) integer ndarray (not modified)
    min_area : int

    Returns
    -------
    (H, W) int32 ndarray
    """
    comp = connected_label(labels, background=0, connectivity=1)
    n = int(comp.max())
    if n == 0:
        return np.zeros(labels.shape, np.int32)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    owner = np.zeros(n + 1, np.int64)
    owner[comp.ravel()] = labels.ravel()
    # the largest component of each owner: sort by (owner, size) and keep the last per owner
    order = np.lexsort((sizes[1:], owner[1:])) + 1
    last = np.r_[owner[order][1:] != owner[order][:-1], True]
    keep = np.zeros(n + 1, bool)
    keep[order[last]] = True
    keep &= sizes >= min_area
    keep[0] = False
    new_id = np.zeros(n + 1, np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_id[comp]


def draw_layout(rng: np.random.Generator, shape: tuple[int, int], params: LayoutParams, *,
                min_area: int = 6) -> Layout:
    """Draw a seeded object layout.

    Centres fall anywhere in the image and up to one radius outside it, so
    objects meet the border.

    Parameters
    ----------
    rng : numpy Generator
    shape : (int, int)
    params : LayoutParams
    min_area : int
        Smallest visible part kept (pixels).

    Returns
    -------
    Layout
    """
    h, w = shape
    labels = np.zeros(shape, np.int32)
    rnorm = np.ones(shape, np.float32)
    n_clusters = max(1, int(rng.integers(1, 6)))
    centres = rng.uniform([0, 0], [h, w], size=(n_clusters, 2))
    cluster_scale = params.diameter * rng.uniform(1.0, 3.0)
    next_id = 1
    for _ in range(int(params.n_objects)):
        radius = 0.5 * params.diameter * float(np.exp(rng.normal(0, params.size_spread)))
        radius = max(radius, 1.5)
        if rng.random() < params.clump:
            centre = centres[rng.integers(n_clusters)] + rng.normal(0, cluster_scale, 2)
        else:
            centre = rng.uniform([-radius, -radius], [h + radius, w + radius])
        parts = [(centre, radius)]
        if rng.random() < params.divide:  # two daughters side by side, touching
            d = rng.uniform(0, np.pi)
            off = 0.55 * radius * np.array([np.sin(d), np.cos(d)])
            parts = [(centre - off, 0.6 * radius), (centre + off, 0.6 * radius)]
        for c, r in parts:
            blob = _blob(rng, c, r, params, shape)
            if blob is None:
                continue
            sl, inside, rho = blob
            covered = labels[sl][inside] > 0
            if covered.mean() > params.max_overlap:
                continue
            labels[sl][inside] = next_id
            rnorm[sl][inside] = rho[inside]
            next_id += 1
    labels = clean_labels(labels, min_area=min_area)
    rnorm[labels == 0] = 1.0
    return Layout(labels, rnorm)
