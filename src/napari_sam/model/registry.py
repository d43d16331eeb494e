"""Model registry, checkpoint download/cache and strict loading.

Names: ``vit_b``, ``vit_l``, ``vit_h`` (official SAM), ``vit_t`` (MobileSAM)
and ``builtin`` (the small model shipped in ``napari_sam/data`` when present).
Checkpoints are fetched with pooch against a known SHA-256 into
:func:`cache_dir` (``$NAPARI_SAM_CACHE`` overrides it), or read from a local
file with ``load_model(name, checkpoint=path)``, which works offline.
Loading is strict: any missing, unexpected or mis-shaped tensor raises
:class:`CheckpointError`; a checkpoint of another variant is named as such.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_sam.model.build import build_sam, resolve_config
from napari_sam.model.checkpoint import (
    CheckpointError,
    check_state,
    read_checkpoint,
    shape_signature,
)
from napari_sam.model.sam import DEFAULT_PIXEL_MEAN, DEFAULT_PIXEL_STD, Sam

CACHE_ENV = "NAPARI_SAM_CACHE"
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
BUILTIN_JSON = DATA_DIR / "builtin_model.json"
BUILTIN_WEIGHTS = DATA_DIR / "builtin_model.pt"

_DECODER = {
    "depth": 2,
    "mlp_dim": 2048,
    "num_heads": 8,
    "num_multimask_outputs": 3,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
}


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes
    ----------
    name : str
        Registry name (``"vit_b"``...).
    config : dict
        Model configuration (schema of :mod:`napari_sam.model.build`).
    url : str or None
        Where the checkpoint is downloaded from (None: shipped with the package).
    filename : str
        File name in the cache folder.
    known_hash : str or None
        ``"sha256:<hex>"`` of the checkpoint file.
    size_bytes : int or None
        Size of the checkpoint file.
    description : str
        One line for menus and docs.
    """

    name: str
    config: Mapping[str, Any]
    url: str | None
    filename: str
    known_hash: str | None
    size_bytes: int | None = None
    description: str = ""
    hash_source: str = field(default="", compare=False)


def _vit_config(embed_dim: int, depth: int, num_heads: int, global_attn: list[int]) -> dict[str, Any]:
    return {
        "image_encoder": {
            "type": "vit",
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "global_attn_indexes": global_attn,
            "window_size": 14,
            "patch_size": 16,
            "img_size": 1024,
            "mlp_ratio": 4.0,
            "out_chans": 256,
        },
        "prompt_embed_dim": 256,
        "image_size": 1024,
        "mask_in_chans": 16,
        "decoder": dict(_DECODER),
        "pixel_mean": list(DEFAULT_PIXEL_MEAN),
        "pixel_std": list(DEFAULT_PIXEL_STD),
    }


def _tiny_vit_config() -> dict[str, Any]:
    # MobileSAM's build_sam_vit_t (mobile_sam/build_sam.py)
    return {
        "image_encoder": {
            "type": "tiny_vit",
            "embed_dims": [64, 128, 160, 320],
            "depths": [2, 2, 6, 2],
            "num_heads": [2, 4, 5, 10],
            "window_sizes": [7, 7, 14, 7],
            "img_size": 1024,
            "mlp_ratio": 4.0,
            "mbconv_expand_ratio": 4.0,
            "local_conv_size": 3,
            "num_classes": 1000,
        },
        "prompt_embed_dim": 256,
        "image_size": 1024,
        "mask_in_chans": 16,
        "decoder": dict(_DECODER),
        "pixel_mean": list(DEFAULT_PIXEL_MEAN),
        "pixel_std": list(DEFAULT_PIXEL_STD),
    }


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_HASH_SOURCE = "micro-sam micro_sam/util.py _CHECKSUMS (sha256)"

