"""Tier 3: the widgets opened from the manifest in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

INTERACTIVE = "Interactive segmentation (SAM)"
AUTOMATIC = "Automatic segmentation (SAM)"


def _blobs(shape=(96, 128)):
    """Three bright discs on a dark background and their ground-truth labels."""
    rr, cc = np.indices(shape)
    gt = np.zeros(shape, np.uint32)
    for k, (r, c, rad) in enumerate(((30, 30, 12), (60, 90, 15), (75, 30, 8)), start=1):
        gt[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] = k
    image = np.where(gt > 0, 200.0, 20.0).astype(np.float32)
    return image, gt


STAND_IN = "stand-in (test)"


@pytest.fixture(autouse=True)
def stand_in_model(monkeypatch):
    """Adds a weight-free stand-in (exact masks: the bright component under a prompt) to the widgets'
    model lists; the product's list offers only real models."""
    from napari_sam._napari._testing import ThresholdPredictor
    from napari_sam._qt import automatic, interactive

    for module in (interactive, automatic):
        real_choices, real_make = module.model_choices, module.make_predictor
        monkeypatch.setattr(module, "model_choices", lambda real=real_choices: [*real(), STAND_IN])
        monkeypatch.setattr(module, "make_predictor", lambda name, real=real_make, **kw:
                            ThresholdPredictor() if name == STAND_IN else real(name, **kw))
    return STAND_IN


def _open(viewer, name):
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", name)
    widget.model_combo.value = STAND_IN
    return widget


def _start(qtbot, widget):
    widget.start_session()
    qtbot.waitUntil(lambda: widget.session is not None, timeout=20_000)
    widget.runner.wait()


def _press(viewer, qtbot, key):
    """A real key press on the canvas (goes through napari's key handling to the active layer)."""
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, key)
    qtbot.wait(20)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=True)


def test_interactive_point_preview_commit_undo(viewer, qtbot):
    image, gt = _blobs()
    viewer.add_image(image, name="blobs", scale=(0.5, 0.5), translate=(3.0, 4.0))
    widget = _open(viewer, INTERACTIVE)
    _start(qtbot, widget)
    labels = widget.labels_combo.value
    assert labels is not None and labels.data.shape == image.shape
    # click the centre of disc 2 (data (60, 90)) in world coordinates
    widget.points_layer.add([[60.0, 90.0]])  # the points layer shares the image's transform
    qtbot.waitUntil(lambda: widget.preview_layer.data.any(), timeout=10_000)
    np.testing.assert_array_equal(widget.preview_layer.data > 0, gt == 2)
    assert tuple(widget.preview_layer.scale) == (0.5, 0.5)
    ids = widget.commit()
    assert ids == [1]
    np.testing.assert_array_equal(labels.data == 1, gt == 2)
    assert len(widget.points_layer.data) == 0 and not widget.preview_layer.data.any()
    labels.undo()
    assert labels.data.max() == 0


def test_keys_toggle_cycle_and_commit(viewer, qtbot):
    image, gt = _blobs()
    viewer.add_image(image, name="blobs")
    widget = _open(viewer, INTERACTIVE)
    _start(qtbot, widget)
    points = widget.points_layer
    viewer.layers.selection.active = points
    _press(viewer, qtbot, "t")
    assert points.feature_defaults["prompt"].iloc[0] == "negative"
    _press(viewer, qtbot, "t")
    points.add([[30.0, 30.0]])
    qtbot.waitUntil(lambda: widget.preview_layer.data.any(), timeout=10_000)
    widget.runner.wait()
    _press(viewer, qtbot, "n")  # best (the disc) -> the dilated candidate
    assert (widget.preview_layer.data > 0).sum() > (gt == 1).sum()
    _press(viewer, qtbot, "n")
    _press(viewer, qtbot, "n")  # back to the disc
    np.testing.assert_array_equal(widget.preview_layer.data > 0, gt == 1)
    _press(viewer, qtbot, "c")
    np.testing.assert_array_equal(widget.labels_combo.value.data == 1, gt == 1)
    assert "C: commit" in widget.shortcuts.value


