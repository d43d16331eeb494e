"""Benchmark: interactive prompts on large images in the plugin's session (no Qt).

For each size (default 4096 and 8192 px squares of synthetic nuclei,
:func:`napari_sam.synthetic.make_nuclei_image`) and the built-in model on the
CPU, it measures, with the session the interactive widget uses
(:class:`napari_sam._napari.session.Session` on a ``ViewerModel``):

* ``first mask``: from adding the image layer to the first click's mask
  (session start, the tile embedding, decoding);
* ``click, new tile`` / ``click, cached tile``: further clicks on other objects,
  median seconds;
* ``IoU vs crop``: the clicked masks against the same clicks on a 512 px crop
  segmented whole (the reference), median;
* the same for the whole-plane embedding (``--baseline``, the old behaviour:
  the plane squeezed into one model input) for comparison;
* with ``--cache DIR``, also the tiled run of a session reopened on an on-disk
  embedding cache that an earlier session (untimed) filled with the clicked
  tiles: ``first mask`` then includes opening the cache and reading the tile
  from it instead of running the encoder (``encoder runs`` says how many ran).

Usage::

    python benchmarks/plugin_large.py                   # 4096 and 8192, tiled and whole
    python benchmarks/plugin_large.py --sizes 4096 --clicks 6
    python benchmarks/plugin_large.py --sizes 4096 --no-baseline --cache /tmp/plugin_cache
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _objects(labels: np.ndarray, r0: int, c0: int, n: int) -> list[np.ndarray]:
    sub = labels[r0:r0 + 512, c0:c0 + 512]
    border = np.unique(np.r_[sub[0], sub[-1], sub[:, 0], sub[:, -1]])
    out = []
    for i in np.unique(sub):
        if i == 0 or i in border:
            continue
        rr, cc = np.nonzero(sub == i)
        out.append(np.array([rr[len(rr) // 2] + r0, cc[len(cc) // 2] + c0], float))
        if len(out) == n:
            break
    return out


def _fill_cache(image, points, cache: str) -> None:
    """An untimed session that stores the tiles of ``points`` in a fresh cache at ``cache``."""
    from napari.components import ViewerModel

    import napari_sam
    from napari_sam._napari.session import Session

    viewer = ViewerModel()
    session = Session(napari_sam.make_predictor("builtin", device="cpu"), viewer.add_image(image), tiled=True)
    session.open_disk_cache(cache, model_id="builtin", reset=True)
    pts = viewer.add_points([points[0]])
    for p in points:
        pts.data = [p]
        session.predict(viewer.dims, points_layer=pts)


def run(size: int, *, tiled: bool, clicks: int, cache: str | None = None) -> dict:
    from napari.components import ViewerModel

    import napari_sam
    from napari_sam._napari.session import Session
    from napari_sam.synthetic import make_nuclei_image

    image, labels = make_nuclei_image((size, size), seed=0)
    predictor = napari_sam.make_predictor("builtin", device="cpu")
    r0 = c0 = size // 2 - 256
    points = _objects(labels, r0, c0, clicks)
    if cache is not None:
        _fill_cache(image, points, cache)
    t0 = time.perf_counter()
    viewer = ViewerModel()
    layer = viewer.add_image(image)
    session = Session(predictor, layer, tiled=tiled)
    if cache is not None:
        session.open_disk_cache(cache, model_id="builtin")
    ref = session.plane(viewer.dims)
    session.prepare(ref)
    pts = viewer.add_points([points[0]])
    preview = session.predict(viewer.dims, points_layer=pts)
    first = time.perf_counter() - t0
    masks = [preview.objects[0].mask[r0:r0 + 512, c0:c0 + 512]]
    new_tile, cached = [], []
    for p in points[1:]:
        n_before = session.tiler(ref).n_encoded if tiled else 0
        pts.data = [p]
        t = time.perf_counter()
        preview = session.predict(viewer.dims, points_layer=pts)
        dt = time.perf_counter() - t
        masks.append(preview.objects[0].mask[r0:r0 + 512, c0:c0 + 512])
        (new_tile if tiled and session.tiler(ref).n_encoded > n_before else cached).append(dt)
    ref_pred = napari_sam.make_predictor("builtin", device="cpu")
    ref_pred.set_image(image[r0:r0 + 512, c0:c0 + 512], contrast_limits=layer.contrast_limits)
    ious = []
    for p, got in zip(points, masks):
        m, s, _ = ref_pred.predict((p - [r0, c0])[None], [1])
        exp = m[int(np.argmax(s))]
        ious.append(float((got & exp).sum() / max(1, (got | exp).sum())))
    med = lambda v: None if not v else round(float(np.median(v)), 3)  # noqa: E731
    mode = ("tiles" if cache is None else "tiles, disk cache") if tiled else "whole plane"
    return {"size": size, "mode": mode, "first_mask_s": round(first, 2),
            "encoder_runs": session.tiler(ref).n_encoded if tiled else 1,
            "click_new_tile_s": med(new_tile), "click_cached_s": med(cached),
            "iou_vs_crop_median": med(ious), "iou_vs_crop_min": round(min(ious), 3), "clicks": len(points)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--clicks", type=int, default=8)
    parser.add_argument("--no-baseline", action="store_true", help="skip the whole-plane runs")
    parser.add_argument("--cache", metavar="DIR", help="also time a session reopened on an embedding cache "
                        "at DIR (emptied first) holding the clicked tiles")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        runs = [(True, None)] + ([] if args.no_baseline else [(False, None)])
        runs += [] if args.cache is None else [(True, f"{args.cache}/{size}")]
        for tiled, cache in runs:
            rows.append(run(size, tiled=tiled, clicks=args.clicks, cache=cache))
            print(json.dumps(rows[-1]), flush=True)
    print("| size | mode | first mask (s) | click, new tile (s) | click, cached (s) | encoder runs | "
          "IoU vs 512 crop (median / min) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['mode']} | {r['first_mask_s']} | {r['click_new_tile_s']} | "
              f"{r['click_cached_s']} | {r['encoder_runs']} | {r['iou_vs_crop_median']} / {r['iou_vs_crop_min']} |")


if __name__ == "__main__":
    main()
