"""Regenerate docs/images/plugin_large.png: the interactive dock on a 4096 x 4096 image (needs an X server).

Usage (from the repository root)::

    xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python scripts/make_large_image_screenshot.py

A real napari window: a synthetic 4096² nuclei image, the interactive dock
opened from the manifest with the built-in model on the CPU, a few nuclei
clicked and committed.  The tiles that were embedded for those clicks are drawn
as yellow rectangles (a "tiles embedded" Shapes layer) and the view is zoomed
on them.  The PNG is quantised to 128 colours to stay small.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def _settle(app, seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def main() -> int:
    import warnings

    warnings.simplefilter("ignore")  # no deprecation toasts over the canvas
    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_sam.synthetic import make_nuclei_image

    image, labels = make_nuclei_image((4096, 4096), seed=0)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 950)
    viewer.add_image(image, name="nuclei 4096x4096")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", "Interactive segmentation (SAM)")
    widget.model_combo.value = "builtin"
    widget.device.value = "cpu"
    widget.start_session()
    end = time.time() + 300
    while widget.session is None and time.time() < end:
        QApplication.processEvents()
        time.sleep(0.05)
    widget.runner.wait()
    # click a few nuclei of one region and commit each
    r0, c0 = 1900, 1900
    ids = [i for i in np.unique(labels[r0:r0 + 300, c0:c0 + 300]) if i][:6]
    for i in ids:
        rr, cc = np.nonzero(labels == i)
        widget.points_layer.add([[rr[len(rr) // 2], cc[len(cc) // 2]]])
        deadline = time.time() + 60
        while not widget.preview_layer.data.any() and time.time() < deadline:
            QApplication.processEvents()
            time.sleep(0.05)
        widget.runner.wait()
        widget.commit()
        _settle(QApplication.instance(), 0.2)
    # the last click stays visible as a preview
    rr, cc = np.nonzero(labels == [i for i in np.unique(labels[r0 + 300:r0 + 400, c0:c0 + 300]) if i][0])
    widget.points_layer.add([[rr[len(rr) // 2], cc[len(cc) // 2]]])
    deadline = time.time() + 60
    while not widget.preview_layer.data.any() and time.time() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    widget.runner.wait()
    tiler = widget.session.tiler(widget.session.plane(viewer.dims))
    boxes = [np.array([[a, b], [a, d], [c, d], [c, b]], float) for a, b, c, d in tiler.cached_windows()]
    viewer.add_shapes(boxes, name="tiles embedded", shape_type="rectangle", edge_color="yellow",
                      face_color="transparent", edge_width=3)
    viewer.layers.selection.active = widget.points_layer
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    top = np.min([w[:2] for w in tiler.cached_windows()], axis=0)
    bottom = np.max([w[2:] for w in tiler.cached_windows()], axis=0)
    viewer.camera.center = tuple((top + bottom) / 2)
    viewer.camera.zoom = 1.6
    _settle(QApplication.instance(), 1.0)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "plugin_large.png"
    Image.fromarray(shot[..., :3]).quantize(colors=128).save(path, optimize=True)
    print("wrote", path, shot.shape, f"{path.stat().st_size / 1024:.0f} KB,", tiler.n_encoded, "tiles embedded")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
