"""Sample-data hooks (npe2 ``sample_data`` contributions): generated offline, no download.

Both samples come from :mod:`napari_sam.synthetic` (seeded, so every user
sees the same image).  A scikit-image fallback keeps the menu working should
that module be unavailable in a stripped-down install.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["nuclei_2d", "nuclei_3d"]


def _fallback_blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Bright gaussian-blurred blobs on a dim noisy background, uint16."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    n = max(4, int(np.prod(shape[-2:]) / 1500))
    canvas = np.zeros(shape, dtype=np.float64)
    grids = np.indices(shape, dtype=np.float64)
    for _ in range(n):
        centre = [rng.uniform(0, s) for s in shape]
        radius = rng.uniform(6, 14)
        dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
        canvas += dist2 <= radius**2
    img = ndi.gaussian_filter(np.clip(canvas, 0, 1), 1.5) * 3000 + rng.normal(300, 40, shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def nuclei_2d() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """A 256 x 256 uint16 fluorescence-like image of nuclei (seeded)."""
    try:
        from napari_sam.synthetic import make_nuclei_image

        image, _ = make_nuclei_image((256, 256), kind="nuclei", seed=3)
    except ImportError:  # pragma: no cover - stripped install
        image = _fallback_blobs((256, 256), seed=3)
    return [(image, {"name": "nuclei (2D sample)", "colormap": "gray"}, "image")]


def nuclei_3d() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """A 16 x 128 x 128 uint16 stack of nuclei persisting across z (seeded)."""
    try:
        from napari_sam.synthetic import make_nuclei_stack

        image, _ = make_nuclei_stack((16, 128, 128), seed=3)
    except ImportError:  # pragma: no cover - stripped install
        image = _fallback_blobs((16, 128, 128), seed=3)
    return [(image, {"name": "nuclei (3D sample)", "colormap": "gray"}, "image")]
