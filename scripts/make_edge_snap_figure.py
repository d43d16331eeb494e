"""Draw benchmarks/figures/edge_snap.png: what the built-in model's edge snapping does.

Top row: a few objects of evaluation images clicked at their most interior
pixel through the plugin's ``PromptPipeline`` (the json's ``"zoom"``): the
ground truth (white), the final mask at SAM's logit 0 (red) and the snapped
mask (green), with the IoUs.  Bottom row, per kind of selection image (from
the json's ``"edge_snap_tuning"``, measured on selection seeds): the click
mIoU at every fixed threshold against the snapped one, and how often each
threshold was picked.

Usage: python scripts/make_edge_snap_figure.py [output.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import numpy as np
from scipy import ndimage as ndi

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from napari_sam.model.registry import load_model, recommended_zoom
from napari_sam.normalize import to_rgb_uint8
from napari_sam.predict.pipeline import PromptPipeline, PromptResult
from napari_sam.predict.zoom import interior_point
from napari_sam.synthetic import make_nuclei_image

HISTORY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "builtin_model_history.json"
EVAL_SEED = 1_001_000  # evaluation images of scripts/eval_builtin.py
#: (kind, seed offset, diameters in px, snapped thresholds) of the objects shown: in a seeded
#: random order, the first object of that size whose snapped threshold is in that range
#: (what snapping does when it acts, chosen without looking at the IoU: wins and losses)
EXAMPLES = (("nuclei", 10, (0, 12), (1, 3)), ("nuclei", 1, (12, 40), (1, 3)), ("cells", 20_000, (0, 999), (-1, -0.5)))


def _full_logits(zp: PromptPipeline, result: PromptResult, c: int) -> np.ndarray:
    """The logits output ``c`` was made from, at image pixels (-20 outside its zoom window)."""
    if result.window_logits[c] is None:
        return zp.upsample_logits(result.logits[c : c + 1])[0].numpy()
    (r0, c0, r1, c1), window = result.window_logits[c]
    full = np.full(result.masks.shape[1:], -20.0, np.float32)
    full[r0:r1, c0:c1] = window
    return full


def main(out: Path) -> None:
    model = load_model("builtin", device="cpu")
    zoom = recommended_zoom("builtin")
    lo, hi = zoom["edge_snap"]
    zp = PromptPipeline(model, device="cpu", **zoom)
    fig, axes = plt.subplots(2, len(EXAMPLES), figsize=(4 * len(EXAMPLES), 7.5))
    for j, (kind, offset, diameter, wanted) in enumerate(EXAMPLES):
        image, labels = make_nuclei_image((256, 256), kind=kind, seed=EVAL_SEED + offset)[:2]
        ids, sizes = np.unique(labels[labels > 0], return_counts=True)
        diameters = 2 * np.sqrt(sizes / np.pi)
        zp.set_image(image)
        grey = to_rgb_uint8(image).astype(np.float32).mean(axis=-1)
        gradient = ndi.gaussian_gradient_magnitude(grey, 1.0, mode="nearest")
        ts = np.arange(lo, hi + 1e-6, 0.25)
        for oid in np.random.default_rng(j).permutation(ids[(diameters >= diameter[0]) & (diameters < diameter[1])]):
            truth = labels == oid
            click = interior_point(truth)
            result = zp.predict(click[None], [1])
            masks, scores, _ = result
            best = int(np.argmax(scores))
            full = _full_logits(zp, result, best)
            edge, iou = [], []
            for t in ts:
                m = full > t
                boundary = m & ~ndi.binary_erosion(m, border_value=0)
                edge.append(gradient[boundary].mean() if boundary.any() else np.nan)
                iou.append((m & truth).sum() / max(1, (m | truth).sum()))
            pick = ts[int(np.nanargmax(edge))]
            if wanted[0] <= pick <= wanted[1]:
                break
        rows, cols = np.nonzero(truth)
        pad = max(8, int(0.8 * max(np.ptp(rows), np.ptp(cols))))
        r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, 256)
        c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, 256)
        ax = axes[0, j]
        ax.imshow(grey[r0:r1, c0:c1], cmap="gray")
        for m, color in ((truth, "white"), (full > 0, "red"), (masks[best], "lime")):
            ax.contour(m[r0:r1, c0:c1].astype(float), [0.5], colors=color, linewidths=1.4)
        ax.plot(click[1] - c0, click[0] - r0, "c+", ms=10, mew=2)
        snapped_iou = (masks[best] & truth).sum() / max(1, (masks[best] | truth).sum())
        d = 2 * np.sqrt(truth.sum() / np.pi)
        ax.set_title(f"{kind}, {d:.0f} px: IoU {iou[int(np.argmin(np.abs(ts)))]:.2f} at 0 (red), "
                     f"{snapped_iou:.2f} snapped (green)", fontsize=9)
        ax.axis("off")
    tuning = json.loads(HISTORY.read_text(encoding="utf-8"))["edge_snap_tuning"]
    runs = tuning["posthoc_selection_no_small_mask_rule"]
    for j, (name, title) in enumerate((("nuclei", "nuclei"), ("pool_kinds", "training-pool kinds"), ("cells", "cells"))):
        run = runs[name]
        ts = sorted(run["fixed_threshold_miou"], key=float)
        ax = axes[1, j]
        ax.plot([float(t) for t in ts], [run["fixed_threshold_miou"][t] for t in ts], "o-", ms=3,
                label="one fixed threshold for all masks")
        ax.axhline(run["snapped_miou"], color="green", label=f"snapped per mask: {run['snapped_miou']:.3f}")
        ax.axvline(0, color="red", lw=1, ls="--", label="SAM's threshold 0")
        ax.set_xlabel("logit threshold")
        ax.set_ylabel("click mIoU (selection)")
        ax.set_title(f"{title}, {run['clicks']} clicks (no small-mask rule)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        bars = ax.twinx()
        counts = run["snapped_threshold_counts"]
        bars.bar([float(t) for t in counts], [counts[t] / run["clicks"] for t in counts], width=0.2,
                 color="green", alpha=0.25)
        bars.set_ylabel("share of masks snapped there", fontsize=8)
        bars.set_ylim(0, 1)
    fig.suptitle("Edge snapping: each mask thresholded where its boundary lies on the strongest image edges",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=Path("benchmarks/figures/edge_snap.png"),
                        help="PNG to write (default: %(default)s)")
    main(parser.parse_args().output)
