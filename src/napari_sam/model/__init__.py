"""The SAM model: modules, configs, the registry of known models, checkpoints and downloads.

Nothing here depends on any other part of napari-sam.
"""

from napari_sam.model.checkpoint import CheckpointError
from napari_sam.model.registry import (
    available_models,
    build_model,
    fetch_checkpoint,
    load_model,
    resolve_device,
)
from napari_sam.model.sam import Sam

__all__ = [
    "CheckpointError",
    "Sam",
    "available_models",
    "build_model",
    "fetch_checkpoint",
    "load_model",
    "resolve_device",
]
