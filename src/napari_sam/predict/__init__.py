"""Prompted segmentation: the predictor (image -> embedding; prompts -> masks) and its prompt pipeline."""

from napari_sam.predict.predictor import Embedding, Predictor
from napari_sam.predict.zoom import ZoomPredictor

__all__ = ["Embedding", "Predictor", "ZoomPredictor"]
