"""The window pass of a zoomed prompt: encode a crop, prompt it (optionally flipped), paste back.

Functions here take the predictors and arrays they work on as arguments;
:class:`WindowEncoder` only caches the crop's embeddings (one per flip) so a
prompt that stays in the same window needs no new encoder pass.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.predict.predictor import Predictor

__all__ = [
    "FLIPS",
    "OUTSIDE_LOGIT",
    "WindowEncoder",
    "WindowPass",
    "flip_prompts",
    "mask_prompt_to_window",
    "predict_in_window",
    "valid_low_res",
    "window_logits_to_full",
    "window_prompts",
]

#: logit written outside the window in the returned low-res logits
OUTSIDE_LOGIT = -20.0
#: (flip rows, flip columns) of the window passes with ``flips=True``
FLIPS = ((False, False), (True, False), (False, True), (True, True))

Window = tuple[int, int, int, int]


class WindowEncoder:
    """Predictors holding the embeddings of one window and its flips (a cache, no results).

    Parameters
    ----------
    model : Sam
        The model of the whole-view predictor (weights shared, not copied).
    device : torch.device
    """

    def __init__(self, model: torch.nn.Module, device: Any) -> None:
        self._model, self._device = model, device
        self.predictors: list[Predictor] = []
        self.window: Window | None = None
        self._n = 0

    def reset(self) -> None:
        """Forget the window (call when the image changes)."""
        self.window = None

    def encode(self, rgb: np.ndarray, win: Window, n_flips: int) -> list[Predictor]:
        """The ``n_flips`` predictors of window ``win`` of ``rgb`` (``FLIPS[:n_flips]``), encoded if needed."""
        while len(self.predictors) < n_flips:
            self.predictors.append(Predictor(self._model, device=self._device))
        if self.window != win or self._n < n_flips:
            self.window = None  # stays None if an encoder pass fails
            r0, c0, r1, c1 = win
            for (fr, fc), wp in zip(FLIPS[:n_flips], self.predictors):
                wp.set_image(np.ascontiguousarray(rgb[r0:r1, c0:c1][:: -1 if fr else 1, :: -1 if fc else 1]))
            self.window, self._n = win, n_flips
        return self.predictors[:n_flips]


def valid_low_res(predictor: Predictor) -> tuple[int, int]:
    """Rows and columns of the low-res logits that cover the image (the rest is padding)."""
    down = predictor.image_size // predictor.mask_input_size[0]
    return math.ceil(predictor.input_size[0] / down), math.ceil(predictor.input_size[1] / down)


def window_prompts(win: Window, points_rc: Any, point_labels: Any, box_rc: Any):
    """``(points, labels, box)`` in window coordinates: points outside the window dropped, the box
    clipped to it; None when no prompt is left."""
    r0, c0, r1, c1 = win
    pts = lab = None
    if points_rc is not None:
        pts = np.asarray(points_rc, float).reshape(-1, 2) - (r0, c0)
        lab = np.asarray(point_labels).ravel()
        inside = (pts[:, 0] >= -0.5) & (pts[:, 0] <= r1 - r0) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= c1 - c0)
        pts, lab = (pts[inside], lab[inside]) if inside.any() else (None, None)
    box = None
    if box_rc is not None:
        box = np.clip(np.asarray(box_rc, float).ravel() - (r0, c0, r0, c0), 0, [r1 - r0, c1 - c0] * 2)
    if pts is None and box is None:
        return None
    return pts, lab, box


def flip_prompts(pts, box, h: int, w: int, flip_rows: bool, flip_cols: bool):
    """Points ``(N, 2)`` and box ``(4,)`` (either may be None) in an ``h x w`` window flipped as asked."""
    pts = None if pts is None else pts.copy()
    box = None if box is None else box.copy()
    if flip_rows:
        if pts is not None:
            pts[:, 0] = h - 1 - pts[:, 0]  # pixel centres
        if box is not None:
            box[[0, 2]] = h - box[[2, 0]]  # pixel edges
    if flip_cols:
        if pts is not None:
            pts[:, 1] = w - 1 - pts[:, 1]
        if box is not None:
            box[[1, 3]] = w - box[[3, 1]]
    return pts, box


def average_flipped_passes(predictors: list[Predictor], win: Window, pts, lab, box, multimask: bool,
                           mask_prompt: np.ndarray | None, threshold: float):
    """Prompt the window's predictors (``FLIPS[k]`` for the k-th) and average them.

    Returns ``(masks (C, h, w) bool, scores (C,) float32, low-res logits (C, m, m))``: the mean of
    the low-res logits flipped back (on the part that covers the window) and of the scores; the
    masks are the mean logits upsampled and thresholded at ``threshold``.  ``mask_prompt`` is an
    ``(m, m)`` mask prompt in the (unflipped) window's low-res frame, or None.
    """
    r0, c0, r1, c1 = win
    h, w = r1 - r0, c1 - c0
    hv, wv = valid_low_res(predictors[0])
    total = scores = None
    for (fr, fc), wp in zip(FLIPS, predictors):
        fp, fb = flip_prompts(pts, box, h, w, fr, fc)
        fm = None
        if mask_prompt is not None:  # the mask prompt flipped as the window
            fm = mask_prompt.copy()
            fm[:hv, :wv] = mask_prompt[:hv, :wv][:: -1 if fr else 1, :: -1 if fc else 1]
            fm = fm[None, None]
        res = wp.predict_batch(None if fp is None else fp[None], None if lab is None else lab[None],
                               None if fb is None else fb[None], fm, multimask=multimask, upsample=False)
        lg = res.low_res_logits[0].to("cpu", torch.float32).numpy()
        s = res.scores[0].to("cpu", torch.float32).numpy()
        valid = lg[:, :hv, :wv][:, :: -1 if fr else 1, :: -1 if fc else 1]
        if total is None:
            total, scores = lg.copy(), s.astype(np.float64)
            total[:, :hv, :wv] = valid
        else:
            total[:, :hv, :wv] += valid
            scores += s
    n = len(predictors)
    total[:, :hv, :wv] /= n
    masks = predictors[0].masks_from_logits(torch.from_numpy(total), threshold=threshold).cpu().numpy()
    return masks, (scores / n).astype(np.float32), total


def mask_prompt_to_window(full: Predictor, window: Predictor, mask_input: Any, win: Window,
                          previous_window: tuple[Window, np.ndarray] | None = None) -> np.ndarray:
    """``(m, m)`` logits of a full-view mask prompt resampled into window ``win``'s low-res frame.

    The prompt is upsampled to image pixels as SAM does (``full.upsample_logits``), the window
    cut out exactly and resized to the window's low-res grid (``OUTSIDE_LOGIT`` on its padding).
    ``previous_window`` -- ``(window, logits at its image pixels)`` of the result being corrected,
    when that result came from a window pass -- replaces the upsampled logits where the two
    windows overlap: the full view's low-res frame (4 image pixels per logit for the built-in
    model on a 256 px image) is too coarse for the small objects a window was zoomed on.
    """
    r0, c0, r1, c1 = win
    logits = torch.as_tensor(np.asarray(mask_input, np.float32).reshape(1, *full.mask_input_size))
    crop = full.upsample_logits(logits)[:, r0:r1, c0:c1].to("cpu", torch.float32)[None]
    if previous_window is not None:
        (a0, b0, a1, b1), fine = previous_window
        t0, l0, t1, l1 = max(a0, r0), max(b0, c0), min(a1, r1), min(b1, c1)
        if t0 < t1 and l0 < l1:
            crop = crop.clone()
            crop[0, 0, t0 - r0 : t1 - r0, l0 - c0 : l1 - c0] = torch.from_numpy(
                np.asarray(fine, np.float32)[t0 - a0 : t1 - a0, l0 - b0 : l1 - b0])
    hv, wv = valid_low_res(window)
    out = np.full(tuple(window.mask_input_size), OUTSIDE_LOGIT, np.float32)
    out[:hv, :wv] = F.interpolate(crop, size=(hv, wv), mode="bilinear", align_corners=False,
                                  antialias=hv < r1 - r0)[0, 0].numpy()
    return out


def window_logits_to_full(full: Predictor, window: Predictor, wlogits: np.ndarray, win: Window) -> np.ndarray:
    """Window low-res logits ``(C, m, m)`` resampled into the full view's low-res frame
    (``OUTSIDE_LOGIT`` outside the window), so they can be fed back as a mask prompt."""
    r0, c0, r1, c1 = win
    m = full.mask_input_size[0]
    down = full.image_size // m  # encoder-input pixels per low-res pixel (4 for SAM)
    scale = full.input_size[0] / full.original_size[0] / down  # full-image px -> low-res px
    hv, wv = valid_low_res(window)
    valid = wlogits[:, :hv, :wv]
    out = np.full((wlogits.shape[0], *full.mask_input_size), OUTSIDE_LOGIT, np.float32)
    t, left = int(round(r0 * scale)), int(round(c0 * scale))
    hh = max(1, min(m - t, int(round((r1 - r0) * scale))))
    ww = max(1, min(m - left, int(round((c1 - c0) * scale))))
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(valid))[None], size=(hh, ww),
                            mode="bilinear", align_corners=False, antialias=hh < valid.shape[-2])[0]
    out[:, t : t + hh, left : left + ww] = resized.numpy()
    return out


class WindowPass(NamedTuple):
    """What one pass of a prompt gives, in the full frame."""

    masks: np.ndarray
    """``(C, H, W)`` bool."""
    scores: np.ndarray
    """``(C,)`` float32 predicted IoU."""
    logits: np.ndarray
    """``(C, m, m)`` low-res logits in the full view's frame (a mask prompt for a correction)."""
    windows: list
    """Per output, ``(window, logits at the window's image pixels)``, or None for an output of the whole view."""


