"""Prompted segmentation: the predictor (image -> embedding; prompts -> masks) and its prompt pipeline.

Names are imported on first use, so the torch-free modules (``correction``,
``tiled_embedding``, ``zoom``) can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Embedding": "predictor",
    "Predictor": "predictor",
    "PreviousResult": "correction",
    "PromptOptions": "options",
    "PromptPipeline": "pipeline",
    "PromptResult": "pipeline",
    "make_predictor": "factory",
    "predictor_for_model": "factory",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
