"""Fine-tune the built-in model on one annotated image of a style it handles poorly.

Annotate (= take the ground truth of) one generated image of a held-out style,
fine-tune the built-in model for a wall-clock budget on this CPU, and score
click mIoU (one interior click per object, the card's prompt pipeline) and
automatic F1 (the card's AMG parameters) on other images of that style, before
and after.

    PYTHONPATH=src python benchmarks/finetune.py --style dic --minutes 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import napari_sam
from napari_sam.predict.factory import predictor_for_model
from napari_sam.synthetic_microscopy import make_validation_image
from napari_sam.training.evaluate import automatic_scores, prompted_ious


def score(model, images, labels) -> dict[str, float]:
    predictor = predictor_for_model(model)
    miou = float(np.mean(prompted_ious(predictor, images, labels)))
    print("click mIoU", round(miou, 3), flush=True)
    auto, _ = automatic_scores(predictor, images, labels, **model.card.amg)
    return {"click_miou": round(miou, 3), "automatic_f1": round(float(auto["f1"]), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--style", default="dic")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=400, help="schedule length (the time budget may stop earlier)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--n-test", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--skip-before", action="store_true", help="do not score the base model")
    ap.add_argument("--save", help="save the fine-tuned model here (for scripts/make_finetune_figure.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = (args.size, args.size)
    train_img, train_lab, _ = make_validation_image(args.style, 1000, shape=shape)
    tests = [make_validation_image(args.style, 2000 + i, shape=shape)[:2] for i in range(args.n_test)]
    images, labels = [t[0] for t in tests], [t[1] for t in tests]
    base = napari_sam.load_model("builtin", device="cpu")
    before = None if args.skip_before else score(base, images, labels)
    print("before", before, flush=True)
    t0 = time.monotonic()
    print("training", flush=True)
    tuned = napari_sam.finetune(base, train_img, train_lab, steps=args.steps, lr=args.lr, device="cpu",
                                time_limit_s=60 * args.minutes)
    seconds = time.monotonic() - t0
    if args.save:
        napari_sam.save_model(tuned, args.save)
    after = score(tuned, images, labels)
    print("after", after, flush=True)
    print("steps", tuned.finetune_report["steps_done"], "train seconds", round(seconds, 1), flush=True)
    rep = tuned.finetune_report
    print(json.dumps({"style": args.style, "threads": args.threads, "objects_annotated": rep["objects"],
                      "steps_planned": rep["steps"], "steps_done": rep["steps_done"], "train_seconds": round(seconds, 1),
                      "before": before, "after": after}, indent=2))


if __name__ == "__main__":
    main()
