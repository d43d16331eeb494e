"""Quality and time of automatic generation for several point layouts, on every validation style.

For the built-in model, with the layout users get (``segment_image`` on the
model's default tiles, as ``napari-sam segment`` and the napari widget do) and
the card's parameters, each ``--config`` overrides a few of them, e.g.
``crop_n_points_downscale_factor=2`` (the crop layer's grids get half the
points per side: 1024 + 4 x 256 prompts per tile instead of 5 x 1024).

Images come from :func:`napari_sam.synthetic_microscopy.make_validation_image`:
every validation style (training styles, the hard fluorescence one and the two
held-out styles), ``--per-style`` seeds each, so a layout that gains on one
style and loses on others shows it.  Per style and config: instance F1 at IoU
0.5 and AP at IoU 0.5:0.95 (``benchmarks/quality.py``'s matching), and the
seconds per image (configs alternate image by image, same process).

Usage::

    PYTHONPATH=src python benchmarks/amg_crop_points.py --per-style 2 --shape 384 384 \\
        --config card= --config crops16=crop_n_points_downscale_factor=2 \\
        --out benchmarks/results/amg_crop_points.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from quality import match_scores  # noqa: E402

import napari_sam  # noqa: E402
from napari_sam.synthetic_microscopy import VALIDATION_STYLES, make_validation_image  # noqa: E402
from napari_sam.volume.source import default_tiles, model_input_size  # noqa: E402


def parse_config(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition("=")
    kw = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        kw[k] = json.loads(v)
    return name, kw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=[],
                    help="name=key=value,key=value (overrides of the card's parameters; 'card=' for none)")
    ap.add_argument("--styles", nargs="*", default=list(VALIDATION_STYLES))
    ap.add_argument("--per-style", type=int, default=2)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--shape", type=int, nargs=2, default=(384, 384))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = dict(parse_config(c) for c in (args.config or ["card="]))
    predictor = napari_sam.make_predictor("builtin", device="cpu")
    input_size = model_input_size(predictor)  # the layout napari-sam segment and the widget use
    rows = []
    n_images = 0
    for style in args.styles:
        for s in range(args.per_style):
            seed = args.seed0 + s
            image, labels, info = make_validation_image(style, seed, shape=tuple(args.shape))
            tile, halo = default_tiles(image.shape[0], image.shape[1], None, None, input_size=input_size)
            names = list(configs) if n_images % 2 == 0 else list(configs)[::-1]
            n_images += 1
            for name in names:
                t0 = time.perf_counter()
                lab = napari_sam.segment_image(image, predictor, tile_shape=tile, halo=halo,
                                               channel_axis=-1 if image.ndim == 3 else None, **configs[name])
                secs = time.perf_counter() - t0
                sc = match_scores(np.asarray(lab), labels)
                rows.append({"config": name, "style": style, "seed": seed, "seconds": secs,
                             "n_objects": int(labels.max()), "diameter": round(info["diameter_native"], 1), **sc})
                print(f"{style:18s} {seed} {name:10s} F1 {sc['f1']:.3f} AP {sc['ap']:.3f} {secs:6.1f} s", flush=True)
    table = {}
    for name in configs:
        for style in [*args.styles, "overall"]:
            r = [x for x in rows if x["config"] == name and (style == "overall" or x["style"] == style)]
            table.setdefault(name, {})[style] = {k: float(np.mean([x[k] for x in r])) for k in ("f1", "ap", "seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                    "configs": configs, "table": table, "rows": rows}, indent=1))
    print("\n| style | " + " | ".join(f"{n} F1 / AP / s" for n in configs) + " |")
    print("|---|" + "---|" * len(configs))
    for style in [*args.styles, "overall"]:
        print(f"| {style} | " + " | ".join(
            f"{table[n][style]['f1']:.3f} / {table[n][style]['ap']:.3f} / {table[n][style]['seconds']:.1f}"
            for n in configs) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
