"""Regenerate docs/images/finetune_before_after.png: one held-out image, the built-in model and a fine-tuned copy.

Usage (from the repository root), after ``benchmarks/finetune.py --save DIR``::

    PYTHONPATH=src .venv/bin/python scripts/make_finetune_figure.py --tuned DIR

Three panels on an image the fine-tuning never saw (same style, another seed):
the image with its ground-truth outlines, then the automatic segmentation of
the built-in model and of the fine-tuned model (the card's AMG parameters),
each titled with its F1 on that image, and below them one click per object.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "finetune_before_after.png"


def click_masks(predictor, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """One interior click per object, placed as benchmarks/finetune.py places them: masks as labels, mean IoU."""
    from napari_sam.synthetic import sample_point_prompts

    predictor.set_image(image)
    pts, plab, ids = sample_point_prompts(labels, mode="interior", seed=0)
    out = np.zeros(labels.shape, np.int32)
    ious = []
    for k, i in enumerate(ids):
        masks, scores, _ = predictor.predict(pts[k], plab[k], multimask=True)
        mask = masks[int(np.argmax(scores))]
        obj = labels == i
        out[mask & (out == 0)] = i
        ious.append((mask & obj).sum() / max(1, (mask | obj).sum()))
    return out, float(np.mean(ious))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tuned", required=True, help="folder written by save_model / benchmarks/finetune.py --save")
    ap.add_argument("--style", default="dic")
    ap.add_argument("--seed", type=int, default=2000, help="a held-out image (benchmarks/finetune.py scores 2000-2004)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    import napari_sam
    from napari_sam.predict.factory import predictor_for_model
    from napari_sam.synthetic_microscopy import make_validation_image
    from napari_sam.training.evaluate import automatic_scores

    image, truth, _ = make_validation_image(args.style, args.seed, shape=(args.size, args.size))
    shown = (image - np.percentile(image, 1)) / max(1e-6, np.percentile(image, 99.5) - np.percentile(image, 1))
    shown = np.clip(shown, 0, 1)
    rows = []
    for title, model in (("built-in", napari_sam.load_model("builtin", device="cpu")),
                         ("fine-tuned", napari_sam.load_model(args.tuned, device="cpu"))):
        predictor = predictor_for_model(model)
        scores, preds = automatic_scores(predictor, [image], [truth], **model.card.amg)
        clicks, miou = click_masks(predictor, image, truth)
        rows.append((title, preds[0], scores["f1"], clicks, miou))

    fig, axes = plt.subplots(2, 3, figsize=(10.5, 7.2), constrained_layout=True)
    for row in range(2):
        outline = shown.copy() if shown.ndim == 3 else np.dstack([shown] * 3)
        outline[find_boundaries(truth)] = (1.0, 0.85, 0.0)
        axes[row, 0].imshow(outline)
        axes[row, 0].set_title("image + ground truth" if row == 0 else "(one click per object)")
    for col, (title, auto, f1, clicks, miou) in enumerate(rows, start=1):
        axes[0, col].imshow(label2rgb(auto, shown, alpha=0.4, bg_label=0))
        axes[0, col].set_title(f"{title}: automatic, F1 {f1:.2f}")
        axes[1, col].imshow(label2rgb(clicks, shown, alpha=0.4, bg_label=0))
        axes[1, col].set_title(f"{title}: clicks, mIoU {miou:.2f}")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.savefig(args.out, dpi=80)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
