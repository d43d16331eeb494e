"""One table: where a CPU user waits, official code vs napari-sam, alternating rounds in one process.

Rows (each: official median, ours median, ratio ours/official as the median of
the per-round ratios, and the spread of those ratios over the rounds):

* ``set_image`` of a 1024² image for ``vit_t`` (MobileSAM), ``vit_b`` and the
  built-in model (256 px input), with PyTorch float32 and with the optional
  encoder engines (``bf16``, ``openvino``; :mod:`napari_sam.model.engines`);
* one click and a 64-point batch (vit_b decoder, prompt to masks at full size);
* automatic generation of one 1024² tile with the built-in model (32 x 32 points,
  one crop layer, its card's thresholds; official box NMS on both sides), with
  the number of masks that are identical;
* automatic generation with vit_b (random weights), 32 x 32 points and SAM's
  default parameters on one 1024² image, with the number of identical masks;
* the batch runner per slice (ours only: the official code has none).

The official code runs with the same weights: ``pip install --no-deps
segment-anything`` for SAM; for ``vit_t`` put a clone of MobileSAM's repository
on ``MOBILE_SAM_PATH`` (its package ``mobile_sam``; its ``timm`` imports are
only used for layers that are identities in eval mode, see ``_timm_shim``).
torchvision is replaced by a small PIL/torch shim (:func:`predictor._torchvision_shim`
plus a batched NMS that gives torchvision's results). Rows whose official
code is missing print ``n/a``.

Usage::

    PYTHONPATH=src python benchmarks/speed_table.py --rounds 5
    PYTHONPATH=src python benchmarks/speed_table.py --rows vit_t,builtin --json out/speed.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

ROWS = ("vit_t", "vit_b", "builtin", "click", "automatic", "automatic_vit_b", "batch")


def _shims() -> None:
    """torchvision and timm stand-ins so the official packages import beside CPU torch."""
    import predictor as bench_predictor  # benchmarks/predictor.py

    bench_predictor._torchvision_shim()
    tv_boxes = sys.modules.get("torchvision.ops.boxes")
    if tv_boxes is not None and getattr(tv_boxes.batched_nms, "__name__", "") != "_batched_nms":

        def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
            """torchvision's batched_nms: greedy by score (stable), per category, areas (x2-x1)*(y2-y1)."""
            if boxes.numel() == 0:
                return torch.zeros(0, dtype=torch.long)
            boxes = boxes.float()
            offset = idxs.float()[:, None] * (boxes.max() + 1)
            b = boxes + offset
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            order = torch.sort(scores, descending=True, stable=True).indices
            keep, removed = [], torch.zeros(len(b), dtype=torch.bool)
            for i in order.tolist():
                if removed[i]:
                    continue
                keep.append(i)
                xx1 = torch.maximum(b[i, 0], b[:, 0])
                yy1 = torch.maximum(b[i, 1], b[:, 1])
                xx2 = torch.minimum(b[i, 2], b[:, 2])
                yy2 = torch.minimum(b[i, 3], b[:, 3])
                inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
                removed |= inter / (area[i] + area - inter) > iou_threshold
            return torch.tensor(keep, dtype=torch.long)

        tv_boxes.batched_nms = _batched_nms
        sys.modules["torchvision.ops"].batched_nms = _batched_nms
    if importlib.util.find_spec("timm") is None and "timm" not in sys.modules:
        _timm_shim()
    path = os.environ.get("MOBILE_SAM_PATH")
    if path and path not in sys.path:
        sys.path.insert(0, path)


def _timm_shim() -> None:
    """The three timm names MobileSAM's TinyViT imports (drop path is the identity in eval mode)."""
    from torch import nn

    class DropPath(nn.Module):
        def __init__(self, drop_prob: float = 0.0, *args, **kwargs) -> None:
            super().__init__()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    models = types.ModuleType("timm.models")
    models.layers, models.registry = layers, registry
    timm = types.ModuleType("timm")
    timm.models = models
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers,
                        "timm.models.registry": registry})


