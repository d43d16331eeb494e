"""The SAM training loop, interactive as in the SAM paper.

Per step: encode a few images once; per sampled object start from one
uniform positive point or a noisy box; run the prompt encoder and mask decoder
``n_passes`` times, each later pass adding one click drawn uniformly from the
error region of the previous mask and feeding the previous low-resolution
logits back as the mask prompt.  Losses of all passes are summed (see
:func:`napari_sam.training.losses.sam_loss`).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, report
from napari_sam.training.data import Batch, TrainingPool, corrective_points, initial_prompts, sample_batch
from napari_sam.training.losses import FOCAL_WEIGHT, mask_iou, sam_loss

__all__ = ["TrainConfig", "train", "train_step", "decode_all", "set_seed", "init_for_training", "focal_weight_at"]


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (all have working defaults)."""

    steps: int = 1000
    lr: float = 1e-3
    min_lr_fraction: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    n_images: int = 4
    objects_per_image: int = 6
    n_passes: int = 3
    p_box: float = 0.5
    aux_weight: float = 0.25
    focal_start: float = 0.15
    focal_ramp: float = 0.15
    init_gain: float = 3.0
    seed: int = 0
    time_limit_s: float = math.inf
    #: stop after this many steps, leaving the schedule (set by ``steps``) unchanged; None: run all
    stop_after: int | None = None
    checkpoint_every_s: float = 180.0
    val_every: int = 100
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


