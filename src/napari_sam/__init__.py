"""napari-sam: Segment Anything for scientific imaging.

The public core API is importable from here without pulling in napari or Qt
(attributes are resolved lazily on first access; ``__init__.pyi`` lists them
for static tools).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "build_model": "napari_sam.model.registry",
    "Sam": "napari_sam.model.sam",
    "load_model": "napari_sam.model.registry",
    "model_card": "napari_sam.model.registry",
    "register_model": "napari_sam.model.registry",
    "ModelCard": "napari_sam.model.cards",
    "make_predictor": "napari_sam.predict.factory",
    "available_models": "napari_sam.model.registry",
    "fetch_checkpoint": "napari_sam.model.registry",
    "CheckpointError": "napari_sam.model.checkpoint",
    "resolve_device": "napari_sam.model.registry",
    "Predictor": "napari_sam.predict.predictor",
    "PromptPipeline": "napari_sam.predict.pipeline",
    "PromptResult": "napari_sam.predict.pipeline",
    "PreviousResult": "napari_sam.predict.correction",
    "estimate_contrast_limits": "napari_sam.normalize",
    "to_rgb_uint8": "napari_sam.normalize",
    "AutomaticMaskGenerator": "napari_sam.automatic.generator",
    "AmgParams": "napari_sam.automatic.params",
    "masks_to_labels": "napari_sam.automatic.labels",
    "segment_image": "napari_sam.tiled.tiles",
    "segment_volume": "napari_sam.volume.batch",
    "open_image": "napari_sam.volume.io",
    "object_table": "napari_sam.volume.tables",
    "write_vectors": "napari_sam.volume.vectors",
    "limit_threads": "napari_sam.threads",
    "EmbeddingCache": "napari_sam.volume.cache",
    "embed_volume": "napari_sam.volume.embed",
    "Cancelled": "napari_sam.progress",
    "finetune": "napari_sam.training.finetune",
    "save_model": "napari_sam.model.saved",
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
