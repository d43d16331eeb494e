"""Volumes and files: reading images, per-slice work over dask, the batch runner and the embedding cache."""

from napari_sam.volume.batch import segment_volume
from napari_sam.volume.cache import CacheMismatchError, EmbeddingCache
from napari_sam.volume.embed import embed_volume
from napari_sam.volume.io import open_image

__all__ = ["CacheMismatchError", "EmbeddingCache", "embed_volume", "open_image", "segment_volume"]
