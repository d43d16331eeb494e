"""The SAM model: modules, configs, model cards, the registry of known models, checkpoints and downloads.

Nothing here depends on any other part of napari-sam.
"""

from napari_sam.model.cards import ModelCard
from napari_sam.model.checkpoint import CheckpointError
from napari_sam.model.registry import (
    available_models,
    build_model,
    fetch_checkpoint,
    load_model,
    model_card,
    register_model,
    resolve_device,
)
from napari_sam.model.sam import Sam
from napari_sam.model.verify import Verdict, verify_weights

__all__ = [
    "CheckpointError",
    "ModelCard",
    "Sam",
    "Verdict",
    "available_models",
    "build_model",
    "fetch_checkpoint",
    "load_model",
    "model_card",
    "register_model",
    "resolve_device",
    "verify_weights",
]
