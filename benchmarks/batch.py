"""Benchmark of the batch pipeline: slices/s, peak RSS, and pipeline overhead vs model time.

The SAM model is replaced by a stand-in of known cost: it labels the slice by
thresholding (so real labels are written) and then sleeps until ``--model-seconds``
have passed.  Everything else is the real pipeline (lazy zarr input, contrast
limits for the volume, per-slice tasks, uint32 zarr output with done markers,
the final compaction pass).  Overhead = (wall time - time inside the stand-in)
/ time inside the stand-in.

Peak RSS is measured in a fresh subprocess per run; the volume is run at two
depths (Z and 2 Z) to show that memory does not grow with the number of slices.

    python benchmarks/batch.py                              # 16 x 2048 x 2048 uint16 (and 8 x ...)
    python benchmarks/batch.py --shape 64 4096 4096         # the 2 GB case
    python benchmarks/batch.py --shape 8 1024 1024 --model-seconds 1
    python benchmarks/batch.py --memory                     # peak RSS on one 2048^2, 8192^2, 16384^2 image

``--memory`` labels single 2-D images with a cheap stand-in predictor (per tile:
threshold + connected components as mask records, then the real stitching and
label writing of :mod:`napari_sam.tiled`), each size in a fresh subprocess, and
reports the peak RSS of that subprocess (``RUSAGE_CHILDREN``).  ``--in-memory``
gives the stand-in no ``out=`` so the batch path holds the whole slice (the
behaviour before labels were streamed).
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

# the --memory stand-in and its image are shared with tests/test_batch_memory.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_batch_standins import tiled_threshold_segment as standin_tiled  # noqa: E402
from test_batch_standins import write_blob_image as make_image  # noqa: E402

_SPENT = {"seconds": 0.0, "cpu": 0.0, "calls": 0}


def standin_segment(image, *, channel_axis=None, contrast_limits=None, model_seconds: float = 1.0):
    """Threshold + connected components, padded with sleep to ``model_seconds`` per call."""
    from skimage.measure import label

    start, cpu = time.perf_counter(), time.thread_time()
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.asarray(contrast_limits, dtype=np.float64).reshape(-1, 2)[0]
    labels = label(img > (lo + hi) / 2, connectivity=1).astype(np.uint32)
    _SPENT["cpu"] += time.thread_time() - cpu
    left = model_seconds - (time.perf_counter() - start)
    if left > 0:
        time.sleep(left)
    _SPENT["seconds"] += time.perf_counter() - start
    _SPENT["calls"] += 1
    return labels


def make_volume(path: Path, shape: tuple[int, int, int], chunk: int) -> None:
    """A uint16 nuclei-like volume written slice by slice (never whole in memory)."""
    import zarr

    z, y, x = shape
    rng = np.random.default_rng(0)
    arr = zarr.create_array(store=str(path), shape=shape, chunks=(1, min(chunk, y), min(chunk, x)),
                            dtype="uint16")
    yy, xx = np.mgrid[0:y, 0:x].astype(np.float32)
    for k in range(z):
        phase = rng.uniform(0, 2 * np.pi, 2)
        blobs = np.sin(yy / 23.0 + phase[0]) * np.sin(xx / 29.0 + phase[1])
        noise = rng.normal(0, 0.02, size=(y, x)).astype(np.float32)
        arr[k] = np.clip((blobs + noise) * 20000 + 25000, 0, 65535).astype(np.uint16)


def run_once(src: Path, model_seconds: float, workers: int) -> dict:
    """One measured run in this process (called in a fresh subprocess by ``main``)."""
    import functools

    from napari_sam.volume.batch import segment_volume
    from napari_sam.volume.io import open_image

    shape = tuple(open_image(src)[0].shape)
    with tempfile.TemporaryDirectory() as tmp:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn = functools.partial(standin_segment, model_seconds=model_seconds)
        first = open_image(src)[0][:1]  # warm-up on one slice: imports and first-call costs
        segment_volume(first, Path(tmp) / "warmup.zarr", axes="ZYX", segment_fn=fn, workers=workers)
        _SPENT.update(seconds=0.0, cpu=0.0, calls=0)
        start, cpu0 = time.perf_counter(), os.times()
        out = segment_volume(src, Path(tmp) / "labels.zarr", segment_fn=fn, workers=workers)
        wall, cpu1 = time.perf_counter() - start, os.times()
        process_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        n_labels = int(out[0].max().compute())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    model = _SPENT["seconds"]
    slice_mib = shape[1] * shape[2] * 2 / 2**20
    return {"shape": list(shape), "wall_s": round(wall, 2), "slices_per_s": round(shape[0] / wall, 3),
            "model_s": round(model, 2), "overhead_fraction": round((wall - model / workers) / (model / workers), 4),
            "pipeline_cpu_s": round(process_cpu - _SPENT["cpu"], 2),
            "cpu_overhead_fraction": round((process_cpu - _SPENT["cpu"]) / model, 4),
            "peak_rss_mib": round(peak / 1024, 1), "rss_before_run_mib": round(rss_before / 1024, 1),
            "input_slice_mib": round(slice_mib, 1), "volume_mib": round(slice_mib * shape[0], 1),
            "labels_in_slice0": n_labels}


def standin_in_memory(image, *, channel_axis=None, contrast_limits=None):
    """:func:`standin_tiled` (tests/test_batch_standins.py) without ``out=``: the batch path holds the slice."""
    return standin_tiled(image, channel_axis=channel_axis, contrast_limits=contrast_limits)


def memory_once(src: Path, in_memory: bool) -> dict:
    """One single-image run in this (fresh) process; the parent reads its peak RSS."""
    from napari_sam.volume.batch import segment_volume

    fn = standin_in_memory if in_memory else standin_tiled
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        segment_volume(str(src), Path(tmp) / "labels.zarr", segment_fn=fn, contrast_limits=[[0, 255]],
                       tile_shape=1024, compact=False)
        return {"wall_s": round(time.perf_counter() - start, 1)}


def memory_cases(sides: list[int], in_memory: bool) -> list[dict]:
    """Peak RSS of one fresh subprocess per image side."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in sorted(sides):  # ru_maxrss of children is a running maximum: ascending sizes
            src = Path(tmp) / f"image_{side}.zarr"
            make_image(src, side)
            cmd = [sys.executable, __file__, "--memory-run", str(src)] + (["--in-memory"] if in_memory else [])
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over finished children
            row = {"side": side, "peak_rss_mib": round(peak / 1024, 1), "in_memory": in_memory,
                   "bytes_per_pixel": round(peak * 1024 / side**2, 2),
                   "max_rss_grew": peak > before, **json.loads(res.stdout.strip().splitlines()[-1])}
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


