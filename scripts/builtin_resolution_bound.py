"""Upper bound of mask IoU set by the low-resolution mask size alone (no model).

For every object of the held-out nuclei images the ground truth is turned into
the best possible low-resolution logit map (area-averaged fraction -> logit),
upsampled as ``Predictor`` does (bilinear) and thresholded at 0.  The mean IoU
with the ground truth is what a perfect model could reach at that mask
resolution.  Used to choose the built-in model's patch size
(docs/builtin-model.md): 64 x 64 masks (16 px patches) cap a 256 x 256 image's
nuclei below the 0.85 target, 128 x 128 (8 px patches) do not.

Usage::

    python scripts/builtin_resolution_bound.py --n-images 8
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from builtin_recipe import VAL_SEED_START

from napari_sam.synthetic import make_nuclei_image

EVAL_SEED_START = VAL_SEED_START + 1000  # the evaluation seeds of scripts/eval_builtin.py


def bound(n_images: int, low_res: int, size: int = 256) -> dict[str, tuple[float, int]]:
    """Mean IoU of the ideal ``low_res`` logit map, overall and by object diameter."""
    factor = size // low_res
    bins = {"< 10 px": (0, 10), "10-20 px": (10, 20), ">= 20 px": (20, 10**6)}
    ious: dict[str, list[float]] = {"all": [], **{k: [] for k in bins}}
    for i in range(n_images):
        _, labels = make_nuclei_image((size, size), kind="nuclei", seed=EVAL_SEED_START + i)
        for obj in np.unique(labels)[1:]:
            gt = torch.from_numpy(labels == obj)
            frac = F.avg_pool2d(gt.float()[None, None], factor).clamp(1e-3, 1 - 1e-3)
            logits = torch.log(frac / (1 - frac))
            up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)[0, 0] > 0
            iou = float((up & gt).sum() / (up | gt).sum())
            diameter = 2 * np.sqrt(float(gt.sum()) / np.pi)
            ious["all"].append(iou)
            for name, (lo, hi) in bins.items():
                if lo <= diameter < hi:
                    ious[name].append(iou)
    return {k: (float(np.mean(v)), len(v)) for k, v in ious.items() if v}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=8)
    args = p.parse_args(argv)
    for low_res, patch in ((64, 16), (128, 8)):
        result = bound(args.n_images, low_res)
        cells = ", ".join(f"{k}: {v:.3f} ({n})" for k, (v, n) in result.items())
        print(f"{low_res} x {low_res} masks ({patch} px patches at 256): {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
