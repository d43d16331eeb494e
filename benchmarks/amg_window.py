"""Automatic generation of one 1024² tile with the built-in model: whole-crop vs windowed upsampling.

Both variants run in the same process, in alternating rounds, on the model
card's recommended parameters (32 x 32 points, one crop layer) and a
synthetic 1024² nuclei image.  ``dense`` is the whole-crop path (every
candidate upsampled to its crop, as the official generator does), ``window``
the default path (:mod:`napari_sam.automatic._window`).  Prints wall and CPU
seconds per phase and the median ratio window/dense, and checks that both
return the same masks.

Usage::

    PYTHONPATH=src python benchmarks/amg_window.py --rounds 3 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import napari_sam.automatic._candidates as cand
    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.predict.factory import make_predictor
    from napari_sam.synthetic import make_nuclei_image

    image, _ = make_nuclei_image((args.size, args.size), seed=0)
    predictor = make_predictor("builtin", device="cpu")
    predictor = getattr(predictor, "predictor", predictor)
    geometry = cand._window_geometry
    variants = {"dense": lambda *a: None, "window": geometry}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    results = {}
    for r in range(args.rounds):
        for name, geo in (variants.items() if r % 2 == 0 else reversed(variants.items())):
            cand._window_geometry = geo
            gen = AutomaticMaskGenerator(predictor)
            t0, p0 = time.perf_counter(), time.process_time()
            results[name] = gen.generate(image)
            row = {"total": time.perf_counter() - t0, "total_cpu": time.process_time() - p0, **gen.timings}
            runs[name].append(row)
            print(f"round {r} {name:6s} total {row['total']:.1f} s, postprocess {row['postprocess']:.1f} s "
                  f"(cpu {row['postprocess_cpu']:.1f}), decoder {row['decoder']:.1f} s, {len(results[name])} masks")
    cand._window_geometry = geometry
    a, b = results["dense"], results["window"]
    same = len(a) == len(b) and all(
        x.bbox_rc == y.bbox_rc and np.array_equal(x.mask, y.mask) and x.stability_score == y.stability_score
        for x, y in zip(a, b))
    print(f"\nparams: {gen.amg}\nsame masks: {same} ({len(a)} vs {len(b)})")
    print("| figure | dense (s) | window (s) | ratio window/dense (median, spread) |\n|---|---|---|---|")
    for key in ("total", "total_cpu", "postprocess", "postprocess_cpu", "decoder", "decoder_cpu"):
        ratios = [w[key] / d[key] for d, w in zip(runs["dense"], runs["window"])]
        print(f"| {key} | {statistics.median(d[key] for d in runs['dense']):.2f} | "
              f"{statistics.median(w[key] for w in runs['window']):.2f} | "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
