"""The napari-sam command line: help of every subcommand, errors, and resume after SIGKILL."""

from __future__ import annotations

import json
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
def test_demo_without_the_model_runs_a_random_small_sam_and_says_so(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--model", "not_installed", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "RANDOM" in text and "not_installed" in text
    config = json.loads((tmp_path / "demo" / "random_small_model.json").read_text())
    assert config["image_encoder"]["embed_dim"] == 64 and config["image_encoder"]["depth"] == 2
    assert zarr.open_array(str(tmp_path / "demo" / "labels.zarr"), mode="r").shape == (256, 256)


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


# ------------------------------------------------------------------ models verify: sha256 against the known hash


@pytest.fixture
def registered_tiny(tmp_path, monkeypatch):
    """A registered model 'mine' whose card publishes the sha256 of ``published/mine_weights.pt``."""
    import hashlib

    import torch
    from _tiny_sam import tiny_sam_config

    from napari_sam.model import registry
    from napari_sam.model.cards import ModelCard

    torch.manual_seed(0)
    model = registry.build_model(tiny_sam_config(), device="cpu")
    (tmp_path / "published").mkdir()
    weights = tmp_path / "published" / "mine_weights.pt"
    torch.save(model.state_dict(), weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = ModelCard(name="mine", config=tiny_sam_config(), sha256=sha,
                     weights="https://example.invalid/models/mine_weights.pt")
    monkeypatch.setitem(registry.REGISTRY, "mine", card)
    return weights, model


def test_models_verify_says_which_published_file_matches(capsys, registered_tiny):
    weights, _ = registered_tiny
    assert main(["models", "verify", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "matches mine" in out and "OK" in out


def test_models_verify_refuses_a_file_whose_hash_differs(tmp_path, capsys, registered_tiny):
    import torch

    weights, model = registered_tiny
    state = model.state_dict()
    first = next(iter(state))
    state[first] = state[first] + 1e-3  # same shapes: it would load strictly, but it is not the published file
    damaged = tmp_path / "mine_weights.pt"
    torch.save(state, damaged)
    assert main(["models", "verify", str(damaged)]) == 1
    err = capsys.readouterr().err
    assert "hash differs from mine's published hash" in err and "models fetch mine" in err
    assert len(err.strip().splitlines()) == 1


def test_models_verify_loads_an_unknown_file_strictly(tmp_path, capsys, registered_tiny):
    import torch

    _, model = registered_tiny
    state = {k: v * 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "finetuned.pt")
    assert main(["models", "verify", str(tmp_path / "finetuned.pt")]) == 0  # architecture found by tensor shapes
    assert "unknown file" in (out := capsys.readouterr().out) and "loads strictly as mine: OK" in out
    assert main(["models", "verify", str(tmp_path / "finetuned.pt"), "--model", "mine"]) == 0
    del state[next(iter(state))]
    torch.save(state, tmp_path / "broken.pt")
    assert main(["models", "verify", str(tmp_path / "broken.pt")]) == 2
    assert "fits no registered model" in capsys.readouterr().err
    assert main(["models", "verify", str(tmp_path / "broken.pt"), "--model", "mine"]) == 2
    assert "missing" in capsys.readouterr().err


def test_models_verify_by_name_checks_the_local_file(tmp_path, capsys, monkeypatch):
    assert main(["models", "verify", "builtin"]) == 0  # shipped beside its card
    assert "matches builtin" in capsys.readouterr().out
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    assert main(["models", "verify", "vit_b"]) == 2  # not downloaded: says what to do, no network
    assert "models fetch vit_b" in capsys.readouterr().err


# ------------------------------------------------------------------ --debug anywhere; Ctrl-C twice


def test_debug_is_accepted_after_the_subcommand(tmp_path, capsys):
    missing = str(tmp_path / "nope.tif")
    assert main(["segment", missing, "-o", str(tmp_path / "o.zarr")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    for argv in (["segment", missing, "-o", str(tmp_path / "o.zarr"), "--debug"],
                 ["--debug", "segment", missing, "-o", str(tmp_path / "o.zarr")]):
        with pytest.raises(ValueError, match="does not exist"):  # --debug re-raises: traceback shown
            main(argv)
    assert main(["info", "--debug"]) == 0
    assert main(["models", "list", "--debug"]) == 0


def test_a_second_ctrl_c_is_ignored_before_the_first_is_handled(monkeypatch, capsys):
    """The first SIGINT ignores further ones *before* any cleanup runs: no window for a traceback."""
    import napari_sam.cli as cli

    seen = []

    def interrupted(args):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            seen.append(signal.getsignal(signal.SIGINT))
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C during cleanup: ignored
            raise
        return 0

    monkeypatch.setattr(cli, "_cmd_info", interrupted)
    before = signal.getsignal(signal.SIGINT)
    assert main(["info"]) == 130
    assert seen == [signal.SIG_IGN]
    assert "--resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # an in-process call restores the handler