def time_real_model(shape: tuple[int, int], model: str, points_per_side: int) -> tuple[float, float, int]:
    """Real SAM path (random weights of ``model``) on ONE tile of a ``shape`` slice.

    Returns ``(wall seconds, CPU seconds, tiles per slice)``: a slice costs about
    ``tiles per slice`` times one tile (every tile runs the encoder and the grid).
    """
    import torch

    from napari_sam.tiled.tiles import tile_grid
    from napari_sam.volume.batch import DEFAULT_TILE, default_tiles, sam_segment

    torch.manual_seed(0)
    tile, halo = default_tiles(shape[0], shape[1], None, None)
    n_tiles = len(tile_grid(shape, tile, halo or 0)) if tile else 1
    side = (min(shape[0], DEFAULT_TILE), min(shape[1], DEFAULT_TILE))
    image = np.random.default_rng(0).integers(0, 65535, size=side, dtype=np.uint16)
    start, cpu = time.perf_counter(), os.times()
    sam_segment(image, channel_axis=None, contrast_limits=np.array([[0.0, 65535.0]]), model=model,
                amg_params={"points_per_side": points_per_side})
    end = os.times()
    return time.perf_counter() - start, (end.user - cpu.user) + (end.system - cpu.system), n_tiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 2048, 2048], metavar=("Z", "Y", "X"))
    parser.add_argument("--model-seconds", type=float, default=2.0,
                        help="cost of the stand-in model per slice (real SAM on a 2048^2 slice costs more)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="peak RSS on single 2-D images (see above)")
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 8192, 16384], help="image sides for --memory")
    parser.add_argument("--in-memory", action="store_true", help="--memory with the non-streaming path")
    parser.add_argument("--memory-run", help=argparse.SUPPRESS)  # internal: one --memory case
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: measure one run on this input
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--real-model", help="also time the real SAM path on one slice with random weights of "
                        "this model (a registry name such as vit_t or vit_b, or a config .json)")
    parser.add_argument("--points-per-side", type=int, default=16,
                        help="AMG grid for --real-model (SAM's default is 32: about 4x the decoding time)")
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    if args.memory_run:
        print(json.dumps(memory_once(Path(args.memory_run), args.in_memory)))
        return 0
    if args.memory:
        results = memory_cases(args.sides, args.in_memory)
        peaks = [r["peak_rss_mib"] for r in results]
        print(f"peak RSS {peaks} MiB for sides {args.sides}: largest/smallest {max(peaks) / min(peaks):.2f}x "
              "(goal: within 1.5x and under 2048 MiB)")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    if args.run:
        print(json.dumps(run_once(Path(args.run), args.model_seconds, args.workers)))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for z in (max(1, shape[0] // 2), shape[0]):
            src = Path(tmp) / f"volume_{z}.zarr"
            make_volume(src, (z, shape[1], shape[2]), 1024)  # in this process: not in the measured RSS
            cmd = [sys.executable, __file__, "--run", str(src), "--model-seconds", str(args.model_seconds),
                   "--workers", str(args.workers)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]))
    small, big = results
    print(f"slices/s: {big['slices_per_s']} at {tuple(big['shape'])}; pipeline overhead "
          f"{100 * big['overhead_fraction']:.1f}% of model time in wall time, pipeline CPU "
          f"{100 * big['cpu_overhead_fraction']:.1f}% of model time (target < 10%)")
    print(f"peak RSS: {small['peak_rss_mib']} MiB for Z={small['shape'][0]}, {big['peak_rss_mib']} MiB for "
          f"Z={big['shape'][0]} (volume {big['volume_mib']} MiB, one slice {big['input_slice_mib']} MiB)")
    if args.real_model:
        from napari_sam.volume.source import worker_predictor

        model = args.real_model
        if not model.endswith(".json"):  # random weights of a registry architecture: no download
            from napari_sam.model.registry import get_config

            model = str(Path(tempfile.mkdtemp()) / f"{args.real_model}.json")
            Path(model).write_text(json.dumps(get_config(args.real_model)))
        worker_predictor(model, None, None)  # model construction is not per-slice cost
        wall, cpu, n_tiles = time_real_model(shape[1:], model, args.points_per_side)
        per_slice = (big["wall_s"] - big["model_s"]) / big["shape"][0]
        cpu_per_slice = big["pipeline_cpu_s"] / big["shape"][0]
        results.append({"real_model": args.real_model, "points_per_side": args.points_per_side,
                        "real_tile_wall_s": round(wall, 2), "real_tile_cpu_s": round(cpu, 2),
                        "tiles_per_slice": n_tiles, "pipeline_wall_s_per_slice": round(per_slice, 3),
                        "pipeline_cpu_s_per_slice": round(cpu_per_slice, 3),
                        "overhead_vs_real_model_wall": round(per_slice / (wall * n_tiles), 4),
                        "overhead_vs_real_model_cpu": round(cpu_per_slice / (cpu * n_tiles), 4)})
        print(json.dumps(results[-1]))
        print(f"real {args.real_model} (random weights, {args.points_per_side}^2 points): {wall:.1f} s wall / "
              f"{cpu:.1f} s CPU per tile, {n_tiles} tile(s) per slice; pipeline overhead "
              f"{100 * per_slice / (wall * n_tiles):.2f}% (wall) / {100 * cpu_per_slice / (cpu * n_tiles):.2f}% "
              "(CPU) of the real model time")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
