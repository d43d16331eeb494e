"""Training SAM models: fine-tuning on user labels, and the loop that built the built-in model.

Modules
-------
finetune
    :func:`napari_sam.finetune`: a model, images and instance labels in, a fine-tuned copy out.
inputs
    User images/labels (arrays, dask, zarr, TIFF paths) -> normalised square training slices.
data
    Image pool from :mod:`napari_sam.synthetic`, normalisation, augmentation,
    and SAM's prompt sampling (initial point or box, error-region clicks).
losses
    Focal + dice (20:1) mask loss, IoU-head MSE, minimum over ambiguity outputs.
loop
    The seeded interactive training loop (checkpoints, CSV log, LR schedule).
calibrate
    Optional stage 3: the IoU head re-fitted on the prompts the plugin's zoom
    gives, everything else frozen (tried, not shipped).
evaluate
    Prompted mIoU and automatic-segmentation F1 on held-out synthetic images.
"""

from napari_sam.training.data import TrainingPool, make_pool, normalize_to_rgb
from napari_sam.training.loop import TrainConfig, train, train_step
from napari_sam.training.losses import dice_loss, focal_loss, mask_iou, sam_loss

__all__ = [
    "TrainConfig",
    "TrainingPool",
    "dice_loss",
    "focal_loss",
    "make_pool",
    "mask_iou",
    "normalize_to_rgb",
    "sam_loss",
    "train",
    "train_step",
]
