"""A tiny SAM config (128 px input, 8 x 8 embedding) for fast behaviour tests of the real model code."""

from __future__ import annotations

from typing import Any


def tiny_sam_config(*, decoder_depth: int = 1, iou_head_depth: int = 2) -> dict[str, Any]:
    """Config dict in the fixture schema; decoder depths are the only knobs tests vary."""
    return {
        "image_encoder": {
            "type": "vit", "embed_dim": 32, "depth": 1, "num_heads": 2, "global_attn_indexes": [0],
            "window_size": 4, "patch_size": 16, "img_size": 128, "mlp_ratio": 2.0, "out_chans": 32,
        },
        "prompt_embed_dim": 32,
        "image_size": 128,
        "mask_in_chans": 4,
        "decoder": {
            "depth": decoder_depth, "mlp_dim": 32, "num_heads": 2, "num_multimask_outputs": 3,
            "iou_head_depth": iou_head_depth, "iou_head_hidden_dim": 16,
        },
    }
