"""Model choices offered by the widgets and the predictor they build (no Qt).

The widgets offer the registry models of :mod:`napari_sam.model.registry`
(the built-in model first; it needs no download).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_sam.model.registry import available_models

__all__ = ["model_choices", "make_predictor", "model_identity"]


def model_choices() -> list[str]:
    """Registry model names, ``builtin`` first when shipped."""
    return list(available_models())


def make_predictor(name: str, *, checkpoint: str | Path | None = None, device: str | None = None) -> Any:
    """Build the predictor for a widget's model choice (may download; call it in a worker).

    Parameters
    ----------
    name : str
        An entry of :func:`model_choices`.
    checkpoint : path, optional
        Local checkpoint file for ``name`` (no download then).
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"mps"``; None or ``"auto"`` picks the best available.
    """
    from napari_sam.predict.factory import make_predictor as card_predictor

    device = None if device in (None, "", "auto") else device
    ckpt = None if checkpoint in (None, "") or not str(checkpoint).strip() or Path(checkpoint).is_dir() else checkpoint
    return card_predictor(name, checkpoint=ckpt, device=device)  # configured by the model's card


def model_identity(name: str, checkpoint: str | Path | None = None) -> str:
    """A string naming the model and its weights (for the embedding cache key)."""
    if checkpoint and not Path(checkpoint).is_dir():
        return f"{name}:{Path(checkpoint).resolve()}"
    return name
