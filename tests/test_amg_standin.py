"""A deterministic stand-in for :class:`napari_sam.predict.predictor.Predictor` (no model).

It implements the interface AMG uses (``set_image``, ``predict_batch(...,
upsample=False)``, ``upsample_logits``, ``mask_threshold``, ``reset_image``)
with a known answer: the object under a point is the connected foreground
region (``image > 0.5``) containing it, and its logits are a scaled signed
distance to that region.

For a point on an object (values depend on the object's area only, so they do
not change when the object is seen through a different window):

* variant 0: the object itself; predicted IoU ``0.86 + 0.015 * (area % 7)``;
  logits ``sd * s`` with ``s = 4`` (stability 1.0) or, when ``area % 3 == 0``,
  ``s = 0.7`` (a one-pixel ring each side is unstable);
* variant 1: the object grown by about 2 px, IoU ``0.70``;
* variant 2: the object grown by about 6 px, IoU ``0.50``.

A point on the background gives the background region with IoUs 0.30, 0.20,
0.10.  Low-res logits are (B, 3, 8, 8) tensors filled with a code that
``upsample_logits`` decodes back into the full-resolution logits.

This file defines no tests; the AMG / tiling tests import it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

GROW = (0.0, 2.0, 6.0)


def object_score(area: int) -> float:
    return 0.86 + 0.015 * (area % 7)


def object_scale(area: int) -> float:
    return 0.7 if area % 3 == 0 else 4.0


class Prediction:
    def __init__(self, low: torch.Tensor, scores: torch.Tensor) -> None:
        self.low_res_logits = low
        self.scores = scores
        self.mask_logits = None


class StandInPredictor:
    mask_threshold = 0.0

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.n_decoded = 0
        self._labels: np.ndarray | None = None
        self._sd: dict[int, np.ndarray] = {}
        self._areas: np.ndarray | None = None

    # -- image -------------------------------------------------------------
    def set_image(self, image: Any, *, channel_axis: int | None = None, contrast_limits: Any = None, **kw: Any) -> None:
        img = np.asarray(image, dtype=np.float64)
        if img.ndim == 3:
            ax = 2 if channel_axis is None else channel_axis
            img = img.mean(axis=ax)
        self.calls.append({"shape": img.shape, "contrast_limits": contrast_limits, **kw})
        self._labels, _ = ndimage.label(img > 0.5)
        self._sd = {}
        self._areas = None
        self.original_size = img.shape

    def reset_image(self) -> None:
        self._labels = None

    def signed_distance(self, label: int) -> np.ndarray:
        if label not in self._sd:
            region = self._labels == label
            inside = ndimage.distance_transform_edt(region)
            outside = ndimage.distance_transform_edt(~region)
            self._sd[label] = inside - outside
        return self._sd[label]

    def logits_for(self, label: int, variant: int) -> np.ndarray:
        """Full-resolution logits (H, W) float32 of one (object, variant)."""
        sd = self.signed_distance(label)
        if label == 0:
            return ((sd + GROW[variant]) * 4.0).astype(np.float32)
        if self._areas is None:
            self._areas = np.bincount(self._labels.ravel())
        area = int(self._areas[label])
        return ((sd + GROW[variant]) * object_scale(area)).astype(np.float32)

    # -- decoding ----------------------------------------------------------
    def predict_batch(self, points_rc, point_labels, *, multimask: bool = True, upsample: bool = True):
        pts = np.asarray(points_rc, dtype=np.float64)
        b = pts.shape[0]
        self.n_decoded += b
        h, w = self._labels.shape
        if self._areas is None:
            self._areas = np.bincount(self._labels.ravel())
        rows = np.minimum(pts[:, 0, 0].astype(np.int64), h - 1)
        cols = np.minimum(pts[:, 0, 1].astype(np.int64), w - 1)
        labs = self._labels[rows, cols].astype(np.int64)
        codes = labs[:, None] * 3 + np.arange(3)[None, :]
        low = np.broadcast_to(codes[:, :, None, None], (b, 3, 8, 8)).astype(np.float32)
        scores = np.empty((b, 3), dtype=np.float32)
        for i, lab in enumerate(labs):
            scores[i] = (0.30, 0.20, 0.10) if lab == 0 else (object_score(int(self._areas[lab])), 0.70, 0.50)
        return Prediction(torch.from_numpy(low), torch.from_numpy(scores))

    def upsample_logits(self, low: torch.Tensor) -> torch.Tensor:
        codes = low[:, 0, 0].round().to(torch.int64).tolist()
        out = [torch.from_numpy(self.logits_for(code // 3, code % 3)) for code in codes]
        if not out:
            return torch.zeros((0, *self._labels.shape))
        return torch.stack(out)


def blob_image(shape: tuple[int, int], centres, radii, *, squares: bool = False) -> np.ndarray:
    """Float image in [0, 1] with discs (or squares) of value 1 on 0.1 background."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 0.1, dtype=np.float32)
    for (r, c), rad in zip(centres, radii):
        if squares:
            inside = (np.abs(rr - r) <= rad) & (np.abs(cc - c) <= rad)
        else:
            inside = (rr - r) ** 2 + (cc - c) ** 2 <= rad**2
        img[inside] = 1.0
    return img


def random_blobs(shape: tuple[int, int], n: int, *, rmin: int = 4, rmax: int = 9, gap: int = 6, margin: int = 2, seed: int = 0):
    """Non-touching random discs (at least ``gap`` px apart), all inside the image by ``margin``."""
    rng = np.random.default_rng(seed)
    centres: list[tuple[int, int]] = []
    radii: list[int] = []
    tries = 0
    while len(centres) < n and tries < 20000:
        tries += 1
        rad = int(rng.integers(rmin, rmax + 1))
        r = int(rng.integers(rad + margin, shape[0] - rad - margin))
        c = int(rng.integers(rad + margin, shape[1] - rad - margin))
        if all((r - r2) ** 2 + (c - c2) ** 2 > (rad + q + gap) ** 2 for (r2, c2), q in zip(centres, radii)):
            centres.append((r, c))
            radii.append(rad)
    return blob_image(shape, centres, radii), centres, radii
