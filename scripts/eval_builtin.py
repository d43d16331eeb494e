"""Evaluate the built-in model on held-out synthetic images; write a report and figures.

Usage::

    .venv/bin/python scripts/eval_builtin.py                       # shipped model
    .venv/bin/python scripts/eval_builtin.py --checkpoint runs/builtin/best.pt
    .venv/bin/python scripts/eval_builtin.py --update-json --figures docs/images

Validation images use seeds ``VAL_SEED_START + 1000 + i``: never used in
training (seeds ``0..pool_size``) nor for checkpoint selection
(``VAL_SEED_START + i``, i < 1000).  Metrics (targets in brackets):

- single positive point mIoU (>= 0.85): one click at a random pixel at least
  half the object's maximum depth inside, ``multimask=True``, the mask with the
  best predicted IoU kept; also with the click at the most interior pixel;
- box mIoU (>= 0.90): tight box, ``multimask=False``;
- automatic segmentation instance F1 at IoU > 0.5 (>= 0.80), nuclei images,
  :func:`napari_sam.tiled.tiles.segment_image`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from builtin_recipe import VAL_SEED_START, builtin_config

from napari_sam.model.registry import recommended_amg_params, recommended_zoom
from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.synthetic import make_nuclei_image
from napari_sam.training.evaluate import automatic_scores, disk_baseline_ious, object_diameters, prompted_ious

EVAL_SEED_START = VAL_SEED_START + 1000
#: AMG parameters picked on selection images and shipped in the model's json
AMG_TUNED = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area")
TARGETS = {"point_miou": 0.85, "box_miou": 0.90, "amg_f1": 0.80}


def load(checkpoint: Path | None):
    """The shipped model through the registry, or a training checkpoint."""
    if checkpoint is None:
        from napari_sam.model.registry import load_model

        return load_model("builtin", device="cpu")
    from napari_sam.model import build_model

    model = build_model(builtin_config())
    model.load_state_dict(torch.load(checkpoint, weights_only=True), strict=True)
    return model.eval()


def eval_set(kind: str, n: int, offset: int, shape=(256, 256)):
    data = [make_nuclei_image(shape, kind=kind, seed=EVAL_SEED_START + offset + i) for i in range(n)]
    return [d[0] for d in data], [d[1] for d in data]


def tune_amg(predictor, n_images: int, points_per_side: int) -> dict:
    """Pick AMG thresholds on selection images (seeds VAL_SEED_START + i, not the eval set).

    One expensive run per image, then cheap re-filtering over a small grid.
    """
    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.automatic.labels import masks_to_labels
    from napari_sam.training.evaluate import match_instances

    ious, stabs = (0.2, 0.4, 0.6, 0.8, 0.88), (0.7, 0.8, 0.9, 0.95)
    nms, areas = (0.7, 0.5, 0.3, 0.2, 0.1), (0, 15, 30)  # SAM's 0.7 keeps many duplicates of small nuclei
    amg = AutomaticMaskGenerator(predictor, points_per_side=points_per_side,
                                 pred_iou_thresh=min(ious), stability_score_thresh=min(stabs),
                                 refilter_margin=0.0)
    grid = [(a, b, c, d) for a in ious for b in stabs for c in nms for d in areas]
    counts = {key: np.zeros(3) for key in grid}
    for i in range(n_images):
        img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=VAL_SEED_START + i)
        raw = amg.run_expensive(img)
        for key in grid:
            rec = amg.filter(raw, pred_iou_thresh=key[0], stability_score_thresh=key[1],
                             box_nms_thresh=key[2], min_mask_region_area=key[3])
            m = match_instances(masks_to_labels(rec, lab.shape), lab)
            counts[key] += (m["tp"], m["fp"], m["fn"])
    f1 = {k: float(2 * c[0] / max(1.0, 2 * c[0] + c[1] + c[2])) for k, c in counts.items()}
    best = max(f1, key=f1.get)
    top = sorted(f1, key=f1.get, reverse=True)[:8]
    print("amg tuning (pred_iou, stability, box_nms, min_area) -> F1, best 8:",
          {",".join(map(str, k)): round(f1[k], 3) for k in top})
    return {"pred_iou_thresh": best[0], "stability_score_thresh": best[1], "box_nms_thresh": best[2],
            "min_mask_region_area": best[3], "tuning_f1": f1[best],
            "tuned_on_seeds": [VAL_SEED_START, VAL_SEED_START + n_images]}


def tune_zoom(model, n_images: int) -> dict:
    """Pick the zoom window (context, min_side) on selection images (seeds VAL_SEED_START + i).

    Score: mean of single-click and box mIoU on the nuclei kind.
    """
    from napari_sam.predict.pipeline import PromptPipeline

    data = [make_nuclei_image((256, 256), kind="nuclei", seed=VAL_SEED_START + i) for i in range(n_images)]
    images, labels = [d[0] for d in data], [d[1] for d in data]
    scores = {}
    for context in (4, 6, 8):
        for min_side in (96, 128):
            zp = PromptPipeline(model, device="cpu", context=context, min_side=min_side)
            pt = prompted_ious(zp, images, labels, prompt="point").mean()
            bx = prompted_ious(zp, images, labels, prompt="box").mean()
            scores[(context, min_side)] = (float(pt + bx) / 2, float(pt), float(bx))
            print(f"zoom context {context} min_side {min_side}: point {pt:.3f} box {bx:.3f}", flush=True)
    best = max(scores, key=lambda k: scores[k][0])
    return {"context": best[0], "min_side": best[1], "tuning_point_miou": scores[best][1],
            "tuning_box_miou": scores[best][2], "tuned_on_seeds": [VAL_SEED_START, VAL_SEED_START + n_images]}


def synthetic_figure(path: Path) -> None:
    """Examples of the synthetic training data (images and ground-truth outlines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    cases = [("nuclei", 0), ("nuclei", 2), ("cells", 0), ("mixed", 0)]
    fig, ax = plt.subplots(2, len(cases), figsize=(4 * len(cases), 8))
    for j, (kind, seed) in enumerate(cases):
        img, lab = make_nuclei_image((256, 256), kind=kind, seed=seed)
        for i in range(2):
            ax[i, j].imshow(img, cmap="gray")
            ax[i, j].axis("off")
        b = find_boundaries(lab)
        ax[1, j].imshow(np.ma.masked_where(~b, b), cmap="autumn", interpolation="nearest")
        ax[0, j].set_title(f'make_nuclei_image(kind="{kind}", seed={seed})', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def figure(predictor, images, labels, amg_preds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from napari_sam.synthetic import sample_point_prompts

    n = min(3, len(images), len(amg_preds))
    fig, ax = plt.subplots(n, 3, figsize=(12, 4 * n), squeeze=False)
    for i in range(n):
        img, lab = images[i], labels[i]
        predictor.set_image(img)
        pts, plab, ids = sample_point_prompts(lab, seed=i)
        masks = []
        for p, pl in zip(pts, plab):  # one click at a time, as in the plugin (zoomed if the predictor zooms)
            m, s, _ = predictor.predict(p, pl, multimask=True)
            masks.append(m[int(np.argmax(s))])
        pred = np.zeros(lab.shape, np.int32)
        for k, m in enumerate(masks):
            pred[m & (pred == 0)] = k + 1
        for j, (title, lbl) in enumerate(
            [("ground truth", lab), ("one click per object", pred), ("automatic (segment_image)", amg_preds[i])]
        ):
            ax[i, j].imshow(img, cmap="gray")
            b = find_boundaries(lbl)
            ax[i, j].imshow(np.ma.masked_where(~b, b), cmap="autumn", interpolation="nearest")
            if j == 1:
                ax[i, j].plot(pts[:, 0, 1], pts[:, 0, 0], "c+", ms=5)
            ax[i, j].set_title(title)
            ax[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None, help="a training state_dict; default: shipped model")
    p.add_argument("--n-nuclei", type=int, default=12)
    p.add_argument("--n-other", type=int, default=4, help="images per kind for 'mixed' and 'cells'")
    p.add_argument("--n-amg", type=int, default=6)
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--pred-iou-thresh", type=float, default=0.8)
    p.add_argument("--stability-score-thresh", type=float, default=0.9)
    p.add_argument("--tune-amg", type=int, default=0, help="pick AMG thresholds on this many selection images")
    p.add_argument("--tune-zoom", type=int, default=0, help="pick the zoom window on this many selection images")
    p.add_argument("--no-zoom", action="store_true",
                   help="prompt on the whole image only (default: the prompt pipeline of the model's card, if any)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/builtin_eval"))
    p.add_argument("--figures", type=Path, default=None, help="folder for builtin_examples.png")
    p.add_argument("--update-json", action="store_true", help="store metrics in benchmarks/results/builtin_model_history.json, tuned settings in the card")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_sam.predict.predictor import Predictor

    t0 = time.time()
    model = load(args.checkpoint)
    predictor = Predictor(model, device="cpu")
    x = np.zeros((256, 256), np.uint8)
    predictor.set_image(x)
    t = time.perf_counter()
    for _ in range(3):
        predictor.set_image(x)
    set_image_s = (time.perf_counter() - t) / 3

    results: dict = {"set_image_seconds_256": set_image_s, "eval_seed_start": EVAL_SEED_START}
    zoom = None if args.no_zoom else recommended_zoom("builtin")
    if args.tune_zoom and not args.no_zoom:
        results["zoom_tuning"] = tune_zoom(model, args.tune_zoom)
        zoom = {k: results["zoom_tuning"][k] for k in ("context", "min_side")}
    results["zoom"] = zoom
    # single-object prompts go through what the plugin uses (PromptPipeline when the model recommends it)
    prompter = predictor if zoom is None else PromptPipeline(model, device="cpu", **zoom)
    sets = {"nuclei": eval_set("nuclei", args.n_nuclei, 0)}
    if args.n_other:
        sets["mixed"] = eval_set("mixed", args.n_other, 10_000)
        sets["cells"] = eval_set("cells", args.n_other, 20_000)
    for kind, (images, labels) in sets.items():
        r = {}
        diam = object_diameters(labels)
        bins = [(0, 10), (10, 20), (20, 40), (40, 1000)]
        for name, kw in {"point": {"prompt": "point"}, "point_center": {"prompt": "point", "mode": "center"},
                         "box": {"prompt": "box"}}.items():
            ious = prompted_ious(prompter, images, labels, **kw)
            r[f"{name}_miou"] = float(ious.mean())
            r[f"{name}_iou_median"] = float(np.median(ious))
            r[f"{name}_miou_by_diameter"] = {
                f"{a}-{b}px": [float(ious[(diam >= a) & (diam < b)].mean()), int(((diam >= a) & (diam < b)).sum())]
                for a, b in bins if ((diam >= a) & (diam < b)).any()
            }
        base = disk_baseline_ious(labels)
        r["disk_baseline_point_miou"] = float(base.mean())
        r["disk_baseline_by_diameter"] = {
            f"{a}-{b}px": float(base[(diam >= a) & (diam < b)].mean()) for a, b in bins if ((diam >= a) & (diam < b)).any()
        }
        r["n_images"], r["n_objects"] = len(images), int(ious.size)
        results[kind] = r
        print(kind, json.dumps(r), flush=True)
    images, labels = sets["nuclei"]
    amg_params = {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
                  "stability_score_thresh": args.stability_score_thresh}
    if args.checkpoint is None and not args.tune_amg:  # the shipped model: its shipped thresholds
        amg_params.update(recommended_amg_params("builtin"))
    if args.tune_amg:
        try:
            tuned = tune_amg(predictor, args.tune_amg, args.points_per_side)
            results["amg_tuning"] = tuned
            amg_params.update({k: tuned[k] for k in AMG_TUNED})
        except ImportError as exc:
            results["amg_tuning"] = {"not_measured": str(exc)}
    try:
        if args.n_amg < 1:
            raise ImportError("skipped (--n-amg 0)")
        scores, preds = automatic_scores(predictor, images[: args.n_amg], labels[: args.n_amg], **amg_params)
        results["nuclei"]["amg"] = {**scores, "params": amg_params, "n_images": min(args.n_amg, len(images))}
        print("amg", json.dumps(results["nuclei"]["amg"]), flush=True)
    except ImportError as exc:  # automatic generation not available in this checkout
        results["nuclei"]["amg"] = {"not_measured": str(exc)}
        preds = [np.zeros_like(lab) for lab in labels]
    results["seconds"] = time.time() - t0
    nuc = results["nuclei"]
    results["targets"] = {
        "point_miou": [nuc["point_miou"], TARGETS["point_miou"]],
        "box_miou": [nuc["box_miou"], TARGETS["box_miou"]],
        "amg_f1": [nuc["amg"].get("f1"), TARGETS["amg_f1"]],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2))
    lines = ["# Built-in model: validation metrics", "",
             f"Held-out synthetic 256 x 256 images (seeds from {EVAL_SEED_START}).", "",
             "| set | point mIoU | centre-click mIoU | box mIoU | disk baseline | objects |",
             "|---|---|---|---|---|---|"]
    for kind in sets:
        r = results[kind]
        lines.append(f"| {kind} | {r['point_miou']:.3f} | {r['point_center_miou']:.3f} | {r['box_miou']:.3f} "
                     f"| {r['disk_baseline_point_miou']:.3f} | {r['n_objects']} |")
    lines += ["", "Single-click and box mIoU by object diameter (nuclei set; disk baseline in brackets):", "",
              "| diameter | objects | point mIoU | box mIoU | disk baseline |", "|---|---|---|---|---|"]
    for k, (v, cnt) in nuc["point_miou_by_diameter"].items():
        lines.append(f"| {k} | {cnt} | {v:.3f} | {nuc['box_miou_by_diameter'][k][0]:.3f} "
                     f"| {nuc['disk_baseline_by_diameter'][k]:.3f} |")
    amg = nuc["amg"]
    if "f1" in amg:
        lines += ["", f"Automatic segmentation on {amg['n_images']} nuclei images ({amg_params}): "
                  f"F1 {amg['f1']:.3f} (precision {amg['precision']:.3f}, recall {amg['recall']:.3f}; "
                  f"TP {amg['tp']}, FP {amg['fp']}, FN {amg['fn']})."]
    lines += ["", f"Single-object prompts: {'whole image only' if zoom is None else f'PromptPipeline {zoom}'}."]
    lines += ["", f"`set_image` on a 256 x 256 image: {set_image_s:.3f} s."]
    (args.out / "metrics.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.figures is not None:
        args.figures.mkdir(parents=True, exist_ok=True)
        figure(prompter, images, labels, preds, args.figures / "builtin_examples.png")
        synthetic_figure(args.figures / "builtin_synthetic.png")
    if args.update_json:  # measurements go to the history file, tuned settings into the card
        import dataclasses

        from builtin_recipe import CARD, append_history

        from napari_sam.model.cards import ModelCard

        metrics = {k: results[k] for k in ("nuclei", *(k for k in sets if k != "nuclei"))}
        metrics["set_image_seconds_256"] = set_image_s
        card = ModelCard.from_json(CARD)
        tuned = results.get("amg_tuning", {})
        if "pred_iou_thresh" in tuned:  # thresholds picked on selection seeds, not the eval set
            card = dataclasses.replace(card, amg={k: tuned[k] for k in AMG_TUNED})
        if "zoom_tuning" in results:  # also picked on selection seeds
            card = dataclasses.replace(card, prompt_pipeline=dict(zoom))
        card.to_json(CARD)
        append_history({"sha256": card.sha256, "metrics": metrics,
                        "amg": card.amg, "prompt_pipeline": card.prompt_pipeline})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
