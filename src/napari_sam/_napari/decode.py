"""The prompts of one plane -> one :class:`~napari_sam._napari.preview.ObjectPrediction` per object.

What :meth:`Session.run_prompts <napari_sam._napari.session.Session.run_prompts>`
decodes once the predictor holds the plane's embedding
(:func:`decode_objects`) or once the plane's
:class:`~napari_sam.predict.tiled_embedding.TiledPrompter` drives the predictor
(:func:`decode_tiled`).  The rules are the session's: with no shapes, all
points describe one object; each shape is one object, and a point joins every
box that contains it (with a single box, all points join).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam._napari.preview import ObjectPrediction, is_pipeline
from napari_sam._napari.propagate import mask_input_side, mask_prompt_logits

if TYPE_CHECKING:
    from napari_sam.predict.correction import PreviousResult
    from napari_sam.predict.tiled_embedding import TiledPrompter

__all__ = ["decode_objects", "decode_tiled", "points_in_box"]


def points_in_box(pts: np.ndarray, lab: np.ndarray, box: Any, n_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    """The points (N, 2) and labels (N,) inside ``box`` (r0, c0, r1, c1); all of them when ``n_boxes == 1``."""
    if len(pts) == 0 or n_boxes == 1:
        return pts, lab
    r0, c0, r1, c1 = box
    inside = (pts[:, 0] >= r0) & (pts[:, 0] <= r1) & (pts[:, 1] >= c0) & (pts[:, 1] <= c1)
    return pts[inside], lab[inside]


def decode_objects(predictor: Any, pts: np.ndarray, lab: np.ndarray, shapes: list[dict[str, Any]],
                   previous: PreviousResult | None = None) -> list[ObjectPrediction]:
    """Objects decoded on the embedding ``predictor`` holds (a whole plane).

    ``previous`` (points only): the shown result that ``pts``/``lab``
    correct; it is decoded with one output, as SAM was trained.
    """
    p = predictor
    if not shapes:
        if not (lab > 0).any():
            return []
        # a correction (``previous``: the shown result) gets one output, as SAM was trained
        if previous is not None and is_pipeline(p):
            result = p.predict(pts, lab, multimask=False, previous=previous)
        else:
            mask_input = None if previous is None else previous.logits[None]
            result = p.predict(pts, lab, None, mask_input, multimask=previous is None)
        masks, scores, logits = result
        return [ObjectPrediction(np.asarray(masks, bool), np.asarray(scores), np.asarray(logits),
                                 int(np.argmax(scores)), getattr(result, "window_logits", None))]
    objects = []
    per_box = [points_in_box(pts, lab, s["box_rc"], len(shapes)) for s in shapes]
    # several plain boxes decode in one batched call, unless the predictor has a prompt pipeline:
    # its zoom, refinement and cut act in predict() only
    use_batch = hasattr(p, "predict_batch") and not is_pipeline(p) and \
        all(len(q[0]) == 0 for q in per_box) and all(s["mask"] is None for s in shapes) and len(shapes) > 1
    if use_batch:
        boxes = np.stack([s["box_rc"] for s in shapes])
        if hasattr(p, "masks_from_logits"):  # masks decided at low resolution (napari_sam.predict.upsample)
            res = p.predict_batch(boxes_rc=boxes, multimask=False, upsample=False)
            masks = p.masks_from_logits(res.low_res_logits[:, 0]).cpu().numpy()[:, None]
        else:
            res = p.predict_batch(boxes_rc=boxes, multimask=False)
            masks = res.mask_logits.detach().cpu().numpy() > getattr(p, "mask_threshold", 0.0)
        for b in range(len(shapes)):
            objects.append(ObjectPrediction(masks[b], res.scores[b].detach().cpu().numpy(),
                                            res.low_res_logits[b].detach().cpu().numpy()))
        return objects
    for s, (bp, bl) in zip(shapes, per_box):
        mask_in = None if s["mask"] is None else mask_prompt_logits(s["mask"], size=mask_input_side(p))
        masks, scores, logits = p.predict(bp if len(bp) else None, bl if len(bl) else None,
                                          s["box_rc"], mask_in, multimask=False)
        objects.append(ObjectPrediction(np.asarray(masks, bool), np.asarray(scores), np.asarray(logits)))
    return objects


def decode_tiled(tiler: TiledPrompter, pts: np.ndarray, lab: np.ndarray, shapes: list[dict[str, Any]],
                 previous: PreviousResult | None = None, *, window: tuple | None = None) -> list[ObjectPrediction]:
    """Objects of a tiled plane: each decoded in the tile that holds its prompt.

    A correction (``previous``: points added to the shown object) is decoded
    with all the object's points and the shown mask's logits, in the window
    the shown mask came from (``window``, the shown object's ``tile_window``)
    when it holds the new points (one output, as on a whole-plane embedding).
    """
    if not shapes:
        if not (lab > 0).any():
            return []
        if previous is not None and window is not None:
            res = tiler.predict(pts, lab, mask_input=previous.logits[None], multimask=False, window=window)
        else:
            res = tiler.predict(pts, lab, multimask=len(pts) == 1)
        return [ObjectPrediction(res.masks, res.scores, res.logits, int(np.argmax(res.scores)),
                                 tile_window=res.window)]
    objects = []
    for s in shapes:
        bp, bl = points_in_box(pts, lab, s["box_rc"], len(shapes))
        res = tiler.predict(bp if len(bp) else None, bl if len(bl) else None, s["box_rc"], multimask=False)
        objects.append(ObjectPrediction(res.masks, res.scores, res.logits, tile_window=res.window))
    return objects