def test_box_prompts_make_several_objects(viewer, qtbot):
    image, gt = _blobs()
    viewer.add_image(image, name="blobs")
    widget = _open(viewer, INTERACTIVE)
    _start(qtbot, widget)
    boxes = [np.array([[15, 15], [15, 45], [45, 45], [45, 15]]), np.array([[43, 73], [43, 107], [77, 107], [77, 73]])]
    widget.shapes_layer.add_rectangles(boxes)
    qtbot.waitUntil(lambda: len(np.unique(widget.preview_layer.data)) == 3, timeout=10_000)
    assert widget.commit() == [1, 2]
    lab = widget.labels_combo.value.data
    np.testing.assert_array_equal(lab == 1, gt == 1)
    np.testing.assert_array_equal(lab == 2, gt == 2)


def test_propagation_through_a_stack(viewer, qtbot):
    zz, rr, cc = np.indices((9, 48, 48))
    ball = (zz - 4) ** 2 / 3.5**2 + (rr - 24) ** 2 / 12**2 + (cc - 24) ** 2 / 12**2 <= 1
    viewer.add_image(ball.astype(np.float32) * 100 + 1, name="ball")
    viewer.dims.set_current_step(0, 4)
    widget = _open(viewer, INTERACTIVE)
    _start(qtbot, widget)
    widget.points_layer.add([[4, 24.0, 24.0]])
    qtbot.waitUntil(lambda: widget.preview_layer.data.any(), timeout=10_000)
    [obj] = widget.commit()
    widget.propagate()
    widget.runner.wait()
    labels = widget.labels_combo.value
    np.testing.assert_array_equal(labels.data == obj, ball & (ball.reshape(9, -1).sum(1) >= 10)[:, None, None])


def test_screenshot_shows_the_committed_label(viewer, qtbot):
    image, gt = _blobs()
    viewer.add_image(image, name="blobs")
    widget = _open(viewer, INTERACTIVE)
    _start(qtbot, widget)
    labels = widget.labels_combo.value
    labels.opacity = 1.0
    colour = (np.asarray(labels.get_color(1))[:3] * 255).round()

    viewer.window._qt_window.resize(1200, 1000)

    def n_label_pixels():
        viewer.reset_view()
        qtbot.wait(50)
        shot = viewer.screenshot(canvas_only=True, flash=False)
        return int((np.abs(shot[..., :3].astype(int) - colour).max(axis=-1) <= 3).sum())

    widget.preview_layer.visible = False
    widget.points_layer.visible = False
    assert n_label_pixels() == 0
    widget.points_layer.add([[60.0, 90.0]])
    qtbot.waitUntil(lambda: widget.preview_layer.data.any(), timeout=10_000)
    widget.commit()
    qtbot.wait(100)
    assert n_label_pixels() > 100


def test_automatic_widget_runs_cancels_and_refilters(viewer, qtbot):
    image, gt = _blobs()
    viewer.add_image(image, name="blobs")
    widget = _open(viewer, AUTOMATIC)
    widget.points_per_side.value = 8
    widget.min_mask_region_area.value = 0
    widget.run()
    qtbot.waitUntil(lambda: widget.output is not None, timeout=60_000)
    widget.runner.wait()
    out = widget.output.data
    found = {frozenset(np.flatnonzero(out == i)) for i in np.unique(out) if i}
    truth = {frozenset(np.flatnonzero(gt == i)) for i in np.unique(gt) if i}
    assert found == truth
    n_encoded = widget._predictor.n_encoded
    widget.pred_iou_thresh.value = 0.95  # above every candidate's score: re-filtered at once, no model run
    assert widget.output.data.max() == 0 and widget._predictor.n_encoded == n_encoded
    widget.pred_iou_thresh.value = 0.80
    out = widget.output.data
    assert {frozenset(np.flatnonzero(out == i)) for i in np.unique(out) if i} == truth
    assert widget._predictor.n_encoded == n_encoded


