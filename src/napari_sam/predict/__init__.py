"""Prompted segmentation: the predictor (image -> embedding; prompts -> masks) and its prompt pipeline."""

from napari_sam.predict.factory import make_predictor, predictor_for_model
from napari_sam.predict.predictor import Embedding, Predictor
from napari_sam.predict.zoom import ZoomPredictor

__all__ = ["Embedding", "Predictor", "ZoomPredictor", "make_predictor", "predictor_for_model"]
