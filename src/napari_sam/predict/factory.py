"""The predictor a model's card asks for: the one place that turns a card into a predictor.

The plugin, the batch runner, the CLI and ``napari_sam.make_predictor`` all
build their predictors here, so a model behaves alike everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from napari_sam.model.cards import ModelCard
from napari_sam.model.engines import use_engine
from napari_sam.model.registry import load_model
from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.predict.predictor import Predictor

__all__ = ["make_predictor", "predictor_for_model"]


def predictor_for_model(model: torch.nn.Module, *, device: Any = None) -> Predictor:
    """The predictor configured by ``model.card``'s prompt pipeline.

    Parameters
    ----------
    model : Sam
        A model, usually from :func:`napari_sam.load_model` (which attaches
        ``model.card``).  Without a card, or with an empty ``prompt_pipeline``,
        plain SAM prompting.
    device : torch.device or str, optional
        Where to run (default: the model's device).

    Returns
    -------
    Predictor
        A :class:`~napari_sam.PromptPipeline` with the card's settings when the
        card has a prompt pipeline, else a :class:`~napari_sam.Predictor`.
    """
    card = getattr(model, "card", None)
    pipeline: Mapping[str, Any] = card.prompt_pipeline if isinstance(card, ModelCard) else {}
    if not pipeline:
        return Predictor(model, device=device)
    try:
        return PromptPipeline(model, device=device, **pipeline)
    except TypeError as exc:  # an unknown setting
        where = f"model card {card.name!r}" + (f" ({card.path})" if card.path else "")
        raise ValueError(
            f"{where}: its prompt_pipeline {sorted(pipeline)} does not fit this version of napari-sam "
            f"({exc}); remove the unknown setting from the card."
        ) from None


def make_predictor(
    name_or_path: str | os.PathLike[str] | ModelCard,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    engine: str = "torch",
) -> Predictor:
    """Load a model and return the predictor its card configures (what the plugin uses).

    Parameters
    ----------
    name_or_path : str, path or ModelCard
        A registry name (:func:`napari_sam.available_models`), a model card or
        the path of a card file (``<model>.card.json``).
    checkpoint : path, optional
        Local weights file (no download then).
    device : torch.device or str, optional
        ``"cpu"``, ``"cuda"``, ``"mps"``...; default: the best available.
    engine : {"torch", "bf16", "openvino"}
        How the image encoder runs (:func:`napari_sam.model.engines.use_engine`):
        ``"bf16"`` is about 2x faster on CPUs with AMX / AVX-512 BF16 (features
        within ~1 %), ``"openvino"`` about 2x faster for ``vit_t`` on the CPU
        (features within ~1e-5; needs ``pip install openvino``).

    Returns
    -------
    Predictor
        Ready for ``set_image`` / ``predict``; automatic segmentation with it
        (:func:`napari_sam.segment_image`) uses the card's parameters.

    Examples
    --------
    >>> import napari_sam
    >>> predictor = napari_sam.make_predictor("builtin", device="cpu")   # shipped, offline
    >>> predictor.model.card.name
    'builtin'
    """
    model = load_model(name_or_path, checkpoint=checkpoint, device=device)
    if engine != "torch":
        model = use_engine(model, engine)
    return predictor_for_model(model, device=device)
