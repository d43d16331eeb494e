"""Automatic mask generation (AMG): SAM prompted by a grid of points.

Same parameters, defaults and algorithm as the official
``SamAutomaticMaskGenerator``, organised in two phases:

* :meth:`AutomaticMaskGenerator.run_expensive` embeds every crop and decodes
  every grid point (3 masks per point), keeping every candidate that *any*
  threshold setting down to ``pred_iou_thresh - refilter_margin`` /
  ``stability_score_thresh - refilter_margin`` could need.  The predicted-IoU
  filter runs on the decoder scores before upsampling, so only candidates
  that pass it are upsampled; masks are stored bbox-local (no full-image
  masks, no RLE).
* :meth:`AutomaticMaskGenerator.filter` applies the thresholds, box NMS per
  crop, NMS across crops and the optional small-region cleanup.  It never
  runs the model, so moving a slider re-filters in milliseconds.

:func:`~napari_sam.automatic.labels.masks_to_labels` paints the records into a
label image.  The parameters are an :class:`~napari_sam.automatic.params.AmgParams`;
the maths lives in :mod:`~napari_sam.automatic.grid`, :mod:`~napari_sam.automatic.regions`
and :mod:`~napari_sam.automatic.nms`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.automatic._candidates import Candidates, decode_batch, record_at
from napari_sam.automatic.defaults import FROM_CARD
from napari_sam.automatic.grid import (
    batch_slices,
    build_all_layer_point_grids,
    crop_image,
    generate_crop_boxes,
    global_contrast_limits,
    spatial_shape,
)
from napari_sam.automatic.nms import mask_nms, nms
from napari_sam.automatic.params import AmgParams
from napari_sam.automatic.records import MaskRecord, RawMasks
from napari_sam.automatic.regions import postprocess_small_regions
from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, report

__all__ = ['AutomaticMaskGenerator']


#: box IoU above which the mask NMS drops a candidate before comparing masks (SAM's box_nms_thresh)
_DUPLICATE_BOX_IOU = 0.7


_UNSET: Any = object()  # filter(): "use the generator's setting" where None is a value


class AutomaticMaskGenerator:
    """Grid-prompted SAM over one 2D image (optionally with crop layers).

    Every parameter left out takes the value recommended by the card of
    ``predictor.model`` (``model.card.amg``, see :func:`napari_sam.model_card`),
    else SAM's default (:data:`napari_sam.automatic.defaults.SAM_DEFAULTS`,
    given below); an argument you pass always wins.  Give the parameters as
    one :class:`~napari_sam.automatic.params.AmgParams` (``params=``), as
    keywords, or both (the keywords are folded into ``params`` and win).
    ``self.amg`` holds the values in use (``self.params``: the same as a dict);
    each parameter is also an attribute, as in the official generator
    (``gen.pred_iou_thresh = 0.8`` checks the value and updates ``amg``).
    Values out of range (a threshold outside [0, 1] or NaN, a count below 1)
    raise ``ValueError``.

    Parameters
    ----------
    predictor : napari_sam.predict.predictor.Predictor
        Anything with ``set_image``, ``predict_batch(..., upsample=False)``,
        ``upsample_logits`` and ``mask_threshold``; its ``model.card``, when
        there is one, supplies the defaults.
    params : AmgParams, optional
        All parameters at once; fields left at ``FROM_CARD`` follow the card.
    points_per_side : int or None
        Grid points per side of layer 0 (``None`` requires ``point_grids``); SAM: 32.
    points_per_batch : int
        Points decoded together (memory vs speed).
    pred_iou_thresh : float
        Keep masks whose predicted IoU is ``> pred_iou_thresh`` (0 disables); SAM: 0.88.
    stability_score_thresh : float
        Keep masks whose stability score is ``>= stability_score_thresh`` (0 disables); SAM: 0.95.
    stability_score_offset : float
        Logit offset of the stability score.
    box_nms_thresh : float
        Box IoU above which the lower-scoring mask of a crop is dropped.
    crop_n_layers : int
        Extra crop layers; layer ``i`` has ``(2**i)**2`` crops.
    crop_nms_thresh : float
        Box IoU for the NMS across crops (smaller crops win).
    crop_overlap_ratio : float
        Overlap of neighbouring crops as a fraction of the short image side (layer 1).
    crop_n_points_downscale_factor : int
        Layer ``i`` uses ``points_per_side / factor**i`` points per side.
    point_grids : list of (N, 2) arrays, optional
        Explicit normalised ``(row, col)`` grids in [0, 1], one per layer.
    min_mask_region_area : int
        If > 0, fill holes and remove islands smaller than this (pixels), then NMS again.
    mask_nms_thresh : float or None
        None (default): SAM's box NMS (``box_nms_thresh`` in each crop, then
        ``crop_nms_thresh`` across crops).  A value in [0, 1]: mask NMS
        instead, over all crops at once (:func:`napari_sam.automatic.nms.mask_nms`):
        a mask is dropped when it overlaps an already kept, better-scored
        mask by more than this fraction of the smaller of the two.  It keeps
        touching objects (whose boxes overlap, their masks hardly) and drops
        fragments inside a kept object.  Near-duplicates (box IoU > 0.7) are
        dropped first by box NMS, as a speed-up; the small-region cleanup runs
        before the mask NMS.
    nms_area_bonus : float
        NMS visits masks by ``predicted_iou + nms_area_bonus * log(area)``
        (0, the default, is SAM's order): a positive value prefers a whole
        object to its parts when the model rates them alike.
    refilter_margin : float
        How far below ``pred_iou_thresh`` / ``stability_score_thresh`` the
        expensive phase keeps candidates, so those thresholds can later be
        lowered by this much without re-running the model.
    upsample_batch : int
        Masks upsampled to full resolution at once (bounds memory: each costs
        ``4 * H * W`` bytes of the crop).
    """

    def __init__(
        self,
        predictor: Any,
        params: AmgParams | None = None,
        *,
        points_per_side: int | None = FROM_CARD,
        points_per_batch: int = FROM_CARD,
        pred_iou_thresh: float = FROM_CARD,
        stability_score_thresh: float = FROM_CARD,
        stability_score_offset: float = FROM_CARD,
        box_nms_thresh: float = FROM_CARD,
        crop_n_layers: int = FROM_CARD,
        crop_nms_thresh: float = FROM_CARD,
        crop_overlap_ratio: float = FROM_CARD,
        crop_n_points_downscale_factor: int = FROM_CARD,
        point_grids: list[np.ndarray] | None = FROM_CARD,
        min_mask_region_area: int = FROM_CARD,
        refilter_margin: float = FROM_CARD,
        upsample_batch: int = FROM_CARD,
        mask_nms_thresh: float | None = FROM_CARD,
        nms_area_bonus: float = FROM_CARD,
    ) -> None:
        given = {k: v for k, v in locals().items() if k in AmgParams.__dataclass_fields__ and v is not FROM_CARD}
        if params is not None and not isinstance(params, AmgParams):
            raise TypeError(f"params must be an AmgParams, got {type(params).__name__}")
        self.predictor = predictor
        self._use((params or AmgParams()).replace(**given).resolve(predictor))
        #: wall and process-CPU seconds spent per phase (accumulated over calls)
        self.timings: dict[str, float] = {
            k: 0.0 for k in ("encoder", "decoder", "postprocess", "encoder_cpu", "decoder_cpu", "postprocess_cpu")
        }

    def _use(self, amg: AmgParams) -> None:
        """Take ``amg`` (every field set) as the parameters in use, with its point grids."""
        if amg.points_per_side is not None:
            grids = build_all_layer_point_grids(amg.points_per_side, amg.crop_n_layers,
                                                amg.crop_n_points_downscale_factor)
        elif amg.point_grids is None:
            raise ValueError("points_per_side=None needs point_grids (one grid per crop layer)")
        else:
            grids = [np.array(g) for g in amg.point_grids]
            if len(grids) != amg.crop_n_layers + 1:
                raise ValueError(f"point_grids needs one grid per layer ({amg.crop_n_layers + 1}), got {len(grids)}")
        #: the parameters in use, all set: SAM's defaults < the model card < ``params`` < the keywords
        self.amg = amg
        #: the same as a dict
        self.params = amg.as_dict()
        #: one normalised point grid per crop layer
        self.point_grids = grids

    # ------------------------------------------------------------------ public
    def generate(
        self,
        image: Any,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: Any = None,
        progress: ProgressCallback | None = None,
        cancel: CancelToken = None,
    ) -> list[MaskRecord]:
        """Segment everything in a 2D image.

        Parameters
        ----------
        image : (H, W) or (H, W, C) / (C, H, W) array (numpy, dask, zarr)
            Not modified.
        channel_axis : int, optional
        channels : sequence of int, optional
            Up to three channels / bands mapped to RGB (see :mod:`napari_sam.normalize`).
        contrast_limits : (C, 2) array-like, optional
            Passed to ``predictor.set_image`` for every crop.  With several
            crops and ``None``, they are estimated once for the whole image
            (:func:`napari_sam.normalize.estimate_contrast_limits`).
        progress, cancel
            See :mod:`napari_sam.progress`; progress is reported per embedded
            crop and per decoded batch.

        Returns
        -------
        list of MaskRecord
        """
        raw = self.run_expensive(
            image,
            channel_axis=channel_axis,
            channels=channels,
            contrast_limits=contrast_limits,
            progress=progress,
            cancel=cancel,
        )
        return self.filter(raw)

    def run_expensive(
        self,
        image: Any,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: Any = None,
        min_pred_iou: float | None = None,
        min_stability_score: float | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelToken = None,
    ) -> RawMasks:
        """Embed every crop and decode every grid point; keep all useful candidates.

        ``min_pred_iou`` / ``min_stability_score`` default to the generator's
        thresholds minus ``refilter_margin`` (``-inf`` when the threshold is
        0, i.e. disabled).  Masks touching an inner crop edge are dropped here
        (that test does not depend on any threshold).
        """
        import time

        image_shape = spatial_shape(image, channel_axis)
        if min(image_shape) < 1:
            raise ValueError(f"image is empty (spatial shape {image_shape})")
        floor_iou = self._floor(self.pred_iou_thresh, min_pred_iou)
        floor_stab = self._floor(self.stability_score_thresh, min_stability_score)
        crop_boxes, layer_idx = generate_crop_boxes(image_shape, self.crop_n_layers, self.crop_overlap_ratio)
        if len(crop_boxes) > 1 and contrast_limits is None:  # one normalisation for every crop
            contrast_limits = global_contrast_limits(image, channel_axis, channels)
        n_batches = [
            -(-len(self.point_grids[int(layer)]) // self.points_per_batch) for layer in layer_idx
        ]
        total = int(sum(n_batches) + len(crop_boxes))
        done = 0
        out = Candidates()
        image_box = (0, 0, image_shape[0], image_shape[1])
        thr = float(getattr(self.predictor, "mask_threshold", 0.0))
        for ci, (box, layer) in enumerate(zip(crop_boxes, layer_idx)):
            check_cancelled(cancel)
            r0, c0, r1, c1 = (int(v) for v in box)
            t0, p0 = time.perf_counter(), time.process_time()
            crop = np.asarray(crop_image(image, box, channel_axis))
            kw = {} if channels is None else {"channels": channels}
            self.predictor.set_image(crop, channel_axis=channel_axis, contrast_limits=contrast_limits, **kw)
            self._tick("encoder", t0, p0)
            done += 1
            report(progress, done, total, f"embedding crop {ci + 1}/{len(crop_boxes)}")
            grid = self.point_grids[int(layer)] * np.array([r1 - r0, c1 - c0], dtype=np.float64)
            for sl in batch_slices(len(grid), self.points_per_batch):
                check_cancelled(cancel)
                decode_batch(self.predictor, grid[sl], box, image_box, mask_threshold=thr, floor_iou=floor_iou,
                             floor_stab=floor_stab, stability_score_offset=self.stability_score_offset,
                             upsample_batch=self.upsample_batch, crop_index=ci, out=out, tick=self._tick)
                done += 1
                report(progress, done, total, f"decoding crop {ci + 1}/{len(crop_boxes)}")
        if hasattr(self.predictor, "reset_image"):
            self.predictor.reset_image()
        return out.to_raw(crop_boxes_rc=crop_boxes, image_shape=image_shape, min_pred_iou=floor_iou,
                          min_stability_score=floor_stab, stability_score_offset=self.stability_score_offset)

    def filter(
        self,
        raw: RawMasks,
        *,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        box_nms_thresh: float | None = None,
        crop_nms_thresh: float | None = None,
        min_mask_region_area: int | None = None,
        mask_nms_thresh: Any = _UNSET,
        nms_area_bonus: float | None = None,
    ) -> list[MaskRecord]:
        """Cheap phase: thresholds, NMS and cleanup on the candidates of ``raw``.

        Every argument defaults to the generator's own setting (for
        ``mask_nms_thresh``, whose None means box NMS, leave it out).  Raising any
        threshold is always exact; ``pred_iou_thresh`` and
        ``stability_score_thresh`` can be lowered down to
        ``raw.min_pred_iou`` / ``raw.min_stability_score`` (by default the
        constructor's thresholds minus ``refilter_margin``).  Lower values
        raise ``ValueError``: the candidates they would add were never
        upsampled, so re-run :meth:`run_expensive` with a lower
        ``min_pred_iou`` / ``min_stability_score``.

        Returns
        -------
        list of MaskRecord
            Equal to what a fresh :meth:`generate` with these thresholds returns.
        """
        import time

        t0, p0 = time.perf_counter(), time.process_time()
        given = {"pred_iou_thresh": pred_iou_thresh, "stability_score_thresh": stability_score_thresh,
                 "box_nms_thresh": box_nms_thresh, "crop_nms_thresh": crop_nms_thresh,
                 "min_mask_region_area": min_mask_region_area, "nms_area_bonus": nms_area_bonus}
        changes = {k: v for k, v in given.items() if v is not None}
        if mask_nms_thresh is not _UNSET:
            changes["mask_nms_thresh"] = mask_nms_thresh
        now = self.amg.replace(**changes)  # checks the values like the constructor
        iou_t, stab_t = now.pred_iou_thresh, now.stability_score_thresh
        box_t, crop_t, min_area = now.box_nms_thresh, now.crop_nms_thresh, now.min_mask_region_area
        mask_t, bonus = now.mask_nms_thresh, now.nms_area_bonus
        for name, value, floor in (
            ("pred_iou_thresh", iou_t, raw.min_pred_iou),
            ("stability_score_thresh", stab_t, raw.min_stability_score),
        ):
            if self._floor(value, None, margin=0.0) < floor:
                raise ValueError(
                    f"{name}={value} is below the {floor:.3f} kept by run_expensive; candidates under "
                    f"that were never upsampled. Run run_expensive again with a lower "
                    f"{'min_pred_iou' if name == 'pred_iou_thresh' else 'min_stability_score'}."
                )
        keep = np.ones(len(raw), dtype=bool)
        if iou_t > 0:
            keep &= raw.predicted_iou > iou_t
        if stab_t > 0:
            keep &= raw.stability_score >= stab_t
        idx = np.flatnonzero(keep)
        score = raw.predicted_iou[idx]  # float32: torchvision orders equal float32 scores by index
        if bonus:
            areas = np.array([max(1, int(np.count_nonzero(raw.masks[i]))) for i in idx], dtype=np.float64)
            score = score.astype(np.float64) + bonus * np.log(areas)
        if mask_t is not None:
            records = self._mask_nms_records(raw, idx, score, mask_t, min_area)
            self._tick("postprocess", t0, p0)
            return records
        # The official order of the survivors matters: each NMS breaks ties by it.
        # Box NMS inside each crop (visiting order: decreasing score), crops in order.
        kept: list[np.ndarray] = []
        for ci in range(len(raw.crop_boxes_rc)):
            sel = np.flatnonzero(raw.crop_index[idx] == ci)
            if len(sel):
                kept.append(sel[nms(raw.boxes_rc[idx[sel]], score[sel], box_t)])
        pos = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        # NMS across crops, scored by 1 / crop area (float32): the smaller crop wins
        if len(raw.crop_boxes_rc) > 1 and len(pos):
            cb = raw.crop_boxes_rc[raw.crop_index[idx[pos]]].astype(np.float32)
            crop_score = np.float32(1.0) / ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1]))
            pos = pos[nms(raw.boxes_rc[idx[pos]], crop_score, crop_t)]
        records = [record_at(raw, int(i)) for i in idx[pos]]
        if min_area > 0 and records:
            records, keep_pos = postprocess_small_regions(
                records, min_area, max(box_t, crop_t), image_shape=raw.image_shape
            )
            pos, records = pos[keep_pos], [records[k] for k in keep_pos]
        order = np.argsort(pos, kind="stable")  # output in candidate order
        self._tick("postprocess", t0, p0)
        return [records[k] for k in order]

    # ----------------------------------------------------------------- helpers
    def _mask_nms_records(
        self, raw: RawMasks, idx: np.ndarray, score: np.ndarray, thresh: float, min_area: int
    ) -> list[MaskRecord]:
        """Near-duplicate box NMS, small-region cleanup, then mask NMS, over all crops."""
        pos = np.sort(nms(raw.boxes_rc[idx], score, _DUPLICATE_BOX_IOU))
        records = [record_at(raw, int(i)) for i in idx[pos]]
        if min_area > 0 and records:  # nms_thresh 1: clean up only, drop nothing
            records, _ = postprocess_small_regions(records, min_area, 1.0, image_shape=raw.image_shape)
        boxes = np.array([r.bbox_rc for r in records], dtype=np.int64).reshape(-1, 4)
        keep = mask_nms([r.mask for r in records], boxes, score[pos], thresh)
        return [records[i] for i in sorted(keep)]

    def _tick(self, phase: str, t0: float, p0: float) -> None:
        import time

        self.timings[phase] += time.perf_counter() - t0
        self.timings[phase + "_cpu"] += time.process_time() - p0

    def _floor(self, thresh: float, explicit: float | None, *, margin: float | None = None) -> float:
        if explicit is not None:
            return float(explicit)
        if thresh <= 0:
            return -np.inf
        return thresh - (self.refilter_margin if margin is None else margin)


def _amg_field(name: str) -> property:
    def get(self: AutomaticMaskGenerator) -> Any:
        return getattr(self.amg, name)

    def set_(self: AutomaticMaskGenerator, value: Any) -> None:
        self._use(self.amg.replace(**{name: value}))

    return property(get, set_, doc=f"``amg.{name}``; setting it checks the value as the constructor does.")


# the official generator's attribute names, kept in step with ``amg`` (the one place the values live)
for _name in AmgParams.__dataclass_fields__:
    if _name != "point_grids":  # ``point_grids`` is the built grids, as in the official generator
        setattr(AutomaticMaskGenerator, _name, _amg_field(_name))
del _name