def _official_sam(name: str, state: dict):
    """The official ``Sam`` for a registry name (random init, our weights loaded strictly), or None."""
    try:
        if name == "vit_t":
            from mobile_sam import sam_model_registry
        else:
            from segment_anything import sam_model_registry
    except ImportError:
        return None
    if name == "builtin":
        import make_amg_fixtures  # scripts/make_amg_fixtures.py

        from napari_sam.model.registry import get_card

        card = get_card("builtin")
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "w.pt"
            torch.save(state, weights)
            return make_amg_fixtures.build_official_sam(card.config, weights)
    sam = sam_model_registry[name](checkpoint=None)
    sam.load_state_dict(state, strict=True)
    return sam.eval()


def _rounds(fns: dict[str, Callable[[], object]], rounds: int, *, warm_up: bool = True) -> dict[str, list[float]]:
    """Wall seconds of each function per round, the order alternating between rounds (warm-up first)."""
    for fn in fns.values() if warm_up else ():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for key in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            with torch.inference_mode():
                fns[key]()
            times[key].append(time.perf_counter() - t0)
    return times


def _row(figure: str, times: dict[str, list[float]], ours: str, official: str | None = "official", **extra) -> dict:
    mine = times[ours]
    row = {"figure": figure, "ours_s": statistics.median(mine), **extra}
    if official in times:
        theirs = times[official]
        ratios = [a / b for a, b in zip(mine, theirs)]
        row.update(official_s=statistics.median(theirs), ratio=statistics.median(ratios),
                   spread=(min(ratios), max(ratios)))
    return row


def image_1024(seed: int = 0) -> np.ndarray:
    from napari_sam.synthetic import make_nuclei_image

    image, _ = make_nuclei_image((1024, 1024), seed=seed)
    return image


def encoder_rows(name: str, image: np.ndarray, args: argparse.Namespace) -> list[dict]:
    from napari_sam.model import build_model
    from napari_sam.model.engines import use_engine
    from napari_sam.predict.predictor import Predictor

    torch.manual_seed(0)
    model = build_model(name).eval()
    state = model.state_dict()
    image = _rgb_uint8(image)  # both sides get the same RGB uint8 image (no normalisation timed)
    fns: dict[str, Callable[[], object]] = {"ours": lambda p=Predictor(model, device="cpu"): p.set_image(image)}
    official = _official_sam(name, state)
    if official is not None:
        if name == "vit_t":
            from mobile_sam import SamPredictor as OfficialPredictor
        else:
            from segment_anything import SamPredictor as OfficialPredictor
        fns["official"] = lambda p=OfficialPredictor(official): p.set_image(image)
    for engine in args.engines:
        if engine == "openvino" and name == "vit_b" and not args.openvino_vit_b:
            continue
        try:
            fast = use_engine(build_model(name).eval(), engine)
        except ImportError as exc:
            print(f"  {name} {engine}: skipped ({exc})")
            continue
        fast.load_state_dict(state, strict=False)
        if engine == "bf16":  # weights are shared: reload them into the wrapped encoder
            fast.image_encoder.encoder.load_state_dict(model.image_encoder.state_dict())
        fns[engine] = lambda p=Predictor(fast, device="cpu"): p.set_image(image)
    times = _rounds(fns, args.rounds)
    rows = [_row(f"set_image 1024², {name}", times, "ours")]
    rows += [_row(f"set_image 1024², {name}, engine={e}", times, e) for e in args.engines if e in times]
    return rows


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    from napari_sam.normalize import to_rgb_uint8

    return to_rgb_uint8(image)


