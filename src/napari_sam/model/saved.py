"""Saved (fine-tuned) models and micro-sam checkpoints.

A saved model is a folder::

    my_model/
      model.pt              the state dict (loads strictly)
      model.card.json       a ModelCard: config, sha256, recommended parameters
      training.json         how it was made: base model, data sha256, steps, validation

:func:`napari_sam.load_model` loads the folder (or its card) offline.

micro-sam (computational-cell-analytics/micro-sam) saves fine-tuned SAM
models as a dict whose ``model_state`` holds the SAM weights, under a ``sam.``
prefix in training checkpoints (``module.sam.`` when trained with
DistributedDataParallel) and without one in exported models; a
``decoder_state`` entry holds the weights of its extra instance-segmentation
decoder, which this package does not use.  Exported models without that
decoder are plain state dicts and load as such.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from napari_sam.model.cards import ModelCard
from napari_sam.model.checkpoint import CheckpointError, check_finite
from napari_sam.model.download import sha256_of

__all__ = ["save_model", "is_saved_model", "card_in_folder", "is_micro_sam_checkpoint", "read_micro_sam",
           "resolve"]

WEIGHTS_NAME = "model.pt"
CARD_NAME = "model.card.json"
TRAINING_NAME = "training.json"
_PREFIXES = ("module.sam.", "sam.")


def save_model(model: torch.nn.Module, path: str | os.PathLike[str], *, name: str | None = None,
               description: str = "", overwrite: bool = False) -> ModelCard:
    """Write a model as a folder that :func:`napari_sam.load_model` reads.

    Parameters
    ----------
    model : Sam
        Usually from :func:`napari_sam.finetune` (its ``finetune_report`` goes
        into ``training.json`` and a summary into the card).
    path : path
        The folder to create.
    name : str, optional
        Registry name of the model (default: the folder name).
    description : str
        One line for menus.
    overwrite : bool
        Replace the files of an existing saved model.

    Returns
    -------
    ModelCard
        The card written (with its path set).
    """
    if not hasattr(model, "mask_decoder") or not getattr(model, "config", None):
        raise TypeError("save_model expects a SAM model built by napari_sam (it needs model.config).")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; save_model writes a folder (choose a new name).")
    if (folder / CARD_NAME).exists() and not overwrite:
        raise ValueError(f"{folder} already holds a saved model; pass overwrite=True or another path.")
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / WEIGHTS_NAME)
    base = getattr(model, "card", None)
    info: dict[str, Any] = dict(getattr(model, "finetune_report", None) or {})
    summary = ""
    if info:
        summary = (f"fine-tuned from {info.get('base')!r}: {info.get('steps_done')} steps on "
                   f"{info.get('train_slices')} slice(s) / {info.get('objects')} objects "
                   f"(data sha256 {str(info.get('data_sha256'))[:12]}); see {TRAINING_NAME}")
        if "after" in info:
            summary += f"; held-out before {info['before']} after {info['after']}"
    card = ModelCard(
        name=name or folder.resolve().name,
        config=dict(model.config),
        description=description or (f"fine-tuned {getattr(base, 'name', 'SAM')} model"),
        sha256=sha256_of(folder / WEIGHTS_NAME),
        weights=WEIGHTS_NAME,
        amg=dict(getattr(base, "amg", {}) or {}),
        prompt_pipeline=dict(getattr(base, "prompt_pipeline", {}) or {}),
        source=f"napari-sam fine-tuning of {getattr(base, 'name', 'a custom model')}",
        training=summary,
    )
    card.to_json(folder / CARD_NAME)
    (folder / TRAINING_NAME).write_text(json.dumps({"base_card": None if base is None else base.to_dict(),
                                                    **info}, indent=2, default=str) + "\n", encoding="utf-8")
    return ModelCard.from_json(folder / CARD_NAME)


def card_in_folder(path: str | os.PathLike[str]) -> Path | None:
    """The card file of a saved-model folder, or None."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    if (folder / CARD_NAME).is_file():
        return folder / CARD_NAME
    cards = sorted(folder.glob("*.card.json"))
    return cards[0] if len(cards) == 1 else None


def is_saved_model(path: str | os.PathLike[str]) -> bool:
    """True for a folder written by :func:`save_model` (or holding one card)."""
    return card_in_folder(path) is not None


def _load_raw(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"Could not read checkpoint {path} ({type(exc).__name__}: {exc}).") from exc


def is_micro_sam_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True for a file holding a dict with a ``model_state`` mapping (micro-sam's layout)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in (".pt", ".pth", ".ckpt"):
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        if _pickle_mentions(path, b"model_state"):
            raise CheckpointError(
                f"{path} is a micro-sam training checkpoint that holds Python objects besides the weights; "
                "napari-sam reads tensors only. Export the SAM weights with micro-sam "
                "(micro_sam.util.export_custom_sam_model(checkpoint, model_type, 'exported.pt')) and load that file."
            ) from None
        return False
    return isinstance(obj, Mapping) and isinstance(obj.get("model_state"), Mapping)


def _pickle_mentions(path: Path, word: bytes) -> bool:
    """Whether the pickle inside a (zip) torch file contains ``word``, without unpickling it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(word in archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    except (OSError, zipfile.BadZipFile, KeyError):
        return False


def read_micro_sam(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The SAM state dict inside a micro-sam checkpoint (prefixes removed).

    Weights of micro-sam's instance-segmentation decoder (``decoder_state``)
    are ignored with a warning.
    """
    path = Path(path)
    obj = _load_raw(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model_state"), Mapping):
        raise CheckpointError(f"{path} is not a micro-sam checkpoint (no 'model_state' entry).")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj["model_state"].items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        state[key] = value
    if not state:
        raise CheckpointError(f"{path}: its 'model_state' holds no tensors.")
    if obj.get("decoder_state"):
        warnings.warn(
            f"{path}: micro-sam's instance-segmentation decoder ('decoder_state') is ignored; "
            "napari-sam uses the SAM weights (automatic segmentation runs SAM's own generator).",
            UserWarning, stacklevel=3,
        )
    check_finite(state, path=path)
    return state


def resolve(name_or_config: Any, checkpoint: Any, *, known: Mapping[str, ModelCard],
            variant_of: Callable[[dict[str, tuple[int, ...]]], str | None]) -> tuple[Any, Any]:
    """What :func:`napari_sam.load_model` loads for a path: a folder -> its card file; a micro-sam
    checkpoint -> a card of the registered variant its tensor shapes match (``variant_of``)."""
    if not isinstance(name_or_config, (str, os.PathLike)) or (
        isinstance(name_or_config, str) and name_or_config in known
    ):
        return name_or_config, checkpoint
    card_file = card_in_folder(name_or_config)
    if card_file is not None:
        return card_file, checkpoint
    if checkpoint is None and is_micro_sam_checkpoint(name_or_config):
        path = Path(name_or_config)
        state = read_micro_sam(path)
        variant = variant_of({k: tuple(v.shape) for k, v in state.items()})
        if variant is None:
            raise CheckpointError(
                f"{path} is a micro-sam checkpoint of no registered architecture; pass its config: "
                "load_model(config, checkpoint=path)."
            )
        base = known[variant]
        card = ModelCard(name=path.stem, config=base.config, weights=str(path.resolve()),
                         description=f"micro-sam checkpoint ({variant})", amg=base.amg,
                         prompt_pipeline=base.prompt_pipeline, source=f"micro-sam fine-tuning of {variant}")
        return card, path
    return name_or_config, checkpoint
