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

import numpy as np
from _screenshot import OUT, open_viewer, parse_args, screenshot, settle, wait_until


def main() -> int:
    parse_args(__doc__)
    from PIL import Image

    from napari_sam.synthetic import make_nuclei_image

    image, labels = make_nuclei_image((4096, 4096), seed=0)
    viewer = open_viewer()
    viewer.add_image(image, name="nuclei 4096x4096")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", "Interactive segmentation (SAM)")
    widget.model_combo.value = "builtin"
    widget.device.value = "cpu"
    widget.start_session()
    wait_until(lambda: widget.session is not None, timeout=300)
    widget.runner.wait()
    # click a few nuclei of one region and commit each
    r0, c0 = 1900, 1900
    ids = [i for i in np.unique(labels[r0:r0 + 300, c0:c0 + 300]) if i][:6]
    for i in ids:
        rr, cc = np.nonzero(labels == i)
        widget.points_layer.add([[rr[len(rr) // 2], cc[len(cc) // 2]]])
        wait_until(lambda: widget.preview_layer.data.any(), timeout=60)
        widget.runner.wait()
        widget.commit()
        settle(0.2)
    # the last click stays visible as a preview
    rr, cc = np.nonzero(labels == [i for i in np.unique(labels[r0 + 300:r0 + 400, c0:c0 + 300]) if i][0])
    widget.points_layer.add([[rr[len(rr) // 2], cc[len(cc) // 2]]])
    wait_until(lambda: widget.preview_layer.data.any(), timeout=60)
    widget.runner.wait()
    tiler = widget.session.tiler(widget.session.plane(viewer.dims))
    boxes = [np.array([[a, b], [a, d], [c, d], [c, b]], float) for a, b, c, d in tiler.cached_windows()]
    viewer.add_shapes(boxes, name="tiles embedded", shape_type="rectangle", edge_color="yellow",
                      face_color="transparent", edge_width=3)
    viewer.layers.selection.active = widget.points_layer
    top = np.min([w[:2] for w in tiler.cached_windows()], axis=0)
    bottom = np.max([w[2:] for w in tiler.cached_windows()], axis=0)
    viewer.camera.center = tuple((top + bottom) / 2)
    viewer.camera.zoom = 1.6
    shot = screenshot(viewer, settle_s=1.0)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "plugin_large.png"
    Image.fromarray(shot[..., :3]).quantize(colors=128).save(path, optimize=True)
    print("wrote", path, shot.shape, f"{path.stat().st_size / 1024:.0f} KB,", tiler.n_encoded, "tiles embedded")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
