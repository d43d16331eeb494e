"""The expensive phase's bookkeeping: decode a batch of grid points into bbox-local candidates.

Used by :class:`~napari_sam.automatic.generator.AutomaticMaskGenerator` only.
A batch of points is decoded at low resolution; candidates whose predicted IoU
clears the floor are upsampled, scored for stability, cut to their bounding
box and kept unless they touch an inner crop edge.  With the stock predictor
on CPU each candidate is upsampled only inside its window
(:mod:`napari_sam.automatic._window`, bit-identical); otherwise
``upsample_batch`` candidates at a time over the whole crop.  :func:`record_at` turns a kept candidate into a :class:`MaskRecord`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from napari_sam.automatic._window import separable_is_exact, windowed_scores
from napari_sam.automatic.grid import batch_slices
from napari_sam.automatic.nms import is_box_near_crop_edge
from napari_sam.automatic.records import MaskRecord, RawMasks
from napari_sam.automatic.regions import masks_to_boxes, stability_score

#: ``tick(phase, wall_start, cpu_start)``: adds the time spent since the starts to ``phase``
Tick = Callable[[str, float, float], None]


class Candidates:
    """Per-candidate lists filled batch by batch; :meth:`to_raw` packs them into :class:`RawMasks`."""

    def __init__(self) -> None:
        self.masks: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []
        self.iou: list[float] = []
        self.stab: list[float] = []
        self.points: list[np.ndarray] = []
        self.crop: list[int] = []

    def to_raw(self, *, crop_boxes_rc: np.ndarray, image_shape: tuple[int, int], min_pred_iou: float,
               min_stability_score: float, stability_score_offset: float) -> RawMasks:
        k = len(self.masks)
        return RawMasks(
            masks=self.masks,
            boxes_rc=np.asarray(self.boxes, dtype=np.int64).reshape(k, 4),
            predicted_iou=np.asarray(self.iou, dtype=np.float32).reshape(k),
            stability_score=np.asarray(self.stab, dtype=np.float32).reshape(k),
            points_rc=np.asarray(self.points, dtype=np.float64).reshape(k, 2),
            crop_index=np.asarray(self.crop, dtype=np.int64).reshape(k),
            crop_boxes_rc=crop_boxes_rc,
            image_shape=image_shape,
            min_pred_iou=min_pred_iou,
            min_stability_score=min_stability_score,
            stability_score_offset=stability_score_offset,
        )


@torch.inference_mode()
def decode_batch(
    predictor: Any,
    points_rc: np.ndarray,
    crop_box: np.ndarray,
    image_box: tuple[int, int, int, int],
    *,
    mask_threshold: float,
    floor_iou: float,
    floor_stab: float,
    stability_score_offset: float,
    upsample_batch: int,
    crop_index: int,
    out: Candidates,
    tick: Tick,
) -> None:
    """Decode ``points_rc`` (crop coordinates) with 3 masks each and add the useful candidates to ``out``."""
    t0, p0 = time.perf_counter(), time.process_time()
    b = len(points_rc)
    pts = np.ascontiguousarray(points_rc[:, None, :], dtype=np.float32)
    labels = np.ones((b, 1), dtype=np.int64)
    gated = np.isfinite(floor_iou) and _gates_masks(predictor)
    if gated:  # masks only for the points with a candidate above the IoU floor (the same masks)
        pred = predictor.predict_batch(pts, labels, multimask=True, upsample=False, min_score=floor_iou)
    else:
        pred = predictor.predict_batch(pts, labels, multimask=True, upsample=False)
    low = pred.low_res_logits
    scores = pred.scores.detach().float().cpu().reshape(-1).numpy()
    c = pred.scores.shape[1]
    low = low.reshape(-1, *low.shape[-2:])
    tick("decoder", t0, p0)
    t0, p0 = time.perf_counter(), time.process_time()
    survivors = np.flatnonzero(scores > floor_iou) if np.isfinite(floor_iou) else np.arange(b * c)
    rows = survivors  # the rows of ``low`` holding the survivors
    if gated and pred.prompt_index is not None:
        row_of_point = np.full(b, -1, dtype=np.int64)
        row_of_point[pred.prompt_index.cpu().numpy()] = np.arange(len(pred.prompt_index))
        rows = row_of_point[survivors // c] * c + survivors % c
    r0, c0 = int(crop_box[0]), int(crop_box[1])
    offset = np.array([r0, c0, r0, c0], dtype=np.int64)
    geometry = _window_geometry(predictor, low)
    if geometry is not None:
        _add_windowed(low, survivors, rows, geometry, scores=scores, points_rc=points_rc, n_per_point=c,
                      crop_box=crop_box, image_box=image_box, mask_threshold=mask_threshold,
                      floor_stab=floor_stab, stability_score_offset=stability_score_offset,
                      crop_index=crop_index, out=out)
        tick("postprocess", t0, p0)
        return
    for sl in batch_slices(len(survivors), upsample_batch):
        sel = survivors[sl]
        logits = predictor.upsample_logits(low[torch.as_tensor(rows[sl], device=low.device)])
        if logits.device.type == "cpu":
            logits = logits.numpy()  # numpy's reductions are far faster than torch's on CPU
        stab = stability_score(logits, mask_threshold, stability_score_offset)
        masks = logits > mask_threshold
        del logits
        boxes, nonempty = masks_to_boxes(masks)
        boxes_img = boxes + offset
        ok = nonempty & (stab >= floor_stab if np.isfinite(floor_stab) else True)
        ok &= ~is_box_near_crop_edge(boxes_img, crop_box, image_box)
        for j in np.flatnonzero(ok):
            lr0, lc0, lr1, lc1 = (int(v) for v in boxes[j])
            local = masks[j, lr0:lr1, lc0:lc1]
            local = local.cpu().numpy() if isinstance(local, torch.Tensor) else local.copy()
            out.masks.append(local)
            out.boxes.append(boxes_img[j])
            out.iou.append(scores[sel[j]])
            out.stab.append(stab[j])
            out.points.append(points_rc[sel[j] // c] + np.array([r0, c0]))
            out.crop.append(crop_index)
    tick("postprocess", t0, p0)


def _gates_masks(predictor: Any) -> bool:
    """Whether ``predictor.predict_batch`` is the stock one (which takes ``min_score``), maybe wrapped."""
    from napari_sam.predict.pipeline import PromptPipeline
    from napari_sam.predict.predictor import Predictor

    if isinstance(predictor, PromptPipeline):
        predictor = predictor.predictor
    return isinstance(predictor, Predictor) and type(predictor).predict_batch is Predictor.predict_batch


def _window_geometry(predictor: Any, low: torch.Tensor) -> dict[str, Any] | None:
    """The resize geometry of ``predictor.upsample_logits`` when it is the stock one on CPU, else None."""
    from napari_sam.predict.predictor import Predictor

    core = getattr(predictor, "predictor", predictor)
    if not isinstance(core, Predictor) or type(core).upsample_logits is not Predictor.upsample_logits:
        return None
    if getattr(predictor, "upsample_logits", None) is None or low.device.type != "cpu":
        return None
    if not separable_is_exact():
        return None
    return {"image_size": int(core.image_size), "input_size": tuple(int(v) for v in core.input_size),
            "original_size": tuple(int(v) for v in core.original_size)}


def _add_windowed(low: torch.Tensor, survivors: np.ndarray, rows: np.ndarray, geometry: dict[str, Any], *,
                  scores: np.ndarray,
                  points_rc: np.ndarray, n_per_point: int, crop_box: np.ndarray,
                  image_box: tuple[int, int, int, int], mask_threshold: float, floor_stab: float,
                  stability_score_offset: float, crop_index: int, out: Candidates) -> None:
    """The candidates of :func:`decode_batch`, upsampled only inside each mask's window (same results).

    ``survivors`` index ``scores`` (point * masks per point + mask), ``rows`` the same candidates in ``low``.
    """
    r0, c0 = int(crop_box[0]), int(crop_box[1])
    sel = torch.as_tensor(rows, dtype=torch.int64)
    found = windowed_scores(low[sel], mask_threshold=mask_threshold, offset=stability_score_offset, **geometry)
    kept, boxes = [], []
    for j, (mask, (wr, wc), stab) in enumerate(found):
        if np.isfinite(floor_stab) and not stab >= floor_stab:
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows) == 0:
            continue
        lr0, lr1, lc0, lc1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        kept.append((j, mask[lr0:lr1, lc0:lc1], stab))
        boxes.append((wr + lr0 + r0, wc + lc0 + c0, wr + lr1 + r0, wc + lc1 + c0))
    boxes_img = np.array(boxes, dtype=np.int64).reshape(-1, 4)
    near = is_box_near_crop_edge(boxes_img, crop_box, image_box)  # one test for the whole batch
    origin = np.array([r0, c0])
    for (j, mask, stab), box, drop in zip(kept, boxes_img, near):
        if drop:
            continue
        out.masks.append(mask.copy())
        out.boxes.append(box)
        out.iou.append(scores[survivors[j]])
        out.stab.append(stab)
        out.points.append(points_rc[survivors[j] // n_per_point] + origin)
        out.crop.append(crop_index)


def record_at(raw: RawMasks, i: int) -> MaskRecord:
    """Candidate ``i`` of ``raw`` as a :class:`MaskRecord` (the mask is shared, not copied)."""
    m = raw.masks[i]
    return MaskRecord(
        mask=m,
        bbox_rc=tuple(int(v) for v in raw.boxes_rc[i]),  # type: ignore[arg-type]
        area=int(m.sum()),
        predicted_iou=float(raw.predicted_iou[i]),
        stability_score=float(raw.stability_score[i]),
        point_rc=(float(raw.points_rc[i, 0]), float(raw.points_rc[i, 1])),
        crop_box_rc=tuple(int(v) for v in raw.crop_boxes_rc[raw.crop_index[i]]),  # type: ignore[arg-type]
    )
