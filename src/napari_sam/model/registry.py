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
from napari_sam.model.cards import CARD_SUFFIX, ModelCard
from napari_sam.model.checkpoint import (
    CheckpointError,
    check_state,
    read_checkpoint,
    shape_signature,
)
from napari_sam.model.sam import DEFAULT_PIXEL_MEAN, DEFAULT_PIXEL_STD, Sam

CACHE_ENV = download.CACHE_ENV
#: folder of the cards (and weights) shipped with the package
DATA_DIR = Path(__file__).resolve().parents[1] / "data"

_DECODER = {
    "depth": 2,
    "mlp_dim": 2048,
    "num_heads": 8,
    "num_multimask_outputs": 3,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
}


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
_HASH_SOURCE = "sha256 as pinned by micro-sam (micro_sam/util.py)"


def _official(name: str, config: dict[str, Any], url: str, sha256: str, description: str, source: str) -> ModelCard:
    return ModelCard(name=name, config=config, description=description, sha256=sha256, weights=url,
                     source=f"{source}; {_HASH_SOURCE}")


def _shipped_cards() -> dict[str, ModelCard]:
    """The cards in the package's data folder, by name (the built-in model's when it is shipped)."""
    cards = [ModelCard.from_json(p) for p in sorted(DATA_DIR.glob(f"*{CARD_SUFFIX}"))]
    return {card.name: card for card in cards}


_META = "Meta AI, segment-anything (Apache-2.0)"

#: name -> ModelCard: the cards shipped in ``napari_sam/data`` first, then the official models.
#: Add your own with :func:`register_model`.
REGISTRY: dict[str, ModelCard] = {
    **_shipped_cards(),
    "vit_b": _official("vit_b", _vit_config(768, 12, 12, [2, 5, 8, 11]), _SAM_URL + "sam_vit_b_01ec64.pth",
                       "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", "SAM ViT-B (Meta AI)", _META),
    "vit_l": _official("vit_l", _vit_config(1024, 24, 16, [5, 11, 17, 23]), _SAM_URL + "sam_vit_l_0b3195.pth",
                       "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", "SAM ViT-L (Meta AI)", _META),
    "vit_h": _official("vit_h", _vit_config(1280, 32, 16, [7, 15, 23, 31]), _SAM_URL + "sam_vit_h_4b8939.pth",
                       "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", "SAM ViT-H (Meta AI)", _META),
    "vit_t": _official("vit_t", _tiny_vit_config(),
                       "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                       "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
                       "MobileSAM (TinyViT encoder)", "Zhang et al., MobileSAM (Apache-2.0)"),
}


def register_model(card: ModelCard | str | os.PathLike[str], *, overwrite: bool = False) -> ModelCard:
    """Add a model to the registry, from a :class:`ModelCard` or the path of its card file.

    Parameters
    ----------
    card : ModelCard or path
        The card; a file's relative ``weights`` are looked up beside it.
    overwrite : bool, optional
        Replace an entry of the same name.

    Returns
    -------
    ModelCard
        The registered card.
    """
    if isinstance(card, (str, os.PathLike)):
        card = ModelCard.from_json(card)
    if not isinstance(card, ModelCard):
        raise TypeError(f"register_model expects a ModelCard or a card file, got {type(card).__name__}.")
    if card.name in REGISTRY and not overwrite:
        raise ValueError(f"A model named {card.name!r} is already registered; pass overwrite=True.")
    REGISTRY[card.name] = card
    return card


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"Unknown model {name!r}; choose one of {available_models()} (e.g. load_model('vit_b') downloads "
        "SAM ViT-B once), pass a model card (.card.json) or a config dict / config.json path."
    )


def get_card(name: str) -> ModelCard:
    """The registered card of ``name``; ValueError listing the known names otherwise."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise _unknown(str(name))
    return REGISTRY[name]


def is_card_file(path: str | os.PathLike[str]) -> bool:
    """True for a ``*.card.json`` file name, or an existing json file holding a card's ``name`` and ``config``."""
    path = Path(path)
    if path.name.endswith(CARD_SUFFIX):
        return True
    if path.suffix != ".json" or not path.is_file():
        return False
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "config" in data and "name" in data


def model_card(name_or_path: str | os.PathLike[str] | ModelCard) -> ModelCard:
    """The card of a registered model or of a card file.

    Parameters
    ----------
    name_or_path : str or path
        A registry name (:func:`available_models`) or the path of a card file
        (``<model>.card.json``).

    Returns
    -------
    ModelCard

    Examples
    --------
    >>> import napari_sam
    >>> napari_sam.model_card("vit_b").amg   # the official models use SAM's defaults
    {}
    """
    if isinstance(name_or_path, ModelCard):
        return name_or_path
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        return REGISTRY[name_or_path]
    if isinstance(name_or_path, (str, os.PathLike)) and is_card_file(Path(name_or_path)):
        return ModelCard.from_json(name_or_path)
    raise _unknown(os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else str(name_or_path))


def recommended_amg_params(name: str) -> dict[str, Any]:
    """The automatic-generation parameters of ``name``'s card (``{}``: SAM's defaults, or not registered)."""
    return dict(REGISTRY[name].amg) if name in REGISTRY else {}


def recommended_zoom(name: str) -> dict[str, Any] | None:
    """The prompt-pipeline settings of ``name``'s card, or None for plain prompting (or not registered)."""
    return (dict(REGISTRY[name].prompt_pipeline) or None) if name in REGISTRY else None


def get_config(name: str) -> dict[str, Any]:
    """A copy of the model configuration registered under ``name``."""
    return copy.deepcopy(get_card(name).config)


def available_models() -> list[str]:
    """Registered models whose weights can be had here (shipped or downloadable), in registry order."""
    return [name for name, card in REGISTRY.items() if card.weights_available()]


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
