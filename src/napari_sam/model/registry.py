"""Model registry (one :class:`~napari_sam.model.cards.ModelCard` per name), downloads and strict loading.

Names: ``vit_b``, ``vit_l``, ``vit_h`` (official SAM), ``vit_t`` (MobileSAM),
plus every card shipped in ``napari_sam/data`` (``*.card.json``; the small
``builtin`` model) and any registered with :func:`register_model`.  A card's
weights are fetched with pooch against its sha256 into :func:`cache_dir`
(``$NAPARI_SAM_CACHE`` overrides it), or read from a file beside the card, or
from ``load_model(name, checkpoint=path)``, which works offline.  Loading is
strict: any missing, unexpected or mis-shaped tensor raises
:class:`CheckpointError`; a checkpoint of another variant is named as such.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from napari_sam.model import download, saved
from napari_sam.model.build import build_sam, resolve_config
from napari_sam.model.cards import ModelCard
from napari_sam.model.catalog import (  # noqa: F401  (the catalogue, re-exported)
    DATA_DIR,
    REGISTRY,
    _unknown,
    available_models,
    get_card,
    get_config,
    is_card_file,
    model_card,
    recommended_amg_params,
    recommended_zoom,
    register_model,
)
from napari_sam.model.checkpoint import (
    CheckpointError,
    check_state,
    read_checkpoint,
    shape_signature,
)
from napari_sam.model.sam import Sam

CACHE_ENV = download.CACHE_ENV


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """Pick the compute device: CUDA, then Apple MPS, then CPU.

    Parameters
    ----------
    device : torch.device or str, optional
        Explicit choice (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``); overrides
        the automatic choice.

    Returns
    -------
    torch.device
    """
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"{device!r} is not a torch device; use 'cpu', 'cuda' or 'mps'.") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but CUDA is not available; use 'cpu'.")
        if dev.type == "mps" and not _mps_available():
            raise ValueError("device='mps' was asked for but MPS is not available; use 'cpu'.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def cache_dir() -> Path:
    """Checkpoint cache folder: ``$NAPARI_SAM_CACHE`` or pooch's per-user cache."""
    return download.cache_dir()


def fetch_checkpoint(
    name: str, *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = False
) -> Path:
    """Download (once) and hash-check the checkpoint of a registered model.

    Parameters
    ----------
    name : str
        Registry name.
    cache_dir : path, optional
        Folder to keep checkpoints in; default :func:`cache_dir`.
    progress : bool, optional
        Show pooch's download progress bar.

    Returns
    -------
    Path
        Local path of the verified checkpoint.
    """
    return download.fetch_weights(get_card(name), cache_dir=cache_dir, progress=progress)


def _matching_variant(shapes: dict[str, tuple[int, ...]], exclude: str | None) -> str | None:
    for name, card in REGISTRY.items():
        if name == exclude:
            continue
        try:
            signature = shape_signature(card.config)
        except (ValueError, TypeError, KeyError, RuntimeError):
            signature = None  # a broken user-registered entry must not mask the real error
        if signature == shapes:
            return name
    return None


def _card_or_config(
    name_or_config: str | Mapping[str, Any] | os.PathLike[str] | ModelCard,
) -> tuple[ModelCard | None, dict[str, Any]]:
    """``(card, config)`` of a registry name or a card (file); ``(None, config)`` of a config (file)."""
    if isinstance(name_or_config, ModelCard):
        return name_or_config, copy.deepcopy(name_or_config.config)
    if isinstance(name_or_config, Mapping):
        return None, resolve_config(dict(name_or_config))
    if isinstance(name_or_config, str) and name_or_config in REGISTRY:
        card = REGISTRY[name_or_config]
        return card, copy.deepcopy(card.config)
    if isinstance(name_or_config, (str, os.PathLike)):
        path = Path(name_or_config)
        if is_card_file(path):
            card = ModelCard.from_json(path)
            return card, copy.deepcopy(card.config)
        if isinstance(name_or_config, str) and path.suffix != ".json" and not path.exists():
            raise _unknown(name_or_config)
    return None, resolve_config(name_or_config)


def build_model(
    config_or_name: str | Mapping[str, Any] | os.PathLike[str] | ModelCard,
    *,
    device: torch.device | str | None = None,
) -> Sam:
    """Build a randomly initialised :class:`Sam` in eval mode.

    Parameters
    ----------
    config_or_name : dict, str or path
        A config dict (schema in :mod:`napari_sam.model.build`), a path to a
        ``config.json`` (or a folder holding one), a registry name
        (``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``, ``"builtin"``) or a
        model card (or its file).
    device : torch.device or str, optional
        Device to allocate on; ``"meta"`` builds without memory (shapes only).

    Returns
    -------
    Sam
        The model with ``model.config`` set to the resolved config.
    """
    return build_sam(_card_or_config(config_or_name)[1], device=device)


def load_model(
    name_or_config: str | Mapping[str, Any] | os.PathLike[str] | ModelCard = "builtin",
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
) -> Sam:
    """Build a model and load its weights strictly; returns it in eval mode with its card.

    Parameters
    ----------
    name_or_config : str, path, ModelCard or dict, optional
        A registry name (default ``"builtin"``), a model card or the path of
        one (``<model>.card.json``), a config dict, or a path to a ``config.json``.
    checkpoint : path, optional
        Local checkpoint file. Required for a config; for a card the default
        is the weights it names: a file beside it, or a download (once,
        hash-checked) with :func:`fetch_checkpoint`.
    device : torch.device or str, optional
        See :func:`resolve_device`.

    Returns
    -------
    Sam
        float32 model on ``device`` in eval mode; ``model.card`` is its
        :class:`ModelCard` (for a config: a card with no recommendations, so
        SAM's defaults and plain prompting apply).

    Raises
    ------
    CheckpointError
        Missing/corrupt file, or tensors that do not fit (naming the variant the
        file belongs to when it is another registered one).
    """
    name_or_config, checkpoint = saved.resolve(  # a saved-model folder, a micro-sam checkpoint
        name_or_config, checkpoint, known=REGISTRY, variant_of=lambda shapes: _matching_variant(shapes, None))
    card, config = _card_or_config(name_or_config)
    own_name = None if card is None else card.name
    if card is not None:
        label = repr(card.name) if card.path is None else f"{card.name!r} ({card.path})"
        if checkpoint is None:
            checkpoint = download.fetch_weights(card)
    else:
        if checkpoint is None:
            raise ValueError(
                "load_model with a config needs checkpoint=<path to weights>; use "
                "napari_sam.build_model(config) for a randomly initialised model."
            )
        label = "the given config"
        card = ModelCard(name=Path(checkpoint).stem or "custom", config=config, weights=str(checkpoint),
                         description="a config loaded with a checkpoint")
    target = resolve_device(device)
    path = Path(checkpoint)
    state = saved.read_micro_sam(path) if saved.is_micro_sam_checkpoint(path) else read_checkpoint(path)
    check_state(
        state, shape_signature(config), label=label, path=path,
        match_variant=lambda shapes: _matching_variant(shapes, exclude=own_name),
    )
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    # allocate without random initialisation (seconds for vit_h): every persistent
    # tensor is overwritten by the strict load, the others are recomputed
    model = build_sam(config, device="meta").to_empty(device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # pragma: no cover - shapes were checked above
        raise CheckpointError(f"{path} does not fit {label}: {exc}") from exc
    for module in model.modules():
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            reset()
    model.card = card
    return model.to(target).eval()
