"""Reading checkpoints and checking them against a model, tensor by tensor.

Used by :mod:`napari_sam.model.registry`; nothing here knows about the registry.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from napari_sam.model.build import build_sam


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the requested model."""


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)``.

    Accepts a plain state dict or one wrapped as ``{"model": ...}`` /
    ``{"state_dict": ...}``. Raises :class:`CheckpointError` for a missing,
    truncated or corrupt file, content that is not a state dict, or a tensor
    holding NaN or infinite values (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {path} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"Could not read checkpoint {path} ({type(exc).__name__}: {exc}). The file is "
            "truncated, corrupt or not a PyTorch checkpoint; delete it and download it again."
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{path} does not contain a model state dict (a mapping of names to tensors)."
        )
    check_finite(obj, path=path)
    return dict(obj)


def check_finite(state: Mapping[str, torch.Tensor], *, path: Path | str) -> None:
    """Raise :class:`CheckpointError` naming the first tensor of ``state`` with NaN or inf values."""
    for name, tensor in state.items():
        if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}; these "
                "weights would give meaningless masks (a diverged training run or a damaged file). Use "
                "another checkpoint, e.g. the last good one of the training run."
            )


def shape_signature(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of a model built from ``config`` (on the meta device)."""
    return dict(_signature_of_json(json.dumps(config, sort_keys=True)))


@functools.lru_cache(maxsize=16)
def _signature_of_json(config_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    model = build_sam(json.loads(config_json), device="meta")
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def check_state(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    label: str,
    path: Path,
    match_variant: Callable[[dict[str, tuple[int, ...]]], str | None],
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly the ``expected`` shapes.

    ``match_variant(shapes)`` names another known model with those shapes (or None),
    to tell the user which variant the file belongs to.
    """
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if shapes == dict(expected):
        return
    other = match_variant(shapes)
    if other is not None:
        raise CheckpointError(
            f"{path} is a {other!r} checkpoint, not {label}: load it with "
            f"load_model({other!r}, checkpoint=...)."
        )
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    details = []
    if missing:
        details.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if wrong:
        k = wrong[0]
        details.append(
            f"{len(wrong)} with other shapes (e.g. {k}: file {shapes[k]}, model {expected[k]})"
        )
    raise CheckpointError(
        f"{path} does not fit {label} and matches no registered variant: "
        + "; ".join(details) + "."
    )
