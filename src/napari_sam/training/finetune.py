"""Fine-tune a SAM model on the user's own instance labels.

Training examples are drawn from the labels as SAM's recipe does (one click or a
noisy box per object, then clicks in the error region with the previous mask fed
back), through :func:`napari_sam.training.loop.train_step`.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_sam.progress import Cancelled, CancelToken, ProgressCallback, check_cancelled, report
from napari_sam.training.data import Batch, augment_pair, pick_objects
from napari_sam.training.inputs import prepare_slices, slices_sha256, split_holdout
from napari_sam.training.loop import TrainConfig, focal_weight_at, lr_at, train_step

__all__ = ["finetune", "evaluate_model"]

#: encoders small enough to train on a CPU (the built-in model's, and test-sized ones)
_SMALL_ENCODER_PARAMS = 5_000_000


def _resolve_model(model: Any, device: Any) -> torch.nn.Module:
    from napari_sam.model.registry import load_model, resolve_device

    if isinstance(model, torch.nn.Module):
        if not hasattr(model, "mask_decoder"):
            raise TypeError(f"finetune expects a SAM model (napari_sam.load_model), got {type(model).__name__}.")
        out = copy.deepcopy(model)  # the caller's model stays as it was
    elif isinstance(model, (str, os.PathLike)):
        out = load_model(model)
    else:
        raise TypeError(f"model must be a SAM model, a registry name or a path; got {type(model).__name__}.")
    return out.to(resolve_device(device))


def _sample(rgb: np.ndarray, lab: np.ndarray, idx: list[int], rng: np.random.Generator, *,
            n_images: int, objects_per_image: int, augment: bool, min_area: int = 8):
    """A :class:`Batch` of ``n_images`` slices from ``idx`` (and their positions in ``idx``)."""
    picked = rng.choice(len(idx), size=n_images, replace=len(idx) < n_images)
    imgs, gts, index = [], [], []
    for b, j in enumerate(picked):
        image, labels = rgb[idx[j]], lab[idx[j]]
        if augment:
            image, labels = augment_pair(image, labels, rng)
        masks = pick_objects(labels, rng, objects_per_image=objects_per_image, min_area=min_area)
        if masks is not None:
            gts.append(masks)
            index += [b] * len(masks)
        imgs.append(np.moveaxis(np.asarray(image, np.float32), -1, 0))
    if not gts:
        return None, picked
    batch = Batch(images=torch.as_tensor(np.stack(imgs)), gt=torch.as_tensor(np.concatenate(gts)),
                  image_index=torch.as_tensor(index, dtype=torch.int64))
    return batch, picked


def evaluate_model(model, rgb: np.ndarray, lab: np.ndarray, *, automatic: bool = True,
                   amg: dict[str, Any] | None = None) -> dict[str, float]:
    """Click mIoU (one interior click per object) and automatic F1 on prepared slices."""
    from napari_sam.predict.predictor import Predictor
    from napari_sam.training.evaluate import automatic_scores, prompted_ious

    predictor = Predictor(model)
    out = {"click_miou": float(np.mean(prompted_ious(predictor, list(rgb), list(lab))))}
    if automatic:
        params = dict(getattr(getattr(model, "card", None), "amg", {}) or {}) if amg is None else dict(amg)
        scores, _ = automatic_scores(predictor, list(rgb), list(lab), **params)
        out["automatic_f1"] = float(scores["f1"])
    return out


def _save_state(path: Path, model, opt, step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
    tmp.replace(path)


def finetune(
    model: Any,
    images: Any,
    labels: Any,
    *,
    steps: int = 300,
    train_encoder: bool | None = None,
    validation: float = 0.0,
    validate_automatic: bool = True,
    tune_thresholds: bool = True,
    lr: float = 1e-4,
    n_images: int = 2,
    objects_per_image: int = 8,
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    checkpoint_every_s: float = 60.0,
    time_limit_s: float = math.inf,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
    device: torch.device | str | None = None,
) -> torch.nn.Module:
    """Fine-tune a SAM model on instance labels; returns the trained copy.

    Parameters
    ----------
    model : Sam, str or path
        The base model (not modified), a registry name (``"builtin"``, ``"vit_b"``)
        or a saved model / checkpoint path (:func:`napari_sam.load_model`).
    images : array, path or sequence of them
        2-D ``(Y, X)`` (or ``(Y, X, 3)`` RGB) images or 3-D stacks of them,
        numpy / dask / zarr arrays or TIFF / zarr paths; any dtype, normalised
        like inference (percentile contrast per slice).
    labels : array, path or sequence of them
        Integer instance labels (0 = background), same layout as ``images``.
        Slices without labels are skipped.
    steps : int
        Optimiser steps (a linear warm-up then cosine decay of ``lr``).
    train_encoder : bool, optional
        Train the image encoder too. Default: yes for small encoders (the
        built-in model), no for SAM ViT-B/L/H, whose embeddings are then
        computed once and reused (feasible on a CPU).
    validation : float
        Fraction of the labelled slices held out (the last ones; needs 2 or
        more slices): click mIoU and automatic F1 before and after training
        are put in the report.
    validate_automatic : bool
        Also score automatic segmentation on the held-out slices.
    tune_thresholds : bool
        After training, choose the automatic thresholds (``pred_iou_thresh``,
        ``stability_score_thresh``) with the best F1 on up to four training
        slices (:func:`napari_sam.training.thresholds.tune_amg_thresholds`) and
        put them in the returned model's card when they beat the base card's.
    lr, n_images, objects_per_image, seed
        Learning rate, slices and objects per step, random seed.
    checkpoint : path, optional
        File that receives the weights and optimiser state every
        ``checkpoint_every_s`` seconds and when the run ends or is cancelled.
    resume : bool
        Continue from ``checkpoint`` when it exists.
    time_limit_s : float
        Stop after this many seconds. The schedule is shortened, from the
        time the first steps took, so the learning rate has decayed when the
        limit is reached (``finetune_report["steps"]`` is the schedule run).
    progress, cancel
        Progress callback ``(done, total, desc)`` and cancel token. A cancelled
        run returns the model of the last completed step.
    device : torch.device or str, optional
        Default: CUDA, then MPS, then CPU.

    Returns
    -------
    Sam
        The fine-tuned model in eval mode; ``model.finetune_report`` holds the
        base model, data identity, steps done, validation numbers.

    Raises
    ------
    ValueError, TypeError
        Labels of another shape, empty labels, float labels, fewer than two
        objects, or a bad model.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    if not 0 <= validation < 1:
        raise ValueError(f"validation is the held-out fraction of slices, in [0, 1); got {validation!r}.")
    net = _resolve_model(model, device)
    dev = net.device
    base_card = getattr(net, "card", None)
    size = net.image_size
    rgb, lab, kept = prepare_slices(images, labels, size=size)
    train_idx, val_idx = split_holdout(len(rgb), validation)
    if not any(np.bincount(lab[i].ravel())[1:].max(initial=0) >= 8 for i in train_idx):
        raise ValueError(
            f"every annotated object is smaller than 8 pixels at the model's input size ({size} px); "
            "annotate larger objects or crop the image around them."
        )
    if train_encoder is None:
        train_encoder = sum(p.numel() for p in net.image_encoder.parameters()) <= _SMALL_ENCODER_PARAMS
    report_ = {
        "base": getattr(base_card, "name", "custom"), "train_encoder": bool(train_encoder),
        "data_sha256": slices_sha256(rgb, lab), "slices": len(kept), "train_slices": len(train_idx),
        "objects": int(sum(len(np.unique(lab[i])) - 1 for i in train_idx)), "steps": steps, "lr": lr,
    }
    net.eval()
    if val_idx:
        report_["before"] = evaluate_model(net, rgb[val_idx], lab[val_idx], automatic=validate_automatic)
    for p in net.image_encoder.parameters():
        p.requires_grad_(bool(train_encoder))
    cache = None
    if not train_encoder:  # frozen encoder: embed every training slice once
        with torch.no_grad():
            cache = torch.cat([
                net.image_encoder(net.preprocess(torch.as_tensor(
                    np.moveaxis(rgb[i], -1, 0)[None], dtype=torch.float32, device=dev)))
                for i in train_idx])
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=max(1, min(20, steps // 10)))
    start_step = 0
    ckpt = None if checkpoint is None else Path(checkpoint)
    if resume and ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        net.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
    rng = np.random.default_rng([seed, start_step])
    gen = torch.Generator().manual_seed(seed * 1_000_003 + start_step)
    net.train()
    losses: list[float] = []
    t0 = last_ckpt = time.monotonic()
    step = start_step
    cancelled = False
    try:
        while step < steps and time.monotonic() - t0 < time_limit_s:
            check_cancelled(cancel)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch, picked = _sample(rgb, lab, train_idx, rng, n_images=n_images,
                                    objects_per_image=objects_per_image, augment=bool(train_encoder))
            if batch is None:
                continue
            batch = Batch(batch.images.to(dev), batch.gt.to(dev), batch.image_index.to(dev))
            emb = None if cache is None else cache[torch.as_tensor(picked, device=dev)]
            res = train_step(net, batch, gen, embeddings=emb, focal_weight=focal_weight_at(step, cfg))
            opt.zero_grad(set_to_none=True)
            res["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(res["loss"].detach()))
            step += 1
            cfg = _fit_schedule(cfg, step - start_step, step, time.monotonic() - t0, time_limit_s)
            steps = cfg.steps
            report(progress, step, steps, f"fine-tuning (loss {losses[-1]:.3f})")
            if ckpt is not None and time.monotonic() - last_ckpt > checkpoint_every_s:
                _save_state(ckpt, net, opt, step)
                last_ckpt = time.monotonic()
    except (Cancelled, KeyboardInterrupt) as exc:
        cancelled = True
        if ckpt is not None:
            _save_state(ckpt, net, opt, step)
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        for p in net.parameters():
            p.requires_grad_(True)
        net.eval()
    if ckpt is not None and not cancelled:
        _save_state(ckpt, net, opt, step)
    report_.update(steps=steps, steps_done=step, cancelled=cancelled, seconds=round(time.monotonic() - t0, 1),
                   loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None)
    if tune_thresholds and not cancelled:
        _tune_card_thresholds(net, rgb[train_idx[:4]], lab[train_idx[:4]], report_, progress, cancel)
    if val_idx and not cancelled:
        report_["after"] = evaluate_model(net, rgb[val_idx], lab[val_idx], automatic=validate_automatic)
    net.finetune_report = report_
    net.losses = losses
    return net


def _fit_schedule(cfg: TrainConfig, done: int, step: int, elapsed_s: float, limit_s: float) -> TrainConfig:
    """Shorten the schedule so its decay ends within the time limit.

    Re-estimated every 10 steps from the time per step so far (only ever
    shortened): a run cut by its time limit then ends at a low learning rate
    instead of midway through a schedule sized for more steps.
    """
    if math.isinf(limit_s) or done < 5 or done % 10 not in (0, 5) or step >= cfg.steps:
        return cfg
    per_step = elapsed_s / done
    fits = step + int(0.95 * max(0.0, limit_s - elapsed_s) / per_step)
    if fits >= cfg.steps:
        return cfg
    return replace(cfg, steps=max(step + 1, fits))


def _tune_card_thresholds(net, rgb, lab, report_: dict, progress, cancel) -> None:
    """Thresholds chosen on the training slices go into the model's card when they do better."""
    import dataclasses

    from napari_sam.training.thresholds import tune_amg_thresholds

    try:
        best = tune_amg_thresholds(net, list(rgb), list(lab), progress=progress, cancel=cancel)
    except Cancelled:
        return
    report_["thresholds"] = best
    card = getattr(net, "card", None)
    if card is None or best["f1"] <= best["f1_card"]:
        return
    amg = {**dict(card.amg or {}), "pred_iou_thresh": best["pred_iou_thresh"],
           "stability_score_thresh": best["stability_score_thresh"]}
    net.card = dataclasses.replace(card, amg=amg)
