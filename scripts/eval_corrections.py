"""Mean IoU after 1..N clicks with the built-in model (SAM's interactive protocol).

First click: an interior pixel of each object (``sample_point_prompts``, seed =
image index), the best of three masks of the plugin's ``PromptPipeline``.  Each
further click: the pixel deepest inside the larger error region of the current
mask (positive where the mask missed, negative where it took too much), sent
with all earlier clicks and the current mask's logits as ``mask_input`` (one
output): what the plugin sends when a point is added.  Compared: the shipped
zoom (``local_correction`` from the json) and the same without it.

Usage::

    OMP_NUM_THREADS=1 python scripts/eval_corrections.py --kind nuclei \\
        --seeds 1700003 1700004 1700005 --out nuclei.json
    python scripts/eval_corrections.py --plot nuclei.json cells.json --png docs/images/corrections_curve.png
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from napari_sam.model.registry import load_model, recommended_zoom
from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.synthetic import make_nuclei_image, sample_point_prompts
from napari_sam.training.evaluate import _iou, correction_click


def ious_by_click(zp: PromptPipeline, kind: str, seeds: list[int], clicks: int) -> np.ndarray:
    """``(objects, clicks)`` IoU after each click (an exact mask stays exact)."""
    rows = []
    for i, seed in enumerate(seeds):
        image, lab = make_nuclei_image((256, 256), kind=kind, seed=seed)
        zp.set_image(image)
        points, _, ids = sample_point_prompts(lab, seed=i)
        for p, oid in zip(points, ids):
            truth = lab == oid
            pts, labels = np.asarray(p, float).reshape(1, 2), np.array([1])
            result = zp.predict(pts, labels, multimask=True)
            best = int(np.argmax(result.scores))
            mask, previous = result.masks[best], result.previous(best)
            row = [_iou(mask, truth)]
            for _ in range(clicks - 1):
                q, label = correction_click(mask, truth)
                if q is not None:
                    pts, labels = np.vstack([pts, q[None]]), np.append(labels, label)
                    result = zp.predict(pts, labels, previous=previous, multimask=False)
                    mask, previous = result.masks[0], result.previous(0)
                row.append(_iou(mask, truth))
            rows.append(row)
    return np.array(rows)


def plot(paths: list[str], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(paths), figsize=(4.2 * len(paths), 3.4), squeeze=False)
    for ax, path in zip(axes[0], paths):
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        for name, style in (("shipped", "g-o"), ("without_local_correction", "r--s")):
            values = res[name]
            ax.plot(range(1, len(values) + 1), values, style, label=name.replace("_", " "))
        ax.set_title(f"{res['kind']} {res['seeds'][0]}-{res['seeds'][-1] % 100} ({res['objects']} objects)", fontsize=10)
        ax.set_xlabel("clicks")
        ax.set_ylabel("mean IoU")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"wrote {png}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="nuclei", help="make_nuclei_image kind (nuclei, cells, ...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1_700_003, 1_700_004, 1_700_005])
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--out", help="JSON file for the results")
    parser.add_argument("--plot", nargs="+", help="draw these result files instead of evaluating")
    parser.add_argument("--png", default="docs/images/corrections_curve.png")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot, args.png)
        return 0
    torch.set_num_threads(1)
    model = load_model("builtin", device="cpu")
    zoom = recommended_zoom("builtin")
    res = {"kind": args.kind, "seeds": args.seeds}
    for name, extra in (("shipped", {}), ("without_local_correction", {"local_correction": None})):
        ious = ious_by_click(PromptPipeline(model, device="cpu", **{**zoom, **extra}), args.kind, args.seeds, args.clicks)
        res[name] = ious.mean(0).round(4).tolist()
        res["objects"] = len(ious)
    print(json.dumps(res))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
