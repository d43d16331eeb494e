"""The prompt pipeline: a predictor's single-object prompts run through configured steps.

:class:`PromptPipeline` wraps a :class:`~napari_sam.predict.predictor.Predictor`
and composes the pure steps of this package, in this order:

1. the whole-view prompt (:meth:`Predictor.predict`, at the pipeline's threshold);
2. the zoom: a window around the prompted object (:mod:`~napari_sam.predict.zoom`),
   prompted again, flips averaged, pasted back (:mod:`~napari_sam.predict.window`);
3. box refinement and recentring of clicks (:mod:`~napari_sam.predict.refine`),
   each a re-run of steps 1-2; the small-mask rule re-runs 1-3 at its threshold;
4. edge snapping (:mod:`~napari_sam.predict.edges`), the cut of touching
   objects (:mod:`~napari_sam.predict.touching`) and the local merge of a
   correction (:mod:`~napari_sam.predict.correction`).

Which steps run, and their thresholds, come from :class:`PromptOptions` (a
model card's ``prompt_pipeline`` entry).  A correction names the result it
corrects (``previous=``); the pipeline keeps no results between calls, only
the image and the window embeddings it caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_sam.normalize import to_rgb_uint8
from napari_sam.predict.correction import PreviousResult, extends_prompt, localise_correction
from napari_sam.predict.edges import snap_masks
from napari_sam.predict.options import PromptOptions
from napari_sam.predict.predictor import BatchPrediction, Embedding, Predictor
from napari_sam.predict.refine import (
    accept_recentred,
    is_small_mask,
    recentre_point,
    refinement_box,
    window_contains,
)
from napari_sam.predict.touching import split_masks
from napari_sam.predict.window import WindowEncoder, WindowPass, predict_in_window
from napari_sam.predict.zoom import clicked_part, object_extent, zoom_window

__all__ = ["PreviousResult", "PromptOptions", "PromptPipeline", "PromptResult"]


@dataclass(frozen=True, eq=False)
class PromptResult:
    """What :meth:`PromptPipeline.predict` returns; unpacks as ``masks, scores, logits``.

    Attributes
    ----------
    masks : (C, H, W) bool array
    scores : (C,) float32 array
        Predicted IoU of each mask.
    logits : (C, m, m) float32 array
        Low-res logits in the full view's frame (feed one back as a mask prompt).
    window_logits : tuple of C ``((r0, c0, r1, c1), (h, w) float32)`` or None
        Per output, the zoom window it came from and its logits at that
        window's image pixels; None for an output of the whole view.
    points_rc, point_labels : arrays or None
        The prompt's points.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    window_logits: tuple = ()
    points_rc: np.ndarray | None = None
    point_labels: np.ndarray | None = None

    def __iter__(self):
        return iter((self.masks, self.scores, self.logits))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index):
        return (self.masks, self.scores, self.logits)[index]

    def previous(self, index: int | None = None) -> PreviousResult:
        """Output ``index`` (default: the best score) as the :class:`PreviousResult` of a correction."""
        index = int(np.argmax(self.scores)) if index is None else int(index)
        window = self.window_logits[index] if self.window_logits else None
        return PreviousResult(self.masks[index], self.logits[index], self.points_rc, self.point_labels, window)


