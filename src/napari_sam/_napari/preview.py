"""What the interactive session shows: the objects predicted from the prompts on one plane (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam._napari.layers import PlaneRef

if TYPE_CHECKING:
    from napari_sam.predict.correction import PreviousResult

__all__ = ["ObjectPrediction", "Preview", "is_pipeline", "model_card_of", "quality_hint"]


def is_pipeline(predictor: Any) -> bool:
    """Whether ``predictor`` is a :class:`~napari_sam.predict.pipeline.PromptPipeline` (imported only if loaded)."""
    import sys

    module = sys.modules.get("napari_sam.predict.pipeline")
    return module is not None and isinstance(predictor, module.PromptPipeline)


@dataclass
class ObjectPrediction:
    """SAM's answer for one object: candidate masks and the chosen one.

    Attributes
    ----------
    masks : numpy.ndarray of bool, shape (C, H, W)
    scores : numpy.ndarray of float32, shape (C,)
    logits : numpy.ndarray of float32, shape (C, 256, 256)
    choice : int
        Index of the candidate shown and committed (initially the best score).
    window_logits : tuple or None
        Per candidate, the zoom window of a :class:`~napari_sam.predict.pipeline.PromptPipeline`
        result and its logits there (``PromptResult.window_logits``); None from a plain predictor.
    tile_window : tuple or None
        On a tiled plane, the window the prompt was decoded in.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    choice: int = 0
    window_logits: tuple | None = None
    #: the plane window ``(r0, c0, r1, c1)`` a tiled plane's prompt was decoded in (``logits`` are in its
    #: frame); None for a whole-plane embedding
    tile_window: tuple | None = None

    def as_previous(self, points_rc: np.ndarray | None, point_labels: np.ndarray | None) -> PreviousResult:
        """The shown candidate as the :class:`~napari_sam.predict.correction.PreviousResult` a correction corrects."""
        from napari_sam.predict.correction import PreviousResult

        window = self.window_logits[self.choice] if self.window_logits else None
        return PreviousResult(self.mask, np.asarray(self.logits[self.choice], np.float32), points_rc, point_labels,
                              window)

    @property
    def mask(self) -> np.ndarray:
        """The chosen ``(H, W)`` bool mask."""
        return self.masks[self.choice]


@dataclass
class Preview:
    """The objects predicted from the current prompts on one plane."""

    ref: PlaneRef
    objects: list[ObjectPrediction] = field(default_factory=list)
    request: int = 0
    #: the points (row, col) and labels of a points-only object (None with shapes): what a
    #: correction click extends (see :meth:`Session.run_prompts`)
    points_rc: np.ndarray | None = None
    point_labels: np.ndarray | None = None

    def label_image(self) -> np.ndarray:
        """``(H, W)`` uint32 image: object ``k`` (0-based) drawn with value ``k + 1``."""
        out = np.zeros(self.ref.shape, dtype=np.uint32)
        for k, obj in enumerate(self.objects):
            out[obj.mask & (out == 0)] = k + 1
        return out


def model_card_of(predictor: Any) -> Any:
    """The model card of a predictor or prompt pipeline (None when it has none)."""
    inner = getattr(predictor, "predictor", predictor)
    return getattr(getattr(inner, "model", None), "card", None)


def quality_hint(card: Any, image_layer: Any, scores: Any = ()) -> str:
    """A hint when a model is used far from the images its card says it was made for, else ``""``.

    A card with ``domain="grayscale"`` (the built-in model: single-channel
    fluorescence-like images) gets a hint for an RGB image (e.g. H&E) or for
    masks whose predicted IoU is mostly low.
    """
    if getattr(card, "domain", "") != "grayscale":
        return ""
    scores = np.asarray(scores, float).ravel()
    if getattr(image_layer, "rgb", False):
        why = "this is an RGB image"
    elif scores.size and float(np.median(scores)) < 0.5:
        why = "its predicted quality is low here"
    else:
        return ""
    return (f"this model was trained on grayscale microscopy and {why}: choose an official model "
            "(vit_b, vit_t) or load a checkpoint for better masks")
