"""Tiles the user gets without --tile: the model's input size, so objects keep their native scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_sam.volume.batch as batch
from napari_sam.model.catalog import _vit_config
from napari_sam.volume.source import default_tiles, model_input_size, worker_predictor


@pytest.fixture
def layout(monkeypatch):
    """segment_volume with the real model loading, but a per-slice function that records its tile layout."""
    seen = []

    def recording_sam(image, *, channel_axis, contrast_limits, tile_shape=None, halo=None, **kwargs):
        seen.append((tile_shape, halo))
        return np.zeros(image.shape[:2], np.uint32)

    monkeypatch.setattr(batch, "sam_segment", recording_sam)
    return seen


def test_builtin_model_gets_native_scale_tiles(layout, tmp_path):
    assert model_input_size(worker_predictor("builtin", None, None)) == 256  # the card's input size
    batch.segment_volume(np.zeros((1024, 1024), np.uint16), tmp_path / "o.zarr", model="builtin",
                         contrast_limits=[0, 1])
    assert layout == [((256, 256), (16, 16))]


def test_a_1024_input_model_keeps_1024(layout, tmp_path):
    config = tmp_path / "sam1024.json"
    config.write_text(json.dumps(_vit_config(64, 2, 2, [1])))  # a small random-weight ViT with SAM's 1024 input
    batch.segment_volume(np.zeros((1500, 1200), np.uint16), tmp_path / "o.zarr", model=str(config),
                         contrast_limits=[0, 1])
    batch.segment_volume(np.zeros((1024, 1024), np.uint16), tmp_path / "p.zarr", model=str(config),
                         contrast_limits=[0, 1])
    assert layout == [((1024, 1024), (64, 64)), (None, None)]


def test_explicit_tiles_win_and_bad_input_size():
    assert default_tiles(1024, 1024, (100, 100), (5, 5), input_size=256) == ((100, 100), (5, 5))
    assert default_tiles(1024, 1024, None, (7, 7), input_size=256) == ((256, 256), (7, 7))
    assert default_tiles(200, 200, None, None, input_size=256) == (None, None)
    with pytest.raises(ValueError, match="input_size"):
        default_tiles(10, 10, None, None, input_size=0)