class PromptPipeline:
    """A :class:`~napari_sam.predict.predictor.Predictor` whose single-object prompts run through steps.

    Has the predictor's interface (``set_image``, ``set_embedding``,
    ``get_embedding``, ``predict``, ``predict_batch``, ``masks_from_logits``,
    ``upsample_logits`` and its size attributes); only :meth:`predict` differs.

    Parameters
    ----------
    predictor : Predictor or Sam
        The predictor to wrap, or a model to build one from (with ``device``).
    device : str or torch.device, optional
        Only with a model.
    **options
        The fields of :class:`~napari_sam.predict.options.PromptOptions`
        (``context``, ``min_side``, ``min_zoom``, ``keep_better``, ``flips``,
        ``refine_box``, ``recenter``, ``prompt_mask_threshold``,
        ``small_mask_threshold``, ``edge_snap``, ``split_touching``,
        ``local_correction``): a model card's ``prompt_pipeline`` dict.
        With none, every step is off except the zoom's defaults.

    Examples
    --------
    >>> pipeline = PromptPipeline(load_model("builtin"), **card["prompt_pipeline"])  # doctest: +SKIP
    >>> first = pipeline.predict([[40, 50]], [1])  # doctest: +SKIP
    >>> fixed = pipeline.predict([[40, 50], [44, 58]], [1, 0], previous=first.previous(),
    ...                          multimask=False)  # doctest: +SKIP
    """

    def __init__(self, predictor: Any, *, device: Any = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(PromptOptions.names()))
        if unknown:
            raise TypeError(f"unknown prompt pipeline option(s) {unknown}; known: {list(PromptOptions.names())}.")
        self.options = PromptOptions(**options)
        if isinstance(predictor, Predictor):
            if device is not None:
                raise TypeError("device applies to a model; a Predictor keeps its own device.")
            self.predictor = predictor
        elif hasattr(predictor, "image_encoder"):
            self.predictor = Predictor(predictor, device=device)
        else:
            raise TypeError(f"expected a Predictor or a Sam model, got {type(predictor).__name__}.")
        self._windows = WindowEncoder(self.predictor.model, self.predictor.device)
        self._rgb: np.ndarray | None = None

    # ---------------------------------------------------------- the predictor's interface
    model = property(lambda self: self.predictor.model)
    device = property(lambda self: self.predictor.device)
    image_size = property(lambda self: self.predictor.image_size)
    mask_input_size = property(lambda self: self.predictor.mask_input_size)
    mask_threshold = property(lambda self: self.predictor.mask_threshold)
    model_id = property(lambda self: self.predictor.model_id)
    original_size = property(lambda self: self.predictor.original_size)
    input_size = property(lambda self: self.predictor.input_size)
    is_image_set = property(lambda self: self.predictor.is_image_set)
    features = property(lambda self: self.predictor.features)

    def reset_image(self) -> None:
        """Forget the image, its embedding and the cached window."""
        self.predictor.reset_image()
        self._rgb = None
        self._windows.reset()

    def set_image(self, image: Any, *, channel_axis: int | None = None, channels: Sequence[int] | None = None,
                  contrast_limits: Any = None) -> None:
        """As :meth:`Predictor.set_image`; the RGB image is kept for the window passes."""
        rgb = to_rgb_uint8(image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits)
        self.reset_image()
        self.predictor.set_image(rgb)
        self._rgb = rgb  # windows are cut from the same RGB the whole view was encoded from

    def set_embedding(self, embedding: Embedding, *, image: np.ndarray | None = None) -> None:
        """As :meth:`Predictor.set_embedding`; with no pixels to crop, :meth:`predict` does not zoom.

        ``image``: the ``(H, W, 3)`` uint8 RGB image the embedding was computed
        from (e.g. kept beside a cached embedding); with it the window passes work.
        """
        if image is not None and tuple(np.shape(image)[:2]) != tuple(embedding.original_size):
            raise ValueError(f"image has shape {np.shape(image)} but the embedding is of a "
                             f"{tuple(embedding.original_size)} image; pass the image it was computed from.")
        self.reset_image()
        self.predictor.set_embedding(embedding)
        self._rgb = None if image is None else np.asarray(image, np.uint8)

    def get_embedding(self) -> Embedding:
        return self.predictor.get_embedding()

    def predict_batch(self, *args: Any, **kwargs: Any) -> BatchPrediction:
        """:meth:`Predictor.predict_batch` unchanged (automatic generation keeps the plain path)."""
        return self.predictor.predict_batch(*args, **kwargs)

    def masks_from_logits(self, low_res_logits: Any, *, threshold: float | None = None) -> torch.Tensor:
        return self.predictor.masks_from_logits(low_res_logits, threshold=threshold)

    def upsample_logits(self, low_res_logits: Any) -> torch.Tensor:
        return self.predictor.upsample_logits(low_res_logits)

    # ---------------------------------------------------------------- decisions
    def clicked_object(self, mask: np.ndarray, points_rc: Any, point_labels: Any) -> np.ndarray:
        """The part of a click's mask the zoom decides from: cut between touching objects first
        (``split_touching``), then the connected parts under the positive clicks."""
        h = self.options.split_touching
        if h is not None and points_rc is not None and mask.any() and self._rgb is not None:
            mask = split_masks(mask[None], self._rgb, h, points_rc=points_rc, point_labels=point_labels)[0]
        return clicked_part(mask, points_rc, point_labels)

    def object_extent(self, points_rc: Any, point_labels: Any, box_rc: Any,
                      mask: np.ndarray | None) -> tuple[float, float, float, float] | None:
        """:func:`~napari_sam.predict.zoom.object_extent` of the prompt, from :meth:`clicked_object` of ``mask``."""
        obj = None if box_rc is not None or mask is None else self.clicked_object(mask, points_rc, point_labels)
        return object_extent(points_rc, point_labels, box_rc, obj)

    def window_around(self, extent: Sequence[float]) -> tuple[int, int, int, int] | None:
        """The zoom window (:func:`~napari_sam.predict.zoom.zoom_window`) of an object extent."""
        o = self.options
        return zoom_window(extent, self.predictor.original_size, context=o.context,
                           min_side=o.min_side, min_zoom=o.min_zoom)

    def window_for(self, points_rc: Any, point_labels: Any, box_rc: Any, masks: np.ndarray,
                   scores: np.ndarray) -> tuple[int, int, int, int] | None:
        """The zoom window of a prompt given its whole-view result (None: no zoom)."""
        extent = self.object_extent(points_rc, point_labels, box_rc, masks[int(np.argmax(scores))])
        return None if extent is None else self.window_around(extent)

    # ---------------------------------------------------------------- prompting
    def predict(self, points_rc: Any = None, point_labels: Any = None, box_rc: Any = None, mask_input: Any = None,
                *, multimask: bool = True, previous: PreviousResult | None = None) -> PromptResult:
        """Masks for one prompt, through the configured steps.

        Parameters
        ----------
        points_rc, point_labels, box_rc, mask_input, multimask
            As for :meth:`Predictor.predict`.
        previous : PreviousResult, optional
            The result this prompt corrects (from :meth:`PromptResult.previous`):
            its logits are the mask prompt (give no ``mask_input`` then), its
            window logits the zoomed mask prompt, and with ``local_correction``
            its mask is kept away from the new point.

        Returns
        -------
        PromptResult
            Unpacks as ``masks (C, H, W) bool, scores (C,) float32, logits (C, m, m) float32``.
        """
        o = self.options
        window_prompt = None
        if previous is not None:
            if not isinstance(previous, PreviousResult):
                raise TypeError(f"previous must be a PreviousResult (PromptResult.previous()); got {type(previous).__name__}.")
            if mask_input is not None:
                raise ValueError("give previous (a correction) or mask_input, not both: previous.logits is the mask prompt.")
            if previous.mask.shape != tuple(self.predictor.original_size or ()):
                raise ValueError(f"previous.mask has shape {previous.mask.shape} but the image is "
                                 f"{self.predictor.original_size}: it belongs to another image.")
            mask_input, window_prompt = previous.logits[None], previous.window_logits
        threshold = self.predictor.mask_threshold if o.prompt_mask_threshold is None else o.prompt_mask_threshold
        prompt = (points_rc, point_labels, box_rc, mask_input, multimask, window_prompt)
        result = self._recentred(threshold, *prompt)
        if o.small_mask_threshold is not None and points_rc is not None and box_rc is None and mask_input is None:
            diameter_px, small_threshold = o.small_mask_threshold
            if is_small_mask(result.masks[int(np.argmax(result.scores))], diameter_px):
                result = self._recentred(small_threshold, *prompt)
        masks = result.masks
        if o.edge_snap is not None and self._rgb is not None:
            masks = snap_masks(masks, self._pixel_logits(result), self._rgb, *o.edge_snap)
        if o.split_touching is not None and mask_input is None and self._rgb is not None:
            if points_rc is not None and box_rc is None:
                masks = split_masks(masks, self._rgb, o.split_touching, points_rc=points_rc, point_labels=point_labels)
            elif box_rc is not None and points_rc is None:
                masks = split_masks(masks, self._rgb, o.split_touching, box_rc=box_rc)
        if (o.local_correction is not None and previous is not None and box_rc is None
                and extends_prompt(previous, points_rc, point_labels)):
            last = np.asarray(points_rc, float).reshape(-1, 2)[-1]
            positive = bool(np.asarray(point_labels).ravel()[-1] > 0)
            masks = localise_correction(masks, previous.mask, last, positive, *o.local_correction)
        return PromptResult(masks, result.scores, result.logits, tuple(result.windows),
                            None if points_rc is None else np.asarray(points_rc, float).reshape(-1, 2),
                            None if point_labels is None else np.asarray(point_labels).ravel())

    def _pixel_logits(self, result: WindowPass) -> list:
        """Per output, ``(window, logits at image pixels)``: the window pass's, or the whole view upsampled."""
        whole = (0, 0, *self.predictor.original_size)
        return [w if w is not None else (whole, self.predictor.upsample_logits(result.logits[c : c + 1])[0].cpu().numpy())
                for c, w in enumerate(result.windows)]

    def _recentred(self, threshold, points_rc, point_labels, box_rc, mask_input, multimask, window_prompt) -> WindowPass:
        """:meth:`_zoomed`, and with ``recenter`` a single positive click re-run from its object's interior."""
        first = self._zoomed(threshold, points_rc, point_labels, box_rc, mask_input, multimask, window_prompt)
        if not self.options.recenter or box_rc is not None or mask_input is not None or points_rc is None:
            return first
        click = np.asarray(points_rc, float).reshape(-1, 2)
        if len(click) != 1 or np.asarray(point_labels).ravel()[0] <= 0:
            return first
        inner = recentre_point(self.clicked_object(first.masks[int(np.argmax(first.scores))], click, [1]), click[0])
        if inner is None:
            return first
        again = self._zoomed(threshold, inner[None], np.array([1]), None, None, multimask, None)
        return again if accept_recentred(click[0], first.scores, again.masks, again.scores) else first

    def _zoomed(self, threshold, points_rc, point_labels, box_rc, mask_input, multimask, window_prompt) -> WindowPass:
        """The whole-view pass, the window pass (kept unless ``keep_better`` prefers the whole view)
        and the box refinement of one prompt."""
        o = self.options
        masks, scores, logits = self.predictor.predict(points_rc, point_labels, box_rc, mask_input,
                                                       multimask=multimask, threshold=threshold)
        result = WindowPass(masks, scores, logits, [None] * len(masks))
        # a mask prompt is zoomed only with points alone (a correction); with a box or alone it is not
        if self._rgb is None or (mask_input is not None and (points_rc is None or box_rc is not None)):
            return result
        win = self.window_for(points_rc, point_labels, box_rc, masks, scores)
        if win is not None:
            zoomed = self._in_window(win, points_rc, point_labels, box_rc, multimask, threshold, mask_input, window_prompt)
            if zoomed is not None and not (o.keep_better and float(zoomed.scores.max()) < float(scores.max())):
                result = zoomed
        if o.refine_box and box_rc is None and mask_input is None and points_rc is not None \
                and np.all(np.asarray(point_labels) > 0):
            result = self._refined(threshold, points_rc, point_labels, result, win)
        return result

    def _in_window(self, win, points_rc, point_labels, box_rc, multimask, threshold, mask_input=None,
                   window_prompt=None) -> WindowPass | None:
        return predict_in_window(self.predictor, self._windows, self._rgb, win, points_rc, point_labels, box_rc,
                                 multimask=multimask, threshold=threshold, flips=self.options.flips,
                                 mask_input=mask_input, previous_window=window_prompt)

    def _refined(self, threshold, points_rc, point_labels, result: WindowPass, win) -> WindowPass:
        """``refine_box`` rounds: the best mask's box as the prompt, in the click's window while it fits."""
        masks, scores, logits, windows = result.masks.copy(), result.scores.copy(), result.logits.copy(), list(result.windows)
        for _ in range(self.options.refine_box):
            b = int(np.argmax(scores))
            extent = self.object_extent(points_rc, point_labels, None, masks[b])
            if extent is None:
                break
            box = refinement_box(extent)
            rwin = win if window_contains(win, extent) else self.window_around(extent)
            if rwin is None:
                refined = WindowPass(*self.predictor.predict(box_rc=box, multimask=False, threshold=threshold), [None])
            else:
                refined = self._in_window(rwin, None, None, box, False, threshold)
            if refined is None or (self.options.keep_better and float(refined.scores[0]) < float(scores[b])):
                break
            masks[b], scores[b], logits[b], windows[b] = (refined.masks[0], refined.scores[0], refined.logits[0],
                                                          refined.windows[0])
        return WindowPass(masks, scores, logits, windows)
