"""Tier 3: nothing the widgets do blocks napari's event loop (real viewer, run under Xvfb).

A 20 ms QTimer records when the event loop gets to run while the docks open,
a session starts with the built-in model on a large image, a click is
previewed and an automatic run is started and cancelled.  The largest gap
between two ticks is the longest the GUI was frozen.  Opening the docks must
not import torch at all (checked in a fresh interpreter, where nothing else
has imported it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui

INTERACTIVE = "Interactive segmentation (SAM)"
AUTOMATIC = "Automatic segmentation (SAM)"
#: the longest the event loop may be blocked (the issue's target is ~100 ms; this leaves room for a loaded CI)
MAX_GAP_S = 0.2


def test_opening_the_docks_does_not_import_torch():
    code = (
        "import sys\n"
        "import napari\n"
        "viewer = napari.Viewer(show=False)\n"
        "viewer.add_image(__import__('numpy').zeros((64, 64)), name='img')\n"
        f"for name in ({INTERACTIVE!r}, {AUTOMATIC!r}, 'Fine-tune (SAM)'):\n"
        "    viewer.window.add_plugin_dock_widget('napari-sam-toolkit', name)\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
        "viewer.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.abspath("src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH"


class GapRecorder:
    """Ticks of a 20 ms QTimer: a gap between two ticks is a time the event loop did not run.

    Gaps that hold a call which adds a layer or a dock to napari or puts new
    data into a layer (:meth:`drawing`) are napari's own drawing; the others
    are ours.
    """

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.marks: list[tuple[float, str]] = []
        self.draws: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(20)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks.append(time.perf_counter())
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.ticks.append(time.perf_counter())

    def mark(self, what: str) -> None:
        self.marks.append((time.perf_counter(), what))

    def drawing(self, func):
        """``func`` wrapped: its calls are recorded as napari drawing a layer."""
        def wrapped(*args, **kwargs):
            self.draws.append(time.perf_counter())
            return func(*args, **kwargs)
        return wrapped

    def gaps(self, above: float, *, drawing: bool) -> list[tuple[float, str]]:
        """``(gap s, step)`` of the gaps longer than ``above`` that hold (or not) a napari drawing call."""
        t = np.asarray(self.ticks)
        draws = np.asarray(self.draws)
        out = []
        for k in np.nonzero(np.diff(t) > above)[0]:
            held = bool(((draws >= t[k]) & (draws <= t[k + 1])).any())
            if held == drawing:
                step = [w for m, w in self.marks if m <= t[k + 1]]
                out.append((round(float(t[k + 1] - t[k]), 3), step[-1] if step else "start"))
        return sorted(out, reverse=True)


def _napari_baseline(viewer, qtbot, shape) -> float:
    """The longest gap while napari adds a dock of 24 plain widgets, a Labels, Shapes and Points layer
    and refreshes the labels."""
    from magicgui.widgets import ComboBox, Container, PushButton

    rec = GapRecorder()
    rec.start()
    qtbot.wait(60)
    dock = viewer.window.add_dock_widget(Container(widgets=[PushButton(text=f"button {i}") for i in range(12)]
                                                   + [ComboBox(choices=["a", "b"]) for _ in range(12)]))
    qtbot.wait(60)
    viewer.window.remove_dock_widget(dock)
    qtbot.wait(60)
    added = []
    for add in (lambda: viewer.add_labels(np.zeros(shape, np.uint16)),
                lambda: viewer.add_shapes(np.array([[10.0, 10.0], [10.0, 50.0], [50.0, 50.0], [50.0, 10.0]])),
                lambda: viewer.add_points(np.array([[20.0, 20.0]]))):
        added.append(add())
        qtbot.wait(60)
    added[0].data = np.ones(shape, np.uint16)
    qtbot.wait(60)
    for layer in added:
        viewer.layers.remove(layer)
        qtbot.wait(60)
    rec.stop()
    return float(np.diff(rec.ticks).max())


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=True)


def test_the_event_loop_never_stalls(viewer, qtbot, monkeypatch):
    """Opening the docks, starting a session, a click, a commit, an automatic run and its cancel.

    The model's libraries are imported once before the timer starts: a first
    import of torch in a worker still stalls every thread, because CPython
    holds the GIL while it loads extension modules and unmarshals code;
    :func:`test_opening_the_docks_does_not_import_torch` shows that the GUI
    thread itself never imports them.
    """
    from napari_sam.predict.factory import make_predictor
    from napari_sam.synthetic import make_nuclei_image

    make_predictor("builtin", device="cpu")  # warms the imports (see above); the session loads its own

    image, labels = make_nuclei_image((2048, 2048), seed=1)
    viewer.add_image(image, name="big")
    qtbot.wait(300)  # the first paint of the viewer is napari's, not ours
    baseline = max(_napari_baseline(viewer, qtbot, image.shape), _napari_baseline(viewer, qtbot, image.shape))
    rec = GapRecorder()
    from napari_sam._napari import labels as labels_module
    from napari_sam._napari import prompt_layers
    from napari_sam._qt import automatic as auto_module

    for module, name in [(prompt_layers, n) for n in ("make_preview_layer", "make_shapes_layer", "make_points_layer",
                                                      "make_labels_layer", "show_preview")] + [
            (labels_module, "write_masks"), (auto_module, "write_undoable")]:
        monkeypatch.setattr(module, name, rec.drawing(getattr(module, name)))
    rec.start()
    qtbot.wait(100)

    rec.mark("open docks")
    rec.draws.append(time.perf_counter())  # napari makes and draws a dock
    _d, inter = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", INTERACTIVE)
    qtbot.wait(100)  # a user opens one dock at a time
    rec.draws.append(time.perf_counter())
    _d, auto = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", AUTOMATIC)
    qtbot.wait(100)

    rec.mark("start session")
    inter.model_combo.value = "builtin"
    inter.device.value = "cpu"
    inter.start_session()
    qtbot.waitUntil(lambda: inter.session is not None and inter.points_layer is not None, timeout=120_000)
    inter.runner.wait()

    rec.mark("click")
    obj = labels[1100, 1100] or int(np.unique(labels[1000:1200, 1000:1200])[-1])
    rr, cc = np.nonzero(labels == obj)
    rec.draws.append(time.perf_counter())  # napari draws the clicked point
    inter.points_layer.add([[float(rr[len(rr) // 2]), float(cc[len(cc) // 2])]])
    qtbot.waitUntil(lambda: inter.preview_layer.data.any(), timeout=120_000)
    inter.runner.wait()
    rec.mark("commit")
    assert inter.commit()

    rec.mark("automatic run")
    auto.model_combo.value = "builtin"
    auto.device.value = "cpu"
    auto.run()
    qtbot.wait(1500)  # the model is loaded and the first tiles are running
    assert auto.runner.busy("run")
    rec.mark("cancel")
    asked = time.perf_counter()
    auto.runner.cancel()
    qtbot.waitUntil(lambda: not auto.runner.busy("run"), timeout=10_000)
    cancel_s = time.perf_counter() - asked
    qtbot.wait(100)
    rec.stop()

    ours = rec.gaps(MAX_GAP_S, drawing=False)
    assert not ours, f"the event loop was blocked (s, step): {ours}"
    # napari drawing a new dock or a new or changed layer: no longer than napari takes for its own here
    allowed = max(MAX_GAP_S, 1.5 * baseline)
    drawing = rec.gaps(allowed, drawing=True)
    assert not drawing, f"drawing the plugin's layers blocked the loop (s, step): {drawing}; napari's own: {baseline:.3f} s"
    assert cancel_s <= 1.5, f"cancel took {cancel_s:.2f} s"
