"""Tiled automatic segmentation of images larger than one model input, stitched without seams."""

from napari_sam.tiled.stitching import Tile, stitch_tiles, write_labels
from napari_sam.tiled.tiles import segment_image, segment_records, tile_grid

__all__ = ["Tile", "segment_image", "segment_records", "stitch_tiles", "tile_grid", "write_labels"]
