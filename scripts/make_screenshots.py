"""Regenerate docs/images/plugin_*.png from the running plugin (needs an X server).

Usage (from the repository root)::

    xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python scripts/make_screenshots.py

Every picture is a real napari window: the sample data come from the
plugin's sample-data commands, the widgets are opened from the manifest, and
prompts are placed the way a user would (points, boxes), with the weight-free
built-in model (shipped, offline) so the pictures are reproducible.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from _screenshot import OUT, open_viewer, parse_args, screenshot, settle


def _wait(widget, condition=lambda: True, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        widget.runner.wait()
        settle(0.15)
        if condition() and not widget.runner.busy():
            return
    raise TimeoutError("the plugin did not finish in time")


def _save(viewer, name: str, *, canvas_only: bool = False, image: np.ndarray | None = None) -> None:
    from skimage.io import imsave

    shot = screenshot(viewer, canvas_only=canvas_only) if image is None else image
    imsave(OUT / name, shot, check_contrast=False)
    print("wrote", OUT / name, shot.shape)


def _centroids(labels: np.ndarray, ids) -> list[np.ndarray]:
    from scipy import ndimage as ndi

    return [np.array(ndi.center_of_mass(labels == i)) for i in ids]


def main() -> int:
    parse_args(__doc__)
    from napari_sam._napari._sample_data import nuclei_2d, nuclei_3d
    from napari_sam.model.registry import available_models
    from napari_sam.synthetic import make_nuclei_image

    if "builtin" not in available_models():
        raise SystemExit("the screenshots show the built-in model: src/napari_sam/data/builtin_model.pt is missing")
    MODEL = "builtin"  # noqa: N806

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = open_viewer()

    # --- interactive: point prompts, preview, commit -------------------------------
    [(image, meta, _)] = nuclei_2d()
    viewer.add_image(image, **meta)
    _, truth = make_nuclei_image((256, 256), kind="nuclei", seed=3)  # same seed as the sample
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", "Interactive segmentation (SAM)")
    widget.model_combo.value = MODEL
    widget.start_session()
    _wait(widget, lambda: widget.session is not None)
    areas = np.bincount(truth.ravel())
    ids = [int(i) for i in np.argsort(areas[1:])[::-1][:6] + 1]
    for centre in _centroids(truth, ids[:4]):
        widget.points_layer.add([centre])
        _wait(widget, lambda: widget.preview_layer.data.any())
        widget.commit()
        _wait(widget)
    widget.points_layer.add([_centroids(truth, ids[4:5])[0]])
    _wait(widget, lambda: widget.preview_layer.data.any())
    viewer.reset_view()
    _save(viewer, "plugin_interactive.png")

    # --- several boxes at once ----------------------------------------------------
    widget.clear()
    from scipy import ndimage as ndi

    boxes = []
    for sl in ndi.find_objects(truth)[:]:
        if sl is None:
            continue
        r0, r1, c0, c1 = sl[0].start - 3, sl[0].stop + 2, sl[1].start - 3, sl[1].stop + 2
        boxes.append(np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float))
    chosen = boxes[-5:]
    widget.shapes_layer.add_rectangles(chosen)
    _wait(widget, lambda: widget.preview_layer.data.max() >= 1)
    viewer.layers.selection.active = widget.shapes_layer
    _save(viewer, "plugin_boxes.png", canvas_only=True)
    widget.commit()
    _wait(widget)
    widget.preview_layer.visible = False
    _save(viewer, "plugin_committed.png", canvas_only=True)

    # --- 3D propagation -------------------------------------------------------------
    viewer.layers.clear()
    [(stack, meta3, _)] = nuclei_3d()
    layer3 = viewer.add_image(stack, **meta3)
    widget.reset_choices()
    widget.image_combo.value = layer3
    widget.labels_combo.value = None
    mid = stack.shape[0] // 2
    viewer.dims.set_current_step(0, mid)
    widget.start_session()
    _wait(widget, lambda: widget.session is not None and widget.session.image_layer is layer3)
    plane = ndi.gaussian_filter(stack[mid].astype(float), 4)
    h, w = plane.shape
    core = np.zeros_like(plane, dtype=bool)
    core[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    target = np.unravel_index(np.argmax(np.where(core, plane, -np.inf)), plane.shape)
    widget.points_layer.add([[mid, *target]])
    _wait(widget, lambda: widget.preview_layer.data.any())
    widget.commit()
    widget.propagate()
    _wait(widget)
    widget.preview_layer.visible = False
    widget.points_layer.visible = False
    widget.shapes_layer.visible = False
    viewer.reset_view()
    _save(viewer, "plugin_propagation_dock.png")
    labels3 = widget.labels_combo.value
    zs = np.flatnonzero(labels3.data.reshape(stack.shape[0], -1).max(axis=1))
    viewer.camera.center = (float(target[0]), float(target[1]))
    viewer.camera.zoom = viewer.camera.zoom * 2.5
    panels = []
    for z in np.linspace(zs.min(), zs.max(), 4).round().astype(int):
        viewer.dims.set_current_step(0, int(z))
        panels.append(screenshot(viewer, canvas_only=True))
    height = min(p.shape[0] for p in panels)
    strip = np.concatenate([p[:height] for p in panels], axis=1)
    _save(viewer, "plugin_propagation.png", image=strip)
    print("propagated through slices", zs.tolist())

    # --- automatic ------------------------------------------------------------------
    viewer.layers.clear()
    viewer.window.remove_dock_widget("all")
    viewer.add_image(image, **meta)
    _, auto = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", "Automatic segmentation (SAM)")
    auto.model_combo.value = MODEL
    auto.points_per_side.value = 32
    auto.run()
    _wait(auto, lambda: auto.output is not None)
    viewer.reset_view()
    _save(viewer, "plugin_automatic.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
