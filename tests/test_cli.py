"""The napari-sam command line: help of every subcommand, errors, and resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_batch import assert_compacted_equals_reference, blobs_volume, reference_slices
from test_batch_standins import use_standin_model

from napari_sam.cli import main
from napari_sam.volume.slices import STATE_DIR

TESTS = Path(__file__).resolve().parent
STANDIN_CLI = [sys.executable, str(TESTS / "test_batch_standins.py")]


@pytest.fixture
def standin(monkeypatch):
    """The CLI runs a deterministic threshold stand-in instead of the SAM model."""
    use_standin_model(monkeypatch)


@pytest.mark.parametrize("argv, expected", [
    ([], ["segment", "embed", "models", "info", "demo"]),
    (["segment"], ["--output", "--axes", "--channel", "--resume", "--overwrite", "--scheduler", "--link-3d",
                   "--label-name", "--tile", "--cache", "--no-compact"]),
    (["embed"], ["--cache", "--reset-cache", "--model"]),
    (["models"], ["list", "fetch", "verify", "path"]),
    (["info"], ["versions"]),
    (["demo"], ["--out"]),
])
def test_help_of_every_subcommand(capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in expected:
        assert word in text
    assert "--segment-fn" not in text  # no test hook in the product


def test_module_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "napari_sam.cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "segment" in res.stdout


def test_segment_fn_hook_is_gone(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--segment-fn", "m:f"])
    assert exc.value.code == 2


def test_segment_writes_labels_and_refuses_to_overwrite(tmp_path, capsys, standin):
    vol = blobs_volume(nz=3)
    np.save(tmp_path / "v.npy", vol)
    args = ["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"),
            "--contrast-limits", "0", "1000", "--quiet"]
    assert main(args) == 0
    assert "wrote labels (3, 48, 40)" in capsys.readouterr().out
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[...]
    assert_compacted_equals_reference(out, reference_slices(vol))
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--axes", "ZYQ"], "unknown letter"),
    (["--channel", "0"], "no channel axis"),
    (["--contrast-limits", "0"], "LOW HIGH pairs"),
])
def test_bad_options_give_clear_errors(tmp_path, capsys, standin, extra, message):
    np.save(tmp_path / "v.npy", blobs_volume(nz=2))
    code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"),
                 "--quiet", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_segment_without_output_errors(tmp_path, capsys, standin):
    np.save(tmp_path / "v.npy", blobs_volume(nz=2))
    assert main(["segment", str(tmp_path / "v.npy")]) == 2
    assert "--output" in capsys.readouterr().err


def test_info_prints_versions(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "torch" in text and "zarr" in text and "threads" in text


def test_models_list_and_path(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    assert main(["models", "list"]) == 0
    assert "vit_b" in capsys.readouterr().out.split()
    assert main(["models", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)


@pytest.mark.slow
def test_demo_offline_writes_labels_and_overlay(tmp_path, capsys):
    from PIL import Image

    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    text = capsys.readouterr().out
    for name in ("labels.zarr", "labels3d.zarr", "overlay.png"):
        assert str(tmp_path / "demo" / name) in text
    lab2d = zarr.open_array(str(tmp_path / "demo" / "labels.zarr"), mode="r")
    lab3d = zarr.open_array(str(tmp_path / "demo" / "labels3d.zarr"), mode="r")
    assert lab2d.shape == (256, 256) and lab3d.shape == (3, 128, 128) and lab2d.dtype == np.uint32
    assert lab3d.attrs["napari_sam"]["state"] == "complete"
    assert Image.open(tmp_path / "demo" / "overlay.png").size == (520, 256)
    from napari_sam.model.registry import available_models

    if "builtin" not in available_models():
        assert "RANDOM" in text  # the fallback says so
    # how many nuclei the built-in model finds here is a benchmark (benchmarks/quality)


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    n = 10
    vol = blobs_volume(nz=n, seed=7)
    np.save(tmp_path / "v.npy", vol)
    env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               NAPARI_SAM_TEST_DELAY="0.7", NAPARI_SAM_TEST_STANDIN="slow_threshold_segment")
    cmd = [*STANDIN_CLI, "segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"),
           "--contrast-limits", "0", "1000", "--workers", "1", "--link-3d", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = tmp_path / "o.zarr" / STATE_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(state.glob("slice-*.json"))) < 3:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(list(state.glob("slice-*.json")))
    assert 3 <= done < n, "the run must be killed part-way"
    assert not (state / "tables.npz").exists()
    # resume (the stand-in now without delay) and compare with an uninterrupted run
    env["NAPARI_SAM_TEST_DELAY"] = "0"
    resume = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr
    full = subprocess.run([*cmd[:5], str(tmp_path / "full.zarr"), *cmd[6:]], env=env, capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    resumed = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[...]
    uninterrupted = zarr.open_array(str(tmp_path / "full.zarr"), mode="r")[...]
    np.testing.assert_array_equal(resumed, uninterrupted)
    assert resumed.max() > 0


def test_segment_ome_zarr_defaults_to_labels_group(tmp_path, capsys, standin):
    from test_io import make_ome_zarr

    vol = blobs_volume(nz=2, ny=32, nx=32)
    path = make_ome_zarr(tmp_path / "img.zarr", vol, axes="zyx", zarr_format=2, levels=2)
    assert main(["segment", str(path), "--contrast-limits", "0", "1000", "--quiet"]) == 0
    assert str(path / "labels" / "sam") in capsys.readouterr().out
    out = zarr.open_array(str(path / "labels" / "sam" / "0"), mode="r")[...]
    assert_compacted_equals_reference(out, reference_slices(vol))
    assert zarr.open_group(str(path / "labels"), mode="r").attrs["labels"] == ["sam"]
