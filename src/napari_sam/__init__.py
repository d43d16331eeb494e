"""napari-sam: Segment Anything for scientific imaging.

The public core API is importable from here without pulling in napari or Qt
(attributes are resolved lazily on first access).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "build_model": "napari_sam.sam.build",
    "Sam": "napari_sam.sam.model",
    "load_model": "napari_sam.models",
    "available_models": "napari_sam.models",
    "fetch_checkpoint": "napari_sam.models",
    "CheckpointError": "napari_sam.models",
    "resolve_device": "napari_sam.models",
    "Predictor": "napari_sam.predictor",
    "ZoomPredictor": "napari_sam.zoom",
    "estimate_contrast_limits": "napari_sam.normalize",
    "to_rgb_uint8": "napari_sam.normalize",
    "AutomaticMaskGenerator": "napari_sam.amg",
    "masks_to_labels": "napari_sam.amg",
    "segment_image": "napari_sam.tiling",
    "segment_volume": "napari_sam.batch",
    "open_image": "napari_sam.io",
    "EmbeddingCache": "napari_sam.cache",
    "embed_volume": "napari_sam.cache",
    "Cancelled": "napari_sam.progress",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.models import available_models, load_model
    from napari_sam.predictor import Predictor
    from napari_sam.zoom import ZoomPredictor
    from napari_sam.sam.build import build_model
    from napari_sam.sam.model import Sam
