"""The automatic generator's parameters as one small frozen dataclass, checked when made.

:class:`AmgParams` has one field per key of
:data:`~napari_sam.automatic.defaults.SAM_DEFAULTS`.  A field left at
:data:`~napari_sam.automatic.defaults.FROM_CARD` takes the model card's
recommendation when the generator is made (:meth:`AmgParams.resolve`), else
SAM's default; a value you set always wins.

Examples
--------
>>> from napari_sam.automatic.params import AmgParams
>>> loose = AmgParams(pred_iou_thresh=0.7, stability_score_thresh=0.85)
>>> loose.as_dict()
{'pred_iou_thresh': 0.7, 'stability_score_thresh': 0.85}
>>> loose.replace(points_per_side=16).points_per_side
16
>>> AmgParams(pred_iou_thresh=1.5)
Traceback (most recent call last):
...
ValueError: pred_iou_thresh (--pred-iou-thresh) must be a number between 0 and 1, got 1.5
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from napari_sam.automatic.defaults import FROM_CARD, SAM_DEFAULTS, card_amg_params

__all__ = ["AmgParams"]

#: fractions in [0, 1]: the quality thresholds and the NMS overlaps
_FRACTIONS = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh")
#: the option of ``napari-sam segment`` that sets a field, named in error messages
_CLI_FLAGS = {name: "--" + name.replace("_", "-") for name in
              ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_mask_region_area")}


def _where(name: str) -> str:
    flag = _CLI_FLAGS.get(name)
    return f"{name} ({flag})" if flag else name


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{_where(name)} must be a number, got {value!r}")
    return float(value)


def _fraction(name: str, value: Any) -> float:
    v = _number(name, value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{_where(name)} must be a number between 0 and 1, got {value}")
    return v


def _count(name: str, value: Any, minimum: int) -> int:
    whole = isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating))
                                                      and float(value).is_integer())
    if isinstance(value, bool) or not whole or int(value) < minimum:
        raise ValueError(f"{_where(name)} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _grids(value: Any) -> tuple[np.ndarray, ...]:
    if isinstance(value, np.ndarray) or not isinstance(value, Sequence) or not value:
        raise TypeError("point_grids must be a list of (N, 2) arrays of normalised (row, col) points, one per "
                        f"crop layer; got {type(value).__name__}")
    out = []
    for g in value:
        arr = np.array(g, dtype=np.float64).reshape(-1, 2)
        if not (np.all(np.isfinite(arr)) and np.all((arr >= 0) & (arr <= 1))):
            raise ValueError("point_grids must hold normalised (row, col) points in [0, 1]")
        arr.flags.writeable = False
        out.append(arr)
    return tuple(out)


def _checked(name: str, value: Any) -> Any:
    """``value`` checked (and converted to a plain Python type) for field ``name``."""
    if name in _FRACTIONS:
        return _fraction(name, value)
    if name == "mask_nms_thresh":
        return None if value is None else _fraction(name, value)
    if name == "points_per_side":
        return None if value is None else _count(name, value, 1)
    if name in ("points_per_batch", "upsample_batch", "crop_n_points_downscale_factor"):
        return _count(name, value, 1)
    if name in ("crop_n_layers", "min_mask_region_area"):
        return _count(name, value, 0)
    if name == "point_grids":
        return None if value is None else _grids(value)
    v = _number(name, value)
    if name == "crop_overlap_ratio" and not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise ValueError(f"crop_overlap_ratio must be a number in [0, 1), got {value}")
    if name in ("refilter_margin", "nms_area_bonus") and not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if name == "stability_score_offset" and not math.isfinite(v):
        raise ValueError(f"stability_score_offset must be a finite number, got {value}")
    return v


@dataclass(frozen=True, kw_only=True)
class AmgParams:
    """Parameters of :class:`~napari_sam.automatic.generator.AutomaticMaskGenerator`.

    Every field defaults to :data:`~napari_sam.automatic.defaults.FROM_CARD`:
    the model card's recommendation, else SAM's default (in brackets below).
    Values are checked when the object is made: thresholds are numbers in
    [0, 1] (NaN is refused), counts are integers.  See the generator for what
    each parameter does.

    Attributes
    ----------
    points_per_side : int or None
        Grid points per side of crop layer 0 [32]; None requires ``point_grids``.
    points_per_batch : int
        Points decoded together [64].
    pred_iou_thresh, stability_score_thresh : float in [0, 1]
        Quality filters [0.88, 0.95]; 0 disables a filter.
    stability_score_offset : float
        Logit offset of the stability score [1.0].
    box_nms_thresh, crop_nms_thresh : float in [0, 1]
        Box IoU of the NMS in a crop and across crops [0.7, 0.7].
    crop_n_layers : int >= 0
        Extra crop layers [0].
    crop_overlap_ratio : float in [0, 1)
        Overlap of neighbouring crops [512 / 1500].
    crop_n_points_downscale_factor : int >= 1
        Point-grid downscaling per crop layer [1].
    point_grids : sequence of (N, 2) arrays or None
        Explicit normalised ``(row, col)`` grids, one per layer [None]; stored as
        read-only arrays and left out of ``==``.
    min_mask_region_area : int >= 0
        Holes and islands smaller than this are cleaned up [0].
    refilter_margin : float >= 0
        How far below the thresholds candidates are kept for re-filtering [0.05].
    upsample_batch : int >= 1
        Masks upsampled at once [16].
    mask_nms_thresh : float in [0, 1] or None
        Mask NMS instead of box NMS [None].
    nms_area_bonus : float >= 0
        NMS order bonus for larger masks [0.0].
    """

    points_per_side: int | None = FROM_CARD
    points_per_batch: int = FROM_CARD
    pred_iou_thresh: float = FROM_CARD
    stability_score_thresh: float = FROM_CARD
    stability_score_offset: float = FROM_CARD
    box_nms_thresh: float = FROM_CARD
    crop_n_layers: int = FROM_CARD
    crop_nms_thresh: float = FROM_CARD
    crop_overlap_ratio: float = FROM_CARD
    crop_n_points_downscale_factor: int = FROM_CARD
    point_grids: Sequence[np.ndarray] | None = field(default=FROM_CARD, compare=False)
    min_mask_region_area: int = FROM_CARD
    refilter_margin: float = FROM_CARD
    upsample_batch: int = FROM_CARD
    mask_nms_thresh: float | None = FROM_CARD
    nms_area_bonus: float = FROM_CARD

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not FROM_CARD:
                object.__setattr__(self, f.name, _checked(f.name, value))

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> AmgParams:
        """Parameters from a mapping of field names (TypeError naming unknown keys)."""
        return cls().replace(**dict(params or {}))

    def replace(self, **changes: Any) -> AmgParams:
        """A copy with ``changes`` applied (checked like the constructor).

        Raises
        ------
        TypeError
            A name that is not a parameter of automatic mask generation.
        """
        unknown = sorted(set(changes) - set(SAM_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown parameter(s) {unknown}; automatic mask generation accepts "
                            f"{sorted(SAM_DEFAULTS)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set (not FROM_CARD), by name; ``AmgParams(**p.as_dict()) == p``.

        After :meth:`resolve` every field is set.  ``point_grids`` become lists of arrays.
        """
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not FROM_CARD:
                out[f.name] = list(value) if f.name == "point_grids" and value is not None else value
        return out

    def resolve(self, predictor: Any = None) -> AmgParams:
        """Every field set: yours, else the card of ``predictor.model``, else SAM's default.

        Explicit ``point_grids`` without ``points_per_side`` replace the default grid
        (``points_per_side`` becomes None).

        Raises
        ------
        ValueError
            The card recommends an unknown parameter or a value out of range, or
            the result has both or neither of ``points_per_side`` and ``point_grids``.
        """
        given = self.as_dict()
        values = {**SAM_DEFAULTS, **card_amg_params(predictor), **given}
        if given.get("point_grids") is not None and "points_per_side" not in given:
            values["points_per_side"] = None
        try:
            resolved = AmgParams(**values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{exc} (after applying the model card's recommendations)") from None
        if (resolved.points_per_side is None) == (resolved.point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        return resolved