#: name -> ModelSpec.  Tests and plugins may add entries with :func:`register_model`.
REGISTRY: dict[str, ModelSpec] = {
    "vit_b": ModelSpec(
        "vit_b", _vit_config(768, 12, 12, [2, 5, 8, 11]), _SAM_URL + "sam_vit_b_01ec64.pth",
        "sam_vit_b_01ec64.pth",
        "sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        375_042_383, "SAM ViT-B (Meta AI)", _HASH_SOURCE,
    ),
    "vit_l": ModelSpec(
        "vit_l", _vit_config(1024, 24, 16, [5, 11, 17, 23]), _SAM_URL + "sam_vit_l_0b3195.pth",
        "sam_vit_l_0b3195.pth",
        "sha256:3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        1_249_524_607, "SAM ViT-L (Meta AI)", _HASH_SOURCE,
    ),
    "vit_h": ModelSpec(
        "vit_h", _vit_config(1280, 32, 16, [7, 15, 23, 31]), _SAM_URL + "sam_vit_h_4b8939.pth",
        "sam_vit_h_4b8939.pth",
        "sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        2_564_550_879, "SAM ViT-H (Meta AI)", _HASH_SOURCE,
    ),
    "vit_t": ModelSpec(
        "vit_t", _tiny_vit_config(),
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "mobile_sam.pt",
        "sha256:6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        40_728_226, "MobileSAM (TinyViT encoder)", _HASH_SOURCE,
    ),
}


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> None:
    """Add ``spec`` to the registry (``overwrite=True`` to replace an entry)."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register_model expects a ModelSpec, got {type(spec).__name__}.")
    if spec.name == "builtin" or (spec.name in REGISTRY and not overwrite):
        raise ValueError(f"A model named {spec.name!r} is already registered; pass overwrite=True.")
    REGISTRY[spec.name] = spec


def builtin_available() -> bool:
    """True when the built-in model's config and weights are shipped in this install."""
    return BUILTIN_JSON.is_file() and BUILTIN_WEIGHTS.is_file()


def _builtin_missing() -> CheckpointError:
    return CheckpointError(
        "The built-in model is not shipped in this install (napari_sam/data/builtin_model.json "
        "and builtin_model.pt are missing). Use an official checkpoint instead, e.g. "
        "load_model('vit_b') to download SAM ViT-B once, or "
        "load_model('vit_t', checkpoint='path/to/mobile_sam.pt') to load a local file."
    )


def _builtin_spec() -> ModelSpec:
    if not builtin_available():
        raise _builtin_missing()
    meta = json.loads(BUILTIN_JSON.read_text(encoding="utf-8"))
    if "config" not in meta:
        raise CheckpointError(f"{BUILTIN_JSON} has no 'config' entry; the install is damaged.")
    sha = meta.get("sha256")
    return ModelSpec(
        "builtin", meta["config"], None, BUILTIN_WEIGHTS.name,
        f"sha256:{sha}" if sha else None, BUILTIN_WEIGHTS.stat().st_size,
        meta.get("description", "Small built-in model shipped with napari-sam"),
    )


def recommended_amg_params(name: str) -> dict[str, Any]:
    """Automatic-generation thresholds recommended for a registry model.

    SAM's defaults (``pred_iou_thresh=0.88``, ``stability_score_thresh=0.95``)
    suit the official models.  The small built-in model predicts lower IoU
    scores and ships tuned values in its json's ``"amg"`` entry; every other
    name returns ``{}`` (use the defaults).
    """
    if name != "builtin" or not builtin_available():
        return {}
    meta = json.loads(BUILTIN_JSON.read_text(encoding="utf-8"))
    amg = meta.get("amg", {})
    return dict(amg) if isinstance(amg, dict) else {}


def recommended_zoom(name: str) -> dict[str, Any] | None:
    """Zoom window for single-object prompts recommended for a registry model, or None.

    The built-in model sees the whole image at 256 x 256 px and segments small
    objects far better on a window around them; its json's ``"zoom"`` entry holds
    the keyword arguments of its :class:`napari_sam.predict.pipeline.PromptPipeline`.  Official models return None (prompt on the whole image).
    """
    if name != "builtin" or not builtin_available():
        return None
    zoom = json.loads(BUILTIN_JSON.read_text(encoding="utf-8")).get("zoom")
    return dict(zoom) if isinstance(zoom, dict) else None


def get_spec(name: str) -> ModelSpec:
    """Registry entry for ``name``; ValueError listing the known names otherwise."""
    if name == "builtin":
        return _builtin_spec()
    if name not in REGISTRY:
        raise ValueError(
            f"Unknown model {name!r}; choose one of {sorted(REGISTRY) + ['builtin']}, "
            "or pass a config dict / config.json path."
        )
    return REGISTRY[name]


def get_config(name: str) -> dict[str, Any]:
    """A copy of the model configuration registered under ``name``."""
    return copy.deepcopy(dict(get_spec(name).config))


def available_models() -> list[str]:
    """Registered model names; ``"builtin"`` first when it is shipped in this install."""
    names = list(REGISTRY)
    return (["builtin"] + names) if builtin_available() else names


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
    return _default_cache_dir()


