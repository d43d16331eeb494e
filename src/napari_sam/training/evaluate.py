"""Quality of a SAM model on held-out synthetic images, through the public API.

Everything here goes through :class:`napari_sam.predict.predictor.Predictor` (and
:func:`napari_sam.tiled.tiles.segment_image` for automatic segmentation), with
``(row, col)`` prompts, exactly as a user would call them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, report
from napari_sam.synthetic import boxes_from_labels, sample_point_prompts

__all__ = [
    "object_diameters",
    "correction_click",
    "prompted_ious",
    "disk_baseline_ious",
    "match_instances",
    "automatic_scores",
]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def correction_click(mask: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray | None, int]:
    """SAM's next click of its interactive protocol: ``(point (row, col), label)``.

    The pixel deepest inside the larger error region of ``mask`` against
    ``truth`` (distance transform, the image border counting as outside),
    positive (1) where the mask missed, negative (0) where it took too much;
    ``(None, 0)`` when the mask is exact.
    """
    missed, extra = truth & ~mask, mask & ~truth
    if not (missed.any() or extra.any()):
        return None, 0
    error, label = (missed, 1) if missed.sum() >= extra.sum() else (extra, 0)
    depth = ndi.distance_transform_edt(np.pad(error, 1))[1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(depth)), depth.shape), float), label


def object_diameters(labels: Sequence[np.ndarray]) -> np.ndarray:
    """Equivalent-disk diameter of every object, in the order of :func:`prompted_ious`.

    Returns
    -------
    (N,) float64 ndarray (pixels)
    """
    out = []
    for lab in labels:
        ids = np.unique(lab)
        ids = ids[ids > 0]
        if ids.size:
            out.append(2 * np.sqrt(ndi.sum_labels(np.ones_like(lab), lab, ids) / np.pi))
    return np.concatenate(out) if out else np.zeros(0)


def prompted_ious(
    predictor: Any,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    prompt: Literal["point", "box"] = "point",
    mode: str = "interior",
    seed: int = 0,
    batch: int = 64,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
) -> np.ndarray:
    """IoU of the predicted mask for every object of every image.

    Parameters
    ----------
    predictor : Predictor
    images : sequence of (H, W) arrays
    labels : sequence of (H, W) integer arrays (ground truth, 0 background)
    prompt : {"point", "box"}
        One positive click (``multimask=True``, the mask with the highest
        predicted IoU is kept, as SAM's demo does) or the tight box
        (``multimask=False``).
    mode : str
        Click placement, see :func:`napari_sam.synthetic.sample_point_prompts`.
    seed : int
        Seed of the click positions (image ``i`` uses ``seed + i``).
    batch : int
        Prompts decoded at once.

    Returns
    -------
    (N,) float64 ndarray, one IoU per object (all images concatenated).
    """
    out: list[float] = []
    for i, (image, lab) in enumerate(zip(images, labels)):
        check_cancelled(cancel)
        if lab.max() == 0:
            continue
        predictor.set_image(image)
        if prompt == "point":
            pts, plab, ids = sample_point_prompts(lab, mode=mode, seed=seed + i)
        elif prompt == "box":
            boxes, ids = boxes_from_labels(lab)
        else:
            raise ValueError(f"prompt must be 'point' or 'box'; got {prompt!r}")
        if isinstance(predictor, PromptPipeline):  # its steps act in predict(), one object at a time
            for k, oid in enumerate(ids):
                if prompt == "point":
                    masks, scores, _ = predictor.predict(pts[k], plab[k], multimask=True)
                    m = masks[int(np.argmax(scores))]
                else:
                    m = predictor.predict(box_rc=boxes[k], multimask=False)[0][0]
                out.append(_iou(m, lab == oid))
            report(progress, i + 1, len(images), f"{prompt} prompts")
            continue
        for s in range(0, len(ids), batch):
            sl = slice(s, s + batch)
            if prompt == "point":
                res = predictor.predict_batch(pts[sl], plab[sl], multimask=True)
                best = res.scores.argmax(dim=1)
                logits = res.mask_logits[np.arange(len(best)), best]
            else:
                res = predictor.predict_batch(boxes_rc=boxes[sl], multimask=False)
                logits = res.mask_logits[:, 0]
            masks = (logits > getattr(predictor, "mask_threshold", 0.0)).cpu().numpy()
            for m, oid in zip(masks, ids[sl]):
                out.append(_iou(m, lab == oid))
        report(progress, i + 1, len(images), f"{prompt} prompts")
    return np.asarray(out, dtype=np.float64)


def disk_baseline_ious(labels: Sequence[np.ndarray], *, mode: str = "interior", seed: int = 0) -> np.ndarray:
    """IoU of a trivial "model": a disk of the image's median object radius at the click.

    Same clicks as :func:`prompted_ious` with the same ``mode`` and ``seed``.
    The radius is the median equivalent-disk radius of the ground-truth
    objects of each image (an oracle-informed, generous baseline).

    Returns
    -------
    (N,) float64 ndarray
    """
    out: list[float] = []
    for i, lab in enumerate(labels):
        if lab.max() == 0:
            continue
        pts, _, ids = sample_point_prompts(lab, mode=mode, seed=seed + i)
        areas = ndi.sum_labels(np.ones_like(lab), lab, ids)
        radius = float(np.median(np.sqrt(areas / np.pi)))
        rr, cc = np.mgrid[: lab.shape[0], : lab.shape[1]]
        for p, oid in zip(pts[:, 0], ids):
            disk = (rr - p[0]) ** 2 + (cc - p[1]) ** 2 <= radius**2
            out.append(_iou(disk, lab == oid))
    return np.asarray(out, dtype=np.float64)


def match_instances(pred: np.ndarray, gt: np.ndarray, *, iou_threshold: float = 0.5) -> dict[str, float]:
    """Instance-level precision, recall and F1 at an IoU threshold.

    With ``iou_threshold >= 0.5`` a match is unique (two objects of one label
    image cannot both overlap another object by more than half), so pairs
    above the threshold are counted directly.

    Parameters
    ----------
    pred, gt : (H, W) integer ndarrays, 0 background
    iou_threshold : float in [0.5, 1)

    Returns
    -------
    dict with ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``,
    ``mean_matched_iou``.
    """
    if not 0.5 <= iou_threshold < 1:
        raise ValueError("iou_threshold must be in [0.5, 1) for unique matching")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    g_ids, g_inv = np.unique(gt, return_inverse=True)
    cont = np.zeros((p_ids.size, g_ids.size), np.int64)
    np.add.at(cont, (p_inv.ravel(), g_inv.ravel()), 1)
    p_area, g_area = cont.sum(1), cont.sum(0)
    pi = slice(1, None) if p_ids[0] == 0 else slice(None)  # drop background
    gi = slice(1, None) if g_ids[0] == 0 else slice(None)
    inter, p_area, g_area = cont[pi, gi], p_area[pi], g_area[gi]
    union = p_area[:, None] + g_area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    matched = iou > iou_threshold
    tp = int(matched.sum())
    fp, fn = int(p_area.size - tp), int(g_area.size - tp)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1,
            "mean_matched_iou": float(iou[matched].mean()) if tp else 0.0}


def automatic_scores(
    predictor: Any,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    iou_threshold: float = 0.5,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
    **amg_params: Any,
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Automatic segmentation (``segment_image``) scored against the ground truth.

    Parameters
    ----------
    predictor : Predictor
    images, labels : sequences of (H, W) arrays
    iou_threshold : float
        Match threshold for :func:`match_instances`.
    **amg_params
        Passed to :func:`napari_sam.tiled.tiles.segment_image` (AMG parameters).

    Returns
    -------
    scores : dict
        Pooled ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1`` over all images.
    predictions : list of (H, W) uint32 label images
    """
    from napari_sam.tiled.tiles import segment_image

    tp = fp = fn = 0
    preds = []
    for i, (image, lab) in enumerate(zip(images, labels)):
        check_cancelled(cancel)
        pred = np.asarray(segment_image(image, predictor, **amg_params))
        preds.append(pred)
        m = match_instances(pred, lab, iou_threshold=iou_threshold)
        tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
        report(progress, i + 1, len(images), "automatic segmentation")
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}, preds
