"""The settings of a :class:`~napari_sam.predict.pipeline.PromptPipeline`, checked once.

A model card's ``prompt_pipeline`` entry is a dict of these fields (same names
and value formats: numbers, booleans, pairs as lists, ``None`` for "off");
``PromptOptions(**card_dict)`` validates it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["PromptOptions"]


def _pair(name: str, value: Any, what: str) -> tuple[float, float] | None:
    """``value`` as two floats, or None; ValueError naming ``name`` otherwise."""
    if value is None:
        return None
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair {what} or None; got {value!r}.") from None
    return a, b


@dataclass(frozen=True)
class PromptOptions:
    """Which steps a prompt goes through after the plain SAM pass, and their settings.

    Pairs are stored as tuples of floats; ``None`` switches a step off.  The
    steps apply to single-object :meth:`PromptPipeline.predict
    <napari_sam.predict.pipeline.PromptPipeline.predict>` calls only;
    ``predict_batch`` (automatic generation) is the plain predictor's.

    Parameters
    ----------
    context : float
        Zoom window side over object size (8: the object covers about 1/8 of
        the window's side).  See :func:`~napari_sam.predict.zoom.zoom_window`.
    min_side : int
        Smallest window side in pixels.
    min_zoom : float
        Skip the window pass when the window would magnify less than this.
    keep_better : bool
        Keep the whole-view result when its best predicted IoU is higher than
        the window's (the model's own quality estimate); likewise for each
        box refinement round.
    flips : bool
        Test-time augmentation of the window pass: prompt the window and its
        three flips (rows, columns, both) and average the low-resolution
        logits (mapped back) and the scores.  Four encoder passes per window
        instead of one.
    refine_box : int
        Rounds of box refinement for clicks (positive points only, no box, no
        mask prompt): the bounding box of the clicked part of the best mask
        becomes a box prompt (no points), in the click's window while it
        fits there, and its mask replaces the best one when the model rates
        it at least as high.
    recenter : bool
        For a single positive click: run the click again from the most
        interior point of its mask's clicked part and keep that result if its
        best mask still holds the user's click and the model rates it at
        least as high.  Makes a result depend less on where exactly inside
        the object the user clicked.
    prompt_mask_threshold : float, optional
        Logit threshold of every mask a prompt's passes make (zoom,
        refinement and recentring decide from these masks); None: the
        model's ``mask_threshold``.
    small_mask_threshold : (float, float), optional
        ``(diameter_px, logit)``: for a prompt of points only, when the best
        mask is non-empty and smaller than a disk of ``diameter_px`` pixels,
        the prompt is run again with every mask thresholded at ``logit``.
    edge_snap : (float, float), optional
        ``(lo, hi)``: each returned mask is thresholded at the logit in
        ``lo, lo + 0.25, ..., hi`` whose boundary lies on the strongest image
        edges (:func:`~napari_sam.predict.edges.edge_snap_threshold`), decided
        from the logits at the resolution the mask was made at (the window's
        for a zoomed mask).  Empty masks stay empty.
    split_touching : float, optional
        Marker height ``h`` of :func:`~napari_sam.predict.touching.split_touching`:
        for positive clicks only (no box, no mask prompt) each returned mask
        that spans touching filled objects keeps only the parts under the
        clicks, and the zoom decides from that cut mask too; for a box alone,
        the parts at least half inside the box are kept.
    local_correction : (float, float), optional
        ``(k, c)``: a correction (``previous=`` given, its points plus one)
        changes the shown mask only within ``k * d + c`` pixels of the new
        point, ``d`` being its distance to the shown mask's edge
        (:func:`~napari_sam.predict.correction.localise_correction`).  Only
        the masks are merged; the logits returned are the model's own.

    Raises
    ------
    ValueError
        A value out of range or of the wrong form; the message names the field.
    """

    context: float = 8.0
    min_side: int = 96
    min_zoom: float = 1.25
    keep_better: bool = True
    flips: bool = False
    refine_box: int = 0
    recenter: bool = False
    prompt_mask_threshold: float | None = None
    small_mask_threshold: Sequence[float] | None = None
    edge_snap: Sequence[float] | None = None
    split_touching: float | None = None
    local_correction: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if self.context < 1 or self.min_side < 1 or self.min_zoom < 1:
            raise ValueError(
                f"context, min_side and min_zoom must be >= 1; got {self.context}, {self.min_side}, {self.min_zoom}."
            )
        if int(self.refine_box) < 0:
            raise ValueError(f"refine_box must be >= 0 rounds; got {self.refine_box}.")
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "context", float(self.context))
        set_(self, "min_side", int(self.min_side))
        set_(self, "min_zoom", float(self.min_zoom))
        set_(self, "keep_better", bool(self.keep_better))
        set_(self, "flips", bool(self.flips))
        set_(self, "refine_box", int(self.refine_box))
        set_(self, "recenter", bool(self.recenter))
        t = self.prompt_mask_threshold
        if t is not None and not math.isfinite(float(t)):
            raise ValueError(f"prompt_mask_threshold must be a finite logit or None; got {t}.")
        set_(self, "prompt_mask_threshold", None if t is None else float(t))

        small = _pair("small_mask_threshold", self.small_mask_threshold, "(diameter_px, logit)")
        if small is not None and not (math.isfinite(small[0]) and small[0] > 0 and math.isfinite(small[1])):
            raise ValueError(
                f"small_mask_threshold needs a diameter > 0 px and a finite logit; got {self.small_mask_threshold!r}."
            )
        set_(self, "small_mask_threshold", small)

        snap = _pair("edge_snap", self.edge_snap, "of logits (lo, hi)")
        if snap is not None and not (math.isfinite(snap[0]) and math.isfinite(snap[1]) and snap[0] <= snap[1]):
            raise ValueError(f"edge_snap needs finite logits with lo <= hi; got {self.edge_snap!r}.")
        set_(self, "edge_snap", snap)

        h = self.split_touching
        if h is not None:
            try:
                h = float(h)
            except (TypeError, ValueError):
                raise ValueError(
                    f"split_touching must be a marker height (a number > 0) or None; got {self.split_touching!r}."
                ) from None
            if not (math.isfinite(h) and h > 0):
                raise ValueError(f"split_touching must be a finite marker height > 0; got {self.split_touching!r}.")
        set_(self, "split_touching", h)

        local = _pair("local_correction", self.local_correction, "(k, c) of numbers >= 0")
        if local is not None and not all(math.isfinite(v) and v >= 0 for v in local):
            raise ValueError(f"local_correction must be a pair (k, c) of finite numbers >= 0; got {self.local_correction!r}.")
        set_(self, "local_correction", local)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (the keys a model card's ``prompt_pipeline`` may hold)."""
        return tuple(f.name for f in fields(cls))
