"""An optional stage 3 for the built-in model: the IoU head re-fitted to the prompts the plugin gives.

Tried in session 7 and not shipped: picked on selection images, the re-fitted
head lost on the held-out ones (nuclei clicks 0.844 -> 0.839, boxes 0.904 ->
0.898); docs/builtin-model.md has the numbers.

Stages 1 and 2 train the IoU head as SAM does, on prompts against the whole
image.  The plugin prompts the built-in model through
:class:`~napari_sam.zoom.ZoomPredictor`, which *compares* the head's
predictions: between the three outputs of a click, between the whole view and
a zoomed window, between a click and the box refined from its mask, between a
click and its recentred repeat.  On training images the stage-2 head was off in
exactly those comparisons: it rated window clicks 0.66 against a true 0.75 and
refinement boxes 0.82 against a true 0.78, so refinement replaced click masks
that were better.

This stage freezes everything else and regresses the head (SAM's MSE on the
true IoU of every output) on the IoU tokens of the decoder calls the zoom makes:
clicks and noisy boxes on the whole view, the same prompts in a window around
the object (``context`` times its size, a random flip), and the box of the
best click mask's clicked part in that window (the refinement).  Only the
head's weights change, so the checkpoint keeps the official key set and its
masks are the stage-2 masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_sam.normalize import to_rgb_uint8
from napari_sam.predictor import Predictor
from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, report
from napari_sam.training.data import TrainingPool
from napari_sam.zoom import _clicked_part, zoom_window

__all__ = ["KINDS", "IouSamples", "collect_iou_samples", "comparison_pairs", "fit_iou_head"]

#: what each sample's decoder call was (``IouSamples.kinds`` indexes this)
KINDS = ("view click", "view box", "window click", "window box", "window refinement box")


@dataclass
class IouSamples:
    """IoU-head inputs and targets of many decoder calls.

    Attributes
    ----------
    tokens : (N, C) float32 ndarray
        The IoU token after the two-way transformer (the head's input).
    ious : (N, M + 1) float32 ndarray
        True IoU of each of the decoder's outputs (single output first).
    kinds : (N,) int ndarray
        Index into :data:`KINDS`.
    images : (N,) int ndarray
        Pool index of the image (validation splits by image).
    objects : (N,) int ndarray
        Running index of the prompted object.
    prompts : (N,) int ndarray
        Which prompt of the object (0-2: the three clicks and their
        refinement boxes, 0: the box), so that the same prompt on the whole
        view and in the window can be paired.
    """

    tokens: np.ndarray
    ious: np.ndarray
    kinds: np.ndarray
    images: np.ndarray
    objects: np.ndarray
    prompts: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def _ious(masks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of ``(..., H, W)`` masks with ``(..., H, W)`` truth (broadcast), 1.0 when both are empty."""
    union = np.logical_or(masks, truth).sum((-2, -1))
    inter = np.logical_and(masks, truth).sum((-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


class _TokenRecorder:
    """Records the IoU head's input of every decoder call while active."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.head = model.mask_decoder.iou_prediction_head
        self.tokens: list[torch.Tensor] = []

    def __enter__(self) -> _TokenRecorder:
        self._handle = self.head.register_forward_hook(lambda m, i, o: self.tokens.append(i[0].detach().clone()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def _decode_all(predictor: Predictor, rec: _TokenRecorder, points, boxes, truth: np.ndarray):
    """Tokens ``(B, C)``, true IoUs ``(B, 4)`` and the multimask masks and scores of ``B`` prompts.

    One decoder call gives all four outputs (single output first), as
    ``predict_batch`` with ``multimask=False`` and ``True`` would.
    """
    model = predictor.model
    with torch.inference_mode():
        sparse_points = sparse_boxes = None
        if points is not None:
            xy = torch.as_tensor(predictor._to_model_xy(points), dtype=torch.float, device=predictor.device)
            sparse_points = (xy, torch.ones(xy.shape[:2], dtype=torch.int, device=predictor.device))
        if boxes is not None:
            xyxy = predictor._to_model_xy(np.asarray(boxes, float).reshape(-1, 2, 2)).reshape(-1, 4)
            sparse_boxes = torch.as_tensor(xyxy, dtype=torch.float, device=predictor.device)
        sparse = model.prompt_encoder(points=sparse_points, boxes=sparse_boxes, masks=None)[0]
        _, cache = predictor._image_cache()
        rec.tokens.clear()
        low_res, scores = model.mask_decoder._predict_prepared(cache, sparse, slice(None))
        logits = predictor.upsample_logits(low_res.flatten(0, 1)).unflatten(0, low_res.shape[:2])
    masks = logits.cpu().numpy() > predictor.mask_threshold
    return (rec.tokens[0].cpu().numpy(), _ious(masks, truth[:, None]).astype(np.float32),
            masks[:, 1:], scores[:, 1:].cpu().numpy())


def _clicks(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(3, 2)`` clicks: a random pixel at least half the depth inside, the centre, any pixel."""
    depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(depth >= depth.max() / 2)
    k = rng.integers(len(rows))
    anywhere = np.argwhere(mask)[rng.integers(int(mask.sum()))]
    centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([[rows[k], cols[k]], centre, anywhere], float)


def _flip(points, box, shape, flip_rows: bool, flip_cols: bool):
    """Points ``(N, 2)`` (pixel centres) and boxes ``(B, 4)`` (inclusive) in a flipped window."""
    h, w = shape
    points, box = points.copy(), box.copy()
    if flip_rows:
        points[:, 0] = h - 1 - points[:, 0]
        box[:, [0, 2]] = h - 1 - box[:, [2, 0]]
    if flip_cols:
        points[:, 1] = w - 1 - points[:, 1]
        box[:, [1, 3]] = w - 1 - box[:, [3, 1]]
    return points, box


def collect_iou_samples(
    model: torch.nn.Module,
    pool: TrainingPool,
    *,
    objects_per_image: int = 8,
    context: float = 4.0,
    min_side: int = 128,
    box_noise: float = 0.1,
    extent_jitter: float = 0.15,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
) -> IouSamples:
    """IoU tokens and true IoUs of the decoder calls a zoomed prompt makes, on pool images.

    Per image, up to ``objects_per_image`` random objects; per object three
    clicks (a random pixel at least half the depth inside, the centre, any
    pixel) and a box with SAM's noise (normal, ``box_noise`` of the side),
    prompted on the whole view and in the zoom window around the object's
    (jittered) extent, under a random flip; then the box of each click's best
    mask (its clicked part) in the same window.

    Parameters
    ----------
    model : Sam
        Frozen; only read.
    pool : TrainingPool
        Training images (never validation or evaluation seeds).
    context, min_side : float, int
        The zoom window (as in :func:`napari_sam.zoom.zoom_window`).
    seed : int
        Seed of the object, click, noise and flip choices.

    Returns
    -------
    IouSamples
    """
    whole, window = Predictor(model), Predictor(model)
    tokens, ious, kinds, images, objects, prompts = [], [], [], [], [], []
    n_objects = 0

    def add(t, y, kind, i, which=None):
        tokens.append(t)
        ious.append(y)
        kinds.extend([kind] * len(t))
        images.extend([i] * len(t))
        objects.extend([n_objects] * len(t))
        prompts.extend(range(len(t)) if which is None else which)

    with _TokenRecorder(model) as rec:
        for i in range(len(pool)):
            check_cancelled(cancel)
            rng = np.random.default_rng([seed, int(pool.seeds[i])])
            rgb = to_rgb_uint8(pool.images[i])
            lab = pool.labels[i]
            whole.set_image(rgb)
            ids = np.unique(lab)
            for oid in rng.permutation(ids[ids > 0])[:objects_per_image]:
                truth = lab == oid
                if truth.sum() < 4:
                    continue
                n_objects += 1
                rows, cols = np.nonzero(truth)
                extent = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], float)
                side = np.r_[extent[2:] - extent[:2], extent[2:] - extent[:2]]
                clicks = _clicks(truth, rng)
                box = extent - [0, 0, 1, 1] + rng.normal(0, box_noise, 4) * side
                box = np.clip(box, 0, np.r_[lab.shape, lab.shape] - 1)
                box = np.r_[np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])][None]
                add(*_decode_all(whole, rec, clicks[:, None], None, np.repeat(truth[None], 3, 0))[:2], 0, i)
                add(*_decode_all(whole, rec, None, box, truth[None])[:2], 1, i)
                jittered = extent + rng.normal(0, extent_jitter, 4) * side
                win = zoom_window(jittered, lab.shape, context=context, min_side=min_side)
                if win is None:
                    continue
                r0, c0, r1, c1 = win
                fr, fc = (bool(b) for b in rng.integers(2, size=2))
                flip = (slice(None, None, -1 if fr else 1), slice(None, None, -1 if fc else 1))
                window.set_image(np.ascontiguousarray(rgb[r0:r1, c0:c1][flip]))
                wtruth = np.ascontiguousarray(truth[r0:r1, c0:c1][flip])
                if wtruth.sum() < 4:
                    continue
                wclicks, wbox = _flip(clicks - (r0, c0), box - (r0, c0, r0, c0), wtruth.shape, fr, fc)
                t, y, masks, scores = _decode_all(window, rec, wclicks[:, None], None, np.repeat(wtruth[None], 3, 0))
                add(t, y, 2, i)
                wbox = np.clip(wbox, 0, np.r_[wtruth.shape, wtruth.shape] - 1)
                add(*_decode_all(window, rec, None, wbox, wtruth[None])[:2], 3, i)
                refine, which = [], []
                for k in range(len(wclicks)):
                    part = _clicked_part(masks[k, int(np.argmax(scores[k]))], wclicks[k][None], [1])
                    if part.any():
                        pr, pc = np.nonzero(part)
                        refine.append([pr.min(), pc.min(), pr.max(), pc.max()])
                        which.append(k)
                if refine:
                    refine = np.array(refine, float)
                    add(*_decode_all(window, rec, None, refine, np.repeat(wtruth[None], len(refine), 0))[:2], 4, i,
                        which)
            report(progress, i + 1, len(pool), "collecting IoU-head samples")
    return IouSamples(np.concatenate(tokens).astype(np.float32), np.concatenate(ious),
                      np.asarray(kinds), np.asarray(images), np.asarray(objects), np.asarray(prompts))


