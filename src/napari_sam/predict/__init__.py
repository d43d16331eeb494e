"""Prompted segmentation: the predictor (image -> embedding; prompts -> masks) and its prompt pipeline.

Names are imported on first use, so the torch-free modules (``correction``,
``tiled_embedding``, ``zoom``) can be used without importing torch.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "correction": ["PreviousResult"],
        "factory": ["make_predictor", "predictor_for_model"],
        "options": ["PromptOptions"],
        "pipeline": ["PromptPipeline", "PromptResult"],
        "predictor": ["Embedding", "Predictor"],
    },
)