def click_rows(image: np.ndarray, args: argparse.Namespace) -> list[dict]:
    from napari_sam.model import build_model
    from napari_sam.predict.predictor import Predictor

    torch.manual_seed(0)
    model = build_model("vit_b").eval()
    ours = Predictor(model, device="cpu")
    ours.set_image(image)
    rng = np.random.default_rng(0)
    pts_rc = rng.uniform(0, 1024, size=(64, 1, 2))
    fns = {
        "ours click": lambda: ours.predict(pts_rc[0], np.array([1])),
        "ours batch": lambda: ours.predict_batch(pts_rc, np.ones((64, 1))),
    }
    official = _official_sam("vit_b", model.state_dict())
    if official is not None:
        from segment_anything import SamPredictor

        theirs = SamPredictor(official)
        theirs.set_image(_rgb_uint8(image))
        pts_xy = torch.as_tensor(pts_rc[..., ::-1].copy(), dtype=torch.float32)
        coords = theirs.transform.apply_coords_torch(pts_xy, (1024, 1024))
        fns["official click"] = lambda: theirs.predict(pts_rc[0, :, ::-1], np.array([1]))
        fns["official batch"] = lambda: theirs.predict_torch(coords, torch.ones(64, 1))
    times = _rounds(fns, args.rounds)
    return [_row("one click, vit_b", times, "ours click", "official click"),
            _row("64-point batch, vit_b", times, "ours batch", "official batch")]


def automatic_rows(image: np.ndarray, args: argparse.Namespace) -> list[dict]:
    from napari_sam.automatic.defaults import SAM_DEFAULTS
    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.predict.factory import make_predictor

    predictor = make_predictor("builtin", device="cpu")
    predictor = getattr(predictor, "predictor", predictor)
    card = predictor.model.card.amg
    # the card's parameters that the official generator has too (no mask NMS; its small-region
    # cleanup needs OpenCV): both generators run them; "card" is ours with every card parameter
    shared = ("pred_iou_thresh", "stability_score_thresh", "crop_n_layers", "crop_n_points_downscale_factor")
    params = {"points_per_side": 32, **{k: card[k] for k in shared if k in card}}
    gen = AutomaticMaskGenerator(predictor, **{**SAM_DEFAULTS, **params})
    with_card = AutomaticMaskGenerator(predictor)
    result: dict[str, list] = {}
    fns = {"ours": lambda: result.__setitem__("ours", gen.generate(image)),
           "card": lambda: result.__setitem__("card", with_card.generate(image))}
    official = _official_sam("builtin", predictor.model.state_dict())
    if official is not None:
        from segment_anything import SamAutomaticMaskGenerator

        theirs = SamAutomaticMaskGenerator(official, **params)
        fns["official"] = lambda: result.__setitem__("official", theirs.generate(_rgb_uint8(image)))
    times = _rounds(fns, args.rounds)
    extra = {"masks_ours": len(result["ours"])}
    if "official" in result:
        extra["masks_official"] = len(result["official"])
    layout = ", ".join(f"{k}={v}" for k, v in params.items())
    return [_row(f"automatic, built-in model, 1024² tile ({layout})", times, "ours", **extra),
            _row("automatic, built-in model, 1024² tile, every parameter of its card", times, "card",
                 official=None, masks_ours=len(result["card"]))]  # no official run has these parameters


