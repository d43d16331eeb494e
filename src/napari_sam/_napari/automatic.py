"""Automatic segmentation of the current slice or of every slice, with instant re-filtering.

The expensive phase (image encoder + grid decoding,
``AutomaticMaskGenerator.run_expensive``) runs once per plane and its
candidates are kept; changing a threshold afterwards only re-runs the cheap
phase (``filter`` + ``masks_to_labels``) on the kept candidates.  Tiled runs
(``tile_shape``) keep the candidates of every tile and re-filter the same way:
each tile's kept records are stitched as :func:`napari_sam.tiled.tiles.segment_image`
stitches them, so a re-filter gives what a new tiled run would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_sam._napari.layers import PlaneRef, get_plane, plane_ref
from napari_sam.progress import Cancelled, CancelToken, ProgressCallback, check_cancelled, report

__all__ = ["DEFAULT_PARAMS", "THRESHOLDS", "AutoSession", "auto_tiles", "edited_planes", "offset_labels",
           "plane_digest", "write_undoable"]

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


def auto_tiles(shape: tuple[int, int], predictor: Any) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """``(tile_shape, halo)`` chosen from a plane's ``shape`` and the model's input size.

    A plane larger than the model's input is cut into tiles of the input size
    (objects keep their native scale), as the command line does
    (:func:`napari_sam.volume.source.default_tiles`); a smaller one is not tiled.
    """
    from napari_sam.volume.source import default_tiles, model_input_size

    return default_tiles(int(shape[0]), int(shape[1]), None, None, input_size=model_input_size(predictor))


def plane_digest(labels_layer: Any, ref: PlaneRef) -> str:
    """A fingerprint of plane ``ref`` of ``labels_layer`` (to notice edits made by hand since)."""
    import hashlib

    plane = np.ascontiguousarray(np.asarray(labels_layer.data[ref.selection()]))
    return hashlib.blake2b(plane.tobytes(), digest_size=16).hexdigest() + str(plane.dtype)


def edited_planes(labels_layer: Any, digests: dict[PlaneRef, Any]) -> list[PlaneRef]:
    """The planes of ``digests`` whose pixels are none of the states written (e.g. painted by hand).

    ``digests`` maps a plane to the :func:`plane_digest` written, or a set of
    them (every result written there: undoing back to one is not an edit).
    """
    return [ref for ref, d in digests.items()
            if plane_digest(labels_layer, ref) not in ({d} if isinstance(d, str) else d)]


def write_undoable(labels_layer: Any, results: dict[PlaneRef, np.ndarray], *,
                   base: int = 0) -> tuple[int, dict[PlaneRef, str]]:
    """Replace planes of ``labels_layer`` by ``results`` as ONE undo step (``labels_layer.undo()``).

    Ids are numbered as :meth:`AutomaticSession.write` numbers them; the layer's
    dtype is widened when the ids need it.  Returns the largest id written and
    the :func:`plane_digest` of every written plane.
    """
    from napari_sam._napari.labels import check_writable, widen_for

    check_writable(labels_layer)
    ordered = sorted(results.items(), key=lambda kv: kv[0].key)
    for ref, lab in ordered:
        target_shape = tuple(labels_layer.data.shape[ax] for ax in ref.axes)
        if len(labels_layer.data.shape) != len(ref.index) or target_shape != tuple(lab.shape):
            raise ValueError(f"labels layer {labels_layer.name!r} has shape {tuple(labels_layer.data.shape)}; "
                             "it must have the image's shape (create a new output layer).")
    widen_for(labels_layer, int(base) + sum(int(lab.max(initial=0)) for _, lab in ordered))
    offset = int(base)
    with labels_layer.block_history():
        for ref, lab in ordered:
            new = offset_labels(lab, offset)
            old = np.asarray(labels_layer.data[ref.selection()])
            rows, cols = np.nonzero(new != old)
            if rows.size:
                idx = tuple(rows if ax == ref.axes[0] else cols if ax == ref.axes[1]
                            else np.full(rows.shape, i, np.intp) for ax, i in enumerate(ref.index))
                labels_layer.data_setitem(idx, new[rows, cols], refresh=False)
            offset += int(lab.max(initial=0))
    labels_layer.refresh()
    return offset, {ref: plane_digest(labels_layer, ref) for ref, _ in ordered}


class TiledRaw:
    """The expensive phase of a tiled plane: each tile and its candidates (image coordinates after shift)."""

    def __init__(self, tiles: list, raws: list, shape: tuple[int, int]) -> None:
        self.tiles, self.raws, self.shape = tiles, raws, shape


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
        #: whether the last :meth:`run` was cancelled (with ``keep_partial``)
        self.cancelled = False

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
            progress: ProgressCallback | None = None, cancel: CancelToken = None,
            keep_partial: bool = False) -> dict[PlaneRef, np.ndarray]:
        """Segment the planes ``refs`` (worker-safe); returns ``{ref: (H, W) uint32 labels}``.

        ``params`` override :data:`DEFAULT_PARAMS` (earlier runs and re-filters do not carry over).

        The candidates of each plane (of each tile with ``tile_shape``) are
        kept for :meth:`refilter`.  With ``keep_partial``, a cancel returns
        the planes finished so far (and sets ``self.cancelled``) instead of
        raising :class:`~napari_sam.progress.Cancelled`.
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
        thresholds = {k2: params[k2] for k2 in THRESHOLDS if k2 in params}
        self.cancelled = False
        with self.lock:
            self.params = params
            self.raw = {}
            self.generator = self.make_generator(self.predictor, **params)
            n = len(refs)
            for k, ref in enumerate(refs):
                where = f"slice {k + 1}/{n}: " if n > 1 else ""

                def sub(done: int, total: int, desc: str, k: int = k, where: str = where) -> None:
                    report(progress, k * total + done, n * total, f"{where}{desc}")

                try:
                    check_cancelled(cancel)
                    plane = get_plane(self.image_layer, ref)
                    if tile_shape:
                        raw = self._run_tiles(plane, tile_shape, halo, channel_axis, cl, sub, cancel)
                    else:
                        raw = self.generator.run_expensive(plane, channel_axis=channel_axis, contrast_limits=cl,
                                                           progress=sub, cancel=cancel)
                except Cancelled:
                    if not keep_partial:
                        raise
                    self.cancelled = True
                    break
                self.raw[ref] = raw
                out[ref] = self._labels(raw, ref, thresholds)
            if not self.cancelled:
                report(progress, n, n, "automatic segmentation done")
        return out

    def _run_tiles(self, plane, tile_shape, halo, channel_axis, cl, progress, cancel) -> TiledRaw:
        """The expensive phase of every tile of ``plane`` (tile i/N in the progress)."""
        from napari_sam.automatic.grid import crop_image, spatial_shape
        from napari_sam.tiled.tiles import check_image_shape, tile_grid

        shape = spatial_shape(plane, channel_axis)
        check_image_shape(shape)
        tiles = tile_grid(shape, tile_shape, 0 if halo is None else halo)
        raws = []
        for t, tile in enumerate(tiles):
            check_cancelled(cancel)
            window = np.asarray(crop_image(plane, tile.window, channel_axis))

            def sub(done: int, total: int, desc: str, t: int = t) -> None:
                report(progress, t * total + done, len(tiles) * total, f"tile {t + 1}/{len(tiles)}: {desc}")

            raws.append(self.generator.run_expensive(window, channel_axis=channel_axis, contrast_limits=cl,
                                                     progress=sub, cancel=cancel))
        return TiledRaw(tiles, raws, shape)

    def _labels(self, raw: Any, ref: PlaneRef, thresholds: dict[str, Any]) -> np.ndarray:
        if isinstance(raw, TiledRaw):
            from napari_sam.tiled.stitching import shift_record, stitch_tiles

            per_tile = {tile.index: [shift_record(r, tile.window[0], tile.window[1])
                                     for r in self.generator.filter(tr, **thresholds)]
                        for tile, tr in zip(raw.tiles, raw.raws)}
            records = stitch_tiles(per_tile, raw.tiles, raw.shape)
        else:
            records = self.generator.filter(raw, **thresholds)
        return np.asarray(self.to_labels(records, ref.shape), dtype=np.uint32)

    @property
    def can_refilter(self) -> bool:
        """True after a run: thresholds can change without the model."""
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
            raise ValueError("nothing to re-filter yet: press Run first")
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
