"""The SAM model: modules, configs, model cards, the registry of known models, checkpoints and downloads.

Nothing here depends on any other part of napari-sam.  Names are imported on
first use, so ``napari_sam.model.catalog`` (the model list) works without
importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CheckpointError": "checkpoint",
    "ModelCard": "cards",
    "Sam": "sam",
    "Verdict": "verify",
    "available_models": "catalog",
    "build_model": "registry",
    "fetch_checkpoint": "registry",
    "load_model": "registry",
    "model_card": "catalog",
    "register_model": "catalog",
    "resolve_device": "registry",
    "verify_weights": "verify",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
