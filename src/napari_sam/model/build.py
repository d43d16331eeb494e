"""Build a :class:`Sam` from a configuration (dict, config.json path or registry name).

The configuration schema is the one of the reference fixtures::

    image_encoder: {type: "vit", embed_dim, depth, num_heads, global_attn_indexes,
                    window_size, patch_size, img_size, mlp_ratio, out_chans}
                 | {type: "tiny_vit", embed_dims, depths, num_heads, window_sizes,
                    img_size, mlp_ratio, mbconv_expand_ratio, local_conv_size, num_classes}
    prompt_embed_dim, image_size, mask_in_chans,
    decoder: {depth, mlp_dim, num_heads, num_multimask_outputs, iou_head_depth,
              iou_head_hidden_dim}
    pixel_mean, pixel_std
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_sam.model.image_encoder import ImageEncoderViT
from napari_sam.model.mask_decoder import MaskDecoder
from napari_sam.model.prompt_encoder import PromptEncoder
from napari_sam.model.sam import DEFAULT_PIXEL_MEAN, DEFAULT_PIXEL_STD, Sam
from napari_sam.model.tiny_vit import TinyViT
from napari_sam.model.transformer import TwoWayTransformer

_VIT_KEYS = (
    "embed_dim", "depth", "num_heads", "global_attn_indexes", "window_size",
    "patch_size", "img_size", "mlp_ratio", "out_chans",
)
_TINY_KEYS = (
    "embed_dims", "depths", "num_heads", "window_sizes", "img_size", "mlp_ratio",
    "mbconv_expand_ratio", "local_conv_size", "num_classes",
)
_DECODER_KEYS = (
    "depth", "mlp_dim", "num_heads", "num_multimask_outputs", "iou_head_depth",
    "iou_head_hidden_dim",
)


def _require(section: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in section]
    if missing:
        raise ValueError(
            f"Model config section {where!r} lacks {missing}; see the schema in "
            "napari_sam.model.build's docstring (the reference fixtures' config.json)."
        )


def resolve_config(config_or_name: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Turn a config dict, a path to ``config.json`` or a registry name into a config dict.

    Returns a deep copy; the caller's dict is never modified.
    """
    if isinstance(config_or_name, dict):
        return copy.deepcopy(config_or_name)
    if isinstance(config_or_name, (str, os.PathLike)):
        text = os.fspath(config_or_name)
        path = Path(text)
        if path.suffix == ".json" or path.is_file() or path.is_dir():
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise ValueError(f"Model config file {path} does not exist.")
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        raise ValueError(
            f"{text!r} is neither a config dict nor a path to a config.json; for a registry name "
            "use napari_sam.build_model (napari_sam.model.registry)."
        )
    raise TypeError(
        "build_sam expects a config dict or a path to config.json, "
        f"got {type(config_or_name).__name__}."
    )


def _build_encoder(enc: dict[str, Any], out_chans: int) -> nn.Module:
    kind = enc.get("type")
    if kind == "vit":
        _require(enc, _VIT_KEYS, "image_encoder")
        return ImageEncoderViT(
            img_size=int(enc["img_size"]),
            patch_size=int(enc["patch_size"]),
            embed_dim=int(enc["embed_dim"]),
            depth=int(enc["depth"]),
            num_heads=int(enc["num_heads"]),
            mlp_ratio=float(enc["mlp_ratio"]),
            out_chans=int(enc["out_chans"]),
            qkv_bias=bool(enc.get("qkv_bias", True)),
            use_rel_pos=bool(enc.get("use_rel_pos", True)),
            window_size=int(enc["window_size"]),
            global_attn_indexes=tuple(int(i) for i in enc["global_attn_indexes"]),
        )
    if kind == "tiny_vit":
        _require(enc, _TINY_KEYS, "image_encoder")
        return TinyViT(
            img_size=int(enc["img_size"]),
            embed_dims=[int(v) for v in enc["embed_dims"]],
            depths=[int(v) for v in enc["depths"]],
            num_heads=[int(v) for v in enc["num_heads"]],
            window_sizes=[int(v) for v in enc["window_sizes"]],
            mlp_ratio=float(enc["mlp_ratio"]),
            mbconv_expand_ratio=float(enc["mbconv_expand_ratio"]),
            local_conv_size=int(enc["local_conv_size"]),
            num_classes=int(enc["num_classes"]),
            out_chans=out_chans,
        )
    raise ValueError(
        f"Unknown image_encoder type {kind!r}; use 'vit' (SAM vit_b/l/h) or 'tiny_vit' (MobileSAM)."
    )


def build_sam(
    config_or_name: dict[str, Any] | str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
) -> Sam:
    """Build a randomly initialised :class:`Sam` in eval mode.

    Parameters
    ----------
    config_or_name : dict, str or path
        A config dict (schema in this module's docstring) or a path to a
        ``config.json`` (or a folder holding one).  Registry names are resolved
        by :func:`napari_sam.model.registry.build_model`.
    device : torch.device or str, optional
        Device to allocate on; ``"meta"`` builds without memory (shapes only).

    Returns
    -------
    Sam
        The model with ``model.config`` set to the resolved config.
    """
    config = resolve_config(config_or_name)
    for key in ("image_encoder", "prompt_embed_dim", "image_size", "mask_in_chans", "decoder"):
        if key not in config:
            raise ValueError(f"Model config lacks {key!r}; see napari_sam.model.build's docstring.")
    enc = config["image_encoder"]
    dec = config["decoder"]
    _require(dec, _DECODER_KEYS, "decoder")
    embed_dim = int(config["prompt_embed_dim"])
    image_size = int(config["image_size"])
    if int(enc.get("img_size", image_size)) != image_size:
        raise ValueError("image_encoder.img_size must equal image_size in the model config.")
    grid = image_size // int(enc.get("patch_size", 16))
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if enc.get("type") == "vit" and int(enc.get("out_chans", embed_dim)) != embed_dim:
            raise ValueError("image_encoder.out_chans must equal prompt_embed_dim.")
        image_encoder = _build_encoder(enc, embed_dim)
        prompt_encoder = PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=int(config["mask_in_chans"]),
        )
        mask_decoder = MaskDecoder(
            transformer_dim=embed_dim,
            transformer=TwoWayTransformer(
                depth=int(dec["depth"]),
                embedding_dim=embed_dim,
                num_heads=int(dec["num_heads"]),
                mlp_dim=int(dec["mlp_dim"]),
            ),
            num_multimask_outputs=int(dec["num_multimask_outputs"]),
            iou_head_depth=int(dec["iou_head_depth"]),
            iou_head_hidden_dim=int(dec["iou_head_hidden_dim"]),
        )
        model = Sam(
            image_encoder,
            prompt_encoder,
            mask_decoder,
            pixel_mean=config.get("pixel_mean", DEFAULT_PIXEL_MEAN),
            pixel_std=config.get("pixel_std", DEFAULT_PIXEL_STD),
            config=config,
        )
    return model.eval()

