"""The interactive segmentation session: one image layer, one predictor, prompts -> labels.

The session is the Qt-free core of the interactive widget.  It is given a
predictor-like object (dependency injection: the real
:class:`napari_sam.predict.predictor.Predictor` or a stand-in from
:mod:`napari_sam._napari._testing`) and works on napari model objects only
(``viewer.dims``, layers), so every behaviour is testable with
``ViewerModel``.

Threading: :meth:`Session.prepare` (the image encoder) may run in a worker
thread; every use of the predictor holds ``Session.lock`` and first makes the
predictor hold the right slice's embedding, so a preview and a background
propagation can never mix slices up.  The on-disk embedding cache is read
where the encoder would run (a worker), never by the main-thread helpers
(:meth:`Session.collect_prompts`, :meth:`Session.has_embedding`).

Which cache entry holds which slice or tile is
:mod:`napari_sam._napari.session_cache`; how the prompts of a plane become
objects is :mod:`napari_sam._napari.decode`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam._napari import labels as _labels
from napari_sam._napari.decode import decode_objects, decode_tiled
from napari_sam._napari.layers import PlaneRef, get_plane, plane_ref, points_to_prompts, shapes_to_prompts
from napari_sam._napari.preview import ObjectPrediction, Preview, model_card_of, quality_hint
from napari_sam._napari.propagate import propagate_object
from napari_sam._napari.regrid import mask_to_labels_grid, same_grid
from napari_sam._napari.session_cache import DiskCacheMixin
from napari_sam.predict.tiled_embedding import TiledPrompter, needs_tiling
from napari_sam.progress import CancelToken, ProgressCallback, report

if TYPE_CHECKING:
    from napari_sam.predict.correction import PreviousResult

__all__ = ["ObjectPrediction", "Preview", "Session", "model_card_of", "quality_hint"]


class Session(DiskCacheMixin):
    """Interactive SAM on one napari image layer.

    Parameters
    ----------
    predictor : Predictor-like
        ``set_image``, ``predict``, optionally ``predict_batch``,
        ``get_embedding`` / ``set_embedding``.
    image_layer : napari.layers.Image
        The image to segment (any ndim, scale/translate, multiscale: level 0).
    embedding_cache : napari_sam.volume.cache.EmbeddingCache, optional
        On-disk store (``get(slice, tile)``, ``put(slice, tile, embedding)``);
        see also :meth:`open_disk_cache`.  On tiled planes the grid tiles go
        to it too, when its key's tile layout is the session's
        (:meth:`open_disk_cache` makes sure of that).
    max_embeddings : int, keyword-only
        How many slice embeddings to keep in memory (least recently used go).
    tiled : bool or None, keyword-only
        Prompt planes in native-resolution tiles around each prompt
        (:class:`~napari_sam.predict.tiled_embedding.TiledPrompter`).  None
        (default): when the plane's long side exceeds twice the model's input
        size (:func:`~napari_sam.predict.tiled_embedding.needs_tiling`).
    tile_halo : int or None, keyword-only
        Halo of the tiles (None: a quarter of the tile side, see
        :func:`~napari_sam.predict.tiled_embedding.grid_layout`).
    """

    def __init__(self, predictor: Any, image_layer: Any, *, embedding_cache: Any = None,
                 max_embeddings: int = 8, channel_axis: int | None = None, tiled: bool | None = None,
                 tile_halo: int | None = None) -> None:
        if not hasattr(predictor, "predict") or not hasattr(predictor, "set_image"):
            raise TypeError("predictor needs set_image() and predict() (e.g. napari_sam.Predictor)")
        if getattr(image_layer, "_type_string", "image") != "image":
            raise TypeError(f"layer {image_layer.name!r} is not an Image layer")
        self.predictor = predictor
        self.image_layer = image_layer
        self.embedding_cache = embedding_cache
        self.max_embeddings = int(max_embeddings)
        self.channel_axis = -1 if getattr(image_layer, "rgb", False) else channel_axis
        self.lock = threading.RLock()
        self._embeddings: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._held: Any = None
        self._request = 0
        self._max_id: dict[int, int] = {}
        self.preview: Preview | None = None
        self.tiled = tiled
        self.tile_halo = tile_halo
        self._tilers: OrderedDict[tuple, tuple[PlaneRef, TiledPrompter]] = OrderedDict()
        self._tiler_held: TiledPrompter | None = None

    # --- embeddings -------------------------------------------------------------
    def contrast_limits(self) -> np.ndarray | None:
        """The image layer's contrast limits (what the user sees), None for RGB uint8."""
        if getattr(self.image_layer, "rgb", False):
            return None
        return np.asarray(self.image_layer.contrast_limits, dtype=np.float64)

    def plane(self, dims: Any) -> PlaneRef:
        """The image plane currently shown by ``dims``."""
        return plane_ref(self.image_layer, dims)

    def _key(self, ref: PlaneRef) -> tuple:
        """The memory-cache key of slice ``ref``: its index and the contrast limits it was embedded with."""
        cl = self.contrast_limits()
        return (ref.key, None if cl is None else tuple(np.round(cl.ravel(), 6)))

    def uses_tiles(self, ref: PlaneRef) -> bool:
        """Whether prompts on ``ref`` are decoded in tiles (see ``tiled``)."""
        return self._tiles_shape(ref.shape)

    def _tiles_shape(self, shape: tuple[int, ...]) -> bool:
        if self.tiled is not None:
            return bool(self.tiled)
        size = getattr(self.predictor, "image_size", None)
        return size is not None and needs_tiling(shape, int(size))

    def has_embedding(self, ref: PlaneRef) -> bool:
        """Whether the slice ``ref`` is ready without running the encoder (tiled planes: always)."""
        if self.uses_tiles(ref):
            return True
        return self._key(ref) in self._embeddings

    def tiler(self, ref: PlaneRef) -> TiledPrompter:
        """The :class:`~napari_sam.predict.tiled_embedding.TiledPrompter` of plane ``ref`` (made on first use)."""
        key = self._key(ref)
        if key not in self._tilers:
            data = self.image_layer.data[0] if self.image_layer.multiscale else self.image_layer.data
            self._tilers[key] = (ref, TiledPrompter(
                self.predictor, data[ref.selection()], contrast_limits=self.contrast_limits(),
                channel_axis=self.channel_axis, halo=self.tile_halo, store=self._tile_store(ref)))
            while len(self._tilers) > 2:
                self._tilers.popitem(last=False)
        self._tilers.move_to_end(key)
        return self._tilers[key][1]

    def prepare(self, ref: PlaneRef, *, progress: ProgressCallback | None = None, whole: bool = False) -> None:
        """Make the predictor hold slice ``ref`` (memory cache, disk cache or encoder).

        On a tiled plane (:meth:`uses_tiles`) nothing is embedded here: tiles
        are embedded when a prompt needs them, unless ``whole=True`` (the whole
        plane at the model's input size, as propagation uses).  Safe to call
        from a worker thread.
        """
        if not whole and self.uses_tiles(ref):
            return
        with self.lock:
            key = self._key(ref)
            cl = self.contrast_limits()
            if self._held == key:
                return
            if key in self._embeddings:
                self._embeddings.move_to_end(key)
                self.predictor.set_embedding(self._embeddings[key])
                self._held = key
                return
            cached = self._disk_get(ref)
            if cached is not None:
                self.predictor.set_embedding(cached)
            else:
                where = f"slice {', '.join(str(i) for i in ref.key)}" if ref.key else "the image"
                report(progress, 0, 1, f"computing the embedding of {where}")
                plane = get_plane(self.image_layer, ref)
                self.predictor.set_image(plane, channel_axis=self.channel_axis, contrast_limits=cl)
                report(progress, 1, 1, f"embedding of {where} ready")
            self._held = key
            if hasattr(self.predictor, "get_embedding"):
                emb = self.predictor.get_embedding()
                self._embeddings[key] = emb
                if cached is None:
                    self._disk_put(ref, emb)
                while len(self._embeddings) > self.max_embeddings:
                    self._embeddings.popitem(last=False)

    def precompute(self, dims: Any, *, axis: int | None = None, progress: ProgressCallback | None = None,
                   cancel: CancelToken = None) -> int:
        """Compute every slice's embedding along ``axis`` (default: the nearest stacked axis).

        Embeddings go to the on-disk cache when the session has one (and to the
        memory cache otherwise).  Returns the number of slices processed.  On a
        tiled plane (:meth:`uses_tiles`) every tile of the shown plane is
        embedded instead, the tiles its prompts use (written to the on-disk
        cache when there is one, else kept in memory), and the number of tiles
        is returned.
        """
        from napari_sam.progress import check_cancelled

        ref = self.plane(dims)
        if self.uses_tiles(ref):
            tiler = self.tiler(ref)
            return tiler.embed_all(progress=progress, cancel=cancel, guard=lambda: self._using(tiler))
        axis = self.stack_axis(ref) if axis is None else axis
        n = self._shape()[axis]
        for z in range(n):
            check_cancelled(cancel)
            self.prepare(ref.with_index(axis, z), whole=True)
            report(progress, z + 1, n, f"embedding slice {z + 1}/{n}")
        return n

    def _shape(self) -> tuple[int, ...]:
        data = self.image_layer.data[0] if self.image_layer.multiscale else self.image_layer.data
        shape = tuple(int(s) for s in data.shape)
        return shape[:-1] if self.image_layer.rgb else shape

    @staticmethod
    def stack_axis(ref: PlaneRef) -> int:
        """The non-displayed axis nearest the plane (z of (t, z, y, x)); ValueError for 2D."""
        stacked = [ax for ax, i in enumerate(ref.index) if i is not None]
        if not stacked:
            raise ValueError("the image is 2D: there is no stack to walk through")
        return stacked[-1]

    # --- prompts -> preview -----------------------------------------------------
    def next_request(self) -> int:
        """A new request number; only the latest request's preview is kept."""
        self._request += 1
        return self._request

    def collect_prompts(self, dims: Any, *, points_layer: Any = None, shapes_layer: Any = None) -> dict[str, Any]:
        """Read the prompt layers on the current plane (main thread; cheap).

        Returns a dict with ``ref`` (PlaneRef), ``points_rc`` (N, 2),
        ``point_labels`` (N,) and ``shapes`` (see
        :func:`~napari_sam._napari.layers.shapes_to_prompts`).
        """
        ref = self.plane(dims)
        pts, lab = (np.zeros((0, 2)), np.zeros(0, np.int64)) if points_layer is None else \
            points_to_prompts(points_layer, self.image_layer, dims, ref)
        shapes = [] if shapes_layer is None else shapes_to_prompts(shapes_layer, self.image_layer, dims, ref)
        return {"ref": ref, "points_rc": pts, "point_labels": lab, "shapes": shapes}

    def run_prompts(self, prompts: dict[str, Any], *, request: int | None = None) -> Preview | None:
        """Predict the objects of :meth:`collect_prompts` output (worker-safe).

        Returns the preview (also stored in ``self.preview``), or None when a
        newer request has superseded ``request`` (latest wins).
        """
        request = self.next_request() if request is None else request
        ref = prompts["ref"]
        pts, lab, shapes = prompts["points_rc"], prompts["point_labels"], prompts["shapes"]
        with self.lock:
            if request != self._request:
                return None
            if self.uses_tiles(ref):
                tiler = self.tiler(ref)
                self._claim(tiler)
                previous = None if shapes else self._corrected(ref, pts, lab)
                window = None if previous is None else self.preview.objects[0].tile_window
                objects = decode_tiled(tiler, pts, lab, shapes, previous, window=window)
            else:
                self.prepare(ref)
                previous = None if shapes else self._corrected(ref, pts, lab)
                objects = decode_objects(self.predictor, pts, lab, shapes, previous)
        if request != self._request:
            return None
        self.preview = Preview(ref, objects, request, *((None, None) if shapes else (pts.copy(), lab.copy())))
        return self.preview

    def _claim(self, tiler: TiledPrompter) -> None:
        """Note that ``tiler`` now drives the predictor (call with the lock held)."""
        if self._held is not None or self._tiler_held is not tiler:
            tiler.invalidate()  # the predictor holds something else now
        self._held, self._tiler_held = None, tiler

    @contextmanager
    def _using(self, tiler: TiledPrompter) -> Iterator[None]:
        """Hold the lock with ``tiler`` driving the predictor."""
        with self.lock:
            self._claim(tiler)
            yield

    def _corrected(self, ref: PlaneRef, pts: np.ndarray, lab: np.ndarray) -> PreviousResult | None:
        """The shown result, when ``pts``/``lab`` add points to the preview's (a correction).

        A point added to a points-only object on the same plane is a correction
        of the mask on screen: SAM's interactive recipe (and the built-in
        model's training) prompts all points together with that mask's logits
        as ``mask_input`` and a single output; a
        :class:`~napari_sam.predict.pipeline.PromptPipeline` is given the shown
        result itself (``previous=``).  Otherwise (a new object, points moved or
        removed, boxes): None.
        """
        prev = self.preview
        if prev is None or prev.ref != ref or prev.points_rc is None or len(prev.objects) != 1:
            return None
        k = len(prev.points_rc)
        if not 0 < k < len(pts) or not (np.array_equal(prev.points_rc, pts[:k])
                                         and np.array_equal(prev.point_labels, lab[:k])):
            return None
        return prev.objects[0].as_previous(prev.points_rc, prev.point_labels)

    def predict(self, dims: Any, *, points_layer: Any = None, shapes_layer: Any = None,
                request: int | None = None) -> Preview | None:
        """Predict objects from the prompt layers on the current plane.

        Rules: with no shapes, all points describe ONE object (3 ambiguity
        candidates); points added to the previewed object correct the mask
        shown (one candidate, the shown mask's logits as ``mask_input``).
        Each rectangle/polygon/ellipse is one object; a point
        joins every box that contains it (with a single box, all points join).
        Returns the preview (also stored in ``self.preview``), or None when a
        newer request has superseded ``request`` (latest wins).
        """
        prompts = self.collect_prompts(dims, points_layer=points_layer, shapes_layer=shapes_layer)
        return self.run_prompts(prompts, request=request)

    def cycle(self) -> int:
        """Show the next ambiguity candidate of a single-object preview; returns its index."""
        if self.preview is None or len(self.preview.objects) != 1:
            return 0
        obj = self.preview.objects[0]
        obj.choice = (obj.choice + 1) % len(obj.masks)
        return obj.choice

    # --- commit -----------------------------------------------------------------
    def scan_ids(self, labels_layer: Any) -> int:
        """Find the largest id of ``labels_layer`` (a whole-layer scan; call it in a worker) and remember it.

        Later commits into that layer then read only the current plane.
        Returns the largest id (0 for an empty layer).
        """
        top = _labels.next_free_id(labels_layer, known_max=0) - 1
        self._max_id[id(labels_layer)] = max(self._max_id.get(id(labels_layer), 0), top)
        return top

    def commit(self, labels_layer: Any, dims: Any, *, overwrite: bool = False) -> list[int]:
        """Write the preview's objects into ``labels_layer`` on the current slice.

        Each object gets the next free id; the whole commit is ONE undo step
        (``labels_layer.undo()`` reverts it).  With ``overwrite=False`` existing
        labels are never changed.  Returns the ids written (empty if nothing).

        Raises
        ------
        ValueError
            No preview, a preview of another slice, or labels of another shape.
        """
        if self.preview is None or not self.preview.objects:
            raise ValueError("nothing to commit: add a point or a box prompt first")
        ref = self.plane(dims)
        if ref != self.preview.ref:
            raise ValueError("the preview belongs to another slice; update the prompts on this slice")
        lref = plane_ref(labels_layer, dims)
        regrid = not same_grid(self.image_layer, ref, labels_layer, lref)
        if not regrid:
            lref = _labels.labels_plane_ref(labels_layer, dims, ref.shape)
        _labels.check_writable(labels_layer)
        next_id = _labels.next_free_id(labels_layer, known_max=self._max_id.get(id(labels_layer), 0), ref=lref)
        items, ids = [], []
        for k, obj in enumerate(self.preview.objects):
            # a target with another scale/translate gets the object where it is in world space
            mask = mask_to_labels_grid(obj.mask, self.image_layer, ref, labels_layer, lref) if regrid else obj.mask
            items.append((mask, next_id + k))
            ids.append(next_id + k)
        written = _labels.write_masks(labels_layer, {lref: items}, overwrite=overwrite)
        if not written:
            return []
        self._max_id[id(labels_layer)] = max(ids)
        self.preview = None
        return ids

    # --- 3D propagation ---------------------------------------------------------
    def propagate(self, labels_layer: Any, dims: Any, label_id: int, *, iou_threshold: float = 0.3,
                  min_area: int = 10, max_distance: int | None = None,
                  progress: ProgressCallback | None = None, cancel: CancelToken = None,
                  keep_partial: bool = False) -> tuple[PlaneRef, int, dict[int, np.ndarray]]:
        """Follow object ``label_id`` of the current slice through the stack (worker-safe).

        Reads the seed from ``labels_layer`` on the current slice, runs
        :func:`~napari_sam._napari.propagate.propagate_object` and returns
        ``(labels plane ref, stack axis, {slice index: mask})``.  Nothing is
        written: call :meth:`write_propagation` on the main thread.  With
        ``keep_partial`` a cancel returns the slices done so far (the masks
        dict has ``cancelled=True``).
        """
        ref = self.plane(dims)
        lref = _labels.labels_plane_ref(labels_layer, dims, ref.shape)
        seed = np.asarray(labels_layer.data[lref.selection()]) == label_id
        axis = self.stack_axis(ref)
        laxis = self.stack_axis(lref)

        def prepare_slice(z: int) -> None:
            self.prepare(ref.with_index(axis, z), whole=True)

        with self.lock:
            masks = propagate_object(seed, ref.index[axis], self._shape()[axis], predictor=self.predictor,
                                     prepare_slice=prepare_slice, iou_threshold=iou_threshold,
                                     min_area=min_area, max_distance=max_distance,
                                     progress=progress, cancel=cancel, keep_partial=keep_partial)
        return lref, laxis, masks

    def write_propagation(self, labels_layer: Any, lref: PlaneRef, axis: int, masks: dict[int, np.ndarray],
                          label_id: int, *, overwrite: bool = False) -> int:
        """Write propagated masks as ONE undo step; returns the number of pixels written."""
        items = {lref.with_index(axis, z): [(m, label_id)] for z, m in sorted(masks.items())}
        return _labels.write_masks(labels_layer, items, overwrite=overwrite)