def automatic_vit_b_rows(image: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """vit_b (random weights, seed 0), 32 x 32 points, SAM's default parameters, one 1024² image.

    No warm-up round (each official run takes minutes); the masks of the two
    generators are compared by box, area and pixels.
    """
    from napari_sam.automatic.defaults import SAM_DEFAULTS
    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.model import build_model
    from napari_sam.predict.predictor import Predictor

    torch.manual_seed(0)
    model = build_model("vit_b").eval()
    gen = AutomaticMaskGenerator(Predictor(model, device="cpu"), **{**SAM_DEFAULTS, "points_per_side": 32})
    rgb = _rgb_uint8(image)
    result: dict[str, list] = {}

    def ungated() -> None:  # every point's masks upscaled: what a trained model with many good masks costs
        import napari_sam.automatic._candidates as cand

        gates, cand._gates_masks = cand._gates_masks, lambda predictor: False
        try:
            result["ungated"] = gen.generate(rgb)
        finally:
            cand._gates_masks = gates

    fns = {"ours": lambda: result.__setitem__("ours", gen.generate(rgb)), "ungated": ungated}
    official = _official_sam("vit_b", model.state_dict())
    if official is not None:
        from segment_anything import SamAutomaticMaskGenerator

        theirs = SamAutomaticMaskGenerator(official, points_per_side=32)
        fns["official"] = lambda: result.__setitem__("official", theirs.generate(rgb))
    times = _rounds(fns, args.rounds, warm_up=False)
    extra = {"masks_ours": len(result["ours"])}
    if "official" in result:
        extra["masks_official"] = len(result["official"])
        extra["masks_identical"] = _identical_masks(result["ours"], result["official"])
    figure = f"automatic, vit_b, 1024² image (32², SAM defaults, pred_iou {SAM_DEFAULTS['pred_iou_thresh']})"
    return [_row(figure, times, "ours", **extra),
            _row(figure + ", every point's masks upscaled", times, "ungated")]


def _identical_masks(ours: list, official: list[dict]) -> int:
    """Official masks (decoded from RLE or boolean arrays) with an identical mask of ours at the same place."""
    def key(mask: np.ndarray) -> bytes:
        return np.packbits(np.asarray(mask, dtype=bool)).tobytes()

    mine: dict[bytes, int] = {}
    for rec in ours:
        full = np.zeros(official[0]["segmentation"].shape if official else (1, 1), dtype=bool)
        r0, c0, r1, c1 = rec.bbox_rc
        full[r0:r1, c0:c1] = rec.mask
        mine[key(full)] = mine.get(key(full), 0) + 1
    n = 0
    for m in official:
        k = key(m["segmentation"])
        if mine.get(k, 0):
            mine[k] -= 1
            n += 1
    return n


def batch_rows(args: argparse.Namespace) -> list[dict]:
    import zarr

    from napari_sam.volume.batch import segment_volume

    with tempfile.TemporaryDirectory() as tmp:
        stack = np.stack([image_1024(seed) for seed in (1, 2)])
        src = zarr.open_array(Path(tmp) / "in.zarr", mode="w", shape=stack.shape, chunks=(1, 512, 512),
                              dtype=stack.dtype)
        src[:] = stack
        runs = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            segment_volume(src, Path(tmp) / f"out{r}.zarr", model="builtin", device="cpu")
            runs.append((time.perf_counter() - t0) / len(stack))
    return [{"figure": "batch runner per 1024² slice, built-in model (defaults)",
             "ours_s": statistics.median(runs)}]


def print_table(rows: list[dict]) -> None:
    print("\n| figure | official (s) | ours (s) | ratio ours/official (median, spread) |\n|---|---|---|---|")
    for row in rows:
        off = f"{row['official_s']:.3f}" if "official_s" in row else "n/a"
        ratio = f"{row['ratio']:.2f} ({row['spread'][0]:.2f}-{row['spread'][1]:.2f})" if "ratio" in row else "n/a"
        note = ""
        if "masks_ours" in row:
            note = f" — masks: ours {row['masks_ours']}, official {row.get('masks_official', 'n/a')}"
            if "masks_identical" in row:
                note += f", identical {row['masks_identical']}"
        print(f"| {row['figure']}{note} | {off} | {row['ours_s']:.3f} | {ratio} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per row (after one warm-up)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--engines", default="bf16,openvino", help="encoder engines to add to the set_image rows")
    p.add_argument("--openvino-vit-b", action="store_true", help="also compile vit_b with OpenVINO (slow)")
    p.add_argument("--json", default=None, help="write the rows to this file")
    args = p.parse_args(argv)
    args.engines = [e for e in args.engines.split(",") if e]
    torch.set_num_threads(args.threads)
    _shims()
    image = image_1024()
    rows: list[dict] = []
    for key in args.rows.split(","):
        t0 = time.time()
        if key in ("vit_t", "vit_b", "builtin"):
            rows += encoder_rows(key, image, args)
        elif key == "click":
            rows += click_rows(image, args)
        elif key == "automatic":
            rows += automatic_rows(image, args)
        elif key == "automatic_vit_b":
            rows += automatic_vit_b_rows(image, args)
        elif key == "batch":
            rows += batch_rows(args)
        else:
            p.error(f"unknown row {key!r}")
        print(f"  {key}: {time.time() - t0:.0f} s", file=sys.stderr)
    print_table(rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rounds": args.rounds,
                                               "load": os.getloadavg(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
