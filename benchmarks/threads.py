"""Threads per slice on a 2-worker dask.distributed LocalCluster: the default against explicit settings.

Runs ``segment_volume`` with the built-in model on a small synthetic stack on a
LocalCluster of two worker processes (one thread each), with ``threads=None``
(the default: one torch thread per worker thread), ``threads=1`` and
``threads=2``, in alternating rounds after one warm-up round (model loading).
It also runs the local threads scheduler with two workers, the default against
``threads=2`` (each of the two slices running in parallel asking for every core).
Prints one table: setting, median seconds per slice, spread, ratio to the best
explicit setting.

    python benchmarks/threads.py                # 4 slices of 256 x 256, 2 rounds
    python benchmarks/threads.py --slices 8 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_stack(n: int, side: int) -> np.ndarray:
    from napari_sam.synthetic import make_nuclei_image

    return np.stack([make_nuclei_image((side, side), seed=k)[0] for k in range(n)])


def run_once(stack: np.ndarray, out: Path, *, threads, scheduler, workers, amg: dict) -> float:
    from napari_sam.volume.batch import segment_volume

    start = time.perf_counter()
    segment_volume(stack, out, model="builtin", axes="ZYX", overwrite=out.exists(), threads=threads,
                   scheduler=scheduler, workers=workers, **amg)
    return (time.perf_counter() - start) / len(stack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--points-per-side", type=int, default=16)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    amg = {"points_per_side": args.points_per_side, "crop_n_layers": 0}
    stack = make_stack(args.slices, args.side)
    settings = {"cluster default": None, "cluster threads=1": 1, "cluster threads=2": 2}
    local = {"local 2 workers default": None, "local 2 workers threads=2": 2}
    times: dict[str, list[float]] = {name: [] for name in [*settings, *local]}
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        out = Path(tmp) / "labels.zarr"
        run_once(stack, out, threads=None, scheduler=client, workers=None, amg=amg)  # warm-up: load the model
        run_once(stack, out, threads=None, scheduler="threads", workers=2, amg=amg)
        for r in range(args.rounds):
            order = list(settings) if r % 2 == 0 else list(reversed(settings))
            for name in order:
                times[name].append(run_once(stack, out, threads=settings[name], scheduler=client, workers=None,
                                            amg=amg))
            order = list(local) if r % 2 == 0 else list(reversed(local))
            for name in order:
                times[name].append(run_once(stack, out, threads=local[name], scheduler="threads", workers=2,
                                            amg=amg))
    best_cluster = min(statistics.median(times[n]) for n in settings if settings[n] is not None)
    print(f"{args.slices} slices of {args.side}^2, built-in model, {amg}, {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs")
    print(f"{'setting':30s} {'s/slice':>8s} {'spread':>8s} {'vs best explicit (cluster)':>27s}")
    for name, values in times.items():
        med = statistics.median(values)
        spread = max(values) - min(values)
        print(f"{name:30s} {med:8.3f} {spread:8.3f} {med / best_cluster:27.2f}")


if __name__ == "__main__":
    main()
