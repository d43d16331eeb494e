"""Benchmark of automatic mask generation (AMG) and of tiled segmentation memory.

Speed: seconds per 1024 x 1024 image for each model (random weights, built
with ``build_model``) and grid size, split into encoder / decoder /
post-processing, for two threshold settings:

* ``default``: the official thresholds (pred_iou 0.88, stability 0.95).  With
  random weights few masks pass the IoU filter, so little is upsampled.
* ``all``: both thresholds 0 -- every one of the 3 x N masks is upsampled and
  post-processed: the worst case, closer to a trained model's load.

If the official ``segment_anything`` package is importable it is timed in the
same run; otherwise results are compared with the issue's reference: the
official generator took 144 s for a 16 x 16 grid on one 1024 x 1024 image,
vit_b random weights, 2 threads (target: >= 3x faster).

Memory (``--large``): peak RSS of a child process that segments a
``--size`` x ``--size`` uint16 zarr image tile by tile into a zarr label
array (target < 3 GB whatever the size).

Usage::

    python benchmarks/amg.py                      # vit_t and vit_b, 16x16 and 32x32 grids
    python benchmarks/amg.py --models vit_t --points 32
    python benchmarks/amg.py --large --size 8192  # peak RSS, tiled from zarr
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OFFICIAL_REFERENCE_S = 144.0  # issue 3: official generator, vit_b random weights, 16x16 grid, 2 threads
THRESHOLDS = {
    "default": {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95},
    "all": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
}


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB test image with bright discs on a noisy background."""
    rng = np.random.default_rng(seed)
    img = rng.normal(40, 10, size=(size, size)).astype(np.float32)
    rr, cc = np.ogrid[:size, :size]
    for _ in range(max(1, size * size // 6000)):
        r, c, rad = rng.integers(0, size), rng.integers(0, size), rng.integers(6, 30)
        img[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] = rng.uniform(120, 250)
    g = np.clip(img, 0, 255).astype(np.uint8)
    return np.stack([g, g, g], axis=-1)


def time_ours(model_name: str, n_side: int, thresholds: dict, image: np.ndarray) -> dict:
    import torch

    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.model import build_model
    from napari_sam.predict.predictor import Predictor

    torch.manual_seed(0)
    predictor = Predictor(build_model(model_name).eval())
    gen = AutomaticMaskGenerator(predictor, points_per_side=n_side, **thresholds)
    t0, c0 = time.perf_counter(), time.process_time()
    records = gen.generate(image)
    total = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {
        "impl": "napari-sam",
        "model": model_name,
        "points_per_side": n_side,
        "thresholds": thresholds,
        "total_s": round(total, 2),
        **{f"{k}_s": round(v, 2) for k, v in gen.timings.items()},
        # CPU seconds of this process; / threads ~ wall time on an otherwise idle machine
        "cpu_s": round(cpu, 2),
        "n_masks": len(records),
    }


def time_official(model_name: str, n_side: int, thresholds: dict, image: np.ndarray) -> dict | None:
    try:
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry  # type: ignore
    except ImportError:
        return None
    import torch

    torch.manual_seed(0)
    sam = sam_model_registry[model_name](checkpoint=None).eval()
    gen = SamAutomaticMaskGenerator(sam, points_per_side=n_side, **thresholds)
    t0, c0 = time.perf_counter(), time.process_time()
    masks = gen.generate(image)
    return {
        "cpu_s": round(time.process_time() - c0, 2),
        "impl": "official segment_anything",
        "model": model_name,
        "points_per_side": n_side,
        "thresholds": thresholds,
        "total_s": round(time.perf_counter() - t0, 2),
        "n_masks": len(masks),
    }


def run_speed(args: argparse.Namespace) -> list[dict]:
    import torch

    torch.set_num_threads(args.threads)
    image = synthetic_image(1024)
    results = []
    have_official = True
    for model_name in args.models.split(","):
        for n_side in (int(p) for p in args.points.split(",")):
            for label in args.thresholds.split(","):
                res = time_ours(model_name, n_side, THRESHOLDS[label], image)
                res["threshold_set"] = label
                print(json.dumps(res), flush=True)
                results.append(res)
                if have_official and model_name != "vit_t":
                    off = time_official(model_name, n_side, THRESHOLDS[label], image)
                    if off is None:
                        have_official = False
                    else:
                        off["threshold_set"] = label
                        print(json.dumps(off), flush=True)
                        results.append(off)
    if not have_official:
        print(
            f"\nsegment_anything is not importable: compare with the issue's reference "
            f"(official generator, vit_b random weights, 16x16 grid, 2 threads): {OFFICIAL_REFERENCE_S:.0f} s, "
            f"target >= 3x faster (<= {OFFICIAL_REFERENCE_S / 3:.0f} s)."
        )
        for r in results:
            if r["model"] == "vit_b" and r["points_per_side"] == 16:
                idle = r["cpu_s"] / args.threads  # wall time if both threads had the CPU to themselves
                print(
                    f"  vit_b 16x16 [{r['threshold_set']}]: wall {r['total_s']:.1f} s "
                    f"({OFFICIAL_REFERENCE_S / r['total_s']:.1f}x the reference); CPU {r['cpu_s']:.1f} s, "
                    f"i.e. {idle:.1f}-{r['cpu_s']:.1f} s on {args.threads} idle threads "
                    f"({OFFICIAL_REFERENCE_S / r['cpu_s']:.1f}x-{OFFICIAL_REFERENCE_S / idle:.1f}x). "
                    "Wall time is only comparable on an otherwise idle machine."
                )
    return results


# ----------------------------------------------------------------------------- memory


def _make_large_zarr(path: Path, size: int, chunk: int) -> None:
    import zarr

    arr = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(chunk, chunk), dtype="uint16")
    rng = np.random.default_rng(0)
    rr, cc = np.ogrid[:chunk, :chunk]
    for r0 in range(0, size, chunk):
        for c0 in range(0, size, chunk):
            h, w = min(chunk, size - r0), min(chunk, size - c0)
            block = rng.normal(1000, 50, size=(chunk, chunk))
            for _ in range(20):
                r, c, rad = rng.integers(0, chunk), rng.integers(0, chunk), rng.integers(5, 25)
                block[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] += 20000
            arr[r0 : r0 + h, c0 : c0 + w] = block[:h, :w].astype(np.uint16)


def _large_child(args: argparse.Namespace) -> None:
    """Runs in a fresh process so that ru_maxrss measures only the segmentation."""
    import torch
    import zarr

    from napari_sam.model import build_model
    from napari_sam.predict.predictor import Predictor
    from napari_sam.tiled.tiles import segment_image

    torch.set_num_threads(args.threads)
    image = zarr.open_array(args.child_image, mode="r")
    out = zarr.open_array(
        args.child_out, mode="w", shape=image.shape, chunks=(args.tile, args.tile), dtype="uint32"
    )
    torch.manual_seed(0)
    if args.large_model == "builtin":  # the shipped weights (a tiny, fast model: memory of the pipeline itself)
        from napari_sam.model.registry import load_model

        predictor = Predictor(load_model("builtin", device="cpu"))
    else:
        predictor = Predictor(build_model(args.large_model).eval())
    tiles = -(-image.shape[0] // args.tile) * -(-image.shape[1] // args.tile)
    t0 = time.perf_counter()

    def progress(done: int, total: int, desc: str) -> None:
        if done == total or done % max(1, total // 20) == 0:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  {done}/{total} {desc}  peak RSS so far {rss:.0f} MiB", file=sys.stderr, flush=True)

    segment_image(
        image,
        predictor,
        tile_shape=args.tile,
        halo=args.halo,
        out=out,
        progress=progress,
        points_per_side=args.large_points,
        pred_iou_thresh=0.0,  # keep many masks: a pessimistic memory load
        stability_score_thresh=0.0,
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "size": image.shape[0],
                "tiles": tiles,
                "tile": args.tile,
                "halo": args.halo,
                "model": args.large_model,
                "points_per_side": args.large_points,
                "seconds": round(time.perf_counter() - t0, 1),
                "peak_rss_mib": round(peak),
                "n_labels": int(max(int(np.asarray(out[r : r + args.tile]).max()) for r in range(0, image.shape[0], args.tile))),
            }
        ),
        flush=True,
    )


def run_large(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        img = Path(tmp) / "image.zarr"
        t0 = time.perf_counter()
        _make_large_zarr(img, args.size, args.tile)
        print(f"wrote {args.size}x{args.size} uint16 zarr in {time.perf_counter() - t0:.0f} s", flush=True)
        cmd = [
            sys.executable, __file__, "--child-image", str(img), "--child-out", str(Path(tmp) / "labels.zarr"),
            "--tile", str(args.tile), "--halo", str(args.halo), "--large-model", args.large_model,
            "--large-points", str(args.large_points), "--threads", str(args.threads),
        ]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        sys.stderr.write(proc.stderr)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        verdict = "meets" if result["peak_rss_mib"] < 3 * 1024 else "MISSES"
        print(f"peak RSS {result['peak_rss_mib']} MiB {verdict} the < 3 GB target", flush=True)
        return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vit_t,vit_b", help="comma-separated build_model names")
    p.add_argument("--points", default="16,32", help="comma-separated points_per_side values")
    p.add_argument("--thresholds", default="default,all", help="threshold sets: default, all")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the reference used 2)")
    p.add_argument("--large", action="store_true", help="measure peak RSS of a tiled run from zarr")
    p.add_argument("--size", type=int, default=20000, help="side of the large image")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--large-model", default="vit_t")
    p.add_argument("--large-points", type=int, default=8)
    p.add_argument("--tmp", default=None, help="folder for the temporary zarr arrays")
    p.add_argument("--json", default=None, help="write all results to this file")
    p.add_argument("--child-image", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_image:
        _large_child(args)
        return
    results: dict = {"cpu_count": os.cpu_count(), "threads": args.threads}
    if args.large:
        results["large"] = run_large(args)
    else:
        results["speed"] = run_speed(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
