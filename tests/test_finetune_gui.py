"""The "Fine-tune (SAM)" dock in a real napari viewer (run under Xvfb), tiny random-weight model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_sam import tiny_sam_config

import napari_sam
from napari_sam.model.registry import REGISTRY
from napari_sam.synthetic import make_nuclei_image

pytestmark = pytest.mark.gui


@pytest.fixture
def tiny_base(tmp_path):
    torch.manual_seed(0)
    napari_sam.save_model(napari_sam.build_model(tiny_sam_config(), device="cpu"), tmp_path / "tiny_base")
    napari_sam.register_model(tmp_path / "tiny_base" / "model.card.json")
    yield "tiny_base"
    REGISTRY.pop("tiny_base", None)
    REGISTRY.pop("tuned_test", None)


def test_finetune_dock_trains_registers_and_reports(make_napari_viewer, qtbot, tmp_path, tiny_base):
    viewer = make_napari_viewer(show=True)
    pairs = [make_nuclei_image((48, 48), n_objects=3, seed=s) for s in range(4)]
    image = np.stack([p[0] for p in pairs])
    labels = np.stack([p[1] for p in pairs]).astype(np.int32)
    labels[1] = 0  # an unlabelled slice is skipped
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="annotations")
    _, automatic = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", "Automatic segmentation (SAM)")
    _, interactive = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", "Interactive segmentation (SAM)")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", "Fine-tune (SAM)")
    assert "tuned_test" not in automatic.model_combo.choices
    widget.base.value = tiny_base
    widget.name.value = "tuned_test"
    widget.folder.value = str(tmp_path / "models")
    widget.steps.value = 3
    widget.validation.value = 0.3
    widget.device.value = "cpu"
    widget.run()
    qtbot.waitUntil(lambda: widget.report is not None, timeout=60_000)
    widget.runner.wait()
    report = widget.report
    assert report["slices"] == 3 and report["steps_done"] == 3 and report["train_slices"] == 2
    assert "->" in widget.result.value
    # every open napari-sam dock offers the new model, the fine-tune dock as a base
    assert "tuned_test" in automatic.model_combo.choices and "tuned_test" in interactive.model_combo.choices
    assert "tuned_test" in widget.base.choices
    model = napari_sam.load_model("tuned_test")
    saved = torch.load(tmp_path / "models" / "tuned_test" / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_a_closed_dock_stops_following_the_model_list(make_napari_viewer, qtbot, tiny_base):
    from napari_sam._napari import predictors

    viewer = make_napari_viewer(show=True)
    before = len(predictors._LISTENERS)
    _, automatic = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", "Automatic segmentation (SAM)")
    assert len(predictors._LISTENERS) == before + 1
    automatic.native.deleteLater()  # what closing the viewer does to its docks
    qtbot.waitUntil(lambda: len(predictors._LISTENERS) == before, timeout=5_000)
    predictors.model_list_changed()  # nothing left to update: no call into a deleted widget

