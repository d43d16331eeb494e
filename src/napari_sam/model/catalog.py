"""The catalogue of known models: name -> :class:`~napari_sam.model.cards.ModelCard` (no torch).

Names: ``vit_b``, ``vit_l``, ``vit_h`` (official SAM), ``vit_t`` (MobileSAM),
plus every card shipped in ``napari_sam/data`` (``*.card.json``; the small
``builtin`` model) and any registered with :func:`register_model`.  Reading
the catalogue imports neither torch nor the model's modules, so a user
interface can list the models at once; :mod:`napari_sam.model.registry` builds
and loads them.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from napari_sam.model.cards import CARD_SUFFIX, ModelCard

__all__ = [
    "DEFAULT_PIXEL_MEAN", "DEFAULT_PIXEL_STD", "REGISTRY", "available_models", "get_card", "get_config",
    "is_card_file", "model_card", "recommended_amg_params", "recommended_zoom", "register_model",
]

#: folder of the cards (and weights) shipped with the package
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
#: SAM's pixel normalisation (ImageNet mean and std on 0-255 RGB)
DEFAULT_PIXEL_MEAN = (123.675, 116.28, 103.53)
DEFAULT_PIXEL_STD = (58.395, 57.12, 57.375)

_DECODER = {
    "depth": 2,
    "mlp_dim": 2048,
    "num_heads": 8,
    "num_multimask_outputs": 3,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
}


def _sam_config(image_encoder: dict[str, Any]) -> dict[str, Any]:
    """A full model config: ``image_encoder`` plus the prompt encoder, decoder and pixel statistics SAM and
    MobileSAM share (fresh lists and dicts on every call)."""
    return {
        "image_encoder": image_encoder,
        "prompt_embed_dim": 256,
        "image_size": 1024,
        "mask_in_chans": 16,
        "decoder": dict(_DECODER),
        "pixel_mean": list(DEFAULT_PIXEL_MEAN),
        "pixel_std": list(DEFAULT_PIXEL_STD),
    }


def _vit_config(embed_dim: int, depth: int, num_heads: int, global_attn: list[int]) -> dict[str, Any]:
    return _sam_config({
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
    })


def _tiny_vit_config() -> dict[str, Any]:
    # MobileSAM's build_sam_vit_t (mobile_sam/build_sam.py)
    return _sam_config({
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
    })


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
