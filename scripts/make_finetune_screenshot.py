"""Regenerate docs/images/plugin_finetune.png: the "Fine-tune (SAM)" dock after a short run (needs an X server).

Usage (from the repository root)::

    xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python scripts/make_finetune_screenshot.py

A real napari window: a four-slice stack of the held-out ``dic`` style of
:mod:`napari_sam.synthetic_microscopy` with its instance labels standing in for
a user's annotations, the dock opened from the manifest, the shipped built-in
model fine-tuned for a few steps on the CPU into a temporary folder.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
from _screenshot import OUT, open_viewer, parse_args, screenshot, settle, wait_until


def main() -> int:
    parse_args(__doc__)
    from skimage.io import imsave

    from napari_sam.synthetic_microscopy import make_validation_image

    pairs = [make_validation_image("dic", seed, shape=(256, 256)) for seed in range(4)]
    image = np.stack([p[0] for p in pairs])
    labels = np.stack([p[1] for p in pairs]).astype(np.int32)
    viewer = open_viewer()
    viewer.add_image(image, name="dic stack", rgb=False)
    viewer.add_labels(labels, name="annotations", opacity=0.4)
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-toolkit", "Fine-tune (SAM)")
    with tempfile.TemporaryDirectory() as tmp:
        widget.base.value = "builtin"
        widget.name.value = "dic_tuned"
        widget.folder.value = tmp
        widget.steps.value = 30
        widget.validation.value = 0.25
        widget.device.value = "cpu"
        widget.run()
        wait_until(lambda: widget.report is not None, timeout=900)
        widget.runner.wait()
        settle(1.0)
        if widget.report is None:
            raise TimeoutError("fine-tuning did not finish in time")
        viewer.reset_view()
        shot = screenshot(viewer, settle_s=0.5)
    OUT.mkdir(parents=True, exist_ok=True)
    imsave(OUT / "plugin_finetune.png", shot, check_contrast=False)
    print("wrote", OUT / "plugin_finetune.png", shot.shape, "held-out:", widget.result.value)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