def _default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-sam"))


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
    spec = get_spec(name)
    if spec.url is None:  # shipped with the package
        path = BUILTIN_WEIGHTS.parent / spec.filename
        _verify_hash(path, spec.known_hash)
        return path
    import pooch

    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    try:
        path = pooch.retrieve(
            spec.url, known_hash=spec.known_hash, fname=spec.filename, path=folder,
            progressbar=progress,
        )
    except ValueError as exc:  # pooch: hash mismatch
        raise CheckpointError(
            f"The download of {spec.url} does not have the expected hash {spec.known_hash} "
            f"({exc}). The file was discarded; retry, or download it yourself and pass "
            "checkpoint=<path>."
        ) from exc
    except Exception as exc:  # network errors (requests), permissions...
        raise OSError(
            f"Could not download the {name!r} checkpoint from {spec.url}: {exc}. Without "
            f"internet, copy {spec.filename} into {folder} (or set ${CACHE_ENV}) or pass "
            "checkpoint=<local path>."
        ) from exc
    return Path(path)


def _verify_hash(path: Path, known_hash: str | None) -> None:
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {path} does not exist.")
    if not known_hash:
        return
    algo, _, expected = known_hash.partition(":")
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise CheckpointError(
            f"{path} has {algo} {digest.hexdigest()}, expected {expected}: the file is corrupt "
            "or was replaced; reinstall napari-sam."
        )


def _shape_signature(name: str) -> dict[str, tuple[int, ...]]:
    return shape_signature(get_spec(name).config)


def _matching_variant(shapes: dict[str, tuple[int, ...]], exclude: str | None) -> str | None:
    names = list(REGISTRY) + (["builtin"] if builtin_available() else [])
    for name in names:
        if name == exclude:
            continue
        try:
            signature = _shape_signature(name)
        except (ValueError, TypeError, KeyError, RuntimeError):
            signature = None  # a broken user-registered entry must not mask the real error
        if signature == shapes:
            return name
    return None


def _config_of(name_or_config: str | Mapping[str, Any] | os.PathLike[str]) -> dict[str, Any]:
    """A config dict from a registry name, a config dict or a path to a config.json."""
    if isinstance(name_or_config, Mapping):
        return resolve_config(dict(name_or_config))
    if isinstance(name_or_config, str):
        path = Path(name_or_config)
        if path.suffix != ".json" and not path.exists():
            return get_config(name_or_config)  # a registry name (raises for an unknown one)
    return resolve_config(name_or_config)


def build_model(
    config_or_name: str | Mapping[str, Any] | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
) -> Sam:
    """Build a randomly initialised :class:`Sam` in eval mode.

    Parameters
    ----------
    config_or_name : dict, str or path
        A config dict (schema in :mod:`napari_sam.model.build`), a path to a
        ``config.json`` (or a folder holding one), or a registry name
        (``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``, ``"builtin"``).
    device : torch.device or str, optional
        Device to allocate on; ``"meta"`` builds without memory (shapes only).

    Returns
    -------
    Sam
        The model with ``model.config`` set to the resolved config.
    """
    return build_sam(_config_of(config_or_name), device=device)


def load_model(
    name_or_config: str | Mapping[str, Any] | os.PathLike[str] = "builtin",
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
) -> Sam:
    """Build a model and load its weights strictly; returns it in eval mode.

    Parameters
    ----------
    name_or_config : str, dict or path, optional
        A registry name (default ``"builtin"``), a config dict, or a path to a
        ``config.json``.
    checkpoint : path, optional
        Local checkpoint file. Required for a config; for a registry name the
        default is to download (once, hash-checked) with :func:`fetch_checkpoint`.
    device : torch.device or str, optional
        See :func:`resolve_device`.

    Returns
    -------
    Sam
        float32 model on ``device`` in eval mode.

    Raises
    ------
    CheckpointError
        Missing/corrupt file, or tensors that do not fit (naming the variant the
        file belongs to when it is another registered one).
    """
    name: str | None = None
    if isinstance(name_or_config, str) and (
        name_or_config in REGISTRY or name_or_config == "builtin"
    ):
        name = name_or_config
        config = get_config(name)
        label = repr(name)
        if checkpoint is None:
            checkpoint = fetch_checkpoint(name)
    else:
        config = _config_of(name_or_config)
        label = "the given config"
        if checkpoint is None:
            raise ValueError(
                "load_model with a config needs checkpoint=<path to weights>; use "
                "napari_sam.build_model(config) for a randomly initialised model."
            )
    target = resolve_device(device)
    path = Path(checkpoint)
    state = read_checkpoint(path)
    expected = _shape_signature(name) if name else shape_signature(config)
    check_state(
        state, expected, label=label, path=path,
        match_variant=lambda shapes: _matching_variant(shapes, exclude=name),
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
    return model.to(target).eval()
