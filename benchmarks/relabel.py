"""Relabelling a 2048 x 2048 label image with 3000 ids to 1..N: napari-sam's relabel_sequential
(skimage.util.map_array with the known ids) against skimage.segmentation.relabel_sequential and
the searchsorted lookup napari-sam used before, in alternating rounds.

    python benchmarks/relabel.py [--side 2048] [--ids 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def searchsorted_relabel(labels: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The previous hand-written lookup (baseline)."""
    present = np.unique(np.asarray(present, dtype=np.int64))
    present = present[present > 0]
    idx = np.minimum(np.searchsorted(present, labels), max(len(present) - 1, 0))
    found = (labels > 0) & (present[idx] == labels)
    return np.where(found, idx + 1, 0).astype(np.uint32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--ids", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from skimage.segmentation import relabel_sequential as skimage_relabel

    from napari_sam.automatic.labels import relabel_sequential

    rng = np.random.default_rng(0)
    labels = np.zeros((args.side, args.side), np.uint32)
    for i in np.sort(rng.choice(np.arange(1, 20 * args.ids), args.ids, replace=False)):
        r, c = rng.integers(0, args.side - 40, 2)
        labels[r:r + 40, c:c + 40] = i
    present = np.unique(labels)
    contenders = {
        "searchsorted (before)": lambda: searchsorted_relabel(labels, present),
        "skimage relabel_sequential": lambda: skimage_relabel(labels)[0],
        "napari-sam (map_array)": lambda: relabel_sequential(labels, present),
    }
    ref = skimage_relabel(labels)[0]
    assert all(np.array_equal(f(), ref) for f in contenders.values())
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(args.rounds):
        for name in (list(contenders) if r % 2 == 0 else list(reversed(contenders))):
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["searchsorted (before)"])
    print(f"{args.side}^2 uint32, {present.size - 1} ids, {args.rounds} rounds")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:28s} {med * 1000:8.1f} ms  (spread {(max(values) - min(values)) * 1000:.1f})  "
              f"{med / base:.2f}x the previous time")


if __name__ == "__main__":
    main()
