"""Sample-data hooks (npe2 ``sample_data`` contributions): generated offline, no download.

Both samples come from :mod:`napari_sam.synthetic` (seeded, so every user
sees the same image).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam.synthetic import make_nuclei_image, make_nuclei_stack

__all__ = ["nuclei_2d", "nuclei_3d"]


def nuclei_2d() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """A 256 x 256 uint16 fluorescence-like image of nuclei (seeded)."""
    image, _ = make_nuclei_image((256, 256), kind="nuclei", seed=3)
    return [(image, {"name": "nuclei (2D sample)", "colormap": "gray"}, "image")]


def nuclei_3d() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """A 16 x 128 x 128 uint16 stack of nuclei persisting across z (seeded)."""
    image, _ = make_nuclei_stack((16, 128, 128), seed=3)
    return [(image, {"name": "nuclei (3D sample)", "colormap": "gray"}, "image")]
