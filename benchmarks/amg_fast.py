"""Automatic generation of one 1024² tile: each speed-up switched off vs all on, same run.

Variants run in the same process, in alternating rounds, on one synthetic
1024² nuclei image:

* ``all``: the default code path;
* ``no-groups``: every ``points_per_batch`` prompt set decoded in one group
  (:data:`napari_sam.model.mask_decoder.PROMPT_GROUP_BYTES` unlimited);
* ``no-gate``: every point's masks upscaled, also where no mask passes the
  IoU floor (automatic generation's ``min_score`` off);
* ``baseline``: both off;
* ``plain-post``: post-processing's switchable fast paths off (windowed
  resizes through ``F.interpolate`` instead of the direct kernel call; box
  NMS comparing each kept box with every box).

Prints wall and CPU seconds per phase per variant, the median per-round
ratio to ``baseline``, and checks that every variant returns the same masks.

Usage::

    PYTHONPATH=src python benchmarks/amg_fast.py --rounds 3 --threads 1
    PYTHONPATH=src python benchmarks/amg_fast.py --model vit_b --points 32 --official-thresholds
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch


@contextlib.contextmanager
def variant(name: str):
    """Switch the speed-ups named off by ``name`` for the duration of the block."""
    import importlib

    import napari_sam.automatic._candidates as cand
    import napari_sam.automatic._window as win
    import napari_sam.model.mask_decoder as md

    nms_mod = importlib.import_module("napari_sam.automatic.nms")  # the package exports a function of that name
    gen_mod = importlib.import_module("napari_sam.automatic.generator")
    reg_mod = importlib.import_module("napari_sam.automatic.regions")
    group, gates, resize, nms = md.PROMPT_GROUP_BYTES, cand._gates_masks, win._resize, nms_mod.nms
    if name in ("no-groups", "baseline"):
        md.PROMPT_GROUP_BYTES = 1 << 62
    if name.startswith("groups-") and name.endswith("mb"):  # e.g. groups-4mb: another group budget
        md.PROMPT_GROUP_BYTES = int(name[7:-2]) * 2**20
    if name in ("no-gate", "baseline"):
        cand._gates_masks = lambda predictor: False
    if name == "plain-post":
        def plain_nms(boxes, scores, thresh):
            b = nms_mod._inclusive(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)).astype(np.float32)
            return nms_mod._nms_all(b, np.argsort(-np.asarray(scores).reshape(-1), kind="stable"), thresh)

        win._resize, gen_mod.nms, reg_mod.nms = win._interpolate, plain_nms, plain_nms
    try:
        yield
    finally:
        md.PROMPT_GROUP_BYTES, cand._gates_masks, win._resize = group, gates, resize
        gen_mod.nms = reg_mod.nms = nms


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.bbox_rc == y.bbox_rc and np.array_equal(x.mask, y.mask) and x.stability_score == y.stability_score
        and x.predicted_iou == y.predicted_iou for x, y in zip(a, b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--model", default="builtin", help="builtin (its card's parameters) or vit_b / vit_t "
                    "(random weights, seed 0)")
    ap.add_argument("--points", type=int, default=None, help="points per side (default: the card's)")
    ap.add_argument("--official-thresholds", action="store_true", help="SAM's defaults instead of the card's")
    ap.add_argument("--variants", default="baseline,all",
                    help="comma-separated: baseline, no-groups, no-gate, all, groups-<N>mb, plain-post")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_sam.automatic.defaults import SAM_DEFAULTS
    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.synthetic import make_nuclei_image

    image, _ = make_nuclei_image((args.size, args.size), seed=0)
    if args.model == "builtin":
        from napari_sam.predict.factory import make_predictor

        predictor = make_predictor("builtin", device="cpu")
        predictor = getattr(predictor, "predictor", predictor)
    else:
        from napari_sam.model import build_model
        from napari_sam.predict.predictor import Predictor

        torch.manual_seed(0)
        predictor = Predictor(build_model(args.model).eval(), device="cpu")
    kw = dict(SAM_DEFAULTS) if args.official_thresholds else {}
    if args.points is not None:
        kw["points_per_side"] = args.points
    names = args.variants.split(",")
    runs: dict[str, list[dict]] = {k: [] for k in names}
    results = {}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            gen = AutomaticMaskGenerator(predictor, **kw)
            with variant(name):
                t0, p0 = time.perf_counter(), time.process_time()
                results[name] = gen.generate(image)
                row = {"total": time.perf_counter() - t0, "total_cpu": time.process_time() - p0, **gen.timings}
            runs[name].append(row)
            print(f"round {r} {name:9s} total {row['total']:.1f} s (cpu {row['total_cpu']:.1f}), "
                  f"decoder {row['decoder']:.1f} s (cpu {row['decoder_cpu']:.1f}), "
                  f"postprocess {row['postprocess']:.1f} s, {len(results[name])} masks", flush=True)
    ok = all(same(results[names[0]], results[n]) for n in names[1:])
    print(f"\nparams: {gen.amg}\nsame masks in every variant: {ok} ({len(results[names[0]])} masks)")
    base = names[0]
    print(f"| figure | variant | median (s) | ratio to {base} (median, spread) |\n|---|---|---|---|")
    for key in ("total", "total_cpu", "decoder", "decoder_cpu", "postprocess", "postprocess_cpu"):
        for name in names:
            ratios = [w[key] / d[key] for d, w in zip(runs[base], runs[name])]
            print(f"| {key} | {name} | {statistics.median(x[key] for x in runs[name]):.2f} | "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
