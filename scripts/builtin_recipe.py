"""Configuration, seeds and export of the project's built-in model.

The built-in model is a small SAM ("vit" encoder, 256 x 256 input, 8 px
patches, so 32 x 32 image tokens and 128 x 128 low-resolution masks) trained by ``scripts/train_builtin.py`` on
:mod:`napari_sam.synthetic` images.  It ships as
``napari_sam/data/builtin_model.pt`` (a plain float32 ``state_dict``, strict
keys) and ``napari_sam/data/builtin_model.json`` (``config`` in the schema of
:mod:`napari_sam.model.build`, ``sha256`` of the ``.pt``, training provenance).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BUILTIN_CONFIG",
    "DATA_DIR",
    "TRAIN_SEED_START",
    "VAL_SEED_START",
    "builtin_config",
    "export_builtin",
    "sha256_file",
]

#: where the shipped checkpoint and its json live
DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "napari_sam" / "data"

#: training images use seeds TRAIN_SEED_START + i, validation VAL_SEED_START + i (disjoint)
TRAIN_SEED_START = 0
VAL_SEED_START = 1_000_000

BUILTIN_CONFIG: dict[str, Any] = {
    "image_encoder": {
        "type": "vit",
        "embed_dim": 128,
        "depth": 4,
        "num_heads": 4,
        "global_attn_indexes": [1, 3],
        "window_size": 8,
        "patch_size": 8,
        "img_size": 256,
        "mlp_ratio": 4.0,
        "out_chans": 64,
    },
    "prompt_embed_dim": 64,
    "image_size": 256,
    "mask_in_chans": 16,
    "decoder": {
        "depth": 2,
        "mlp_dim": 256,
        "num_heads": 4,
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 64,
    },
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
}


def builtin_config() -> dict[str, Any]:
    """A deep copy of :data:`BUILTIN_CONFIG` (safe to modify)."""
    return copy.deepcopy(BUILTIN_CONFIG)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_builtin(
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    provenance: dict[str, Any],
    *,
    out_dir: str | Path = DATA_DIR,
    name: str = "builtin_model",
    merge: bool = False,
) -> tuple[Path, Path]:
    """Write ``<name>.pt`` (float32 state_dict) and ``<name>.json`` (config, sha256, provenance).

    With ``merge=True`` and an existing ``<name>.json``, the new json keeps that
    file's other entries (the tuned ``zoom`` and ``amg`` settings, the tuning
    records): a new model is first run through the pipeline tuned for the old
    one. The old model's ``sha256``, ``training`` and ``metrics*`` entries move to the
    front of ``previous_models`` (its ``metrics`` describe the old weights, so
    the new json has none until ``scripts/eval_builtin.py --update-json``).

    Parameters
    ----------
    state_dict : dict of str to tensor
        Model weights (copied to CPU float32; buffers that are not persistent are absent).
    config : dict
        Model config in the schema of :mod:`napari_sam.model.build`.
    provenance : dict
        Training facts (steps, seconds, seeds, metrics, command).
    out_dir : path
        Destination folder (created).
    merge : bool
        Keep the existing json's other entries (see above).

    Returns
    -------
    (pt_path, json_path)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    pt_path, json_path = out / f"{name}.pt", out / f"{name}.json"
    old = json.loads(json_path.read_text()) if merge and json_path.is_file() else None
    torch.save(clean, pt_path)
    meta = {
        "name": "builtin",
        "config": config,
        "sha256": sha256_file(pt_path),
        "dtype": "float32",
        "n_parameters": int(sum(v.numel() for v in clean.values())),
        "training": provenance,
    }
    if old is not None:
        previous = {k: old.pop(k) for k in list(old) if k in ("sha256", "training") or k.startswith("metrics")}
        history = old.pop("previous_models", [])
        for k in meta:
            old.pop(k, None)
        meta.update(old)
        meta["previous_models"] = [previous, *history]
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return pt_path, json_path
