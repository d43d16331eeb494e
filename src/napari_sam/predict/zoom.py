"""Zoomed prompting: a second pass on a window around the object.

SAM resizes the whole image so that its longest side is the model's input
size.  Small objects then cover few encoder tokens, and a small model (the
built-in one sees 256 x 256 px) segments them poorly: on held-out synthetic
nuclei its point-prompt IoU is 0.51 below 10 px and 0.80 at 20-40 px.
:class:`ZoomPredictor` prompts as usual, then encodes a window around the
object (``context`` times its size, at least ``min_side`` px) and prompts
again there, so the object is seen at the scale the model handles best.

Only single-object :meth:`ZoomPredictor.predict` calls zoom; ``predict_batch``
(automatic generation), calls with a ``mask_input`` and a box or without
points (propagation, polygon prompts) and calls after
:meth:`~napari_sam.predict.predictor.Predictor.set_embedding` (no pixels to crop)
behave exactly like :class:`~napari_sam.predict.predictor.Predictor`.  Points with a
``mask_input`` (a correction of a previous result) are zoomed, the mask
prompt resampled into the window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from napari_sam.normalize import to_rgb_uint8
from napari_sam.predict.predictor import Predictor

__all__ = ["ZoomPredictor", "edge_snap_threshold", "interior_point", "split_touching", "zoom_window"]

#: logit written outside the window in the returned low-res logits
OUTSIDE_LOGIT = -20.0
#: (flip rows, flip columns) of the window passes with ``flips=True``
_FLIPS = ((False, False), (True, False), (False, True), (True, True))
#: spacing of the logit thresholds ``edge_snap`` tries
EDGE_SNAP_STEP = 0.25
#: Gaussian sigma (px) of the image gradient ``edge_snap`` follows
EDGE_SNAP_SIGMA = 1.0
#: Gaussian sigma (px) of the intensity :func:`split_touching` reads
SPLIT_SIGMA = 1.0
#: weight of the mask's normalised distance transform in :func:`split_touching`'s relief
SPLIT_DISTANCE_WEIGHT = 2.0


def zoom_window(
    extent_rc: Sequence[float],
    image_shape: Sequence[int],
    *,
    context: float = 8.0,
    min_side: int = 96,
    min_zoom: float = 1.25,
) -> tuple[int, int, int, int] | None:
    """The window to re-encode around an object, or None when zooming gains little.

    Parameters
    ----------
    extent_rc : (r0, c0, r1, c1)
        Bounding box of the object (pixels, ``r1``/``c1`` exclusive or not).
    image_shape : (H, W)
    context : float
        Window side as a multiple of the object's larger side.
    min_side : int
        Smallest window side (caps the magnification for tiny objects).
    min_zoom : float
        No window (None) when ``max(H, W) / side`` is below this.

    Returns
    -------
    (r0, c0, r1, c1) int, inside the image, or None.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    r0, c0, r1, c1 = (float(v) for v in extent_rc)
    size = max(r1 - r0, c1 - c0, 1.0)
    side = max(float(min_side), context * size)
    if max(h, w) / side < min_zoom:
        return None
    side_i = int(math.ceil(side))
    wh, ww = min(h, side_i), min(w, side_i)
    top = int(round((r0 + r1) / 2 - wh / 2))
    left = int(round((c0 + c1) / 2 - ww / 2))
    top = min(max(top, 0), h - wh)
    left = min(max(left, 0), w - ww)
    return top, left, top + wh, left + ww


def _clicked_part(mask: np.ndarray, points_rc: Any, point_labels: Any) -> np.ndarray:
    """The connected parts of ``mask`` under the positive clicks (else the part nearest the first).

    A whole-view mask of a small object often carries far-away fragments; its
    full bounding box would make the zoom window needlessly large.
    """
    if points_rc is None or not mask.any():
        return mask
    pos = np.asarray(points_rc, float).reshape(-1, 2)[np.asarray(point_labels).ravel() > 0]
    if not len(pos):
        return mask
    parts, n = ndi.label(mask)
    if n <= 1:
        return mask
    rc = _pixels(pos, mask.shape)
    hit = np.unique(parts[rc[:, 0], rc[:, 1]])
    hit = hit[hit > 0]
    if not hit.size:  # the click fell just outside the mask: the nearest part
        rows, cols = np.nonzero(mask)
        k = int(np.argmin((rows - pos[0, 0]) ** 2 + (cols - pos[0, 1]) ** 2))
        hit = np.array([parts[rows[k], cols[k]]])
    return np.isin(parts, hit)


