"""Model choices offered by the widgets and the predictor they build (no Qt).

The widgets offer the registry models of :mod:`napari_sam.model.registry`
(the built-in model first; it needs no download).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_sam.model.catalog import available_models

__all__ = ["model_choices", "make_predictor", "model_identity", "on_model_list_change", "model_list_changed"]

_LISTENERS: list[Callable[[list[str]], None]] = []


def model_choices() -> list[str]:
    """Registry model names, ``builtin`` first when shipped."""
    return list(available_models())


def on_model_list_change(callback: Callable[[list[str]], None]) -> Callable[[], None]:
    """Call ``callback(model_choices())`` at each :func:`model_list_changed`; returns the disconnect."""
    _LISTENERS.append(callback)

    def disconnect() -> None:
        if callback in _LISTENERS:
            _LISTENERS.remove(callback)

    return disconnect


def model_list_changed() -> None:
    """Tell every open widget that models were registered (call from the GUI thread)."""
    choices = model_choices()
    for callback in list(_LISTENERS):
        callback(choices)


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


def open_session(name: str, image_layer: Any, *, checkpoint: str | Path | None = None, device: str | None = None,
                 tiled: bool | None = None, cache_dir: str | Path | None = None, labels_layer: Any = None,
                 make: Any = None) -> tuple[Any, str]:
    """Everything slow about starting an interactive session, for a worker thread.

    Loads the model (:func:`make_predictor`, or ``make(name, checkpoint=,
    device=)``), makes the :class:`~napari_sam._napari.session.Session`, opens
    the on-disk embedding cache at ``cache_dir`` (when given) and finds the
    next free id of ``labels_layer`` (a scan of the whole layer).  Returns
    ``(session, note)``: ``note`` says why the cache is not used, else ``""``.
    """
    import importlib

    from napari_sam._napari.session import Session

    importlib.import_module("pandas")  # what napari's points layer imports when the prompt layers are made
    predictor = (make or make_predictor)(name, checkpoint=checkpoint, device=device)
    session = Session(predictor, image_layer, tiled=tiled)
    note = ""
    if cache_dir not in (None, "", ".") and str(cache_dir).strip() not in ("", "."):
        try:
            session.open_disk_cache(cache_dir, model_id=model_identity(name, checkpoint))
        except (ValueError, OSError, ImportError) as exc:
            note = f"embedding cache not used: {exc}"
    if labels_layer is not None:
        session.scan_ids(labels_layer)
    return session, note
