"""Damaged inputs are errors naming the file (or chunk), never wrong labels with exit code 0.

References: the undamaged file's shape, and numpy percentiles of the pixels that exist.
"""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
import tifffile
import zarr
from test_batch_standins import use_standin_model

from napari_sam.cli import main
from napari_sam.volume.batch import segment_volume
from napari_sam.volume.io import DataWarning, open_image


@pytest.fixture
def standin(monkeypatch):
    use_standin_model(monkeypatch)


def _volume(nz=8, ny=64, nx=64, seed=0):
    return np.random.default_rng(seed).integers(1000, 2000, (nz, ny, nx), dtype=np.uint16)


@pytest.mark.parametrize("kind", ["plain", "imagej", "ome"])
def test_tiff_cut_to_half_its_bytes_is_an_error_naming_the_file(tmp_path, capsys, standin, kind):
    full = tmp_path / "full.tif"
    extra = {"plain": {}, "imagej": {"imagej": True, "metadata": {"axes": "ZYX"}},
             "ome": {"ome": True, "metadata": {"axes": "ZYX"}}}[kind]
    tifffile.imwrite(full, _volume(), **extra)
    assert open_image(full)[0].shape == (8, 64, 64)
    cut = tmp_path / "cut.tif"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.tif.*(damaged|truncated)"):
        open_image(cut)
    code = main(["segment", str(cut), "-o", str(tmp_path / "o.zarr"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cut.tif" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()


def test_series_shorter_than_its_metadata_is_an_error(tmp_path):
    path = tmp_path / "short.tif"
    tifffile.imwrite(path, _volume(), imagej=True, metadata={"axes": "ZYX"})
    data = path.read_bytes()
    assert b"images=8\n" in data
    path.write_bytes(data.replace(b"images=8\n", b"images=9\n").replace(b"slices=8\n", b"slices=9\n"))
    with pytest.raises(ValueError, match=r"short\.tif.*9"):
        open_image(path)


def _zarr_with_missing_chunk(tmp_path):
    vol = _volume(nz=4)
    path = tmp_path / "v.zarr"
    arr = zarr.create_array(store=str(path), shape=vol.shape, chunks=(1, 32, 32), dtype="uint16", fill_value=0)
    arr[...] = vol
    os.remove(path / "c" / "2" / "1" / "0")  # slice 2, rows 32..63, columns 0..31
    present = np.ones(vol.shape, bool)
    present[2, 32:, :32] = False
    return path, vol, present


def test_missing_zarr_chunk_warns_and_does_not_shift_the_contrast_limits(tmp_path):
    path, vol, present = _zarr_with_missing_chunk(tmp_path)
    seen = []

    def record(image, *, channel_axis=None, contrast_limits=None):
        seen.append(np.asarray(contrast_limits, dtype=np.float64))
        return np.zeros(image.shape[:2], np.uint32)

    with pytest.warns(DataWarning, match=r"v\.zarr.*1 of 16 chunks.*missing.*\(2, 1, 0\).*--strict"):
        segment_volume(path, tmp_path / "o.zarr", segment_fn=record)
    # reference: the percentiles of the pixels that exist (all pixels are sampled at this size)
    expected = np.percentile(vol[present].astype(np.float64), (0.5, 99.5))
    assert len(seen) == 4
    for limits in seen:
        np.testing.assert_allclose(limits.reshape(-1), expected)


def test_missing_zarr_chunk_is_an_error_with_strict(tmp_path, capsys, standin):
    path, _, _ = _zarr_with_missing_chunk(tmp_path)
    with pytest.raises(ValueError, match=r"v\.zarr.*missing.*\(2, 1, 0\)"):
        segment_volume(path, tmp_path / "o.zarr", segment_fn=lambda im, **kw: np.zeros(im.shape[:2], int),
                       strict=True)
    assert not (tmp_path / "o.zarr").exists()
    code = main(["segment", str(path), "-o", str(tmp_path / "o2.zarr"), "--strict", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "Traceback" not in err


def test_complete_zarr_gives_no_warning(tmp_path):
    vol = _volume(nz=2)
    path = tmp_path / "v.zarr"
    zarr.create_array(store=str(path), shape=vol.shape, chunks=(1, 32, 32), dtype="uint16")[...] = vol
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        segment_volume(path, tmp_path / "o.zarr", segment_fn=lambda im, **kw: np.zeros(im.shape[:2], int),
                       strict=True)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_corrupt_input_chunk_names_the_store_and_the_chunk(tmp_path, capsys, standin, zarr_format):
    vol = _volume(nz=3)
    path = tmp_path / "v.zarr"
    arr = zarr.create_array(store=str(path), shape=vol.shape, chunks=(1, 32, 32), dtype="uint16",
                            zarr_format=zarr_format)
    arr[...] = vol
    chunk = path / ("c/1/0/1" if zarr_format == 3 else "1.0.1")
    chunk.write_bytes(os.urandom(50))
    with pytest.raises(ValueError, match=r"chunk \(1, 0, 1\) of .*v\.zarr.*damaged"):
        segment_volume(path, tmp_path / "o.zarr", contrast_limits=[[0, 3000]],
                       segment_fn=lambda im, **kw: np.zeros(im.shape[:2], int))
    shutil.rmtree(tmp_path / "o.zarr", ignore_errors=True)
    code = main(["segment", str(path), "-o", str(tmp_path / "o3.zarr"), "--quiet", "--contrast-limits", "0", "3000"])
    err = capsys.readouterr().err
    assert code == 2 and "chunk (1, 0, 1)" in err and "Traceback" not in err


# ------------------------------------------------------------------ inputs SAM cannot segment meaningfully


def test_a_one_pixel_high_image_is_a_clear_error(tmp_path, capsys, standin):
    from test_amg_standin import StandInPredictor

    from napari_sam.tiled.tiles import segment_image

    strip = np.random.default_rng(0).random((1, 5000)).astype(np.float32)
    for kw in ({}, {"tile_shape": 1024, "halo": 64}):
        with pytest.raises(ValueError, match=r"1 x 5000 pixels: too small.*at least 16"):
            segment_image(strip, StandInPredictor(), contrast_limits=(0, 1), **kw)
    np.save(tmp_path / "strip.npy", strip)
    code = main(["segment", str(tmp_path / "strip.npy"), "-o", str(tmp_path / "o.zarr"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "1 x 5000 pixels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()


def test_an_image_too_elongated_for_the_model_input_is_a_clear_error():
    import torch
    from _tiny_sam import tiny_sam_config

    from napari_sam.model.registry import build_model
    from napari_sam.predict.predictor import Predictor

    torch.manual_seed(0)
    predictor = Predictor(build_model(tiny_sam_config(), device="cpu"))  # 128 px input: 20 x 5000 -> 1 x 128
    predictor.set_image(np.zeros((20, 5000), np.float32), contrast_limits=(0, 1))
    with pytest.raises(ValueError, match=r"4 x 5000 pixels is too elongated.*0 px"):
        predictor.set_image(np.zeros((4, 5000), np.float32), contrast_limits=(0, 1))


@pytest.mark.parametrize("tile", [1, 8, (64, 4)])
def test_a_tile_smaller_than_sams_patch_is_a_clear_error(tile):
    from test_amg_standin import StandInPredictor

    from napari_sam.tiled.tiles import segment_image

    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    with pytest.raises(ValueError, match=r"tile_shape .* too small.*at least 16"):
        segment_image(image, StandInPredictor(), contrast_limits=(0, 1), tile_shape=tile, points_per_side=2)


@pytest.mark.parametrize("flag, value", [("--pred-iou-thresh", "nan"), ("--pred-iou-thresh", "-0.1"),
                                         ("--stability-score-thresh", "1.5"), ("--points-per-side", "0")])
def test_thresholds_out_of_range_are_one_line_usage_errors(tmp_path, capsys, standin, flag, value):
    np.save(tmp_path / "v.npy", _volume(nz=2))
    code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--quiet", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.zarr").exists()


# ------------------------------------------------------------------ broken weights


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, capsys, bad):
    import json

    import torch
    from _tiny_sam import tiny_sam_config

    from napari_sam.model.checkpoint import CheckpointError, read_checkpoint
    from napari_sam.model.registry import build_model, load_model

    torch.manual_seed(0)
    state = build_model(tiny_sam_config(), device="cpu").state_dict()
    name = "mask_decoder.iou_prediction_head.layers.0.weight"
    state[name][0, 3] = bad
    torch.save({"model": state}, tmp_path / "w.pt")
    (tmp_path / "cfg.json").write_text(json.dumps(tiny_sam_config()))
    with pytest.raises(CheckpointError, match=rf"w\.pt.*{name}.*1 NaN or infinite"):
        read_checkpoint(tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=name):
        load_model(tmp_path / "cfg.json", checkpoint=tmp_path / "w.pt", device="cpu")
    np.save(tmp_path / "v.npy", _volume(nz=1))
    code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--quiet",
                 "--model", str(tmp_path / "cfg.json"), "--checkpoint", str(tmp_path / "w.pt")])
    err = capsys.readouterr().err
    assert code == 2 and name in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.zarr").exists()
