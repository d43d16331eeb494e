"""Quality of built-in models per validation style of napari_sam.synthetic_microscopy.

Per style and overall: one-click mIoU (a click at the deepest interior pixel,
the best-scored of the three masks), box mIoU (the object's tight box, one
mask), and automatic segmentation F1 at IoU 0.5 and mean average precision
over IoU 0.5:0.05:0.95 (AP = TP / (TP + FP + FN), matched one-to-one), for
each model through the plain :class:`napari_sam.Predictor` and
:class:`napari_sam.AutomaticMaskGenerator`; an Otsu + watershed baseline for
the automatic figures.  ``--zoom`` also runs the shipped zoom pipeline on a
subset of the clicks and boxes.

Usage::

    nice python benchmarks/quality.py --model v3=builtin --model v4=/work/v4_out/builtin_model.pt:/work/v4_out/builtin_model.json \
        --per-style 3 --shape 384 --out benchmarks/results/quality_v4.json

The AMG candidates are computed once per image with low floors; ``--amg-grid``
then re-filters them with each threshold setting (cheap), which is how the AMG
defaults are picked.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import watershed

import napari_sam
from napari_sam.synthetic_microscopy import VALIDATION_STYLES, make_validation_image

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.96, 0.05), 2)
#: the AMG settings tried when picking defaults (pred_iou, stability, mask_nms, area bonus, min area)
AMG_GRID = {
    "pred_iou_thresh": [0.3, 0.4, 0.5, 0.6],
    "stability_score_thresh": [0.45, 0.55, 0.7],
    "mask_nms_thresh": [0.2, 0.3, 0.5],
}
AMG_FIXED = {"nms_area_bonus": 0.03, "min_mask_region_area": 30, "crop_n_layers": 1, "points_per_side": 32}


# ------------------------------------------------------------------ matching
def match_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """F1 at IoU 0.5 and AP (TP / (TP + FP + FN)) at IoU 0.5:0.95, one-to-one matching by IoU."""
    n_true, n_pred = int(truth.max()), int(pred.max())
    if n_true == 0 or n_pred == 0:
        return {"f1": 0.0, "ap": 0.0, "tp": 0, "fp": n_pred, "fn": n_true}
    inter = np.bincount(truth.ravel().astype(np.int64) * (n_pred + 1) + pred.ravel().astype(np.int64),
                        minlength=(n_true + 1) * (n_pred + 1)).reshape(n_true + 1, n_pred + 1)
    a_t, a_p = inter.sum(1), inter.sum(0)
    inter = inter[1:, 1:].astype(np.float64)
    iou = inter / (a_t[1:, None] + a_p[None, 1:] - inter)
    out = {}
    aps = []
    for thr in IOU_THRESHOLDS:  # IoU > 0.5 makes the matching unique
        tp = int(((iou > thr).sum(1) > 0).sum()) if thr >= 0.5 else 0
        fp, fn = n_pred - tp, n_true - tp
        aps.append(tp / (tp + fp + fn))
        if thr == 0.5:
            out = {"f1": 2 * tp / (2 * tp + fp + fn), "tp": tp, "fp": fp, "fn": fn}
    out["ap"] = float(np.mean(aps))
    return out


def otsu_watershed(image: np.ndarray) -> np.ndarray:
    """The classical baseline: smoothed grey, Otsu threshold (minority side is foreground), watershed."""
    grey = napari_sam.to_rgb_uint8(image).astype(np.float64).mean(axis=2)
    grey = gaussian(grey, 1.0)
    fg = grey > threshold_otsu(grey)
    if fg.mean() > 0.5:
        fg = ~fg
    fg = ndi.binary_opening(fg, iterations=1)
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=4, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg)


# ------------------------------------------------------------------ prompts
def object_prompts(labels: np.ndarray, max_objects: int, rng: np.random.Generator):
    """Interior click (deepest pixel) and tight box ``(r0, c0, r1, c1)`` of up to ``max_objects`` objects."""
    ids = np.arange(1, labels.max() + 1)
    if ids.size > max_objects:
        ids = np.sort(rng.choice(ids, max_objects, replace=False))
    clicks, boxes = [], []
    for i in ids:
        sl = ndi.find_objects((labels == i).astype(np.int32))[0]
        m = labels[sl] == i
        d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(np.argmax(d), d.shape)
        clicks.append((sl[0].start + r, sl[1].start + c))
        boxes.append((sl[0].start, sl[1].start, sl[0].stop - 1, sl[1].stop - 1))
    return ids, np.array(clicks, float), np.array(boxes, float)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def prompted(predictor, labels, ids, clicks, boxes, batch: int = 16):
    """Click and box IoUs through ``predict_batch`` (plain path)."""
    thr = predictor.mask_threshold
    out = {"click": [], "box": []}
    for s in range(0, len(ids), batch):
        sl = slice(s, s + batch)
        res = predictor.predict_batch(clicks[sl][:, None], np.ones((len(ids[sl]), 1)), multimask=True)
        best = res.scores.float().argmax(1)
        masks = (res.mask_logits[torch.arange(len(best)), best] > thr).cpu().numpy()
        out["click"] += [_iou(m, labels == i) for m, i in zip(masks, ids[sl])]
        res = predictor.predict_batch(boxes_rc=boxes[sl], multimask=False)
        masks = (res.mask_logits[:, 0] > thr).cpu().numpy()
        out["box"] += [_iou(m, labels == i) for m, i in zip(masks, ids[sl])]
    return out


def zoomed(zoom_predictor, image, labels, ids, clicks, boxes):
    zoom_predictor.set_image(image)
    out = {"click": [], "box": []}
    for i, c, b in zip(ids, clicks, boxes):
        m, s, _ = zoom_predictor.predict(points_rc=c[None], point_labels=np.ones(1), multimask=True)
        out["click"].append(_iou(m[int(np.argmax(s))], labels == i))
        m, s, _ = zoom_predictor.predict(box_rc=b, multimask=False)
        out["box"].append(_iou(m[0], labels == i))
    return out


# ------------------------------------------------------------------ models
def load(spec: str):
    """``builtin`` or ``weights.pt:card.json`` -> (model, card dict)."""
    if spec == "builtin":
        card_path = Path(napari_sam.__file__).parent / "data" / "builtin_model.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        return napari_sam.load_model("builtin", device="cpu"), card
    weights, card_path = spec.split(":")
    card = json.loads(Path(card_path).read_text())
    return napari_sam.load_model(card["config"], checkpoint=weights, device="cpu"), card


def amg_records(predictor, image, floors=(0.3, 0.45)):
    gen = napari_sam.AutomaticMaskGenerator(predictor, **AMG_FIXED, pred_iou_thresh=floors[0],
                                            stability_score_thresh=floors[1], refilter_margin=0.0,
                                            mask_nms_thresh=0.3)
    t0 = time.perf_counter()
    raw = gen.run_expensive(image)
    return gen, raw, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="name=builtin or name=weights.pt:card.json")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="only combine the rows of earlier runs (same images) into --out and print the table")
    p.add_argument("--styles", nargs="*", default=list(VALIDATION_STYLES))
    p.add_argument("--per-style", type=int, default=3)
    p.add_argument("--shape", type=int, nargs=2, default=(384, 384))
    p.add_argument("--max-objects", type=int, default=24, help="prompted objects per image")
    p.add_argument("--seed0", type=int, default=0, help="validation seeds seed0 .. seed0 + per_style - 1")
    p.add_argument("--amg", action="store_true", help="also automatic segmentation (and the grid search)")
    p.add_argument("--zoom", type=int, default=0, help="also the zoom pipeline on this many objects per image")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.merge:
        reports = [json.loads(f.read_text()) for f in args.merge]
        rows = sum((r["rows"] for r in reports), [])
        seen, unique = set(), []
        for r in rows:  # the baseline may be in several runs
            key = (r["model"], r["style"], r["seed"])
            if key not in seen:
                seen.add(key)
                unique.append(r)
        names = list(dict.fromkeys(r["model"] for r in unique if r["model"] != "otsu_watershed"))
        report = summarise(unique, names, [dict(zip(AMG_GRID, v)) for v in itertools.product(*AMG_GRID.values())])
        report["settings"] = [r["settings"] for r in reports]
        report["amg_fixed"] = AMG_FIXED
        report["rows"] = unique
        args.out.write_text(json.dumps(report, indent=1, default=float))
        print_table(report)
        return 0
    if not args.model:
        p.error("give at least one --model (or --merge)")
    torch.set_num_threads(args.threads)
    models = {}
    for m in args.model:
        name, spec = m.split("=", 1)
        models[name] = load(spec)
    grid = [dict(zip(AMG_GRID, v)) for v in itertools.product(*AMG_GRID.values())]
    rows = []  # one per (model, style, image)
    t_start = time.perf_counter()
    for style in args.styles:
        for k in range(args.per_style):
            seed = args.seed0 + k
            image, labels, info = make_validation_image(style, seed, shape=tuple(args.shape))
            rng = np.random.default_rng(seed)
            ids, clicks, boxes = object_prompts(labels, args.max_objects, rng)
            row_base = {"style": style, "seed": seed, "n_objects": int(labels.max()), "dtype": info["dtype"],
                        "diameter_native": round(info["diameter_native"], 1)}
            if args.amg:
                rows.append({**row_base, "model": "otsu_watershed", "amg": match_scores(otsu_watershed(image), labels)})
            for name, (model, card) in models.items():
                pred = napari_sam.Predictor(model, device="cpu")
                t0 = time.perf_counter()
                pred.set_image(image)
                row = {**row_base, "model": name, "set_image_s": time.perf_counter() - t0,
                       **prompted(pred, labels, ids, clicks, boxes)}
                if args.zoom and card.get("zoom") and hasattr(napari_sam, "ZoomPredictor"):
                    zp = napari_sam.ZoomPredictor(model, device="cpu", **card["zoom"])
                    n = min(args.zoom, len(ids))
                    z = zoomed(zp, image, labels, ids[:n], clicks[:n], boxes[:n])
                    row["zoom_click"], row["zoom_box"] = z["click"], z["box"]
                    row["plain_click_subset"], row["plain_box_subset"] = row["click"][:n], row["box"][:n]
                if args.amg:
                    gen, raw, secs = amg_records(pred, image)
                    row["amg_expensive_s"] = secs
                    row["amg_grid"] = []
                    for g in grid:
                        t0 = time.perf_counter()
                        recs = gen.filter(raw, **g)
                        lab = napari_sam.masks_to_labels(recs, labels.shape)
                        row["amg_grid"].append({**g, **match_scores(lab, labels),
                                                "filter_s": time.perf_counter() - t0})
                rows.append(row)
            print(f"{style} {seed} done {time.perf_counter() - t_start:.0f}s", flush=True)
    report = summarise(rows, list(models), grid if args.amg else [])
    report["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report["amg_fixed"] = AMG_FIXED
    report["rows"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print_table(report)
    return 0


def summarise(rows, model_names, grid) -> dict:
    """Per model and style: click/box mIoU, AMG F1/AP at each model's best pooled grid setting."""
    styles = list(dict.fromkeys(r["style"] for r in rows))
    table: dict = {}
    best_amg: dict = {}
    for name in model_names:
        mrows = [r for r in rows if r["model"] == name]
        if grid and mrows and "amg_grid" in mrows[0]:  # one setting for all styles: best mean F1 over styles
            per_setting = [np.mean([np.mean([r["amg_grid"][gi]["f1"] for r in mrows if r["style"] == s])
                                    for s in styles]) for gi in range(len(grid))]
            best_amg[name] = {"index": int(np.argmax(per_setting)), "params": grid[int(np.argmax(per_setting))],
                              "mean_f1_over_styles": float(np.max(per_setting))}
        for s in [*styles, "overall"]:
            sr = [r for r in mrows if s == "overall" or r["style"] == s]
            if s == "overall":
                entry = {k: float(np.mean([table[name][st][k] for st in styles]))
                         for k in table[name][styles[0]]}
            else:
                entry = {"click_miou": float(np.mean(sum((r["click"] for r in sr), []))),
                         "box_miou": float(np.mean(sum((r["box"] for r in sr), [])))}
                if "zoom_click" in sr[0]:
                    entry["zoom_click_miou"] = float(np.mean(sum((r["zoom_click"] for r in sr), [])))
                    entry["zoom_box_miou"] = float(np.mean(sum((r["zoom_box"] for r in sr), [])))
                    entry["plain_click_subset_miou"] = float(np.mean(sum((r["plain_click_subset"] for r in sr), [])))
                    entry["plain_box_subset_miou"] = float(np.mean(sum((r["plain_box_subset"] for r in sr), [])))
                if name in best_amg:
                    gi = best_amg[name]["index"]
                    entry["amg_f1"] = float(np.mean([r["amg_grid"][gi]["f1"] for r in sr]))
                    entry["amg_ap"] = float(np.mean([r["amg_grid"][gi]["ap"] for r in sr]))
                entry["set_image_s"] = float(np.mean([r["set_image_s"] for r in sr]))
            table.setdefault(name, {})[s] = entry
    base = [r for r in rows if r["model"] == "otsu_watershed"]
    if base:
        table["otsu_watershed"] = {s: {"amg_f1": float(np.mean([r["amg"]["f1"] for r in base if r["style"] == s])),
                                       "amg_ap": float(np.mean([r["amg"]["ap"] for r in base if r["style"] == s]))}
                                   for s in styles}
        table["otsu_watershed"]["overall"] = {k: float(np.mean([table["otsu_watershed"][s][k] for s in styles]))
                                              for k in ("amg_f1", "amg_ap")}
    return {"table": table, "amg_best": best_amg}


def print_table(report) -> None:
    table = report["table"]
    styles = list(next(iter(table.values())).keys())
    keys = ("click_miou", "box_miou", "amg_f1", "amg_ap", "zoom_click_miou", "zoom_box_miou")
    for name, per in table.items():
        print(f"\n{name}")
        print("style".ljust(18) + "".join(k.rjust(16) for k in keys))
        for s in styles:
            print(s.ljust(18) + "".join((f"{per[s][k]:.3f}" if k in per.get(s, {}) else "-").rjust(16) for k in keys))
    for name, b in report.get("amg_best", {}).items():
        print(f"AMG for {name}: {b}")


if __name__ == "__main__":
    raise SystemExit(main())
