"""Static view of the lazily resolved public API (see __init__.py)."""

from napari_sam.automatic.generator import AutomaticMaskGenerator as AutomaticMaskGenerator
from napari_sam.automatic.labels import masks_to_labels as masks_to_labels
from napari_sam.automatic.params import AmgParams as AmgParams
from napari_sam.model.cards import ModelCard as ModelCard
from napari_sam.model.checkpoint import CheckpointError as CheckpointError
from napari_sam.model.registry import available_models as available_models
from napari_sam.model.registry import build_model as build_model
from napari_sam.model.registry import fetch_checkpoint as fetch_checkpoint
from napari_sam.model.registry import load_model as load_model
from napari_sam.model.registry import model_card as model_card
from napari_sam.model.registry import register_model as register_model
from napari_sam.model.registry import resolve_device as resolve_device
from napari_sam.model.sam import Sam as Sam
from napari_sam.model.saved import save_model as save_model
from napari_sam.normalize import estimate_contrast_limits as estimate_contrast_limits
from napari_sam.normalize import to_rgb_uint8 as to_rgb_uint8
from napari_sam.predict.correction import PreviousResult as PreviousResult
from napari_sam.predict.factory import make_predictor as make_predictor
from napari_sam.predict.pipeline import PromptPipeline as PromptPipeline
from napari_sam.predict.pipeline import PromptResult as PromptResult
from napari_sam.predict.predictor import Predictor as Predictor
from napari_sam.progress import Cancelled as Cancelled
from napari_sam.threads import limit_threads as limit_threads
from napari_sam.tiled.tiles import segment_image as segment_image
from napari_sam.training.finetune import finetune as finetune
from napari_sam.volume.batch import segment_volume as segment_volume
from napari_sam.volume.cache import EmbeddingCache as EmbeddingCache
from napari_sam.volume.embed import embed_volume as embed_volume
from napari_sam.volume.io import open_image as open_image
from napari_sam.volume.tables import object_table as object_table
from napari_sam.volume.vectors import write_vectors as write_vectors

__version__: str
__all__: list[str]
