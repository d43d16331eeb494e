"""``napari-sam finetune``: fine-tune a model on images and their instance labels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to ``napari-sam``'s subparsers."""
    p = sub.add_parser(
        "finetune", help="fine-tune a model on your images and instance labels",
        description="Fine-tune a SAM model on images and their instance labels (0 = background); every "
        "slice with labels is used. Writes a model folder that --model, load_model and the napari "
        "widgets accept.",
    )
    p.add_argument("images", nargs="+", help="images: .tif/.tiff, .npy or zarr arrays (2-D or stacks of 2-D slices)")
    p.add_argument("--labels", nargs="+", required=True, help="instance labels, one per image, same shapes")
    p.add_argument("--base", default="builtin",
                   help="model to start from: builtin, vit_b, ... or a saved model folder / checkpoint")
    p.add_argument("-o", "--out", required=True, help="output model folder")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    enc = p.add_mutually_exclusive_group()
    enc.add_argument("--train-encoder", dest="train_encoder", action="store_true", default=None,
                     help="also train the image encoder (default for small models)")
    enc.add_argument("--freeze-encoder", dest="train_encoder", action="store_false",
                     help="train decoder and prompt encoder only (default for vit_b/l/h)")
    p.add_argument("--validation", type=float, default=0.2,
                   help="fraction of the labelled slices held out and reported on (default 0.2; needs 2+ slices)")
    p.add_argument("--minutes", type=float, help="stop after this many minutes (the schedule is fitted to them)")
    p.add_argument("--keep-thresholds", dest="tune_thresholds", action="store_false",
                   help="keep the base model's automatic thresholds (default: choose them on the training slices)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output folder")
    p.add_argument("--device", help="torch device (default: CUDA, then MPS, then CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``napari-sam finetune``; returns the exit code."""
    import math

    from napari_sam.cli import _Bars
    from napari_sam.model.saved import CARD_NAME, save_model
    from napari_sam.training.finetune import finetune

    if len(args.images) != len(args.labels):
        raise ValueError(f"got {len(args.images)} image(s) but {len(args.labels)} --labels; give one labels file per image")
    out = Path(args.out)
    if (out / CARD_NAME).exists() and not args.resume:
        raise ValueError(f"{out} already holds a model; choose another -o or pass --resume")
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    bars = _Bars(enabled=not args.quiet)
    try:
        model = finetune(
            args.base, list(args.images), list(args.labels), steps=args.steps, lr=args.lr,
            train_encoder=args.train_encoder, validation=args.validation, seed=args.seed,
            checkpoint=ckpt, resume=args.resume, device=args.device, progress=bars,
            tune_thresholds=args.tune_thresholds,
            time_limit_s=math.inf if args.minutes is None else 60 * args.minutes,
        )
    except KeyboardInterrupt:
        bars.close()
        print(f"\ninterrupted: the last checkpoint is kept in {ckpt}; rerun with --resume to continue",
              file=sys.stderr)
        return 130
    finally:
        bars.close()
    save_model(model, out, overwrite=True)
    rep = model.finetune_report
    print(f"fine-tuned {rep['base']} for {rep['steps_done']} steps on {rep['train_slices']} slice(s), "
          f"{rep['objects']} objects ({rep['seconds']} s); model written to {out}")
    if "thresholds" in rep:
        t = rep["thresholds"]
        kept = t["f1"] > t["f1_card"] and getattr(model, "card", None) is not None
        print(f"automatic thresholds: pred_iou_thresh {t['pred_iou_thresh']}, stability_score_thresh "
              f"{t['stability_score_thresh']} (training F1 {t['f1']:.3f} vs {t['f1_card']:.3f} with the base's): "
              + ("saved in the model card" if kept else "the base's kept"))
    if "before" in rep:
        for key in rep["before"]:
            print(f"held-out {key}: {rep['before'][key]:.3f} -> {rep['after'][key]:.3f}")
    else:
        print("no held-out numbers (needs --validation > 0 and 2 or more labelled slices)")
    return 0
