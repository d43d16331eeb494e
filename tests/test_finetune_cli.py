"""``napari-sam finetune`` end to end on a tiny random-weight model."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from _tiny_sam import tiny_sam_config

import napari_sam
from napari_sam.cli import main
from napari_sam.synthetic import make_nuclei_image


@pytest.fixture()
def files(tmp_path):
    pairs = [make_nuclei_image((48, 48), n_objects=3, seed=s) for s in range(3)]
    tifffile.imwrite(tmp_path / "img.tif", np.stack([p[0] for p in pairs]), photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", np.stack([p[1] for p in pairs]).astype(np.uint16), photometric="minisblack")
    torch.manual_seed(0)
    napari_sam.save_model(napari_sam.build_model(tiny_sam_config(), device="cpu"), tmp_path / "base")
    return tmp_path


def test_cli_finetune_writes_a_loadable_model_and_reports(files, capsys):
    rc = main(["finetune", str(files / "img.tif"), "--labels", str(files / "lab.tif"), "--base",
               str(files / "base"), "-o", str(files / "out"), "--steps", "3", "--validation", "0.34",
               "--quiet", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "held-out click_miou" in out and "held-out automatic_f1" in out
    assert "automatic thresholds: pred_iou_thresh" in out
    model = napari_sam.load_model(files / "out")
    assert model.card.name == "out"
    # resume continues from the checkpoint to the new step count
    rc = main(["finetune", str(files / "img.tif"), "--labels", str(files / "lab.tif"), "--base",
               str(files / "base"), "-o", str(files / "out"), "--steps", "5", "--resume", "--quiet",
               "--validation", "0", "--device", "cpu", "--keep-thresholds"])
    assert rc == 0
    assert torch.load(files / "out" / "checkpoint.pt", weights_only=True)["step"] == 5
    out = capsys.readouterr().out
    assert "for 5 steps" in out and "automatic thresholds" not in out


def test_cli_finetune_bad_labels_is_one_line_usage_error(files, capsys):
    tifffile.imwrite(files / "bad.tif", np.zeros((3, 40, 40), np.uint16), photometric="minisblack")
    rc = main(["finetune", str(files / "img.tif"), "--labels", str(files / "bad.tif"), "--base",
               str(files / "base"), "-o", str(files / "o2"), "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "shape" in err