def _pixels(points_rc: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(N, 2)`` int indices of the pixels under ``(N, 2)`` (row, col) points, clipped to ``shape``."""
    return np.clip(np.rint(points_rc).astype(int), 0, np.array(shape[:2]) - 1)


def interior_point(mask: np.ndarray) -> np.ndarray | None:
    """``(row, col)`` of the pixel of ``mask`` farthest from its background (None if empty).

    The most interior point of a clicked object: where an annotator would
    click it, and where the built-in model's click masks are best
    (held-out nuclei: 0.845 from the centre vs 0.836 from a random inner pixel).
    """
    if not mask.any():
        return None
    depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(depth)), depth.shape), float)


def edge_snap_threshold(
    logits: np.ndarray,
    gradient: np.ndarray,
    lo: float,
    hi: float,
    *,
    step: float = EDGE_SNAP_STEP,
) -> float:
    """The logit threshold whose mask boundary follows the image's edges best.

    Of the thresholds ``lo, lo + step, ... <= hi``, the one whose mask
    ``logits > t`` has the largest mean ``gradient`` over its inner boundary
    (mask pixels with a 4-neighbour outside the mask or the array); the
    lowest such threshold on ties.  Thresholds whose mask is empty are not
    candidates; if every mask is empty, ``lo`` is returned.

    Parameters
    ----------
    logits : (H, W) float array
        Mask logits at image resolution.
    gradient : (H, W) float array
        Image gradient magnitude on the same pixels (e.g.
        ``scipy.ndimage.gaussian_gradient_magnitude``).
    lo, hi : float
        Range of thresholds tried (``lo <= hi``).
    step : float
        Spacing of the thresholds.

    Returns
    -------
    float
    """
    logits = np.asarray(logits)
    gradient = np.asarray(gradient)
    if logits.shape != gradient.shape or logits.ndim != 2:
        raise ValueError(
            f"logits and gradient must be (H, W) arrays of one shape; got {logits.shape} and {gradient.shape}."
        )
    base = logits > lo
    if not base.any():
        return float(lo)
    rows, cols = np.nonzero(base)
    # every mask of a higher threshold lies inside the lowest one: work on its box (+1 px for the erosion)
    r0, r1 = max(int(rows.min()) - 1, 0), int(rows.max()) + 2
    c0, c1 = max(int(cols.min()) - 1, 0), int(cols.max()) + 2
    crop, grad = logits[r0:r1, c0:c1], gradient[r0:r1, c0:c1]
    best_t, best_score = float(lo), -np.inf
    for t in np.arange(lo, hi + step * 1e-6, step):
        mask = crop > t
        if not mask.any():
            break
        boundary = mask & ~ndi.binary_erosion(mask, border_value=0)
        score = float(grad[boundary].mean())
        if score > best_score:
            best_t, best_score = float(t), score
    return best_t


def _filter_margin(sigma: float) -> int:
    """Pixels a Gaussian filter of ``sigma`` reads beyond a crop (scipy's default truncation, + 1)."""
    return int(4.0 * sigma + 0.5) + 1


#: pixels around a mask's box that :func:`split_touching` reads (its background band, + 1)
_SPLIT_BAND_PX = 3


def split_touching(
    mask: np.ndarray,
    grey: np.ndarray,
    points_rc: Any = None,
    *,
    box_rc: Any = None,
    h: float = 0.2,
    distance_weight: float = SPLIT_DISTANCE_WEIGHT,
    sigma: float = SPLIT_SIGMA,
) -> np.ndarray:
    """The part of ``mask`` under the clicks, when the mask spans touching objects.

    A click on one of several touching nuclei often gets a mask that covers
    its neighbour too.  This cuts such a mask along the valley between the
    objects and keeps the parts that hold a click:

    1. relief = the image's intensity (Gaussian, ``sigma``), scaled so that
       the band just outside the mask is 0 and the mask's mean is 1 (bright
       or dark objects alike), plus ``distance_weight`` times the mask's
       distance transform over its maximum (necks between round objects);
    2. one marker per regional maximum of the relief at least ``h`` high
       (:func:`skimage.morphology.h_maxima`); with one marker, no cut;
    3. a watershed of the inverted relief from the markers inside the mask;
       the regions under ``points_rc`` are returned (for a box prompt,
       ``box_rc``: the regions at least half inside the box).

    Only masks of filled objects are cut: the mask's core (deeper than half
    its maximal depth) must differ from the background band at least as
    much as its rim (depth <= 1.5 px) does, and in the same direction.  A
    cell with a bright membrane (rim brighter than core and background) is
    returned as it is.

    Parameters
    ----------
    mask : (H, W) bool array
    grey : (H, W) float array
        The image (one channel) on the same pixels.
    points_rc : (N, 2) array-like, optional
        The positive clicks (row, col).  Clicks outside the mask are ignored;
        if none is inside, ``mask`` is returned unchanged.
    box_rc : (4,) array-like, optional
        Instead of clicks, the box prompt ``(r0, c0, r1, c1)`` (first and last
        row and column, inclusive): the regions with at least half their
        pixels inside it are kept (all of ``mask`` if none is).  Give
        exactly one of ``points_rc`` and ``box_rc``.
    h : float
        Least height of a marker, in units of the object's contrast (> 0).
    distance_weight : float
        Weight of the distance term (>= 0).
    sigma : float
        Smoothing of ``grey`` in pixels (>= 0).

    Returns
    -------
    (H, W) bool array (a new array).
    """
    mask = np.asarray(mask, bool)
    grey = np.asarray(grey, np.float32)
    if mask.ndim != 2 or grey.shape != mask.shape:
        raise ValueError(f"mask and grey must be (H, W) arrays of one shape; got {mask.shape} and {grey.shape}.")
    if not (h > 0 and distance_weight >= 0 and sigma >= 0):
        raise ValueError(f"split_touching needs h > 0, distance_weight >= 0 and sigma >= 0; got {h}, {distance_weight}, {sigma}.")
    if (points_rc is None) == (box_rc is None):
        raise ValueError("split_touching needs either points_rc (clicks) or box_rc (a box prompt), not both or neither.")
    if box_rc is not None:  # checked before any early return: a bad box fails on every mask
        box = np.asarray(box_rc, float).ravel()
        if box.shape != (4,) or not np.isfinite(box).all():
            raise ValueError(f"box_rc must be 4 finite numbers (r0, c0, r1, c1); got {box_rc!r}.")
    out = mask.copy()
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return out
    if points_rc is not None:
        pts = _pixels(np.asarray(points_rc, float).reshape(-1, 2), mask.shape)
        pts = pts[mask[pts[:, 0], pts[:, 1]]]
        if not len(pts):
            return out
    # the mask's box, 3 px wider for the background band, and the filter's margin for the smoothing
    b = _SPLIT_BAND_PX
    r0, r1 = max(int(rows.min()) - b, 0), min(int(rows.max()) + 1 + b, mask.shape[0])
    c0, c1 = max(int(cols.min()) - b, 0), min(int(cols.max()) + 1 + b, mask.shape[1])
    m = _filter_margin(sigma)
    a0, b0, a1, b1 = max(r0 - m, 0), max(c0 - m, 0), min(r1 + m, mask.shape[0]), min(c1 + m, mask.shape[1])
    smooth = ndi.gaussian_filter(grey[a0:a1, b0:b1], sigma, mode="nearest") if sigma > 0 else grey[a0:a1, b0:b1]
    g = smooth[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
    mc = mask[r0:r1, c0:c1]
    depth = ndi.distance_transform_edt(np.pad(mc, 1))[1:-1, 1:-1]
    band = ndi.binary_dilation(mc, iterations=2) & ~mc
    background = float(g[band].mean()) if band.any() else float(g[~mc].mean()) if (~mc).any() else 0.0
    core = float(g[mc & (depth > depth.max() / 2)].mean())
    rim = float(g[mc & (depth <= 1.5)].mean())
    if core == rim or (core - rim) * (rim - background) < 0:  # not a filled object (e.g. a membrane)
        return out
    contrast = float(g[mc].mean()) - background
    relief = (g - background) / max(abs(contrast), 1e-3) * (1.0 if contrast >= 0 else -1.0)
    relief = relief + distance_weight * depth / depth.max()
    relief = np.where(mc, relief, relief[mc].min() - 1.0)
    markers, n = ndi.label(h_maxima(relief, h).astype(bool) & mc)
    if n <= 1:
        return out
    regions = watershed(-relief, markers, mask=mc)
    if points_rc is not None:
        keep = np.unique(regions[pts[:, 0] - r0, pts[:, 1] - c0])
        keep = keep[keep > 0]
    else:  # regions at least half inside the box (pixel centres within it)
        rr, cc = np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :]
        inside = (rr >= box[0]) & (rr <= box[2]) & (cc >= box[1]) & (cc <= box[3])
        total = np.bincount(regions.ravel(), minlength=n + 1)
        within = np.bincount(regions[inside], minlength=n + 1)
        keep = np.nonzero((within * 2 >= total) & (total > 0))[0]
        keep = keep[keep > 0]
    if not keep.size:
        return out
    out[r0:r1, c0:c1] = np.isin(regions, keep)
    return out


def _check_edge_snap(value: Any) -> tuple[float, float] | None:
    """``(lo, hi)`` logits as floats, or None; ValueError saying what is wrong."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"edge_snap must be a pair of logits (lo, hi) or None; got {value!r}.") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"edge_snap needs finite logits with lo <= hi; got {value!r}.")
    return lo, hi


def _check_split_touching(value: Any) -> float | None:
    """The marker height as a float, or None; ValueError saying what is wrong."""
    if value is None:
        return None
    try:
        h = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"split_touching must be a marker height (a number > 0) or None; got {value!r}.") from None
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"split_touching must be a finite marker height > 0; got {value!r}.")
    return h


def _check_local_correction(value: Any) -> tuple[float, float] | None:
    """``(k, c)`` as floats, or None; ValueError saying what is wrong."""
    if value is None:
        return None
    try:
        k, c = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"local_correction must be a pair (k, c) of numbers >= 0 or None; got {value!r}.") from None
    if not (math.isfinite(k) and math.isfinite(c) and k >= 0 and c >= 0):
        raise ValueError(f"local_correction must be a pair (k, c) of finite numbers >= 0; got {value!r}.")
    return k, c


def _check_small_mask_threshold(value: Any) -> tuple[float, float] | None:
    """``(diameter_px, logit)`` as floats, or None; ValueError saying what is wrong."""
    if value is None:
        return None
    try:
        diameter_px, logit = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"small_mask_threshold must be a pair (diameter_px, logit) or None; got {value!r}."
        ) from None
    if not (math.isfinite(diameter_px) and diameter_px > 0 and math.isfinite(logit)):
        raise ValueError(
            f"small_mask_threshold needs a diameter > 0 px and a finite logit; got {value!r}."
        )
    return diameter_px, logit


def _valid_low_res(predictor: Predictor) -> tuple[int, int]:
    """Rows and columns of the low-res logits that cover the image (the rest is padding)."""
    down = predictor.image_size // predictor.mask_input_size[0]
    return math.ceil(predictor.input_size[0] / down), math.ceil(predictor.input_size[1] / down)


def _flip_prompts(pts, box, h: int, w: int, flip_rows: bool, flip_cols: bool):
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


class ZoomPredictor(Predictor):
    """A :class:`~napari_sam.predict.predictor.Predictor` whose single-object prompts zoom in.

    ``predict`` first prompts on the whole image.  The object's extent (the box
    prompt, or the bounding box of the best mask together with the positive
    clicks) gives a window of ``context`` times its size (at least
    ``min_side`` px); the window is encoded (cached while it stays the same)
    and prompted again, and its masks are pasted back into the full frame,
    unless the model rates the whole-view mask higher (``keep_better``).

    Parameters
    ----------
    model, device
        As for :class:`~napari_sam.predict.predictor.Predictor`.
    context : float
        Window side over object size (8: the object covers about 1/8 of the
        window's side, the scale the built-in model was trained at).
    min_side : int
        Smallest window side in pixels.
    min_zoom : float
        Skip the second pass when the window would magnify less than this.
    keep_better : bool
        Keep the whole-view result when its best predicted IoU is higher than
        the window's (the model's own quality estimate).  On selection images
        this kept cells with bright membranes, which zooming alone made worse
        (box mIoU 0.795 -> 0.721), at their whole-view quality.
    flips : bool
        Test-time augmentation of the window pass: prompt the window and its
        three flips (rows, columns, both) and average the low-resolution
        logits (mapped back) and the scores.  Four encoder passes per window
        instead of one.  The flipped low-res grids align exactly when the
        window's resized sides are multiples of ``image_size / mask size``
        (square windows), to within one low-res pixel otherwise.
    refine_box : int
        Rounds of box refinement for clicks (positive points only, no box, no
        ``mask_input``):
        the bounding box of the clicked part of the best mask becomes a box
        prompt (no points) in the same window, and its mask replaces the best
        one when the model rates it at least as high.  The built-in model
        delineates far better from a box than from a click (held-out nuclei
        box mIoU 0.90 vs point 0.79), so a click's rough mask is a good box.
        Each round decodes again but needs no new encoder pass while the box
        stays inside the click's window.
    recenter : bool
        For a single positive click: run the whole click again from the most
        interior point of the resulting mask's clicked part
        (:func:`interior_point`) and keep that result if its best mask still
        holds the user's click and the model rates it at least as high.  A
        click near an object's edge gives the built-in model a worse mask than
        one at its centre; this makes the result depend less on where exactly
        the user clicked.  Up to twice the work per click.
    prompt_mask_threshold : float, optional
        Logit threshold of the masks :meth:`predict` returns (and of every
        mask its zoom, refinement and recentring decide from); None: the
        model's ``mask_threshold`` (SAM's 0.0).  ``predict_batch`` and so
        automatic generation keep the model's threshold, which their own
        parameters were tuned with.  (Not shipped for the built-in model: 0.5
        helps its nuclei below 20 px and hurts larger objects and cells;
        docs/builtin-model.md.  ``small_mask_threshold`` is the size-bound
        form that is shipped.)
    small_mask_threshold : (float, float), optional
        ``(diameter_px, logit)``: for a prompt of points only (no box, no
        ``mask_input``), when the best mask of the result is smaller than a
        disk of ``diameter_px`` pixels (by area, not empty), the prompt is run
        again with every mask thresholded at ``logit`` (zoom, refinement and
        recentring included) and that result is returned.  None (default):
        off.  The built-in model's masks of small objects extend past them at
        SAM's 0.0 (one pixel around an 8 px nucleus costs 0.3 IoU); its json
        ships the rule picked on selection images (docs/builtin-model.md).
        Up to twice the work for a small object's click.
    edge_snap : (float, float), optional
        ``(lo, hi)``: each mask :meth:`predict` returns is thresholded at the
        logit in ``lo, lo + 0.25, ..., hi`` whose mask boundary lies on the
        strongest image edges (:func:`edge_snap_threshold`: the largest mean
        gradient magnitude of the grey image, Gaussian sigma 1 px, over the
        mask's inner boundary), instead of at one fixed logit (empty masks
        stay empty).  Decided after the zoom, refinement and recentring,
        from the logits at the resolution the mask was made at (the
        window's for a zoomed mask).
        None (default): off.  For images whose objects are bounded by
        intensity edges (the built-in model's fluorescence domain, where its
        masks reach past small objects and fall short of cells at SAM's 0.0);
        its json ships ``(-1, 3)`` (docs/builtin-model.md).  Costs one
        erosion per tried threshold on the mask's box.
    split_touching : float, optional
        For a prompt of positive clicks only (no box, no ``mask_input``):
        each returned mask that spans touching filled objects is cut along
        the valley between them and only the parts under the clicks are
        kept (:func:`split_touching` with this marker height ``h``), after
        ``edge_snap``.  The zoom decides from the cut mask too: the window,
        the refinement box and the recentring point come from the clicked
        object's part of the mask (:meth:`object_extent`), not from a mask
        over it and its neighbours.  For a box prompt alone (no points, no
        ``mask_input``) the returned mask is cut the same way and the parts
        with at least half their pixels inside the box are kept.  None
        (default): off.  The built-in model's click
        masks of small touching nuclei often take in a neighbour (more than
        half of one in 27 % of the clicks on nuclei below 8 px), and so do
        its box masks, less often; its json
        ships 0.2 (docs/builtin-model.md).  Masks whose rim is brighter
        than both their core and their surroundings (cells with bright
        membranes) are never cut.
    local_correction : (float, float), optional
        ``(k, c)``: a correction of the mask just returned -- the same points
        plus one, with the returned output's logits as ``mask_input``, as
        the plugin sends when a point is added -- changes the shown mask only
        within ``k * d + c`` pixels of the new point, ``d`` being the new
        point's distance to the shown mask's edge (to the mask for a
        positive point outside it, to the background for a negative point
        inside it); outside that disk the shown mask is kept.  A click
        fixes the error it is put on, not the rest of a mask the user
        accepted.  Only the masks are merged; the logits returned are the
        model's own.  None (default): off.  The built-in model's
        corrections redraw the whole mask and lose on good masks (a second
        click on a 1-2 px rim); its json ships ``(2, 1)``
        (docs/builtin-model.md).

    Notes
    -----
    The returned ``logits`` are the zoomed masks' logits resampled into the
    full view's low-resolution frame (``OUTSIDE_LOGIT`` outside the window), so
    they can be fed back as ``mask_input``.  Each zoomed click costs one more
    encoder pass on the window (0.06 s for the built-in model on this CPU).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: Any = None,
        context: float = 8.0,
        min_side: int = 96,
        min_zoom: float = 1.25,
        keep_better: bool = True,
        flips: bool = False,
        refine_box: int = 0,
        recenter: bool = False,
        prompt_mask_threshold: float | None = None,
        small_mask_threshold: Sequence[float] | None = None,
        edge_snap: Sequence[float] | None = None,
        split_touching: float | None = None,
        local_correction: Sequence[float] | None = None,
    ) -> None:
        if context < 1 or min_side < 1 or min_zoom < 1:
            raise ValueError(
                f"context, min_side and min_zoom must be >= 1; got {context}, {min_side}, {min_zoom}."
            )
        self.context, self.min_side, self.min_zoom = float(context), int(min_side), float(min_zoom)
        self.keep_better = bool(keep_better)
        self.flips = bool(flips)
        if int(refine_box) < 0:
            raise ValueError(f"refine_box must be >= 0 rounds; got {refine_box}.")
        self.refine_box = int(refine_box)
        self.recenter = bool(recenter)
        self._rgb: np.ndarray | None = None
        super().__init__(model, device=device)
        if prompt_mask_threshold is not None and not math.isfinite(float(prompt_mask_threshold)):
            raise ValueError(f"prompt_mask_threshold must be a finite logit or None; got {prompt_mask_threshold}.")
        self.prompt_mask_threshold = None if prompt_mask_threshold is None else float(prompt_mask_threshold)
        self.small_mask_threshold = _check_small_mask_threshold(small_mask_threshold)
        self.edge_snap = _check_edge_snap(edge_snap)
        self.split_touching = _check_split_touching(split_touching)
        self.local_correction = _check_local_correction(local_correction)
        self._window_predictors: list[Predictor] = []
        self._add_window_predictors(len(_FLIPS) if self.flips else 1)
        self._window: tuple[int, int, int, int] | None = None
        # the last predict's logits, per output (window, its logits at the window's pixels) or
        # None, and its masks, points and labels (for corrections of what it returned)
        self._returned: tuple[np.ndarray, list, np.ndarray, np.ndarray | None, np.ndarray | None] | None = None

    def _add_window_predictors(self, n: int) -> None:
        """Up to ``n`` window predictors, one per flip: each keeps its window embedding and decoder cache."""
        while len(self._window_predictors) < n:
            self._window_predictors.append(Predictor(self.model, device=self.device))

    def reset_image(self) -> None:
        super().reset_image()
        self._rgb = None
        self._window = None
        self._returned = None

    def set_image(
        self,
        image: Any,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: Any = None,
    ) -> None:
        rgb = to_rgb_uint8(image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits)
        super().set_image(rgb)
        self._rgb = rgb  # windows are cut from the same RGB the whole view was encoded from

    set_image.__doc__ = Predictor.set_image.__doc__

    def object_extent(
        self, points_rc: Any, point_labels: Any, box_rc: Any, mask: np.ndarray | None
    ) -> tuple[float, float, float, float] | None:
        """``(r0, c0, r1, c1)`` (``r1``/``c1`` exclusive) of the prompted object, or None.

        The box prompt if there is one, else the connected parts of ``mask``
        under the positive clicks (with ``split_touching``: of the mask cut
        between touching objects first); the positive clicks are always inside.
        """
        if box_rc is not None:
            r0, c0, r1, c1 = (float(v) for v in np.asarray(box_rc, float).ravel())
        else:
            rows, cols = (np.array([]), np.array([])) if mask is None else np.nonzero(
                self._clicked_object(mask, points_rc, point_labels))
            if rows.size == 0:
                r0 = r1 = c0 = c1 = math.nan
            else:
                r0, c0, r1, c1 = rows.min(), cols.min(), rows.max() + 1.0, cols.max() + 1.0
        if points_rc is not None:
            pos = np.asarray(points_rc, float).reshape(-1, 2)[np.asarray(point_labels).ravel() > 0]
            if len(pos):
                r0, c0 = np.nanmin([r0, pos[:, 0].min()]), np.nanmin([c0, pos[:, 1].min()])
                r1, c1 = np.nanmax([r1, pos[:, 0].max() + 1]), np.nanmax([c1, pos[:, 1].max() + 1])
        if math.isnan(r0):
            return None
        return float(r0), float(c0), float(r1), float(c1)

    def _clicked_object(self, mask: np.ndarray, points_rc: Any, point_labels: Any) -> np.ndarray:
        """The part of a click's mask that the zoom decides from: cut first (``split_touching``),
        then the connected parts under the positive clicks (:func:`_clicked_part`)."""
        if self.split_touching is not None and points_rc is not None and mask.any():
            mask = self._split(mask[None], points_rc, point_labels)[0]
        return _clicked_part(mask, points_rc, point_labels)

    def window_for(self, points_rc: Any, point_labels: Any, box_rc: Any, masks: np.ndarray, scores: np.ndarray):
        """The zoom window for a prompt and its first-pass result (None: no zoom)."""
        assert self.original_size is not None
        extent = self.object_extent(points_rc, point_labels, box_rc, masks[int(np.argmax(scores))])
        return None if extent is None else self._window_around(extent)

    def _window_around(self, extent: tuple[float, float, float, float]) -> tuple[int, int, int, int] | None:
        assert self.original_size is not None
        return zoom_window(extent, self.original_size, context=self.context,
                           min_side=self.min_side, min_zoom=self.min_zoom)

    def predict(
        self,
        points_rc: Any = None,
        point_labels: Any = None,
        box_rc: Any = None,
        mask_input: Any = None,
        *,
        multimask: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        threshold = self.mask_threshold if self.prompt_mask_threshold is None else self.prompt_mask_threshold
        result = self._predict_at(threshold, points_rc, point_labels, box_rc, mask_input, multimask)
        if self.small_mask_threshold is not None and points_rc is not None and box_rc is None and mask_input is None:
            diameter_px, small_threshold = self.small_mask_threshold
            area = int(result[0][int(np.argmax(result[1]))].sum())
            if 0 < area < math.pi * diameter_px**2 / 4:  # smaller than a disk of diameter_px
                result = self._predict_at(small_threshold, points_rc, point_labels, box_rc, mask_input, multimask)
        shown = self._shown_for_correction(points_rc, point_labels, box_rc, mask_input)
        masks, scores, logits = self._snapped(*result)
        if self.split_touching is not None and mask_input is None:
            if points_rc is not None and box_rc is None:
                masks = self._split(masks, points_rc, point_labels)
            elif box_rc is not None and points_rc is None:
                masks = self._split(masks, None, None, box_rc)
        if shown is not None:
            masks = self._localised(masks, shown, points_rc, point_labels)
        self._returned = (result[2], result[3], masks,
                          None if points_rc is None else np.asarray(points_rc, float).reshape(-1, 2),
                          None if point_labels is None else np.asarray(point_labels).ravel())
        return masks, scores, logits

    predict.__doc__ = Predictor.predict.__doc__

    def _snapped(self, masks, scores, logits, fine):
        """``(masks, scores, logits)`` with each mask re-thresholded by :func:`edge_snap_threshold` (``edge_snap``).

        ``fine[c]`` is ``(window, logits at the window's resolution)`` for a
        mask from a window pass, None for one from the whole view (its logits
        are then ``logits[c]``, upsampled).
        """
        if self.edge_snap is None or self._rgb is None:
            return masks, scores, logits
        lo, hi = self.edge_snap
        masks = masks.copy()
        for c in range(len(masks)):
            if not masks[c].any():  # an empty output stays empty
                continue
            if fine[c] is None:
                win = (0, 0, *self.original_size)
                full = self.upsample_logits(logits[c : c + 1])[0].cpu().numpy()
            else:
                win, full = fine[c]
            inside = full > lo
            if not inside.any():
                continue
            rows, cols = np.nonzero(inside)  # every candidate mask lies in this box
            r0, r1 = max(int(rows.min()) - 1, 0), min(int(rows.max()) + 2, full.shape[0])
            c0, c1 = max(int(cols.min()) - 1, 0), min(int(cols.max()) + 2, full.shape[1])
            wr, wc = win[0], win[1]
            crop = full[r0:r1, c0:c1]
            t = edge_snap_threshold(crop, self._gradient(wr + r0, wc + c0, wr + r1, wc + c1), lo, hi)
            masks[c] = False
            masks[c, wr + r0 : wr + r1, wc + c0 : wc + c1] = crop > t
        return masks, scores, logits

    def _split(self, masks: np.ndarray, points_rc: Any, point_labels: Any, box_rc: Any = None) -> np.ndarray:
        """``masks`` cut by :func:`split_touching` (``split_touching``): the parts at the positive
        clicks, or with ``box_rc`` (and no clicks) the parts at least half inside the box."""
        pts = box = None
        if box_rc is not None:
            box = np.asarray(box_rc, float).ravel()
        else:
            pts = np.asarray(points_rc, float).reshape(-1, 2)
            pts = pts[np.asarray(point_labels).ravel() > 0]
            if not len(pts):
                return masks
        if self._rgb is None:
            return masks
        masks = masks.copy()
        for c in range(len(masks)):
            rows, cols = np.nonzero(masks[c])
            if not rows.size:
                continue
            # all that split_touching reads: the mask's box, its band and the smoothing's margin
            (r0, c0, r1, c1), grey = self._grey_around(int(rows.min()), int(cols.min()), int(rows.max()) + 1,
                                                      int(cols.max()) + 1, _SPLIT_BAND_PX + _filter_margin(SPLIT_SIGMA))
            if box is None:
                cut = split_touching(masks[c, r0:r1, c0:c1], grey, pts - (r0, c0), h=self.split_touching)
            else:
                cut = split_touching(masks[c, r0:r1, c0:c1], grey, box_rc=box - (r0, c0, r0, c0), h=self.split_touching)
            masks[c, r0:r1, c0:c1] = cut
        return masks

    def _grey_around(self, r0: int, c0: int, r1: int, c1: int, margin: int):
        """``((a0, b0, a1, b1), grey)``: rows r0:r1, columns c0:c1 grown by ``margin`` (clipped to the
        image) and the grey image (channel mean of the RGB the view was encoded from) there."""
        assert self._rgb is not None
        h, w = self._rgb.shape[:2]
        a0, b0, a1, b1 = max(r0 - margin, 0), max(c0 - margin, 0), min(r1 + margin, h), min(c1 + margin, w)
        return (a0, b0, a1, b1), self._rgb[a0:a1, b0:b1].astype(np.float32).mean(axis=-1)

    def _gradient(self, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
        """Gradient magnitude (Gaussian, ``EDGE_SNAP_SIGMA``) of the grey image on rows r0:r1, columns c0:c1.

        Computed on the crop plus a margin of the filter's radius, so it
        equals the whole image's gradient there (``mode="nearest"`` at the
        image's own edges).
        """
        (a0, b0, _, _), grey = self._grey_around(r0, c0, r1, c1, _filter_margin(EDGE_SNAP_SIGMA))
        grad = ndi.gaussian_gradient_magnitude(grey, EDGE_SNAP_SIGMA, mode="nearest")
        return grad[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]

    def _predict_at(self, threshold, points_rc, point_labels, box_rc, mask_input, multimask):
        """:meth:`_predict_recentred` with every mask of the prompt thresholded at ``threshold``."""
        model_threshold = self.mask_threshold
        self.mask_threshold = threshold  # every pass of this prompt thresholds there
        try:
            return self._predict_recentred(points_rc, point_labels, box_rc, mask_input, multimask)
        finally:
            self.mask_threshold = model_threshold

    def _predict_recentred(self, points_rc, point_labels, box_rc, mask_input, multimask):
        """:meth:`_predict_zoomed`, run again from the interior point of its mask with ``recenter``."""
        result = self._predict_zoomed(points_rc, point_labels, box_rc, mask_input, multimask)
        if not self.recenter or box_rc is not None or mask_input is not None or points_rc is None:
            return result
        masks, scores = result[0], result[1]
        click = np.asarray(points_rc, float).reshape(-1, 2)
        if len(click) != 1 or np.asarray(point_labels).ravel()[0] <= 0:
            return result
        inner = interior_point(self._clicked_object(masks[int(np.argmax(scores))], click, [1]))
        if inner is None or np.hypot(*(inner - click[0])) < 1.5:
            return result
        again = self._predict_zoomed(inner[None], np.array([1]), None, None, multimask)
        best = again[0][int(np.argmax(again[1]))]
        r, c = _pixels(click, best.shape)[0]
        # the user's click must stay inside; then the model's own quality estimate decides
        if best[r, c] and float(again[1].max()) >= float(scores.max()):
            return again
        return result

    def _predict_zoomed(self, points_rc, point_labels, box_rc, mask_input, multimask):
        """The whole-view pass, the zoomed pass and the box refinement of one prompt.

        Returns ``(masks, scores, logits, fine)``, ``fine`` as for :meth:`_snapped`.
        """
        masks, scores, logits = super().predict(points_rc, point_labels, box_rc, mask_input, multimask=multimask)
        fine: list = [None] * len(masks)
        # a mask prompt is zoomed only with points alone (a correction); with a box or alone it is not
        if self._rgb is None or (mask_input is not None and (points_rc is None or box_rc is not None)):
            return masks, scores, logits, fine
        win = self.window_for(points_rc, point_labels, box_rc, masks, scores)
        if win is not None:
            zoomed = self._predict_in_window(win, points_rc, point_labels, box_rc, multimask, mask_input)
            # keep_better: the model may rate its whole-view mask higher
            if zoomed is not None and not (self.keep_better and float(zoomed[1].max()) < float(scores.max())):
                masks, scores, logits, fine = zoomed
        if self.refine_box and box_rc is None and mask_input is None and points_rc is not None \
                and np.all(np.asarray(point_labels) > 0):
            masks, scores, logits, fine = self._refine_with_box(points_rc, point_labels, masks, scores, logits, fine, win)
        return masks, scores, logits, fine

    def _predict_in_window(self, win, points_rc, point_labels, box_rc, multimask, mask_input=None):
        """The prompt re-run on window ``win``, pasted into the full frame (None: no prompt inside).

        A ``mask_input`` (full view's low-res frame) is resampled into the window's."""
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
        wmasks, wscores, wlogits = self._window_pass(win, pts, lab, box, multimask, mask_input)
        full = np.zeros((wmasks.shape[0], *self.original_size), bool)
        full[:, r0:r1, c0:c1] = wmasks
        # the window's logits at its own resolution: for _snapped, and for a later correction
        up = self._window_predictors[0].upsample_logits(torch.from_numpy(wlogits)).cpu().numpy()
        fine = [(win, u) for u in up]
        return full, wscores, self._window_logits_to_full(wlogits, win), fine

    def _refine_with_box(self, points_rc, point_labels, masks, scores, logits, fine, win):
        """``refine_box`` rounds of: the best mask's box (inclusive, as SAM's training boxes) as the prompt.

        The refined mask replaces the best one when the model rates it at
        least as high (``keep_better``); the window of the click is reused
        when the box lies inside it (no new encoder pass).
        """
        assert self.original_size is not None
        masks, scores, logits, fine = masks.copy(), scores.copy(), logits.copy(), list(fine)
        for _ in range(self.refine_box):
            b = int(np.argmax(scores))
            extent = self.object_extent(points_rc, point_labels, None, masks[b])
            if extent is None:
                break
            r0, c0, r1, c1 = extent
            box = np.array([r0, c0, r1 - 1.0, c1 - 1.0])  # first and last row/column, as SAM's boxes
            rwin = win
            if rwin is None or r0 < rwin[0] or c0 < rwin[1] or r1 > rwin[2] or c1 > rwin[3]:
                rwin = self._window_around(extent)
            if rwin is None:
                refined = (*Predictor.predict(self, box_rc=box, multimask=False), [None])
            else:
                refined = self._predict_in_window(rwin, None, None, box, False)
            if refined is None or (self.keep_better and float(refined[1][0]) < float(scores[b])):
                break
            masks[b], scores[b], logits[b], fine[b] = refined[0][0], refined[1][0], refined[2][0], refined[3][0]
        return masks, scores, logits, fine

    def _window_pass(self, win, pts, lab, box, multimask, mask_input=None):
        """Prompt the window (with ``flips``: the mean low-res logits of its four flips)."""
        r0, c0, r1, c1 = win
        h, w = r1 - r0, c1 - c0
        flips = _FLIPS if self.flips else _FLIPS[:1]
        if len(self._window_predictors) < len(flips):  # flips switched on after construction
            self._add_window_predictors(len(flips))
            self._window = None
        if self._window != win:
            self._window = None  # stays None if an encoder pass fails
            for (fr, fc), wp in zip(flips, self._window_predictors):
                wp.set_image(np.ascontiguousarray(self._rgb[r0:r1, c0:c1][:: -1 if fr else 1, :: -1 if fc else 1]))
            self._window = win
        hv, wv = _valid_low_res(self._window_predictors[0])
        wmask = None if mask_input is None else self._full_logits_to_window(mask_input, win)
        total = scores = None
        for (fr, fc), wp in zip(flips, self._window_predictors):
            fp, fb = _flip_prompts(pts, box, h, w, fr, fc)
            fm = None
            if wmask is not None:  # the mask prompt flipped as the window
                fm = wmask.copy()
                fm[:hv, :wv] = wmask[:hv, :wv][:: -1 if fr else 1, :: -1 if fc else 1]
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
        total[:, :hv, :wv] /= len(flips)
        wp = self._window_predictors[0]
        wp.mask_threshold = self.mask_threshold  # the window's masks are thresholded like the whole view's
        masks = wp.masks_from_logits(torch.from_numpy(total)).cpu().numpy()
        return masks, (scores / len(flips)).astype(np.float32), total

    def _full_logits_to_window(self, mask_input: Any, win: tuple[int, int, int, int]) -> np.ndarray:
        """``(m, m)`` logits of the full view's low-res frame resampled into window ``win``'s
        (``OUTSIDE_LOGIT`` on the window's padding): upsampled to image pixels as SAM does, the
        window cut out exactly, resized to the window's low-res grid.

        When ``mask_input`` is one of the logits the last :meth:`predict` returned for a
        window mask (a correction of the mask shown), that window's own logits at image
        pixels replace the upsampled full-view ones where the windows overlap: the full
        view's low-res frame (4 image pixels per logit for the built-in model on a 256 px
        image) is too coarse for the small objects a window was zoomed on.
        """
        r0, c0, r1, c1 = win
        full = torch.as_tensor(np.asarray(mask_input, np.float32).reshape(1, *self.mask_input_size))
        crop = self.upsample_logits(full)[:, r0:r1, c0:c1].to("cpu", torch.float32)[None]
        fine = self._returned_fine(full[0].numpy())
        if fine is not None:
            (a0, b0, a1, b1), logits = fine
            t0, l0, t1, l1 = max(a0, r0), max(b0, c0), min(a1, r1), min(b1, c1)
            if t0 < t1 and l0 < l1:
                crop = crop.clone()
                crop[0, 0, t0 - r0 : t1 - r0, l0 - c0 : l1 - c0] = torch.from_numpy(
                    logits[t0 - a0 : t1 - a0, l0 - b0 : l1 - b0])
        wp = self._window_predictors[0]
        hv, wv = _valid_low_res(wp)
        out = np.full(tuple(wp.mask_input_size), OUTSIDE_LOGIT, np.float32)
        out[:hv, :wv] = F.interpolate(crop, size=(hv, wv), mode="bilinear", align_corners=False,
                                      antialias=hv < r1 - r0)[0, 0].numpy()
        return out

    def _returned_output(self, logits: np.ndarray) -> int | None:
        """Index of the last returned output whose low-res logits equal ``logits`` (``(m, m)``)."""
        if self._returned is None:
            return None
        returned = self._returned[0]
        for c in range(len(returned)):
            if np.array_equal(returned[c], logits):
                return c
        return None

    def _returned_fine(self, logits: np.ndarray):
        """``(window, logits at its pixels)`` of the last returned output whose low-res logits
        equal ``logits`` (an ``(m, m)`` array), or None."""
        c = self._returned_output(logits)
        return None if c is None else self._returned[1][c]

    def _shown_for_correction(self, points_rc, point_labels, box_rc, mask_input) -> np.ndarray | None:
        """The mask a ``local_correction`` corrects: with points, no box, and as ``mask_input``
        the logits of an output of the last :meth:`predict` whose points are these minus the
        last one (same labels), that output's returned mask; else None."""
        if self.local_correction is None or mask_input is None or box_rc is not None or points_rc is None:
            return None
        if self._returned is None or self._returned[3] is None:
            return None
        c = self._returned_output(np.asarray(mask_input, np.float32).reshape(self.mask_input_size))
        if c is None:
            return None
        pts = np.asarray(points_rc, float).reshape(-1, 2)
        lab = np.asarray(point_labels).ravel()
        prev_pts, prev_lab = self._returned[3], self._returned[4]
        if len(pts) != len(prev_pts) + 1 or not (np.array_equal(pts[:-1], prev_pts) and np.array_equal(lab[:-1], prev_lab)):
            return None
        return self._returned[2][c]

    def _localised(self, masks: np.ndarray, shown: np.ndarray, points_rc, point_labels) -> np.ndarray:
        """``masks`` inside the ``local_correction`` disk around the last point, ``shown`` outside."""
        k, c = self.local_correction
        click = np.asarray(points_rc, float).reshape(-1, 2)[-1]
        r, col = _pixels(click[None], shown.shape)[0]
        positive = np.asarray(point_labels).ravel()[-1] > 0
        region = ~shown if positive else shown
        d = 0.0
        if region[r, col]:  # the point is on the wrong side of the shown mask's edge
            rows, cols = np.nonzero(shown if positive else ~shown)
            d = float(np.sqrt(((rows - click[0]) ** 2 + (cols - click[1]) ** 2).min())) if rows.size else math.inf
        radius = k * d + c
        yy, xx = np.ogrid[: shown.shape[0], : shown.shape[1]]
        disk = (yy - click[0]) ** 2 + (xx - click[1]) ** 2 <= radius**2
        return np.where(disk[None], masks, shown[None])

    def _window_logits_to_full(self, wlogits: np.ndarray, win: tuple[int, int, int, int]) -> np.ndarray:
        """Window low-res logits resampled into the full view's low-res frame."""
        r0, c0, r1, c1 = win
        wp = self._window_predictors[0]
        m = self.mask_input_size[0]
        down = self.image_size // m  # encoder-input pixels per low-res pixel (4 for SAM)
        scale = self.input_size[0] / self.original_size[0] / down  # full-image px -> low-res px
        hv, wv = _valid_low_res(wp)
        valid = wlogits[:, :hv, :wv]
        out = np.full((wlogits.shape[0], *self.mask_input_size), OUTSIDE_LOGIT, np.float32)
        t, left = int(round(r0 * scale)), int(round(c0 * scale))
        hh = max(1, min(m - t, int(round((r1 - r0) * scale))))
        ww = max(1, min(m - left, int(round((c1 - c0) * scale))))
        resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(valid))[None], size=(hh, ww),
                                mode="bilinear", align_corners=False, antialias=hh < valid.shape[-2])[0]
        out[:, t : t + hh, left : left + ww] = resized.numpy()
        return out