def test_alt_click_adds_a_negative_point(viewer, qtbot, monkeypatch):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    image, gt = _blobs()
    viewer.add_image(image, name="blobs")
    widget = _open(viewer, INTERACTIVE)
    _start(qtbot, widget)
    widget.points_layer.add([[60.0, 90.0]])
    monkeypatch.setattr(QApplication, "keyboardModifiers", staticmethod(lambda: Qt.AltModifier))
    widget.points_layer.add([[60.0, 95.0]])
    monkeypatch.setattr(QApplication, "keyboardModifiers", staticmethod(lambda: Qt.NoModifier))
    qtbot.wait(20)
    widget.points_layer.add([[30.0, 30.0]])
    assert widget.points_layer.features["prompt"].tolist() == ["positive", "negative", "positive"]
    np.testing.assert_allclose(widget.points_layer.face_color[1, :3], [1, 0, 0])  # red


def test_automatic_widget_uses_the_models_recommended_thresholds(viewer):
    from napari_sam._napari.automatic import DEFAULT_PARAMS
    from napari_sam._napari.predictors import model_choices
    from napari_sam.model.registry import available_models, recommended_amg_params

    assert "builtin" in available_models()  # the package ships the built-in model
    assert model_choices()[0] == "builtin" and STAND_IN not in model_choices()  # no stand-in in the product
    widget = _open(viewer, AUTOMATIC)  # stand-in model: the widget's microscopy defaults
    assert widget.pred_iou_thresh.value == DEFAULT_PARAMS["pred_iou_thresh"]
    widget.model_combo.value = "builtin"
    shipped = recommended_amg_params("builtin")
    assert shipped["pred_iou_thresh"] < DEFAULT_PARAMS["pred_iou_thresh"]
    assert widget.pred_iou_thresh.value == pytest.approx(shipped["pred_iou_thresh"])
    assert widget.stability_score_thresh.value == pytest.approx(shipped["stability_score_thresh"])
    # its mask NMS has no widget: it rides along, and the box NMS spin box is off
    assert widget.params()["mask_nms_thresh"] == shipped["mask_nms_thresh"]
    assert widget.params()["nms_area_bonus"] == shipped["nms_area_bonus"]
    assert not widget.box_nms_thresh.enabled and "mask_nms_thresh" in widget.box_nms_thresh.tooltip
    widget.model_combo.value = "vit_b"  # official models: back to the defaults
    assert widget.pred_iou_thresh.value == DEFAULT_PARAMS["pred_iou_thresh"]
    assert widget.box_nms_thresh.enabled and "mask_nms_thresh" not in widget.params()
    assert recommended_amg_params("vit_b") == {}


def _run_auto(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.busy(), timeout=60_000)
    widget.runner.wait()


def test_automatic_never_erases_objects_painted_by_hand(viewer, qtbot):
    image, gt = _blobs()
    viewer.add_image(image, name="blobs")
    widget = _open(viewer, AUTOMATIC)
    widget.points_per_side.value = 8
    widget.min_mask_region_area.value = 0
    _run_auto(widget, qtbot)
    first = widget.output
    # the user paints an object by hand into the result layer
    first.data_setitem((np.arange(5, 10), np.arange(100, 105)), 50)
    edited = first.data.copy()
    widget.pred_iou_thresh.value = 0.95  # re-filter: the edited layer is kept, the result goes elsewhere
    np.testing.assert_array_equal(first.data, edited)
    assert widget.output is not first and widget.output.data.max() == 0
    assert "edited by hand" in widget.status.value
    second = widget.output
    widget.pred_iou_thresh.value = 0.80  # re-filter into the new layer (it was not edited)
    assert widget.output is second
    assert {frozenset(np.flatnonzero(second.data == i)) for i in np.unique(second.data) if i} == \
        {frozenset(np.flatnonzero(gt == i)) for i in np.unique(gt) if i}
    second.undo()  # the re-filter's replacement is one undo step
    assert second.data.max() == 0
    np.testing.assert_array_equal(first.data, edited)
    _run_auto(widget, qtbot)  # Run again: the unedited layer is reused
    assert widget.output is second and second.data.max() == 3