def comparison_pairs(samples: IouSamples, *, min_gap: float = 0.02) -> np.ndarray:
    """``(P, 4)`` int pairs ``(row_a, output_a, row_b, output_b)`` of predictions the zoom compares.

    The three outputs of every click (which mask a click returns), and the
    same prompt on the whole view and in the window, output by output
    (``keep_better``).  Pairs whose true IoUs differ by ``min_gap`` or less
    carry no order and are left out.
    """
    pairs = []
    for row in np.nonzero(np.isin(samples.kinds, (0, 2)))[0]:
        pairs += [(row, a, row, b) for a, b in ((1, 2), (1, 3), (2, 3))]
    for view, win, outputs in ((1, 3, (0,)), (0, 2, (1, 2, 3))):
        at = {(o, q): r for r, o, q in zip(np.nonzero(samples.kinds == view)[0],
                                           samples.objects[samples.kinds == view],
                                           samples.prompts[samples.kinds == view])}
        for r, o, q in zip(np.nonzero(samples.kinds == win)[0], samples.objects[samples.kinds == win],
                           samples.prompts[samples.kinds == win]):
            if (o, q) in at:
                pairs += [(at[o, q], k, r, k) for k in outputs]
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 4)
    gap = samples.ious[pairs[:, 0], pairs[:, 1]] - samples.ious[pairs[:, 2], pairs[:, 3]]
    return pairs[np.abs(gap) > min_gap]


