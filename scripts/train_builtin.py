"""Train the built-in SAM model on synthetic microscopy (CPU, seeded).

Usage::

    nice -n 5 .venv/bin/python scripts/train_builtin.py --out runs/builtin \
        --steps 1500 --time-limit 5400 --threads 1 [--export]

Writes into ``--out``: ``log.csv`` (per-step curves), ``curves.png``,
``train_config.json``, ``last.pt`` (every few minutes and at the end),
``best.pt`` (best quick validation) and ``summary.json``.  With ``--export``
the best weights are written to ``src/napari_sam/data/builtin_model.pt`` and its card
``builtin_model.card.json`` (the provenance goes to ``benchmarks/results/builtin_model_history.json``)
(run ``scripts/eval_builtin.py`` afterwards to add the quality report).

Stage 3 (``--calibrate-iou CHECKPOINT``) re-fits only the IoU head to the
prompts the plugin's zoom gives (:mod:`napari_sam.training.calibrate`) and
writes ``calibrated.pt`` and ``calibration.json``; with ``--export`` it
replaces the shipped weights and records the stage in the shipped json,
keeping its other entries.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from builtin_recipe import TRAIN_SEED_START, VAL_SEED_START, builtin_config, export_builtin

from napari_sam.model import build_model
from napari_sam.training.data import TrainingPool, make_pool, sample_batch
from napari_sam.training.loop import TrainConfig, train


def plot_curves(log_csv: Path, png: Path, *, smooth: int = 25) -> None:
    """Loss and IoU curves from ``log.csv`` (moving average over ``smooth`` steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    step = np.array([int(r["step"]) for r in rows])

    def col(name):
        return np.array([float(r[name]) if r[name] not in ("", None) else np.nan for r in rows])

    def ma(v):
        k = min(smooth, len(v))
        return np.convolve(v, np.ones(k) / k, mode="valid"), step[k - 1 :]

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("loss", "mask", "iou_mse"):
        v, s = ma(col(name))
        ax[0].plot(s, v, label=name)
    ax[0].set_yscale("log")
    ax[0].set_xlabel("step")
    ax[0].set_title("training losses (moving average)")
    ax[0].legend()
    for name in ("iou_first", "iou_last"):
        v, s = ma(col(name))
        ax[1].plot(s, v, label=f"train {name}")
    for name in ("val_point_miou", "val_box_miou"):
        v = col(name)
        ok = ~np.isnan(v)
        ax[1].plot(step[ok], v[ok], "o-", label=name)
    ax[1].set_ylim(0, 1)
    ax[1].set_xlabel("step")
    ax[1].set_title("IoU (low-res, train batches / quick validation)")
    ax[1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def summary_of(run: Path) -> dict:
    """``summary.json`` of a run, or the same facts from ``log.csv`` of an unfinished one."""
    if (run / "summary.json").is_file():
        return json.loads((run / "summary.json").read_text())
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    vals = [r for r in rows if r["val_point_miou"]]
    best = max(vals, key=lambda r: float(r["val_point_miou"]) + float(r["val_box_miou"]), default=None)
    return {
        "steps_done": int(rows[-1]["step"]) + 1,
        "seconds": float(rows[-1]["seconds"]),
        "best_validation": {} if best is None else {
            "step": int(best["step"]),
            "val_point_miou": float(best["val_point_miou"]),
            "val_box_miou": float(best["val_box_miou"]),
        },
        "command": "(unfinished run, exported from its log)",
    }


def export(checkpoint: Path, summary: dict, args: argparse.Namespace) -> None:
    """Write ``checkpoint`` as the shipped built-in model with its provenance."""
    provenance = {
        "trained_by": "scripts/train_builtin.py",
        "command": summary.get("command", ""),
        "steps": summary["steps_done"],
        "seconds": round(summary["seconds"] + summary.get("pool_seconds", 0.0)),
        "checkpoint": checkpoint.name,
        "train_seeds": [TRAIN_SEED_START, TRAIN_SEED_START + args.pool_size],
        "val_seeds_start": VAL_SEED_START,
        "quick_validation": summary["best_validation"],
        "torch": torch.__version__,
        "machine": f"{platform.machine()} CPU, {args.threads} thread(s), shared with other jobs",
    }
    tc = checkpoint.parent / "train_config.json"
    init_from = json.loads(tc.read_text()).get("extra", {}).get("init_from") if tc.is_file() else None
    if init_from:  # a second stage: record the first one too
        first = Path(init_from).parent
        provenance["stage1"] = summary_of(first) if (first / "log.csv").is_file() else {"checkpoint": init_from}
        provenance["steps"] += provenance["stage1"].get("steps_done", 0)
        provenance["seconds"] += round(provenance["stage1"].get("seconds", 0) + provenance["stage1"].get("pool_seconds", 0))
    cfg_path = checkpoint.parent / "model_config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else builtin_config()
    pt, js = export_builtin(torch.load(checkpoint, weights_only=True), config, provenance,
                            merge=not args.fresh_json)
    print(f"exported {pt} and {js}")


def load_pool(args: argparse.Namespace, size: tuple[int, int]) -> TrainingPool:
    """The training pool (seeds from TRAIN_SEED_START), from ``--pool-cache`` when it holds them."""
    seeds = range(TRAIN_SEED_START, TRAIN_SEED_START + args.pool_size)
    if args.pool_cache is not None and args.pool_cache.is_file():
        with np.load(args.pool_cache) as z:
            pool = TrainingPool(z["images"], z["labels"], z["seeds"])
        if not np.array_equal(pool.seeds, np.asarray(seeds)):
            raise ValueError(f"{args.pool_cache} holds other seeds; delete it or pick another path")
        return pool
    pool = make_pool(seeds, shape=size)
    if args.pool_cache is not None:
        np.savez(args.pool_cache, images=pool.images, labels=pool.labels, seeds=pool.seeds)
    return pool


def calibrate(args: argparse.Namespace) -> int:
    """Stage 3: the IoU head re-fitted on the zoom's prompts; everything else frozen."""
    from napari_sam.model.registry import recommended_zoom
    from napari_sam.training.calibrate import collect_iou_samples, fit_iou_head

    t0 = time.monotonic()
    config = json.loads(args.config.read_text()) if args.config else builtin_config()
    model = build_model(config)
    model.load_state_dict(torch.load(args.calibrate_iou, weights_only=True), strict=True)
    model.eval()
    pool = load_pool(args, (config["image_size"],) * 2)
    n = min(args.calibrate_images, len(pool))
    pool = TrainingPool(pool.images[:n], pool.labels[:n], pool.seeds[:n])
    zoom = recommended_zoom("builtin")
    samples = collect_iou_samples(model, pool, objects_per_image=args.objects_per_image,
                                  context=zoom["context"], min_side=zoom["min_side"], seed=args.seed)
    collect_s = time.monotonic() - t0
    print(f"{len(samples)} IoU-head samples in {collect_s:.0f} s", flush=True)
    fit = fit_iou_head(model, samples, epochs=args.calibrate_epochs, seed=args.seed)
    summary = {"stage": "iou_head_calibration", "init_from": str(args.calibrate_iou),
               "seconds": time.monotonic() - t0, "collect_seconds": collect_s,
               "n_images": len(pool), "n_samples": len(samples), "epochs": args.calibrate_epochs, **fit,
               "command": " ".join([Path(sys.executable).name, *sys.argv])}
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, args.out / "calibrated.pt")
    (args.out / "calibration.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    if args.export:
        export_calibrated(state, summary)
    return 0


def export_calibrated(state: dict, summary: dict) -> None:
    """Replace the shipped weights with stage 3's; the card keeps its settings, the history records the stage."""
    import dataclasses

    from builtin_recipe import CARD, DATA_DIR, append_history, sha256_file

    from napari_sam.model.cards import ModelCard

    card = ModelCard.from_json(CARD)
    pt = DATA_DIR / card.weights
    torch.save({k: v.to(torch.float32).contiguous() for k, v in state.items()}, pt)
    new = dataclasses.replace(card, sha256=sha256_file(pt),
                              training=f"{card.training}; IoU head re-fitted (stage 3)"[:300])
    new.to_json(CARD)
    append_history({"sha256": new.sha256, "replaces": card.sha256, "stage3": {
        k: summary[k] for k in ("stage", "command", "seconds", "collect_seconds", "n_images", "n_samples",
                                "n_pairs", "epochs", "before", "after")}})
    print(f"exported {pt} and {CARD} (stage 3: IoU head)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/builtin"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--time-limit", type=float, default=5400.0, help="seconds; stops early, keeps last/best")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps; the learning-rate schedule still spans --steps")
    p.add_argument("--pool-size", type=int, default=500, help="synthetic training images (256 x 256)")
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-images", type=int, default=4)
    p.add_argument("--objects-per-image", type=int, default=4)
    p.add_argument("--n-passes", type=int, default=2)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--init-from", type=Path, default=None,
                   help="continue from this state_dict (second stage: no init, focal from step 0)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--config", type=Path, default=None, help="model config json (default: BUILTIN_CONFIG)")
    p.add_argument("--pool-cache", type=Path, default=None, help="npz to reuse the generated pool")
    p.add_argument("--export", action="store_true", help="write src/napari_sam/data/builtin_model.{pt,card.json}")
    p.add_argument("--export-from", type=Path, default=None,
                   help="only export this checkpoint of a finished run in --out (no training)")
    p.add_argument("--fresh-json", action="store_true",
                   help="export: write a fresh card (default: keep the shipped card's tuned amg and "
                        "prompt_pipeline settings); the history file records every export")
    p.add_argument("--plot-only", type=Path, default=None, help="only draw --out/log.csv into this PNG")
    p.add_argument("--calibrate-iou", type=Path, default=None,
                   help="stage 3: re-fit only the IoU head of this state_dict (see napari_sam.training.calibrate)")
    p.add_argument("--calibrate-epochs", type=int, default=100)
    p.add_argument("--calibrate-images", type=int, default=300,
                   help="stage 3 uses the first this many pool images (time: ~1 s each on 2 threads)")
    args = p.parse_args(argv)
    if args.plot_only is not None:
        plot_curves(args.out / "log.csv", args.plot_only)
        return 0
    if args.export_from is not None:
        export(args.export_from, summary_of(args.out), args)
        return 0

    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    if args.calibrate_iou is not None:
        return calibrate(args)
    config = json.loads(args.config.read_text()) if args.config else builtin_config()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(args.seed)
    model = build_model(config)
    if args.init_from is not None:
        model.load_state_dict(torch.load(args.init_from, weights_only=True), strict=True)
    size = (config["image_size"],) * 2
    pool = load_pool(args, size)
    val_pool = make_pool(range(VAL_SEED_START, VAL_SEED_START + args.val_images), shape=size)
    val_batch = sample_batch(val_pool, np.random.default_rng(1), n_images=args.val_images, objects_per_image=8)
    pool_seconds = time.monotonic() - t0
    print(f"pools ready in {pool_seconds:.0f} s", flush=True)
    cfg = TrainConfig(
        steps=args.steps, lr=args.lr, seed=args.seed, threads=args.threads,
        time_limit_s=args.time_limit - pool_seconds, n_images=args.n_images,
        objects_per_image=args.objects_per_image, n_passes=args.n_passes, val_every=args.val_every,
        warmup_steps=min(args.warmup, max(1, args.steps // 10)), stop_after=args.stop_after,
    )
    if args.init_from is not None:  # stage 2: weights already localise; SAM's 20:1 from the start
        cfg.init_gain, cfg.focal_start, cfg.focal_ramp = 0.0, 0.0, 0.0
        cfg.extra["init_from"] = str(args.init_from)

    def progress(done, total, desc):
        if done % 20 == 0:
            print(f"{desc} {done}/{total} {time.monotonic() - t0:.0f}s", flush=True)

    summary = train(model, pool, cfg, args.out, val_batch=val_batch, progress=progress)
    summary["pool_seconds"] = pool_seconds
    summary["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    try:
        plot_curves(args.out / "log.csv", args.out / "curves.png")
    except ImportError:
        print("matplotlib missing: no curves.png (pip install matplotlib)")
    print(json.dumps(summary, indent=2))
    if args.export:
        export(args.out / ("best.pt" if (args.out / "best.pt").exists() else "last.pt"), summary, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
