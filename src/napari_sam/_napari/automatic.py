"""Automatic segmentation of the current slice or of every slice, with instant re-filtering.

The expensive phase (image encoder + grid decoding,
``AutomaticMaskGenerator.run_expensive``) runs once per plane and its
candidates are kept; changing a threshold afterwards only re-runs the cheap
phase (``filter`` + ``masks_to_labels``) on the kept candidates.  Tiled runs
(``tile_shape``) go through :func:`napari_sam.tiled.tiles.segment_image` and are
re-run when thresholds change (the tiler keeps no candidates).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_sam._napari.layers import PlaneRef, get_plane, plane_ref
from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, report

__all__ = ["DEFAULT_PARAMS", "THRESHOLDS", "AutoSession", "offset_labels"]

#: Defaults for fluorescence / EM microscopy: a 32 x 32 grid, slightly looser
#: quality thresholds than SAM's natural-image defaults (0.88 / 0.95), and
#: small islands and holes cleaned up.
DEFAULT_PARAMS: dict[str, Any] = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.80,
    "stability_score_thresh": 0.90,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
    "min_mask_region_area": 25,
}
#: Parameters of the cheap phase: changing them re-filters without the model.
THRESHOLDS = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area")


def _default_generator(predictor: Any, **params: Any) -> Any:
    from napari_sam.automatic.generator import AutomaticMaskGenerator

    return AutomaticMaskGenerator(predictor, **params)


def _default_to_labels(records: Any, shape: tuple[int, int]) -> np.ndarray:
    from napari_sam.automatic.labels import masks_to_labels

    return masks_to_labels(records, shape)


def offset_labels(labels: np.ndarray, offset: int) -> np.ndarray:
    """Return ``labels`` with every non-zero id raised by ``offset`` (a new uint32 array)."""
    out = labels.astype(np.uint32, copy=True)
    out[out > 0] += np.uint32(offset)
    return out


class AutomaticSession:
    """Automatic mask generation on an image layer's planes.

    Parameters
    ----------
    predictor : Predictor-like
        Passed to the generator (``napari_sam.automatic.generator.AutomaticMaskGenerator`` by default).
    image_layer : napari.layers.Image
    make_generator : callable(predictor, **params) -> generator, keyword-only
        Generator factory; the generator needs ``run_expensive(image, *,
        channel_axis, contrast_limits, progress, cancel)`` and
        ``filter(raw, **thresholds)``.
    to_labels : callable(records, shape) -> (H, W) uint32, keyword-only
        Paints records (default ``napari_sam.automatic.labels.masks_to_labels``).
    """

    def __init__(self, predictor: Any, image_layer: Any, *,
                 make_generator: Callable[..., Any] = _default_generator,
                 to_labels: Callable[[Any, tuple[int, int]], np.ndarray] = _default_to_labels) -> None:
        self.predictor = predictor
        self.image_layer = image_layer
        self.make_generator = make_generator
        self.to_labels = to_labels
        self.params: dict[str, Any] = dict(DEFAULT_PARAMS)
        self.generator: Any = None
        self.raw: dict[PlaneRef, Any] = {}
        self.lock = threading.Lock()

    def _contrast_limits(self) -> np.ndarray | None:
        if self.image_layer.rgb:
            return None
        return np.asarray(self.image_layer.contrast_limits, dtype=np.float64)

    def planes(self, dims: Any, *, scope: str = "slice") -> list[PlaneRef]:
        """The plane under ``dims`` (``scope="slice"``) or every plane of the stack (``"stack"``)."""
        ref = plane_ref(self.image_layer, dims)
        if scope == "slice":
            return [ref]
        if scope != "stack":
            raise ValueError(f"scope must be 'slice' or 'stack', got {scope!r}")
        data = self.image_layer.data[0] if self.image_layer.multiscale else self.image_layer.data
        shape = data.shape[:-1] if self.image_layer.rgb else data.shape
        stacked = [ax for ax, i in enumerate(ref.index) if i is not None]
        refs = []
        for idx in np.ndindex(*[shape[ax] for ax in stacked]):
            r = ref
            for ax, i in zip(stacked, idx):
                r = r.with_index(ax, i)
            refs.append(r)
        return refs

    def run(self, refs: list[PlaneRef], *, params: dict[str, Any] | None = None,
            tile_shape: tuple[int, int] | None = None, halo: tuple[int, int] | None = None,
            progress: ProgressCallback | None = None, cancel: CancelToken = None) -> dict[PlaneRef, np.ndarray]:
        """Segment the planes ``refs`` (worker-safe); returns ``{ref: (H, W) uint32 labels}``.

        ``params`` override :data:`DEFAULT_PARAMS` (earlier runs and re-filters do not carry over).

        Without ``tile_shape`` the candidates of each plane are kept for
        :meth:`refilter`.
        """
        params = {**DEFAULT_PARAMS, **(params or {})}
        unknown = set(params) - set(DEFAULT_PARAMS) - {"stability_score_offset", "crop_nms_thresh",
                                                       "crop_overlap_ratio", "crop_n_points_downscale_factor",
                                                       "mask_nms_thresh", "nms_area_bonus"}
        if unknown:
            raise ValueError(f"unknown automatic segmentation parameters: {sorted(unknown)}")
        cl = self._contrast_limits()
        channel_axis = -1 if self.image_layer.rgb else None
        out: dict[PlaneRef, np.ndarray] = {}
        with self.lock:
            self.params = params
            self.raw = {}
            self.generator = None if tile_shape else self.make_generator(self.predictor, **params)
            for k, ref in enumerate(refs):
                check_cancelled(cancel)
                report(progress, k, len(refs), f"segmenting plane {k + 1}/{len(refs)}")
                plane = get_plane(self.image_layer, ref)
                if tile_shape:
                    from napari_sam.tiled.tiles import segment_image

                    out[ref] = np.asarray(segment_image(plane, self.predictor, channel_axis=channel_axis,
                                                        contrast_limits=cl, tile_shape=tile_shape, halo=halo,
                                                        cancel=cancel, **params), dtype=np.uint32)
                    continue
                raw = self.generator.run_expensive(plane, channel_axis=channel_axis, contrast_limits=cl,
                                                   cancel=cancel)
                self.raw[ref] = raw
                out[ref] = self._labels(raw, ref, {k2: params[k2] for k2 in THRESHOLDS if k2 in params})
            report(progress, len(refs), len(refs), "automatic segmentation done")
        return out

    def _labels(self, raw: Any, ref: PlaneRef, thresholds: dict[str, Any]) -> np.ndarray:
        records = self.generator.filter(raw, **thresholds)
        return np.asarray(self.to_labels(records, ref.shape), dtype=np.uint32)

    @property
    def can_refilter(self) -> bool:
        """True after an untiled run: thresholds can change without the model."""
        return self.generator is not None and bool(self.raw)

    def refilter(self, **thresholds: Any) -> dict[PlaneRef, np.ndarray]:
        """Re-apply the cheap phase with new ``thresholds`` to every plane of the last run.

        Raises
        ------
        ValueError
            Unknown threshold names, or no untiled run to re-filter.
        """
        unknown = set(thresholds) - set(THRESHOLDS)
        if unknown:
            raise ValueError(f"only {THRESHOLDS} can be re-filtered, not {sorted(unknown)}")
        if not self.can_refilter:
            raise ValueError("nothing to re-filter: run the automatic segmentation (untiled) first")
        with self.lock:
            self.params.update(thresholds)
            current = {k: self.params[k] for k in THRESHOLDS if k in self.params}
            return {ref: self._labels(raw, ref, current) for ref, raw in self.raw.items()}

    @staticmethod
    def write(labels_layer: Any, results: dict[PlaneRef, np.ndarray], *, base: int = 0) -> int:
        """Write plane results into ``labels_layer``; ids are unique over planes and above ``base``.

        Plane results are numbered 1..N each; the first written plane gets ids
        from ``base + 1``, each next one above the largest id before it.  Pass
        as ``base`` the largest id kept elsewhere in the layer (0 when every
        plane is rewritten).  Only the given planes are written, by plain
        assignment (zarr labels stay on disk; not an undo step).  Returns the
        largest id written.

        Raises
        ------
        ValueError
            When the labels layer's shape differs from the image planes'.
        """
        from napari_sam._napari.labels import check_writable

        check_writable(labels_layer)
        offset = int(base)
        for ref, lab in sorted(results.items(), key=lambda kv: kv[0].key):
            sel = ref.selection()
            target_shape = tuple(labels_layer.data.shape[ax] for ax in ref.axes)
            if len(labels_layer.data.shape) != len(ref.index) or target_shape != tuple(lab.shape):
                raise ValueError(
                    f"labels layer {labels_layer.name!r} has shape {tuple(labels_layer.data.shape)}; "
                    "it must have the image's shape (create a new output layer)."
                )
            labels_layer.data[sel] = offset_labels(lab, offset)
            offset += int(lab.max(initial=0))
        labels_layer.refresh()
        return offset


AutoSession = AutomaticSession
