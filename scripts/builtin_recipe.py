"""Configuration, seeds and export of the project's built-in model.

The built-in model is a small SAM ("vit" encoder, 256 x 256 input, 8 px
patches, so 32 x 32 image tokens and 128 x 128 low-resolution masks) trained by ``scripts/train_builtin.py`` on
:mod:`napari_sam.synthetic` images.  It ships as
``napari_sam/data/builtin_model.pt`` (a plain float32 ``state_dict``, strict
keys) and its model card ``napari_sam/data/builtin_model.card.json`` (config,
sha256 of the ``.pt``, recommended settings, two lines of provenance).  The full
provenance and every measurement go to ``benchmarks/results/builtin_model_history.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BUILTIN_CONFIG",
    "CARD",
    "DATA_DIR",
    "HISTORY",
    "TRAIN_SEED_START",
    "VAL_SEED_START",
    "builtin_config",
    "export_builtin",
    "sha256_file",
]

#: where the shipped checkpoint and its card live
DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "napari_sam" / "data"
#: the shipped model card
CARD = DATA_DIR / "builtin_model.card.json"
#: training provenance and tuning records of every exported model (not shipped)
HISTORY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "builtin_model_history.json"

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


def _training_line(provenance: dict[str, Any]) -> str:
    """One line of provenance for the card (the full record goes to the history file)."""
    parts = [str(provenance.get("trained_by", "scripts/train_builtin.py"))]
    if "steps" in provenance:
        parts.append(f"{provenance['steps']} steps")
    if "seconds" in provenance:
        parts.append(f"{round(float(provenance['seconds']) / 60)} min")
    if "machine" in provenance:
        parts.append(str(provenance["machine"]))
    return ", ".join(parts)[:300]


def append_history(entry: dict[str, Any], history: str | Path = HISTORY) -> None:
    """Append ``entry`` to the history file's ``exports`` list (the file is created if missing)."""
    path = Path(history)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("exports", []).append(entry)
    path.write_text(json.dumps(data, indent=1) + "\n")


def export_builtin(
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    provenance: dict[str, Any],
    *,
    out_dir: str | Path = DATA_DIR,
    name: str = "builtin_model",
    merge: bool = False,
    history: str | Path = HISTORY,
) -> tuple[Path, Path]:
    """Write ``<name>.pt`` (float32 state_dict) and its card ``<name>.card.json``; append to the history.

    With ``merge=True`` and an existing card, the new card keeps that card's
    recommended settings (``amg``, ``prompt_pipeline``), description and
    source: a new model is first run through the settings tuned for the old
    one.  The card gets one line of provenance; the full ``provenance`` (and
    the sha256 of the model it replaces) is appended to ``history``'s
    ``exports`` list, where measurements of the model belong too.

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
        Keep the existing card's settings (see above).
    history : path
        The history json to append to.

    Returns
    -------
    (pt_path, card_path)
    """
    from napari_sam.model.cards import ModelCard

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    pt_path, card_path = out / f"{name}.pt", out / f"{name}.card.json"
    old = ModelCard.from_json(card_path) if card_path.is_file() else None
    torch.save(clean, pt_path)
    sha = sha256_file(pt_path)
    card = ModelCard(
        name="builtin", config=config, sha256=sha, weights=pt_path.name,
        description="Small built-in model shipped with napari-sam for offline use",
        source="napari-sam project, trained from random weights (BSD-3-Clause, like the package)",
        training=_training_line(provenance),
    )
    if merge and old is not None:
        card = dataclasses.replace(old, config=config, sha256=sha, weights=pt_path.name, training=card.training)
    card.to_json(card_path)
    append_history({
        "sha256": sha,
        "replaces": None if old is None else old.sha256,
        "n_parameters": int(sum(v.numel() for v in clean.values())),
        "card_settings_kept": bool(merge and old is not None),
        "training": provenance,
    }, history)
    return pt_path, card_path
