"""Where the automatic generator's parameters come from: SAM's defaults, overridden by the model's card.

An :class:`~napari_sam.automatic.generator.AutomaticMaskGenerator` parameter
left at :data:`FROM_CARD` takes the value of ``predictor.model.card.amg``
when the card recommends one, else SAM's default (:data:`SAM_DEFAULTS`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FROM_CARD", "SAM_DEFAULTS", "card_amg_params"]


class _FromCard:
    """Default of the generator's parameters: the model card's value, else SAM's default."""

    def __repr__(self) -> str:
        return "FROM_CARD"

    def __reduce__(self) -> str:
        return "FROM_CARD"


#: a parameter left at FROM_CARD takes the model card's recommendation, else SAM's default
FROM_CARD: Any = _FromCard()

#: SAM's defaults (``SamAutomaticMaskGenerator``), used where the model card recommends nothing
SAM_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
    "crop_nms_thresh": 0.7,
    "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1,
    "point_grids": None,
    "min_mask_region_area": 0,
    "refilter_margin": 0.05,
    "upsample_batch": 16,
    "mask_nms_thresh": None,
    "nms_area_bonus": 0.0,
}


def card_amg_params(predictor: Any) -> dict[str, Any]:
    """The automatic-generation parameters recommended by the card of ``predictor.model`` (``{}``: none).

    Raises
    ------
    ValueError
        The card recommends a parameter this generator does not have.
    """
    card = getattr(getattr(predictor, "model", None), "card", None)
    amg = getattr(card, "amg", None)
    if not isinstance(amg, dict) or not amg:
        return {}
    unknown = sorted(set(amg) - set(SAM_DEFAULTS))
    if unknown:
        where = f"model card {card.name!r}" + (f" ({card.path})" if getattr(card, "path", None) else "")
        raise ValueError(
            f"{where} recommends unknown automatic-generation parameter(s) {unknown}; the generator "
            f"accepts {sorted(SAM_DEFAULTS)}. Fix the card's 'amg' entry."
        )
    return dict(amg)