def fit_iou_head(
    model: torch.nn.Module,
    samples: IouSamples,
    *,
    epochs: int = 40,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 256,
    rank_weight: float = 1.0,
    rank_scale: float = 20.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Regress the model's IoU head on ``samples``, in place; nothing else changes.

    The loss is SAM's MSE on the true IoU of every output plus
    ``rank_weight`` times a ranking term over :func:`comparison_pairs`: a
    logistic loss on the difference of the two predictions
    (``softplus(-sign(dy) * rank_scale * dp)``) weighted by the difference of
    the true IoUs ``|dy|``, so that the comparisons the zoom makes come out the
    way the true IoUs do.  Each step takes ``batch_size`` samples and the same
    share of the pairs.  Every 10th image (``samples.images % 10 == 9``) is
    held out and only reported; the head of the last epoch is kept.

    Returns
    -------
    dict
        ``before`` / ``after`` (held-out ``mse``, ``rank_loss``, and
        ``pair_accuracy``: the share of held-out pairs, weighted by ``|dy|``,
        that the head orders as the truth does), ``history``
        (``[epoch, held-out mse, held-out rank loss, pair accuracy]``),
        ``n_train``, ``n_val``, ``n_pairs``.
    """
    if len(samples) == 0:
        raise ValueError("no IoU-head samples: the pool has no objects")
    held_out = samples.images % 10 == 9
    train, val = np.nonzero(~held_out)[0], np.nonzero(held_out)[0]
    if not len(val) or not len(train):
        raise ValueError("fit_iou_head needs at least 10 images (every 10th is held out)")
    torch.manual_seed(seed)
    head = model.mask_decoder.iou_prediction_head
    x = torch.from_numpy(samples.tokens)
    y = torch.from_numpy(samples.ious).float()
    pairs = torch.from_numpy(comparison_pairs(samples))
    gap = y[pairs[:, 0], pairs[:, 1]] - y[pairs[:, 2], pairs[:, 3]]
    pair_val = torch.from_numpy(held_out)[pairs[:, 0]]
    train_pairs, val_pairs = torch.nonzero(~pair_val)[:, 0], torch.nonzero(pair_val)[:, 0]

    def rank_loss(idx: torch.Tensor) -> torch.Tensor:
        p = pairs[idx]
        diff = head(x[p[:, 0]])[torch.arange(len(p)), p[:, 1]] - head(x[p[:, 2]])[torch.arange(len(p)), p[:, 3]]
        return (torch.nn.functional.softplus(-torch.sign(gap[idx]) * rank_scale * diff) * gap[idx].abs()).mean()

    def held_out_scores() -> dict[str, float]:
        with torch.no_grad():
            pred = head(x)
            p = pairs[val_pairs]
            agree = torch.sign(pred[p[:, 0], p[:, 1]] - pred[p[:, 2], p[:, 3]]) == torch.sign(gap[val_pairs])
            weight = gap[val_pairs].abs()
            return {"mse": float(((pred[val] - y[val]) ** 2).mean()),
                    "rank_loss": float(rank_loss(val_pairs)) if len(val_pairs) else 0.0,
                    "pair_accuracy": float((agree * weight).sum() / weight.sum()) if len(val_pairs) else 1.0}

    was_training = head.training
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    try:
        result: dict[str, Any] = {"before": held_out_scores(), "history": [], "n_train": len(train),
                                  "n_val": len(val), "n_pairs": len(pairs)}
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        head.train()
        steps = max(1, len(train) // batch_size)
        for epoch in range(epochs):
            rng = np.random.default_rng([seed, epoch])
            order = torch.from_numpy(rng.permutation(train))
            pair_order = train_pairs[torch.from_numpy(rng.permutation(len(train_pairs)))]
            per_step = len(pair_order) // steps
            for s in range(steps):
                b = order[s * batch_size : (s + 1) * batch_size]
                loss = ((head(x[b]) - y[b]) ** 2).mean()
                if rank_weight and per_step:
                    loss = loss + rank_weight * rank_loss(pair_order[s * per_step : (s + 1) * per_step])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if (epoch + 1) % 10 == 0 or epoch == epochs - 1:
                h = held_out_scores()
                result["history"].append([epoch, h["mse"], h["rank_loss"], h["pair_accuracy"]])
        result["after"] = held_out_scores()
    finally:
        head.train(was_training)
        for n, p in model.named_parameters():
            p.requires_grad_(trainable[n])
    return result
