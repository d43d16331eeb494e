"""Model choices offered by the widgets and the predictor they build (no Qt).

Besides the registry models of :mod:`napari_sam.model.registry`, the widgets offer a
weight-free *stand-in* (:class:`~napari_sam._napari._testing.ThresholdPredictor`)
so the plugin can be tried, documented and tested without any download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["STAND_IN", "model_choices", "make_predictor", "model_identity"]

#: Name of the weight-free stand-in in the model list.
STAND_IN = "stand-in (no weights)"


def model_choices() -> list[str]:
    """Registry model names (``builtin`` first when shipped), then the stand-in."""
    try:
        from napari_sam.model.registry import available_models

        names = list(available_models())
    except ImportError:  # pragma: no cover - core module missing in a broken install
        names = []
    return [*names, STAND_IN]


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
    if name == STAND_IN:
        from napari_sam._napari._testing import ThresholdPredictor

        return ThresholdPredictor()
    from napari_sam.model.registry import load_model, recommended_zoom
    from napari_sam.predict.pipeline import PromptPipeline
    from napari_sam.predict.predictor import Predictor

    device = None if device in (None, "", "auto") else device
    ckpt = None if checkpoint in (None, "") or not str(checkpoint).strip() or Path(checkpoint).is_dir() else checkpoint
    model = load_model(name, checkpoint=ckpt, device=device)
    zoom = recommended_zoom(name)  # the built-in model: single-object prompts go through its prompt pipeline
    if zoom is not None:
        return PromptPipeline(model, device=device, **zoom)
    return Predictor(model, device=device)


def model_identity(name: str, checkpoint: str | Path | None = None) -> str:
    """A string naming the model and its weights (for the embedding cache key)."""
    if checkpoint and not Path(checkpoint).is_dir():
        return f"{name}:{Path(checkpoint).resolve()}"
    return name
