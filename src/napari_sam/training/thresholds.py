"""Automatic-segmentation thresholds chosen on the user's own annotations.

A fine-tuned model predicts different IoU and stability scores than its base
model, so the base model's recommended ``pred_iou_thresh`` and
``stability_score_thresh`` may keep too few or too many masks.  With the
annotated slices at hand, :func:`tune_amg_thresholds` runs the expensive phase
of automatic generation once per slice (every candidate kept down to the lowest
thresholds tried) and re-filters it for every pair of thresholds on a grid,
keeping the pair with the best F1 against the annotations.  Re-filtering is
exact: the masks for a pair equal those of a fresh run with that pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, report

__all__ = ["tune_amg_thresholds", "PRED_IOU_GRID", "STABILITY_GRID"]

#: predicted-IoU thresholds tried
PRED_IOU_GRID = (0.5, 0.6, 0.7, 0.8, 0.86, 0.9)
#: stability-score thresholds tried
STABILITY_GRID = (0.6, 0.7, 0.8, 0.9, 0.95)


def tune_amg_thresholds(
    model: Any,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    amg: dict[str, Any] | None = None,
    pred_iou_grid: Sequence[float] = PRED_IOU_GRID,
    stability_grid: Sequence[float] = STABILITY_GRID,
    iou_threshold: float = 0.5,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
) -> dict[str, Any]:
    """The pair of automatic thresholds with the best F1 on annotated slices.

    Parameters
    ----------
    model : Sam
    images : sequence of (H, W) or (H, W, 3) arrays
        Slices as the model sees them (any dtype; normalised like inference).
    labels : sequence of (H, W) integer arrays
        Their instance labels (0 = background).
    amg : dict, optional
        AMG parameters to use instead of the model card's.
    pred_iou_grid, stability_grid : sequences of float
        Values tried for ``pred_iou_thresh`` and ``stability_score_thresh``.
    iou_threshold : float
        IoU at which a predicted mask matches an annotated object.

    Returns
    -------
    dict
        ``pred_iou_thresh``, ``stability_score_thresh``, ``f1`` (pooled over
        the slices) and ``f1_card`` (the F1 with the thresholds given in
        ``amg``, for comparison; the pair is only worth using if it is higher).
    """
    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.automatic.labels import masks_to_labels
    from napari_sam.predict.predictor import Predictor
    from napari_sam.training.evaluate import match_instances

    if len(images) != len(labels) or not len(images):
        raise ValueError("give one label image per image, and at least one of each")
    generator = AutomaticMaskGenerator(Predictor(model), **(amg or {}))  # the rest from the model card
    pairs = [(float(i), float(s)) for i in pred_iou_grid for s in stability_grid]
    card_pair = (float(generator.pred_iou_thresh), float(generator.stability_score_thresh))
    if card_pair not in pairs:
        pairs.append(card_pair)
    counts = {pair: np.zeros(3, np.int64) for pair in pairs}  # tp, fp, fn
    floor_iou = min(p[0] for p in pairs)
    floor_stab = min(p[1] for p in pairs)
    for k, (image, lab) in enumerate(zip(images, labels)):
        check_cancelled(cancel)
        channel_axis = -1 if np.ndim(image) == 3 else None
        raw = generator.run_expensive(image, channel_axis=channel_axis, min_pred_iou=floor_iou,
                                      min_stability_score=floor_stab, cancel=cancel)
        for pair in pairs:
            records = generator.filter(raw, pred_iou_thresh=pair[0], stability_score_thresh=pair[1])
            pred = np.asarray(masks_to_labels(records, np.shape(lab)))
            m = match_instances(pred, np.asarray(lab), iou_threshold=iou_threshold)
            counts[pair] += (m["tp"], m["fp"], m["fn"])
        report(progress, k + 1, len(images), "choosing automatic thresholds")

    def f1(pair: tuple[float, float]) -> float:
        tp, fp, fn = (int(v) for v in counts[pair])
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    # best F1; ties go to the stricter pair (fewer, surer masks)
    best = max(pairs, key=lambda p: (f1(p), p[0], p[1]))
    return {"pred_iou_thresh": best[0], "stability_score_thresh": best[1], "f1": f1(best),
            "f1_card": f1(card_pair)}
