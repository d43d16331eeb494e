"""Every registry variant has exactly the state_dict of the official checkpoint.

``checkpoint_keys.json`` lists the keys and shapes of sam_vit_b_01ec64.pth,
sam_vit_l_0b3195.pth, sam_vit_h_4b8939.pth and MobileSAM's mobile_sam.pt.
Models are built on the meta device (vit_h has 630M parameters).
"""

from __future__ import annotations

import json

import pytest

from napari_sam.model import build_model
from napari_sam.model.registry import get_config

NAMES = ["vit_b", "vit_l", "vit_h", "vit_t"]


@pytest.fixture(scope="module")
def official_keys(sam_reference_dir):
    return json.loads((sam_reference_dir / "checkpoint_keys.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_official_checkpoint(name, official_keys):
    model = build_model(name, device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = official_keys[name]
    assert sorted(set(theirs) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(theirs)) == [], "unexpected keys"
    wrong = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != list(theirs[k])}
    assert wrong == {}


@pytest.mark.parametrize("name", NAMES)
def test_non_persistent_buffers_stay_out_of_the_checkpoint(name):
    model = build_model(name, device="meta")
    keys = model.state_dict().keys()
    assert "pixel_mean" not in keys and "pixel_std" not in keys
    assert not any(k.endswith("attention_bias_idxs") for k in keys)


def test_vit_t_config_is_the_mobilesam_reference(sam_reference_dir):
    """The registry's vit_t is the full MobileSAM architecture of the fixture."""
    fixture = json.loads((sam_reference_dir / "tiny_tinyvit" / "config.json").read_text())
    assert get_config("vit_t") == fixture


@pytest.mark.parametrize(
    ("name", "embed_dim", "depth", "heads", "global_attn"),
    [
        ("vit_b", 768, 12, 12, [2, 5, 8, 11]),
        ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
        ("vit_h", 1280, 32, 16, [7, 15, 23, 31]),
    ],
)
def test_vit_configs_follow_the_official_builders(name, embed_dim, depth, heads, global_attn):
    enc = get_config(name)["image_encoder"]
    assert (enc["embed_dim"], enc["depth"], enc["num_heads"]) == (embed_dim, depth, heads)
    assert enc["global_attn_indexes"] == global_attn
    assert (enc["window_size"], enc["patch_size"], enc["img_size"]) == (14, 16, 1024)


def test_parameter_counts_are_the_published_ones():
    """SAM paper: ViT-B 91M, ViT-L 308M, ViT-H 636M image encoders; MobileSAM ~5M encoder."""
    counts = {
        n: sum(p.numel() for p in build_model(n, device="meta").image_encoder.parameters())
        for n in NAMES
    }
    assert 85e6 < counts["vit_b"] < 95e6
    assert 300e6 < counts["vit_l"] < 312e6
    assert 625e6 < counts["vit_h"] < 640e6
    assert 5e6 < counts["vit_t"] < 7.5e6
