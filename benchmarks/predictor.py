"""Benchmark the interactive Predictor: ``set_image`` time and one-click ``predict`` latency.

Models are built with random weights through the registry (``build_model("vit_b")``):
timings do not depend on the weight values.  When the official ``segment_anything``
package is importable, its ``SamPredictor`` is measured in the same run with the
same weights and the ratio is printed; otherwise the figures of the issue (from
another run, on another machine) are printed for orientation.

Wall-clock medians are reported, and next to them the process CPU time (summed
over threads), which is less sensitive to other processes on a shared machine.

Usage::

    python benchmarks/predictor.py --models vit_t vit_b --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from napari_sam.model import build_model
from napari_sam.model.mask_decoder import LOW_RANK_LIMIT
from napari_sam.predict.predictor import Embedding, Predictor, preprocess_shape

#: Official SamPredictor on CPU as quoted in the issue (another run, another machine).
ISSUE_REFERENCE = {"model": "vit_b", "set_image_s": 18.3, "predict_ms": 121.0, "threads": 2}


def _median_time(fn: Callable[[], Any], repeats: int, *, warmup: int = 1) -> tuple[float, float]:
    """Median wall-clock and median process CPU time (all threads) of ``fn``, in seconds."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _measure(set_image: Callable[[], Any], click: Callable[[], Any], args: argparse.Namespace) -> dict:
    set_wall, set_cpu = _median_time(set_image, args.repeats)
    click_wall, click_cpu = _median_time(click, args.predict_repeats, warmup=2)
    return {
        "set_image_s": set_wall,
        "set_image_cpu_s": set_cpu,
        "predict_ms": 1000 * click_wall,
        "predict_cpu_ms": 1000 * click_cpu,
    }