def set_seed(seed: int) -> torch.Generator:
    """Seed numpy-free torch state and return a generator for prompt sampling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_fraction`` of ``lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def focal_weight_at(step: int, cfg: TrainConfig) -> float:
    """Focal-loss weight: 0 (dice only) for the first ``focal_start`` fraction of
    the steps, then a linear ramp over ``focal_ramp`` to SAM's 20 (focal:dice 20:1).

    From a random start the focal term alone drives every mask to empty within
    a few dozen steps (the many easy background pixels win) and the model then
    needs many steps to escape; dice first avoids that collapse.
    """
    start, ramp = cfg.focal_start * cfg.steps, max(1.0, cfg.focal_ramp * cfg.steps)
    return FOCAL_WEIGHT * min(1.0, max(0.0, (step - start) / ramp))


def decode_all(model, embeddings, image_index, points, labels, boxes, is_box, mask_input):
    """Prompt encoder + mask decoder for point-only and box prompts; all tokens.

    Parameters
    ----------
    model : Sam
    embeddings : (B, C, h, w) tensor
    image_index : (P,) int64 tensor
    points : (P, n, 2) float tensor (x, y) or None; labels (P, n) int tensor
        For box prompts column 0 is ignored (the box replaces the first point).
    boxes : (P, 4) float tensor (x0, y0, x1, y1)
    is_box : (P,) bool tensor
    mask_input : (P, 1, 4h, 4w) float tensor or None

    Returns
    -------
    low_res : (P, M, 4h, 4w) float tensor, iou_pred : (P, M) float tensor
    """
    pe = model.prompt_encoder.get_dense_pe()
    outs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for use_box in (False, True):
        idx = torch.nonzero(is_box == use_box).flatten()
        if idx.numel() == 0:
            continue
        pts = None
        if use_box and points.shape[1] > 1:
            pts = (points[idx, 1:], labels[idx, 1:])
        elif not use_box:
            pts = (points[idx], labels[idx])
        sparse, dense = model.prompt_encoder(
            points=pts,
            boxes=boxes[idx] if use_box else None,
            masks=None if mask_input is None else mask_input[idx],
        )
        low, iou = model.mask_decoder.predict_masks(embeddings[image_index[idx]], pe, sparse, dense)
        outs.append((idx, low, iou))
    p = image_index.shape[0]
    low_res = outs[0][1].new_empty((p, *outs[0][1].shape[1:]))
    iou_pred = outs[0][2].new_empty((p, outs[0][2].shape[1]))
    for idx, low, iou in outs:
        low_res = low_res.index_copy(0, idx, low)
        iou_pred = iou_pred.index_copy(0, idx, iou)
    return low_res, iou_pred


def train_step(
    model,
    batch: Batch,
    generator: torch.Generator,
    *,
    n_passes: int = 3,
    p_box: float = 0.5,
    aux_weight: float = 0.25,
    focal_weight: float = FOCAL_WEIGHT,
    embeddings: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Forward all interactive passes of one batch and return the summed loss.

    The caller back-propagates ``result["loss"]``.  Images must already be
    ``model.image_size`` square (no padding), ground truth at the same size.
    ``embeddings`` (``(B, C, h, w)``, one per batch image) skips the image
    encoder: fine-tuning with a frozen encoder passes cached ones.

    Returns
    -------
    dict
        ``loss`` (tensor), ``mask``, ``iou_mse`` (floats, mean over passes),
        ``iou_first``, ``iou_last`` (true IoU of the primary output in the
        first and last pass, floats).
    """
    gt = batch.gt
    size = model.image_size
    if batch.images.shape[-2:] != (size, size) or gt.shape[-2:] != (size, size):
        raise ValueError(f"training images must be {size} x {size}, the model input size")
    if embeddings is None:
        embeddings = model.image_encoder(model.preprocess(batch.images))
    # losses at the decoder's low resolution against area-averaged (soft) ground truth
    low_size = 4 * embeddings.shape[-1]
    factor = size // low_size
    gt_low = F.avg_pool2d(gt[:, None].float(), factor)[:, 0] if factor > 1 else gt.float()
    is_box, points, boxes = initial_prompts(gt, generator, p_box=p_box)
    labels = torch.ones(points.shape[:2], dtype=torch.long, device=gt.device)
    mask_input = None
    rows = torch.arange(gt.shape[0], device=gt.device)
    total, parts = 0.0, {"mask": 0.0, "iou_mse": 0.0}
    for k in range(n_passes):
        low, iou_pred = decode_all(model, embeddings, batch.image_index, points, labels, boxes, is_box, mask_input)
        multimask = (~is_box) & (k == 0)
        res = sam_loss(low, iou_pred, gt_low, multimask, aux_weight=aux_weight, focal_weight=focal_weight)
        total = total + res["loss"]
        parts["mask"] += float(res["mask"]) / n_passes
        parts["iou_mse"] += float(res["iou_mse"]) / n_passes
        if k == 0:
            parts["iou_first"] = float(res["iou"])
        parts["iou_last"] = float(res["iou"])
        if k + 1 < n_passes:
            primary = res["primary"]
            mask_input = low[rows, primary][:, None].detach()
            pred = low[rows, primary].detach() > 0
            new_xy, new_lab = corrective_points(pred, gt_low > 0.5, generator)
            new_xy = new_xy * factor + (factor - 1) / 2  # low-res pixel -> input pixel centre
            points = torch.cat([points, new_xy], dim=1)
            labels = torch.cat([labels, new_lab], dim=1)
    return {"loss": total / n_passes, **parts}


