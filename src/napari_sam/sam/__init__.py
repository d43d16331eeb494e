"""The Segment Anything model in PyTorch (SAM ViT and MobileSAM TinyViT encoders).

Use :func:`build_model` to make a model from a config or registry name, and
:func:`napari_sam.models.load_model` to get one with checkpoint weights.
SAM's ``(x, y)`` coordinates are used inside this subpackage only.
"""

from napari_sam.sam.build import build_model
from napari_sam.sam.model import Sam

__all__ = ["Sam", "build_model"]