def predict_in_window(full: Predictor, encoder: WindowEncoder, rgb: np.ndarray, win: Window,
                      points_rc: Any, point_labels: Any, box_rc: Any, *, multimask: bool, threshold: float,
                      flips: bool, mask_input: Any = None,
                      previous_window: tuple[Window, np.ndarray] | None = None) -> WindowPass | None:
    """The prompt re-run on window ``win`` of ``rgb``, pasted into the full frame (None: no prompt inside).

    Parameters
    ----------
    full : Predictor
        The whole-view predictor (its image is ``rgb``).
    encoder : WindowEncoder
    rgb : (H, W, 3) uint8
    win : (r0, c0, r1, c1)
    points_rc, point_labels, box_rc
        The prompt in full-image coordinates.
    multimask, threshold
        As for :meth:`Predictor.predict`.
    flips : bool
        Average the window and its three flips.
    mask_input : (1, m, m) array-like, optional
        A full-view mask prompt (a correction), resampled by :func:`mask_prompt_to_window`.
    previous_window
        The corrected result's window logits (see :func:`mask_prompt_to_window`).
    """
    prompts = window_prompts(win, points_rc, point_labels, box_rc)
    if prompts is None:
        return None
    r0, c0, r1, c1 = win
    predictors = encoder.encode(rgb, win, len(FLIPS) if flips else 1)
    wp = predictors[0]
    wmask = None if mask_input is None else mask_prompt_to_window(full, wp, mask_input, win, previous_window)
    wmasks, wscores, wlogits = average_flipped_passes(predictors, win, *prompts, multimask, wmask, threshold)
    masks = np.zeros((wmasks.shape[0], *full.original_size), bool)
    masks[:, r0:r1, c0:c1] = wmasks
    # the window's logits at its own resolution: for edge snapping, and for a later correction
    up = wp.upsample_logits(torch.from_numpy(wlogits)).cpu().numpy()
    return WindowPass(masks, wscores, window_logits_to_full(full, wp, wlogits, win), [(win, u) for u in up])