def test_automatic_tiles_large_images_by_default(viewer, qtbot, monkeypatch):
    """A plane larger than the model's input is tiled at the input size unless the user says otherwise."""
    from napari_sam._napari._testing import ThresholdPredictor
    from napari_sam._qt import automatic

    class SmallInput(ThresholdPredictor):
        image_size = 64

    monkeypatch.setattr(automatic, "make_predictor", lambda name, **kw: SmallInput())
    image, gt = _blobs((160, 160))
    viewer.add_image(image, name="blobs")
    widget = _open(viewer, AUTOMATIC)
    assert widget.tiling.value == "auto"
    widget.points_per_side.value = 8
    widget.min_mask_region_area.value = 0
    seen = []
    widget.runner.status = lambda text: seen.append(text)
    _run_auto(widget, qtbot)
    assert "tiles of 64 px" in widget.status.value
    assert any("tile 9/9" in s for s in seen)  # 160 px in 64 px tiles: 3 x 3, with progress per tile
    assert widget.output.data.max() >= 1
    widget.tiling.value = "untiled"
    _run_auto(widget, qtbot)
    assert "tiles" not in widget.status.value


def test_worker_errors_are_shown_once_and_cancel_is_info(viewer, qtbot, monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_sam._qt import _workers
    from napari_sam.progress import Cancelled

    shown = []
    monkeypatch.setattr(_workers, "show_error", lambda msg: shown.append(("error", msg)))
    monkeypatch.setattr(_workers, "show_info", lambda msg: shown.append(("info", msg)))
    monkeypatch.setattr(notification_manager, "receive_error", lambda *a, **k: shown.append(("relayed", a)))
    widget = _open(viewer, AUTOMATIC)

    def fails():
        raise ValueError("bad input")

    def cancelled():
        raise Cancelled("cancelled by the user")

    widget.runner.start("run", fails)
    widget.runner.wait()
    qtbot.wait(50)
    assert [k for k, _ in shown] == ["error"]
    shown.clear()
    widget.runner.start("run", cancelled)
    widget.runner.wait()
    qtbot.wait(50)
    assert [k for k, _ in shown] == ["info"] and widget.status.value == "cancelled"


def test_undo_last_commit_works_whichever_layer_is_active(viewer, qtbot):
    image, gt = _blobs()
    viewer.add_image(image, name="blobs")
    widget = _open(viewer, INTERACTIVE)
    _start(qtbot, widget)
    labels = widget.labels_combo.value
    for active in (widget.points_layer, widget.shapes_layer, labels, viewer.layers["blobs"]):
        widget.points_layer.add([[60.0, 90.0]])
        qtbot.waitUntil(lambda: widget.preview_layer.data.any(), timeout=10_000)
        widget.runner.wait()
        assert widget.commit() and labels.data.any()
        viewer.layers.selection.active = active
        _press(viewer, qtbot, "u")
        assert labels.data.max() == 0, active.name
    assert not widget.undo_last_commit()


def test_plugin_keys_do_not_shadow_napari_keys(viewer, qtbot):
    """napari's own M (new label) on labels and T (path mode) on shapes keep working."""
    image, _ = _blobs()
    viewer.add_image(image, name="blobs")
    widget = _open(viewer, INTERACTIVE)
    _start(qtbot, widget)
    labels = widget.labels_combo.value
    viewer.layers.selection.active = labels
    labels.selected_label = 3
    _press(viewer, qtbot, "m")
    assert labels.selected_label == 1  # napari: the next free label (the layer is empty)
    viewer.layers.selection.active = widget.shapes_layer
    _press(viewer, qtbot, "t")
    assert str(widget.shapes_layer.mode) == "add_path"


def test_status_follows_the_prompts_and_shows_no_internals(viewer, qtbot):
    image, _ = _blobs()
    viewer.add_image(np.stack([image] * 3), name="stack")
    widget = _open(viewer, INTERACTIVE)
    _start(qtbot, widget)
    widget.points_layer.add([[1, 60.0, 90.0]])
    qtbot.waitUntil(lambda: widget.preview_layer.data.any(), timeout=10_000)
    widget.runner.wait()
    assert "preview: 1 object" in widget.status.value
    widget.points_layer.data = np.zeros((0, 3))  # the last point deleted
    qtbot.waitUntil(lambda: not widget.preview_layer.data.any(), timeout=10_000)
    widget.runner.wait()
    assert "preview" not in widget.status.value
    seen = []
    widget.runner.status = seen.append  # progress texts
    widget.status.changed.connect(seen.append)
    viewer.dims.set_current_step(0, 2)
    qtbot.wait(400)
    widget.runner.wait()
    assert any("slice 2" in s for s in seen)
    assert not any("np." in s or "(" in s for s in seen)
    assert widget.status.native.wordWrap()


def test_interactive_on_a_4096_image_embeds_only_the_clicked_tile(viewer, qtbot):
    """Real viewer, built-in model: a click on a 4096² image matches the click on a 512² crop."""
    import napari_sam
    from napari_sam.synthetic import make_nuclei_image

    image, labels = make_nuclei_image((4096, 4096), seed=0)
    layer = viewer.add_image(image, name="big")
    widget = _open(viewer, INTERACTIVE)
    widget.model_combo.value = "builtin"
    widget.device.value = "cpu"
    _start(qtbot, widget)
    assert "large image" in widget.status.value
    tiles_before = len(widget.session.tiler(widget.session.plane(viewer.dims)).cached_windows())
    r0, c0 = 1088, 2112
    obj = [i for i in np.unique(labels[r0 + 200:r0 + 300, c0 + 200:c0 + 300]) if i][0]
    rr, cc = np.nonzero(labels == obj)
    pt = np.array([rr[len(rr) // 2], cc[len(cc) // 2]], float)
    widget.points_layer.add([pt])
    qtbot.waitUntil(lambda: widget.preview_layer.data.any(), timeout=60_000)
    widget.runner.wait()
    tiler = widget.session.tiler(widget.session.plane(viewer.dims))
    assert tiles_before == 0 and tiler.n_encoded == 1
    ref = napari_sam.make_predictor("builtin", device="cpu")
    ref.set_image(image[r0:r0 + 512, c0:c0 + 512], contrast_limits=layer.contrast_limits)
    masks, scores, _ = ref.predict((pt - [r0, c0])[None], [1])
    expected = np.zeros(image.shape, bool)
    expected[r0:r0 + 512, c0:c0 + 512] = masks[int(np.argmax(scores))]
    got = widget.preview_layer.data > 0
    assert (got & expected).sum() / (got | expected).sum() >= 0.9
    assert widget.points_layer.canvas_size_limits[1] <= 16


def test_precompute_on_a_large_image_embeds_its_tiles_and_cancels(viewer, qtbot):
    import time

    from napari_sam.synthetic import make_nuclei_image

    image, labels = make_nuclei_image((768, 768), seed=4)
    viewer.add_image(image, name="big")
    widget = _open(viewer, INTERACTIVE)
    widget.model_combo.value = "builtin"
    widget.device.value = "cpu"
    _start(qtbot, widget)
    tiler = widget.session.tiler(widget.session.plane(viewer.dims))
    widget.precompute()
    qtbot.waitUntil(lambda: tiler.n_encoded >= 2, timeout=60_000)
    asked = time.perf_counter()
    widget.runner.cancel()
    qtbot.waitUntil(lambda: not widget.runner.busy("stack"), timeout=10_000)
    assert time.perf_counter() - asked <= 1.5
    assert widget.status.value == "cancelled" and tiler.n_encoded < 36
    widget.precompute()
    widget.runner.wait()
    assert widget.status.value == "36 embeddings ready" and tiler.n_encoded == 36
    obj = labels[384, 384] or [i for i in np.unique(labels[320:448, 320:448]) if i][0]
    rr, cc = np.nonzero(labels == obj)
    widget.points_layer.add([[rr[len(rr) // 2], cc[len(cc) // 2]]])
    qtbot.waitUntil(lambda: widget.preview_layer.data.any(), timeout=60_000)
    widget.runner.wait()
    assert widget.session.preview.objects[0].tile_window in tiler.windows()  # a nucleus inside one tile
    assert tiler.n_encoded == 36  # the click ran no encoder
