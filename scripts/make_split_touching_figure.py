"""Draw benchmarks/figures/split_touching.png: what the built-in model's cut of touching nuclei does.

Clicks (one per object at a random inner pixel, as in the evaluation) on an
unseen image of dense small nuclei through the plugin's ``PromptPipeline``
(the json's ``"zoom"``).  Shown: the first clicks, in object order, whose
best mask the cut changes (chosen without looking at the IoU: wins and
losses), with the ground truth (white), the mask before the cut (red), the
mask returned (green), the click (cyan) and both IoUs.

Usage: python scripts/make_split_touching_figure.py [output.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from napari_sam.model.registry import load_model, recommended_zoom
from napari_sam.normalize import to_rgb_uint8
from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.predict.touching import split_touching
from napari_sam.synthetic import make_nuclei_image, sample_point_prompts
from napari_sam.training.evaluate import _iou

SEED = 1_031_004  # an evaluation-range seed no script or test tunes on (median nucleus 11 px)
N_SHOWN = 8


def main(out: Path) -> None:
    zoom = recommended_zoom("builtin")
    h = zoom["split_touching"]
    zp = PromptPipeline(load_model("builtin", device="cpu"), device="cpu", **{**zoom, "split_touching": None})
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=SEED)
    zp.set_image(img)
    grey = to_rgb_uint8(img).astype(np.float32).mean(axis=-1)
    pts, plab, ids = sample_point_prompts(lab, seed=0)
    shown = []
    for p, pl, oid in zip(pts, plab, ids):
        masks, scores, _ = zp.predict(p, pl, multimask=True)
        before = masks[int(np.argmax(scores))]
        after = split_touching(before, grey, p, h=h)
        if not np.array_equal(before, after):
            shown.append((p[0], lab == oid, before, after))
        if len(shown) == N_SHOWN:
            break
    fig, axes = plt.subplots(1, N_SHOWN, figsize=(2.2 * N_SHOWN, 2.6))
    for ax, (click, truth, before, after) in zip(axes, shown):
        rows, cols = np.nonzero(truth | before)
        r0, r1 = max(rows.min() - 5, 0), min(rows.max() + 6, img.shape[0])
        c0, c1 = max(cols.min() - 5, 0), min(cols.max() + 6, img.shape[1])
        ax.imshow(img[r0:r1, c0:c1], cmap="gray", interpolation="nearest")
        for m, colour in ((truth, "white"), (before, "red"), (after, "lime")):
            ax.contour(m[r0:r1, c0:c1], [0.5], colors=colour, linewidths=1.2)
        ax.plot(click[1] - c0, click[0] - r0, "c+", ms=8)
        ax.set_title(f"IoU {_iou(before, truth):.2f} -> {_iou(after, truth):.2f}", fontsize=9)
        ax.set_axis_off()
    fig.suptitle("click masks before (red) and after (green) the cut; ground truth white", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/figures/split_touching.png"))
