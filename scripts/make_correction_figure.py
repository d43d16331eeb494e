"""Draw benchmarks/figures/second_click.png: what a second click does as a correction of the shown mask.

Built-in model through the plugin's ``PromptPipeline`` (the json's ``"zoom"``)
on an unseen cells image (the evaluation seed of
``tests/test_napari_session.py::test_corrections_improve_poor_masks_of_cells``).
First click: an interior pixel of each object (as in the evaluation), best of
three masks.  Shown: the first objects, in object order, whose first mask has
IoU < 0.8 (chosen before the second click is made: wins and losses alike).
Second click: SAM's protocol, the pixel deepest inside the larger error
region, positive where the mask missed, negative where it took too much.
Then both clicks go to the model as a correction (the shown mask's logits as
the mask prompt, one output: what the plugin does) and, for comparison,
afresh (three candidates, best score: the plugin before session 12).

Usage: python scripts/make_correction_figure.py [output.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from napari_sam.model.registry import load_model, recommended_zoom
from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.synthetic import make_nuclei_image, sample_point_prompts
from napari_sam.training.evaluate import _iou, correction_click

SEED = 1_021_002  # evaluation-range cells image (the session test's)
N_SHOWN = 6


def main(out: Path) -> None:
    zp = PromptPipeline(load_model("builtin", device="cpu"), device="cpu", **recommended_zoom("builtin"))
    img, lab = make_nuclei_image((256, 256), kind="cells", seed=SEED)
    zp.set_image(img)
    pts, _, ids = sample_point_prompts(lab, seed=0)
    shown = []
    for p, oid in zip(pts, ids):
        truth = lab == oid
        result = zp.predict(p, np.array([1]), multimask=True)
        masks, scores, logits = result
        best = int(np.argmax(scores))
        first = masks[best]
        if _iou(first, truth) >= 0.8:
            continue
        q, label = correction_click(first, truth)
        both, labels = np.vstack([p, q[None]]), np.array([1, label])
        corrected = zp.predict(both, labels, previous=result.previous(best), multimask=False)[0][0]
        fresh_masks, fresh_scores, _ = zp.predict(both, labels, multimask=True)
        afresh = fresh_masks[int(np.argmax(fresh_scores))]
        shown.append((p[0], q, label, truth, first, corrected, afresh))
        if len(shown) == N_SHOWN:
            break
    fig, axes = plt.subplots(1, N_SHOWN, figsize=(2.5 * N_SHOWN, 3.0))
    for ax, (click, q, label, truth, first, corrected, afresh) in zip(axes, shown):
        rows, cols = np.nonzero(truth | first | corrected)
        r0, r1 = max(rows.min() - 6, 0), min(rows.max() + 7, img.shape[0])
        c0, c1 = max(cols.min() - 6, 0), min(cols.max() + 7, img.shape[1])
        ax.imshow(img[r0:r1, c0:c1], cmap="gray", interpolation="nearest")
        for m, colour, style in ((truth, "white", "solid"), (first, "red", "solid"),
                                 (afresh, "orange", "dashed"), (corrected, "lime", "solid")):
            ax.contour(m[r0:r1, c0:c1], [0.5], colors=colour, linewidths=1.2, linestyles=style)
        ax.plot(click[1] - c0, click[0] - r0, "c+", ms=9, mew=2)
        ax.plot(q[1] - c0, q[0] - r0, "c+" if label else "mx", ms=9, mew=2)
        ax.set_title(
            f"{_iou(first, truth):.2f} -> {_iou(corrected, truth):.2f}\n(afresh {_iou(afresh, truth):.2f})",
            fontsize=9,
        )
        ax.set_axis_off()
    fig.suptitle(
        "second click (cyan +: positive, magenta x: negative) on a poor first mask (red): "
        "correction of the shown mask (green) vs both clicks afresh (orange); ground truth white",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=Path("benchmarks/figures/second_click.png"),
                        help="PNG to write (default: %(default)s)")
    main(parser.parse_args().output)