@torch.no_grad()
def quick_validation(model, batch: Batch, generator_seed: int = 12345) -> dict[str, float]:
    """First-pass IoU for single-point and box prompts on a fixed batch."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(generator_seed)
    embeddings = model.image_encoder(model.preprocess(batch.images))
    _, points, boxes = initial_prompts(batch.gt, g, p_box=0.0)
    labels = torch.ones(points.shape[:2], dtype=torch.long)
    out = {}
    for name, is_box in (("point", False), ("box", True)):
        flags = torch.full((batch.gt.shape[0],), is_box)
        low, iou_pred = decode_all(model, embeddings, batch.image_index, points, labels, boxes, flags, None)
        logits = F.interpolate(low, size=batch.gt.shape[-2:], mode="bilinear", align_corners=False)
        if is_box:
            pick = logits[:, 0]
        else:  # predictor behaviour: best predicted IoU among the ambiguity outputs
            best = iou_pred[:, 1:].argmax(dim=1) + 1
            pick = logits[torch.arange(logits.shape[0]), best]
        out[f"val_{name}_miou"] = float(mask_iou(pick, batch.gt).mean())
    model.train(was_training)
    return out


def _save(model, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)


def train(
    model,
    pool: TrainingPool,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    val_batch: Batch | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
) -> dict[str, Any]:
    """Train ``model`` in place; write ``log.csv``, ``last.pt``, ``best.pt``, ``train_config.json``.

    Parameters
    ----------
    model : Sam
    pool : TrainingPool
    cfg : TrainConfig
    out_dir : path
        Created if needed.  ``last.pt`` is written every ``cfg.checkpoint_every_s``
        seconds, so an interrupted run still leaves a usable model; ``best.pt``
        holds the weights with the best quick validation (point + box mIoU).
    val_batch : Batch, optional
        Fixed held-out batch for the quick validation every ``cfg.val_every`` steps.
    progress, cancel
        Progress callback and cancel token; cancelling saves and returns.

    Returns
    -------
    dict
        Summary: steps done, seconds, final and best validation numbers.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    generator = set_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    if cfg.init_gain:
        init_for_training(model, gain=cfg.init_gain)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    fields = ["step", "seconds", "lr", "loss", "mask", "iou_mse", "iou_first", "iou_last",
              "val_point_miou", "val_box_miou"]
    log = open(out / "log.csv", "w", newline="")
    writer = csv.DictWriter(log, fieldnames=fields)
    writer.writeheader()
    start = last_ckpt = time.monotonic()
    best_score, best = -1.0, {}
    step = 0
    try:
        for step in range(cfg.steps):
            check_cancelled(cancel)
            if time.monotonic() - start > cfg.time_limit_s or (cfg.stop_after is not None and step >= cfg.stop_after):
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = sample_batch(pool, rng, n_images=cfg.n_images, objects_per_image=cfg.objects_per_image)
            res = train_step(model, batch, generator, n_passes=cfg.n_passes, p_box=cfg.p_box,
                             aux_weight=cfg.aux_weight, focal_weight=focal_weight_at(step, cfg))
            opt.zero_grad(set_to_none=True)
            res["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            row = {"step": step, "seconds": round(time.monotonic() - start, 2), "lr": lr_at(step, cfg),
                   "loss": float(res["loss"].detach()), **{k: res[k] for k in ("mask", "iou_mse", "iou_first", "iou_last")}}
            if val_batch is not None and ((step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps):
                val = quick_validation(model, val_batch)
                row.update(val)
                score = val["val_point_miou"] + val["val_box_miou"]
                if score > best_score:
                    best_score, best = score, {"step": step, **val}
                    _save(model, out / "best.pt")
            writer.writerow(row)
            log.flush()
            if time.monotonic() - last_ckpt > cfg.checkpoint_every_s:
                _save(model, out / "last.pt")
                last_ckpt = time.monotonic()
            report(progress, step + 1, cfg.steps, "training")
        else:
            step = cfg.steps
    finally:
        _save(model, out / "last.pt")
        log.close()
        model.eval()
    summary = {"steps_done": step, "seconds": time.monotonic() - start,
               "best_validation": best}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def init_for_training(model, *, gain: float = 3.0) -> None:
    """Start the decoder's attention able to match positions (in place).

    In every attention module of the mask decoder's two-way transformer the key
    projection is set equal to the query projection and both are scaled by
    ``gain``: the attention logits then contain ``gain**2 <pe_a W, pe_b W>``,
    a kernel peaked where the positional encodings of a click and an image
    location agree, so image tokens near a click attend to it from the first
    step.  From a random start SAM's decoder must discover this alignment by
    itself, which takes far longer than a CPU training budget allows.  Only
    the initial values change: the architecture (and the official code's
    ability to load the weights) is untouched.
    """
    from napari_sam.model.transformer import Attention

    with torch.no_grad():
        for module in model.mask_decoder.transformer.modules():
            if isinstance(module, Attention):
                module.q_proj.weight.mul_(gain)
                module.k_proj.weight.copy_(module.q_proj.weight)
                module.q_proj.bias.zero_()
                module.k_proj.bias.zero_()
