"""Train the built-in model v4 on randomised synthetic microscopy (CPU or CUDA, resumable).

SAM's interactive recipe (:mod:`napari_sam.training`): per object one uniform
positive point or a noisy box, then clicks drawn uniformly from the error
region with the previous low-resolution logits fed back as mask prompt;
three ambiguity outputs plus the single output; focal + dice (20:1, focal
ramped in after a dice-only start) and the IoU head's MSE.  Images come from
:mod:`napari_sam.synthetic_microscopy` in DataLoader worker processes and are
normalised and resized exactly as :class:`napari_sam.Predictor` does
(percentile stretch to RGB uint8, long side to the model's input size,
bilinear, padded bottom/right).

The learning-rate and focal schedules run on training *time* (``--budget-s``
over all sessions), so a run stops at any point with a usable model and a
resumed run continues the same schedule.

Usage::

    python scripts/train_v4.py --out runs/v4 --budget-s 480 --device cuda --workers 14 --amp
    python scripts/train_v4.py --out runs/v4 --resume runs/v4 --budget-s 960 ...   # next session

Writes into ``--out`` (each file < 16 MiB): ``best.pt`` (weights with the best
quick validation), ``last.pt`` (weights + step/time/config), ``opt_m.pt`` and
``opt_v.pt`` (AdamW moments, for resuming), ``log.csv``, ``curves.json``,
``summary.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import napari_sam
from napari_sam.synthetic_microscopy import VALIDATION_STYLES, make_training_image, make_validation_image
from napari_sam.training.loop import decode_all, init_for_training
from napari_sam.training.losses import FOCAL_WEIGHT, mask_iou, sam_loss

V4_CONFIG = {
    "image_encoder": {
        "type": "vit", "embed_dim": 160, "depth": 6, "num_heads": 5, "global_attn_indexes": [5],
        "window_size": 16, "patch_size": 8, "img_size": 512, "mlp_ratio": 4.0, "out_chans": 64,
    },
    "prompt_embed_dim": 64,
    "image_size": 512,
    "mask_in_chans": 16,
    "decoder": {"depth": 2, "mlp_dim": 256, "num_heads": 4, "num_multimask_outputs": 3,
                "iou_head_depth": 3, "iou_head_hidden_dim": 64},
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
}


#: v3's encoder (embed 128, depth 4, window 8) at 512 px input: a 64 x 64 token grid, 256 x 256 masks
V4_FROM_V3_CONFIG = {**V4_CONFIG, "image_encoder": {
    "type": "vit", "embed_dim": 128, "depth": 4, "num_heads": 4, "global_attn_indexes": [1, 3],
    "window_size": 8, "patch_size": 8, "img_size": 512, "mlp_ratio": 4.0, "out_chans": 64}}
#: v3's architecture unchanged (256 px input): the configuration a CPU can train in under an hour
V3_ARCH_CONFIG = {**V4_CONFIG, "image_size": 256, "image_encoder": {
    **V4_FROM_V3_CONFIG["image_encoder"], "img_size": 256}}
CONFIGS = {"v4": V4_CONFIG, "v4-from-v3": V4_FROM_V3_CONFIG, "v3-arch": V3_ARCH_CONFIG}


def transplant(state: dict, model) -> dict:
    """Fit a smaller-input checkpoint of the same family into ``model``.

    The absolute position embedding is resized bicubically to the new token
    grid and each relative-position table linearly to its new length (what
    SAM's ``get_rel_pos`` does on the fly); every other tensor must match.
    """
    target = model.state_dict()
    out = {}
    for k, v in state.items():
        want = target[k].shape
        if v.shape == want:
            out[k] = v
        elif k.endswith("pos_embed"):
            grid = F.interpolate(v.permute(0, 3, 1, 2), size=want[1:3], mode="bicubic", align_corners=False)
            out[k] = grid.permute(0, 2, 3, 1).contiguous()
        elif "rel_pos" in k:
            out[k] = F.interpolate(v.t()[None], size=want[0], mode="linear", align_corners=False)[0].t().contiguous()
        else:
            raise ValueError(f"cannot transplant {k}: {tuple(v.shape)} -> {tuple(want)}")
    return out


# ------------------------------------------------------------------ data (worker processes)
def prepare(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator,
            pixel_mean) -> tuple[np.ndarray, np.ndarray]:
    """Flip/rotate, normalise like inference, resize the long side to ``size``, pad with the pixel mean.

    Returns ``(3, size, size) uint8`` RGB (pad: rounded pixel mean) and ``(size, size) int32`` labels.
    """
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    rgb = napari_sam.to_rgb_uint8(np.ascontiguousarray(image))
    h, w = labels.shape
    s = size / max(h, w)
    nh, nw = int(h * s + 0.5), int(w * s + 0.5)  # preprocess_shape of the predictor
    rgb = np.array(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    lab = np.array(Image.fromarray(np.ascontiguousarray(labels).astype(np.int32)).resize((nw, nh), Image.NEAREST))
    out = np.empty((size, size, 3), np.uint8)
    out[:] = np.rint(np.asarray(pixel_mean)).astype(np.uint8)
    out[:nh, :nw] = rgb
    full = np.zeros((size, size), np.int32)
    full[:nh, :nw] = lab
    return np.ascontiguousarray(out.transpose(2, 0, 1)), full


def pick_objects(labels: np.ndarray, k: int, rng: np.random.Generator, min_area: int) -> np.ndarray:
    """Up to ``k`` object masks ``(n, H, W) bool`` with at least ``min_area`` pixels."""
    counts = np.bincount(labels.ravel())
    ids = np.flatnonzero(counts >= min_area)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros((0, *labels.shape), bool)
    chosen = rng.choice(ids, size=min(k, ids.size), replace=False)
    return labels[None] == chosen[:, None, None]


class SyntheticStream(torch.utils.data.IterableDataset):
    """Endless seeded samples ``(image (3,S,S) uint8, gt (n,S,S) bool)``; worker w uses seeds w, w+W, ..."""

    def __init__(self, *, size: int, objects: int, min_area: int, seed0: int, max_side: int, repeats: int,
                 pixel_mean):
        self.size, self.objects, self.min_area = size, objects, min_area
        self.seed0, self.max_side, self.repeats, self.pixel_mean = seed0, max_side, repeats, pixel_mean

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        torch.set_num_threads(1)
        seed = self.seed0 + wid
        while True:
            image, labels, _ = make_training_image(seed, max_side=self.max_side)
            rng = np.random.default_rng([seed, 5])
            for _ in range(self.repeats):  # another view of the same image: flips, other objects
                img, lab = prepare(image, labels, self.size, rng, self.pixel_mean)
                gt = pick_objects(lab, self.objects, rng, self.min_area)
                if gt.shape[0]:
                    yield img, gt
            seed += nw


def collate(items):
    images = torch.from_numpy(np.stack([i for i, _ in items]))
    gt = torch.from_numpy(np.concatenate([g for _, g in items]))
    index = torch.cat([torch.full((g.shape[0],), b, dtype=torch.long) for b, (_, g) in enumerate(items)])
    return images, gt, index


def validation_batch(size: int, per_style: int, objects: int, pixel_mean):
    """A fixed batch: ``per_style`` 384 px images of every validation style."""
    imgs, gts, idx = [], [], []
    rng = np.random.default_rng(123)
    for style in VALIDATION_STYLES:
        for s in range(per_style):
            image, labels, _ = make_validation_image(style, 10_000 + s, shape=(384, 384))
            img, lab = prepare(image, labels, size, rng, pixel_mean)
            gt = pick_objects(lab, objects, rng, 16)
            imgs.append(img)
            gts.append(gt)
            idx += [len(imgs) - 1] * gt.shape[0]
    return torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.concatenate(gts)), torch.tensor(idx)


# ------------------------------------------------------------------ prompts (on the training device)
def uniform_pixel(region: torch.Tensor, gen: torch.Generator):
    """One uniform pixel ``(x, y)`` of each ``(P, H, W)`` region and whether it was non-empty."""
    p, h, w = region.shape
    score = torch.rand((p, h * w), generator=gen, device=region.device)
    score = torch.where(region.reshape(p, -1), score, -1.0)
    flat = score.argmax(dim=1)
    found = region.reshape(p, -1).any(dim=1)
    xy = torch.stack([flat % w, flat // w], dim=1).float()
    return torch.where(found[:, None], xy, 0.0), found


def first_prompts(gt: torch.Tensor, gen: torch.Generator, p_box: float, box_noise: float = 0.1,
                  max_noise: float = 20.0):
    """SAM's first prompt: a uniform positive point or the box jittered by 10 % of its side (<= 20 px)."""
    p, h, w = gt.shape
    xy, _ = uniform_pixel(gt, gen)
    rows, cols = gt.any(dim=2), gt.any(dim=1)
    ar_h, ar_w = torch.arange(h, device=gt.device), torch.arange(w, device=gt.device)
    r0 = torch.where(rows, ar_h, h).min(1).values
    r1 = torch.where(rows, ar_h, -1).max(1).values
    c0 = torch.where(cols, ar_w, w).min(1).values
    c1 = torch.where(cols, ar_w, -1).max(1).values
    boxes = torch.stack([c0, r0, c1, r1], 1).float()
    side = torch.stack([c1 - c0 + 1, r1 - r0 + 1] * 2, 1).float()
    noise = torch.randn((p, 4), generator=gen, device=gt.device) * box_noise * side
    boxes = boxes + noise.clamp(-max_noise, max_noise)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    is_box = torch.rand(p, generator=gen, device=gt.device) < p_box
    return is_box, xy[:, None], boxes


def step_losses(model, images, gt, index, gen, *, n_passes: int, p_box: float, focal_weight: float,
                aux_weight: float, amp: bool):
    """All interactive passes of one batch; returns the mean loss and the logged parts."""
    dev = images.device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        emb = model.image_encoder(model.preprocess(images.float()))
    low_size = 4 * emb.shape[-1]
    factor = images.shape[-1] // low_size
    gt_low = F.avg_pool2d(gt[:, None].float(), factor)[:, 0] if factor > 1 else gt.float()
    is_box, points, boxes = first_prompts(gt, gen, p_box)
    labels = torch.ones(points.shape[:2], dtype=torch.long, device=dev)
    mask_input, rows = None, torch.arange(gt.shape[0], device=dev)
    total, parts = 0.0, {}
    for k in range(n_passes):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            low, iou = decode_all(model, emb, index, points, labels, boxes, is_box, mask_input)
        multimask = (~is_box) & (k == 0)
        res = sam_loss(low.float(), iou.float(), gt_low, multimask, aux_weight=aux_weight, focal_weight=focal_weight)
        total = total + res["loss"]
        if k == 0:
            parts["iou_first"] = float(res["iou"])
        parts["iou_last"] = float(res["iou"])
        if k + 1 < n_passes:
            prim = low[rows, res["primary"]].detach().float()
            mask_input = prim[:, None]
            new_xy, found = uniform_pixel((prim > 0) ^ (gt_low > 0.5), gen)
            col, row = new_xy[:, 0].long(), new_xy[:, 1].long()
            positive = (gt_low > 0.5)[rows, row, col]
            new_lab = torch.where(found, positive.long(), -1)
            points = torch.cat([points, (new_xy * factor + (factor - 1) / 2)[:, None]], 1)
            labels = torch.cat([labels, new_lab[:, None]], 1)
    return total / n_passes, parts


@torch.no_grad()
def quick_validation(model, val, gen_seed: int, amp: bool) -> dict[str, float]:
    """First-prompt mIoU (point: best predicted of the 3 ambiguity outputs; box: single output)."""
    model.eval()
    images, gt, index = val
    dev = images.device
    gen = torch.Generator(device=dev).manual_seed(gen_seed)
    out = {}
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        emb = model.image_encoder(model.preprocess(images.float()))
    _, points, boxes = first_prompts(gt, gen, 0.0, box_noise=0.0)
    labels = torch.ones(points.shape[:2], dtype=torch.long, device=dev)
    for name, flag in (("point", False), ("box", True)):
        is_box = torch.full((gt.shape[0],), flag, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            low, iou = decode_all(model, emb, index, points, labels, boxes, is_box, None)
        logits = F.interpolate(low.float(), size=gt.shape[-2:], mode="bilinear", align_corners=False)
        pick = iou.float()[:, 1:].argmax(1) + 1 if not flag else torch.zeros(gt.shape[0], dtype=torch.long, device=dev)
        out[f"val_{name}"] = float(mask_iou(logits[torch.arange(gt.shape[0], device=dev), pick], gt).mean())
    model.train()
    return out


# ------------------------------------------------------------------ schedule, state
def lr_at(t: float, lr: float, warmup: float = 0.03, floor: float = 0.05) -> float:
    """Linear warm-up over the first ``warmup`` of the time budget, then cosine to ``floor * lr``."""
    if t < warmup:
        return lr * max(t / warmup, 0.01)
    u = min(1.0, (t - warmup) / (1 - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * u)))


def focal_at(t: float, start: float = 0.1, ramp: float = 0.1) -> float:
    """Dice only for the first ``start`` of the budget, then a ramp to SAM's 20:1."""
    return FOCAL_WEIGHT * min(1.0, max(0.0, (t - start) / ramp))


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def save_state(out: Path, model, opt, step: int, elapsed: float, args) -> None:
    cpu = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    _save({"model": cpu, "step": step, "elapsed": elapsed, "config": CONFIGS[args.config],
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}, out / "last.pt")
    names = {id(p): n for n, p in model.named_parameters()}
    for key, fname in (("exp_avg", "opt_m.pt"), ("exp_avg_sq", "opt_v.pt")):
        moments = {names[id(p)]: s[key].detach().cpu() for p, s in opt.state.items() if key in s}
        steps = {names[id(p)]: float(s["step"]) for p, s in opt.state.items() if "step" in s}
        _save({"moments": moments, "steps": steps}, out / fname)


def load_state(src: Path, model, opt) -> tuple[int, float]:
    last = torch.load(src / "last.pt", weights_only=True)
    model.load_state_dict(last["model"], strict=True)
    params = dict(model.named_parameters())
    m, v = (torch.load(src / f, weights_only=True) for f in ("opt_m.pt", "opt_v.pt"))
    for name, p in params.items():
        if name in m["moments"]:
            dev = p.device
            opt.state[p] = {"step": torch.tensor(m["steps"][name]), "exp_avg": m["moments"][name].to(dev),
                            "exp_avg_sq": v["moments"][name].to(dev)}
    return int(last["step"]), float(last["elapsed"])


def export_card(run: Path, dest: Path, quality: Path | None) -> None:
    """Write ``dest/builtin_model.pt`` (float32 state_dict of ``run/best.pt``) and its card ``builtin_model.json``.

    The card holds the config, sha256, recommended AMG parameters (the best
    setting for model "v4" in a ``benchmarks/quality.py`` report, if given)
    and the training facts from ``run/summary.json``.
    """
    import hashlib

    summary = json.loads((run / "summary.json").read_text())
    state = torch.load(run / "best.pt", weights_only=True)
    dest.mkdir(parents=True, exist_ok=True)
    pt = dest / "builtin_model.pt"
    torch.save({k: v.to(torch.float32).contiguous() for k, v in state.items()}, pt)
    amg = {}
    if quality is not None:
        report = json.loads(quality.read_text())
        amg = {**{k: v for k, v in report["amg_fixed"].items() if k != "points_per_side"},
               **report["amg_best"]["v4"]["params"]}
    card = {
        "name": "builtin",
        "version": 4,
        "config": summary["config"],
        "sha256": hashlib.sha256(pt.read_bytes()).hexdigest(),
        "n_parameters": int(sum(v.numel() for v in state.values())),
        "amg": amg,
        "prompt_pipeline": "plain",
        "training": {"script": "scripts/train_v4.py", "command": summary["command"], "steps": summary["steps"],
                     "seconds": summary["seconds"], "device": summary["device"], "best": summary["best"],
                     "data": "napari_sam.synthetic_microscopy training styles (seeded stream)"},
    }
    (dest / "builtin_model.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {pt} ({pt.stat().st_size / 2**20:.1f} MiB) and its card")


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", type=Path, default=None, help="folder with last.pt, opt_m.pt, opt_v.pt")
    p.add_argument("--budget-s", type=float, default=480.0, help="training seconds of the whole schedule")
    p.add_argument("--stop-s", type=float, default=None, help="stop this session after so many seconds")
    p.add_argument("--max-steps", type=int, default=None, help="stop after so many steps (tests)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=16, help="images per batch")
    p.add_argument("--objects", type=int, default=8, help="prompted objects per image")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="views per generated image")
    p.add_argument("--max-side", type=int, default=640)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--p-box", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", choices=sorted(CONFIGS), default="v4")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from these weights (a state_dict, resized by transplant()); no dice-only start")
    p.add_argument("--val-every-s", type=float, default=30.0)
    p.add_argument("--save-every-s", type=float, default=90.0)
    p.add_argument("--val-per-style", type=int, default=2)
    p.add_argument("--export", type=Path, default=None,
                   help="no training: write --out's best.pt as DIR/builtin_model.pt with its card json")
    p.add_argument("--quality", type=Path, default=None, help="with --export: benchmarks/quality.py report")
    args = p.parse_args(argv)
    if args.export is not None:
        export_card(args.out, args.export, args.quality)
        return 0

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = CONFIGS[args.config]
    model = napari_sam.build_model(config)
    size = config["image_size"]
    if args.init_from is not None:
        model.load_state_dict(transplant(torch.load(args.init_from, weights_only=True), model), strict=True)
    else:
        init_for_training(model, gain=3.0)
    model.to(dev).train()
    decay = [q for n, q in model.named_parameters() if q.ndim > 1 and "pos" not in n]
    no_decay = [q for n, q in model.named_parameters() if not (q.ndim > 1 and "pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    step, elapsed0 = 0, 0.0
    if args.resume is not None:
        step, elapsed0 = load_state(args.resume, model, opt)
        print(f"resumed at step {step}, {elapsed0:.0f} s of {args.budget_s:.0f}", flush=True)
    seed0 = args.seed * 10_000_000 + step * args.images  # a resumed run draws new images
    stream = SyntheticStream(size=size, objects=args.objects, min_area=16, seed0=seed0, max_side=args.max_side,
                             repeats=args.repeats, pixel_mean=V4_CONFIG["pixel_mean"])
    loader = torch.utils.data.DataLoader(
        stream, batch_size=args.images, collate_fn=collate, num_workers=args.workers,
        pin_memory=dev.type == "cuda", persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers > 0 else None)
    val = tuple(t.to(dev) for t in validation_batch(size, args.val_per_style, 6, V4_CONFIG["pixel_mean"]))
    gen = torch.Generator(device=dev).manual_seed(args.seed + step)
    n_params = sum(q.numel() for q in model.parameters())
    print(f"model {n_params / 1e6:.2f} M parameters on {dev}; val {val[1].shape[0]} objects", flush=True)

    fields = ["step", "seconds", "t", "lr", "focal", "loss", "iou_first", "iou_last", "val_point", "val_box",
              "images_per_s", "wait_s"]
    log_path = out / "log.csv"
    new_log = not log_path.exists() or args.resume is None
    log = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.DictWriter(log, fieldnames=fields)
    if new_log:
        writer.writeheader()
    curves: dict[str, list] = {k: [] for k in fields}
    best_path = out / "best.pt"
    best = {"score": -1.0}
    if args.resume is not None and (args.resume / "summary.json").is_file():
        best = json.loads((args.resume / "summary.json").read_text()).get("best", best)
        if args.resume != out and (args.resume / "best.pt").is_file():
            _save(torch.load(args.resume / "best.pt", weights_only=True), best_path)
    start = time.monotonic()
    last_val = last_save = start
    seen = 0
    wait = 0.0
    it = iter(loader)
    try:
        while True:
            now = time.monotonic()
            elapsed = elapsed0 + now - start
            if elapsed >= args.budget_s or (args.stop_s and now - start >= args.stop_s) or \
                    (args.max_steps is not None and step >= args.max_steps):
                break
            t = elapsed / args.budget_s
            lr, fw = lr_at(t, args.lr), (FOCAL_WEIGHT if args.init_from is not None else focal_at(t))
            for g in opt.param_groups:
                g["lr"] = lr
            t_wait = time.monotonic()
            images, gt, index = next(it)
            wait += time.monotonic() - t_wait
            images, gt, index = (x.to(dev, non_blocking=True) for x in (images, gt, index))
            seen += images.shape[0]
            loss, parts = step_losses(model, images, gt, index, gen, n_passes=args.passes, p_box=args.p_box,
                                      focal_weight=fw, aux_weight=0.25, amp=args.amp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            row = {"step": step, "seconds": round(elapsed, 2), "t": round(t, 4), "lr": lr, "focal": fw,
                   "loss": float(loss.detach()), **parts,
                   "images_per_s": round(seen / max(1e-6, time.monotonic() - start), 2), "wait_s": round(wait, 1)}
            done = time.monotonic() - start + elapsed0 >= args.budget_s
            if time.monotonic() - last_val >= args.val_every_s or done:
                row.update(quick_validation(model, val, 7, args.amp))
                last_val = time.monotonic()
                score = row["val_point"] + row["val_box"]
                print(f"step {step} {elapsed:.0f}s loss {row['loss']:.3f} iou {parts['iou_first']:.3f}/"
                      f"{parts['iou_last']:.3f} val point {row['val_point']:.3f} box {row['val_box']:.3f} "
                      f"img/s {row['images_per_s']} wait {wait:.0f}s", flush=True)
                if score > best["score"]:
                    best = {"score": score, "step": step, "val_point": row["val_point"], "val_box": row["val_box"]}
                    _save({k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()},
                          best_path)
            writer.writerow(row)
            for k in fields:
                curves[k].append(row.get(k))
            step += 1
            if time.monotonic() - last_save >= args.save_every_s:
                save_state(out, model, opt, step, elapsed0 + time.monotonic() - start, args)
                log.flush()
                last_save = time.monotonic()
    finally:
        elapsed = elapsed0 + time.monotonic() - start
        row = quick_validation(model, val, 7, args.amp)
        if row["val_point"] + row["val_box"] > best["score"]:
            best = {"score": row["val_point"] + row["val_box"], "step": step, **row}
            _save({k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}, best_path)
        save_state(out, model, opt, step, elapsed, args)
        log.close()
        (out / "curves.json").write_text(json.dumps({k: v for k, v in curves.items()}, default=float))
        summary = {"steps": step, "seconds": round(elapsed, 1), "final": row, "best": best,
                   "images_seen_this_session": seen, "loader_wait_s": round(wait, 1), "device": str(dev),
                   "torch": torch.__version__, "config": config, "command": " ".join([Path(sys.executable).name,
                                                                                          *sys.argv])}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({k: summary[k] for k in ("steps", "seconds", "final", "best", "loader_wait_s")}), flush=True)
    os._exit(0)  # do not wait for the endless loader workers


if __name__ == "__main__":
    raise SystemExit(main())
