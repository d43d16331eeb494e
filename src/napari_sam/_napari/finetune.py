"""Fine-tuning from napari layers (no Qt): training data from an image and a Labels layer,
and a fine-tuned model saved and registered so that every model choice offers it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.progress import CancelToken, ProgressCallback

__all__ = ["training_slices", "finetune_and_register", "default_model_folder"]


def default_model_folder() -> Path:
    """Where the dock saves models: ``$NAPARI_SAM_MODELS`` or ``~/.napari-sam/models``."""
    return Path(os.environ.get("NAPARI_SAM_MODELS", Path.home() / ".napari-sam" / "models"))


def training_slices(image: Any, labels: Any, *, rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D slices of ``image`` (layer data) whose ``labels`` slice holds objects.

    Parameters
    ----------
    image : array (layer data), ``(..., Y, X)`` or ``(..., Y, X, 3)`` when ``rgb``
    labels : array (Labels layer data), ``(..., Y, X)`` with the image's leading shape
    rgb : bool
        The image layer is RGB (last axis colour).

    Returns
    -------
    images : (N, Y, X[, 3]) ndarray, labels : (N, Y, X) ndarray
    """
    image = image[0] if isinstance(image, list) else image  # multiscale: full resolution
    spatial = image.shape[:-1] if rgb else image.shape
    if tuple(labels.shape) != tuple(spatial):
        raise ValueError(
            f"the Labels layer has shape {tuple(labels.shape)} but the image {tuple(spatial)}; "
            "pick the Labels layer painted on this image."
        )
    lab = np.asarray(labels)
    if lab.ndim == 2:
        return np.asarray(image)[None], lab[None]
    lead = lab.shape[:-2]
    flat = lab.reshape(-1, *lab.shape[-2:])
    keep = [i for i in range(flat.shape[0]) if flat[i].any()]
    if not keep:
        raise ValueError("the Labels layer is empty; paint or commit some objects before fine-tuning.")
    idx = [np.unravel_index(i, lead) for i in keep]
    return np.stack([np.asarray(image[i]) for i in idx]), flat[keep]


def finetune_and_register(
    image: Any,
    labels: Any,
    *,
    base: str,
    name: str,
    folder: str | os.PathLike[str] | None = None,
    rgb: bool = False,
    steps: int = 200,
    validation: float = 0.2,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
) -> dict[str, Any]:
    """Fine-tune ``base`` on the labelled slices, save it as ``folder/name`` and register it as ``name``.

    Returns
    -------
    dict
        The fine-tuning report (``before``/``after`` held-out numbers when
        there were enough labelled slices) plus ``name`` and ``path``.
    """
    from napari_sam.model.registry import register_model
    from napari_sam.model.saved import CARD_NAME, save_model
    from napari_sam.training.finetune import finetune

    if not name or not name.strip():
        raise ValueError("give the fine-tuned model a name.")
    images, lab = training_slices(image, labels, rgb=rgb)
    device = None if device in (None, "", "auto") else device
    model = finetune(base, list(images), list(lab), steps=steps, validation=validation,
                     progress=progress, cancel=cancel, device=device)
    out = Path(folder or default_model_folder()) / name
    save_model(model, out, name=name, overwrite=True)
    register_model(out / CARD_NAME, overwrite=True)
    return {**model.finetune_report, "name": name, "path": str(out)}
