"""Automatic mask generation: SAM prompted by a grid of points, filtered and painted into labels.

:mod:`~napari_sam.automatic.generator` orchestrates with the parameters of
:class:`~napari_sam.automatic.params.AmgParams`; the maths lives in
:mod:`~napari_sam.automatic.grid` (point grids, crops),
:mod:`~napari_sam.automatic.regions` (scores, boxes, small regions),
:mod:`~napari_sam.automatic.nms` (box tests, suppression) and
:mod:`~napari_sam.automatic.labels` (records -> label image).
"""

from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.automatic.grid import (
    batch_slices,
    build_all_layer_point_grids,
    build_point_grid,
    crop_image,
    generate_crop_boxes,
    global_contrast_limits,
    spatial_shape,
)
from napari_sam.automatic.labels import masks_to_labels
from napari_sam.automatic.nms import box_iou, is_box_near_crop_edge, mask_nms, nms
from napari_sam.automatic.params import AmgParams
from napari_sam.automatic.records import MaskRecord, RawMasks
from napari_sam.automatic.regions import (
    masks_to_boxes,
    postprocess_small_regions,
    remove_small_regions,
    stability_score,
)

__all__ = [
    "AmgParams",
    "AutomaticMaskGenerator",
    "MaskRecord",
    "RawMasks",
    "batch_slices",
    "box_iou",
    "build_all_layer_point_grids",
    "build_point_grid",
    "crop_image",
    "generate_crop_boxes",
    "global_contrast_limits",
    "is_box_near_crop_edge",
    "mask_nms",
    "masks_to_boxes",
    "masks_to_labels",
    "nms",
    "postprocess_small_regions",
    "remove_small_regions",
    "spatial_shape",
    "stability_score",
]