def _click_breakdown(predictor: Predictor, point: np.ndarray, args: argparse.Namespace) -> dict:
    """Cold/warm click latency and its split into decoder and postprocessing, in ms.

    cold: ``set_embedding`` (which prepares the per-image decoder cache) followed
    by the first ``predict``; warm: later clicks on the same image; decoder:
    prompt encoder + mask decoder (``predict_batch(..., upsample=False)``);
    postprocessing: upsampling to the original size and thresholding.
    """
    label = np.array([1])
    embedding = predictor.get_embedding()

    def cold() -> None:
        predictor.set_embedding(embedding)
        predictor.predict(point, label, multimask=True)

    def decoder() -> Any:
        return predictor.predict_batch(point[None], label[None], multimask=True, upsample=False)

    low_res = decoder().low_res_logits[0]

    def post() -> None:  # what predict does after the decoder
        with torch.inference_mode():
            if hasattr(predictor, "masks_from_logits"):
                predictor.masks_from_logits(low_res).cpu().numpy()
            else:  # older versions: dense upsampling then threshold
                (predictor.upsample_logits(low_res) > predictor.mask_threshold).cpu().numpy()

    # random weights give noise-like logits (predict then takes the dense path);
    # a trained model's masks are smooth blobs: time both postprocessings on a blob
    m = low_res.shape[-1]
    yy, xx = np.mgrid[:m, :m]
    blob = torch.as_tensor(np.stack([(m / 5 - np.hypot(yy - m / 2, xx - m / 2 + 10 * i)) / 4 for i in range(3)]),
                           dtype=torch.float32)

    def post_blob_dense() -> None:
        with torch.inference_mode():
            (predictor.upsample_logits(blob) > predictor.mask_threshold).cpu().numpy()

    def post_blob() -> None:
        with torch.inference_mode():
            if hasattr(predictor, "masks_from_logits"):
                predictor.masks_from_logits(blob).cpu().numpy()
            else:
                post_blob_dense()

    reps = args.predict_repeats
    return {
        "postprocess_blob_ms": 1000 * _median_time(post_blob, reps, warmup=2)[0],
        "postprocess_blob_dense_ms": 1000 * _median_time(post_blob_dense, reps, warmup=2)[0],
        "cold_click_ms": 1000 * _median_time(cold, max(3, reps // 4))[0],
        "warm_click_ms": 1000 * _median_time(lambda: predictor.predict(point, label), reps, warmup=2)[0],
        "decoder_ms": 1000 * _median_time(decoder, reps, warmup=2)[0],
        "postprocess_ms": 1000 * _median_time(post, reps, warmup=2)[0],
    }


def _paired_clicks(ours: Callable[[], Any], official: Callable[[], Any], rounds: int, per_round: int = 5) -> dict:
    """Click latency of both codes in alternating rounds: the ratio per round, then its median.

    This shared machine's speed drifts by +-30 % within a minute; timing one
    code after the other compares two different machines.  Each round times
    ``per_round`` clicks of one code then of the other (the order alternates),
    so each ratio compares neighbouring moments.
    """
    ratios, ours_ms, official_ms = [], [], []
    for i in range(rounds):
        pair = {}
        for key, fn in (("ours", ours), ("official", official)) if i % 2 == 0 else (
            ("official", official), ("ours", ours)
        ):
            pair[key] = _median_time(fn, per_round, warmup=1)[0]
        ratios.append(pair["ours"] / pair["official"])
        ours_ms.append(1000 * pair["ours"])
        official_ms.append(1000 * pair["official"])
    q1, q3 = np.percentile(ratios, [25, 75])
    return {
        "rounds": rounds,
        "clicks_per_round": per_round,
        "ratio_median": float(np.median(ratios)),
        "ratio_quartiles": [float(q1), float(q3)],
        "ours_ms_median": float(np.median(ours_ms)),
        "official_ms_median": float(np.median(official_ms)),
    }


def _click_products(model: torch.nn.Module) -> Callable[[], None]:
    """The matrix products one click needs in this decoder, alone, on random operands.

    Every product the decoder computes for one foreground click (three masks)
    with its shape, and nothing else: no softmax, layer norm, GELU, bias or
    residual pass, no token-side work, no postprocessing.  Its time is a floor
    for exact float32 decoding with this CPU's BLAS (the operands are partly
    in cache, as in a click); what a click takes above it is the rest.  Shapes
    for a decoder of width ``C`` with ``heads`` heads on an ``N``-token image
    grid (vit_b: C 256, 8 heads, N 4096, 7 prompt tokens):

    - first block (image side cached): image->token scores (heads x 7 x d x N)
      and the low-rank mix ``N x 56 x C``; the token->image attention on the
      cached key/value heads (2 x heads x 7 x d x N);
    - every later block: token->image scores and context (``56 x C x N`` each),
      image->token scores and mix (the same);
    - final attention for the IoU and three mask tokens (``32 x C x N`` twice);
    - first upscaling in low-rank form (``N x 116 x C``), the second one
      (``4N x C/4 x C/4``, twice) and the mask products (``3 x C/8 x 8N``, twice).
    """
    dec = model.mask_decoder
    layers = dec.transformer.layers
    c = dec.transformer_dim
    attn = layers[0].cross_attn_token_to_image
    heads, d = attn.num_heads, attn.internal_dim // attn.num_heads
    grid_h, grid_w = model.prompt_encoder.image_embedding_size
    n, tokens = grid_h * grid_w, 1 + dec.num_mask_tokens + 2  # IoU + mask tokens + point + padding
    rows, final_rows = heads * tokens, heads * (1 + dec.num_multimask_outputs)
    rank = sum(rows + 2 for _ in layers)
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    image, keys, scores_rows = randn(n, c), randn(n, c), randn(rows, c)
    weights = torch.softmax(randn(rows, n), dim=1)
    final_q, final_w = randn(final_rows, c), torch.softmax(randn(final_rows, n), dim=1)
    values, q_heads, k_heads = randn(rows, c), randn(heads, d, n), randn(heads, n, d)
    token_heads, token_w = randn(heads, tokens, d), torch.softmax(randn(heads, tokens, n), dim=2)
    c1, c2 = c // 4, c // 8
    coeffs, cols = randn(rank, n), randn(rank, 4 * c1)
    dense_w = randn(c, 4 * c1)
    feats, w2, b2 = randn(4 * n, c1), randn(c1, 2 * c2), randn(2 * c2)
    second, hyper = randn(4 * n, 2 * c2), randn(dec.num_multimask_outputs, c2)

    def products() -> None:
        torch.bmm(token_heads, q_heads)  # first block, image->token scores (query heads cached)
        torch.bmm(token_heads, k_heads.transpose(1, 2))  # first block, token->image on cached heads
        torch.bmm(token_w, k_heads)
        torch.addmm(image, weights.t(), values)  # first block, image->token mix
        for _ in layers[1:]:
            torch.mm(scores_rows, keys.t())  # token->image scores
            torch.mm(weights, keys)  # token->image context
            torch.mm(scores_rows, keys.t())  # image->token scores
            torch.addmm(keys, weights.t(), values)  # image->token mix
        torch.mm(final_q, keys.t())
        torch.mm(final_w, keys)
        if rank <= LOW_RANK_LIMIT * c:  # as the decoder decides
            torch.mm(coeffs.t(), cols)
        else:
            torch.mm(keys, dense_w)
        for _ in range(2):  # second upscaling per kernel row, then the masks
            torch.addmm(b2, feats, w2)
            torch.mm(hyper, second.view(-1, c2).t())

    return products


def _ours(model: torch.nn.Module, image: np.ndarray, args: argparse.Namespace) -> dict:
    predictor = Predictor(model, device=args.device)
    point = np.array([[image.shape[0] / 2, image.shape[1] / 2]])  # (row, col)
    if args.clicks_only:  # random features instead of the encoder: click timings only
        predictor.set_image(np.zeros((8, 8, 3), np.uint8))
        embedding = predictor.get_embedding()
        features = np.random.default_rng(0).standard_normal(embedding.features.shape)
        predictor.set_embedding(Embedding(
            features.astype(np.float32), image.shape[:2],
            preprocess_shape(image.shape[:2], predictor.image_size),
            predictor.image_size, predictor.model_id,
        ))
        return _click_breakdown(predictor, point, args)
    click = lambda: predictor.predict(point, np.array([1]), multimask=True)
    row = _measure(lambda: predictor.set_image(image), click, args)
    row.update(_click_breakdown(predictor, point, args))
    row["click"] = click  # for the paired comparison; dropped before writing JSON
    return row


def _torchvision_shim() -> None:
    """Let ``segment_anything`` import without torchvision (not installable beside CPU torch here).

    The official package uses torchvision only in ``ResizeLongestSide``:
    ``to_pil_image`` and ``resize`` of a PIL image, which torchvision does with
    PIL's bilinear resize.  The shim does exactly that; the model code and the
    rest of ``SamPredictor`` are the official ones (the AMG's ``box_area`` is
    given, its NMS is not: the AMG is not measured here).  Installed only when
    torchvision is missing.
    """
    import importlib.util
    import types

    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return  # installed, or the shim is already in place
    from PIL import Image

    def to_pil_image(array):
        return Image.fromarray(np.asarray(array))

    def resize(image, size, *args, **kwargs):
        if not isinstance(image, Image.Image):
            raise NotImplementedError("the benchmark shim only resizes PIL images")
        return image.resize((int(size[1]), int(size[0])), Image.BILINEAR)

    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def batched_nms(*args, **kwargs):
        raise NotImplementedError("the benchmark's torchvision shim has no NMS (AMG is not measured here)")

    boxes_mod = types.ModuleType("torchvision.ops.boxes")
    boxes_mod.box_area, boxes_mod.batched_nms = box_area, batched_nms
    ops = types.ModuleType("torchvision.ops")
    ops.boxes = boxes_mod
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.to_pil_image, functional.resize = to_pil_image, resize
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms, torchvision.ops = transforms, ops
    sys.modules.update({
        "torchvision": torchvision, "torchvision.transforms": transforms,
        "torchvision.ops": ops, "torchvision.ops.boxes": boxes_mod,
        "torchvision.transforms.functional": functional,
    })


def _official(name: str, model: torch.nn.Module, image: np.ndarray, args: argparse.Namespace) -> dict | None:
    """The official SamPredictor with the same weights, or None when not installed.

    ``pip install segment-anything`` (pure Python, no dependencies pulled with
    ``--no-deps``) is enough: torchvision is replaced by :func:`_torchvision_shim`.
    """
    _torchvision_shim()
    try:
        if name == "vit_t":
            from mobile_sam import SamPredictor, sam_model_registry
        else:
            from segment_anything import SamPredictor, sam_model_registry
    except ImportError:
        return None
    official = sam_model_registry[name](checkpoint=None)
    official.load_state_dict(model.state_dict(), strict=True)
    official.to(args.device).eval()
    predictor = SamPredictor(official)
    point_xy = np.array([[image.shape[1] / 2, image.shape[0] / 2]])

    def set_image() -> None:
        with torch.inference_mode():
            predictor.set_image(image)

    click = lambda: predictor.predict(point_xy, np.array([1]), multimask_output=True)
    row = _measure(set_image, click, args)
    row["click"] = click
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vit_t", "vit_b"],
                        help="registry names (vit_t, vit_b, vit_l, vit_h, builtin)")
    parser.add_argument("--repeats", type=int, default=3, help="timed set_image calls (after 1 warm-up)")
    parser.add_argument("--predict-repeats", type=int, default=20, help="timed predict calls")
    parser.add_argument("--size", type=int, default=1024, help="side of the square RGB test image")
    parser.add_argument("--shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="non-square test image instead of --size (e.g. 1500 2000)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--clicks-only", action="store_true",
                        help="skip the encoder (random features): click timings only, no official run")
    parser.add_argument("--paired-rounds", type=int, default=15,
                        help="alternating rounds of 5 clicks, ours then official (0: skip)")
    parser.add_argument("--floor", action="store_true",
                        help="also time the click's matrix products alone against the official click "
                             "(a floor for exact float32 decoding; needs the official package)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.predict_repeats < 1:
        parser.error("--repeats and --predict-repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    shape = tuple(args.shape) if args.shape else (args.size, args.size)
    image = np.random.default_rng(0).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": args.device,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "image": f"{shape[0]}x{shape[1]}x3 uint8",
    }
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    results = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name)
        row = {"model": name, "ours": _ours(model, image, args)}
        ours = row["ours"]
        print(f"{name:8s} ours     click: cold {ours['cold_click_ms']:.1f} ms, warm {ours['warm_click_ms']:.1f} ms"
              f" = decoder {ours['decoder_ms']:.1f} ms + postprocessing {ours['postprocess_ms']:.1f} ms")
        print(f"{name:8s} ours     postprocessing of blob-shaped masks (a trained model's): "
              f"{ours['postprocess_blob_ms']:.1f} ms (dense upsampling + threshold: "
              f"{ours['postprocess_blob_dense_ms']:.1f} ms)")
        if args.clicks_only:
            results.append(row)
            continue
        official = _official(name, model, image, args)
        if official is not None:
            row["official"] = official
        results.append(row)
        print(f"{name:8s} ours     set_image {ours['set_image_s']:8.2f} s   predict {ours['predict_ms']:8.1f} ms"
              f"   (CPU time of all threads: {ours['set_image_cpu_s']:.2f} s, {ours['predict_cpu_ms']:.1f} ms)")
        if official is not None:
            print(f"{name:8s} official set_image {official['set_image_s']:8.2f} s   "
                  f"predict {official['predict_ms']:8.1f} ms   (CPU time of all threads: "
                  f"{official['set_image_cpu_s']:.2f} s, {official['predict_cpu_ms']:.1f} ms; same run, same weights)")
            print(f"{name:8s} ratio ours/official wall (CPU): set_image "
                  f"{ours['set_image_s'] / official['set_image_s']:.2f} "
                  f"({ours['set_image_cpu_s'] / official['set_image_cpu_s']:.2f}), predict "
                  f"{ours['predict_ms'] / official['predict_ms']:.2f} "
                  f"({ours['predict_cpu_ms'] / official['predict_cpu_ms']:.2f})")
            if args.paired_rounds > 0:
                paired = row["paired_clicks"] = _paired_clicks(ours["click"], official["click"], args.paired_rounds)
                print(f"{name:8s} paired clicks ({paired['rounds']} alternating rounds of "
                      f"{paired['clicks_per_round']}): ours/official median {paired['ratio_median']:.2f} "
                      f"(quartiles {paired['ratio_quartiles'][0]:.2f}-{paired['ratio_quartiles'][1]:.2f}); "
                      f"ours {paired['ours_ms_median']:.1f} ms, official {paired['official_ms_median']:.1f} ms")
            if args.floor and args.paired_rounds > 0:
                floor = row["products_alone"] = _paired_clicks(
                    _click_products(model), official["click"], args.paired_rounds
                )
                print(f"{name:8s} the click's matrix products alone (no other work): median "
                      f"{floor['ours_ms_median']:.1f} ms = {floor['ratio_median']:.2f} x the official click "
                      f"(quartiles {floor['ratio_quartiles'][0]:.2f}-{floor['ratio_quartiles'][1]:.2f}, "
                      f"alternating rounds)")
        elif name == ISSUE_REFERENCE["model"]:
            ref = ISSUE_REFERENCE
            print(f"{name:8s} official package not installed; figures quoted in the issue "
                  f"(ANOTHER run and machine, {ref['threads']} threads): set_image "
                  f"{ref['set_image_s']} s, predict {ref['predict_ms']} ms")
            print(f"{name:8s} ratio ours/issue figures (not comparable runs): set_image "
                  f"{ours['set_image_s'] / ref['set_image_s']:.2f}, "
                  f"predict {ours['predict_ms'] / ref['predict_ms']:.2f}")
    for row in results:
        for side in ("ours", "official"):
            row.get(side, {}).pop("click", None)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"environment": env, "issue_reference": ISSUE_REFERENCE, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
