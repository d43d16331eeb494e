"""Prompted segmentation: the predictor (image -> embedding; prompts -> masks) and its prompt pipeline."""

from napari_sam.predict.correction import PreviousResult
from napari_sam.predict.factory import make_predictor, predictor_for_model
from napari_sam.predict.options import PromptOptions
from napari_sam.predict.pipeline import PromptPipeline, PromptResult
from napari_sam.predict.predictor import Embedding, Predictor

__all__ = [
    "Embedding", "Predictor", "PreviousResult", "PromptOptions", "PromptPipeline", "PromptResult",
    "make_predictor", "predictor_for_model",
]
