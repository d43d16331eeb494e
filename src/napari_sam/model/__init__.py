"""The SAM model: modules, configs, model cards, the registry of known models, checkpoints and downloads.

Nothing here depends on any other part of napari-sam.  Names are imported on
first use, so ``napari_sam.model.catalog`` (the model list) works without
importing torch.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "cards": ["ModelCard"],
        "catalog": ["available_models", "model_card", "register_model"],
        "checkpoint": ["CheckpointError"],
        "registry": ["build_model", "fetch_checkpoint", "load_model", "resolve_device"],
        "sam": ["Sam"],
        "verify": ["Verdict", "verify_weights"],
    },
)
