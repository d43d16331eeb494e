"""Training data: a pool of synthetic images and SAM's prompt sampling.

Coordinates handed to the model are SAM's ``(x, y)`` in the encoder-input
frame (this package talks to ``napari_sam.model`` directly); everything a user
sees elsewhere stays ``(row, col)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, report
from napari_sam.synthetic import make_nuclei_image

__all__ = [
    "Batch",
    "TrainingPool",
    "make_pool",
    "normalize_to_rgb",
    "sample_batch",
    "initial_prompts",
    "corrective_points",
    "uniform_pixel",
]

#: kinds of synthetic images in the training pool and their probabilities
POOL_KINDS = (("nuclei", 0.6), ("mixed", 0.25), ("cells", 0.15))


def normalize_to_rgb(image: np.ndarray, *, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Percentile-stretch a 2D image to ``(H, W, 3) uint8`` grey RGB.

    Matches the default of :func:`napari_sam.normalize.to_rgb_uint8`
    (contrast limits at the 0.5 and 99.5 percentiles, linear, clipped).

    Parameters
    ----------
    image : (H, W) ndarray, any real dtype (not modified)
    percentiles : (float, float)
        Lower and upper percentile mapped to 0 and 255.

    Returns
    -------
    (H, W, 3) uint8 ndarray
    """
    if image.ndim != 2:
        raise ValueError(f"normalize_to_rgb expects a 2D (H, W) image; got shape {image.shape}")
    lo, hi = np.percentile(image, percentiles)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    grey = np.clip(np.rint((image.astype(np.float64) - lo) * scale), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


@dataclass
class TrainingPool:
    """Pre-generated training images.

    Attributes
    ----------
    images : (N, H, W) uint8 ndarray
        Grey images, normalised with :func:`normalize_to_rgb` (one channel kept).
    labels : (N, H, W) uint16 ndarray
        Instance labels, 0 background.
    seeds : (N,) int64 ndarray
        The :func:`~napari_sam.synthetic.make_nuclei_image` seed of each image.
    """

    images: np.ndarray
    labels: np.ndarray
    seeds: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def pool_spec(seed: int) -> dict:
    """The synthetic-image parameters used for pool image ``seed`` (kind, dtype)."""
    rng = np.random.default_rng([seed, 7])
    kinds, probs = zip(*POOL_KINDS)
    return {"kind": str(rng.choice(kinds, p=probs)), "dtype": str(rng.choice(["uint8", "uint16"]))}


def make_pool(
    seeds,
    *,
    shape: tuple[int, int] = (256, 256),
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
) -> TrainingPool:
    """Generate the synthetic images with the given seeds (see :func:`pool_spec`).

    Parameters
    ----------
    seeds : sequence of int
        One image per seed; training and validation use disjoint seed ranges.
    shape : (int, int)
        Image shape.
    progress, cancel
        Progress callback and cancel token (:mod:`napari_sam.progress`).

    Returns
    -------
    TrainingPool
    """
    seeds = np.asarray(list(seeds), dtype=np.int64)
    images = np.zeros((len(seeds), *shape), np.uint8)
    labels = np.zeros((len(seeds), *shape), np.uint16)
    for i, seed in enumerate(seeds):
        check_cancelled(cancel)
        image, lab = make_nuclei_image(shape, seed=int(seed), **pool_spec(int(seed)))
        if lab.max() > np.iinfo(np.uint16).max:
            raise ValueError("too many objects for the uint16 pool labels")
        images[i] = normalize_to_rgb(image)[..., 0]
        labels[i] = lab
        report(progress, i + 1, len(seeds), "generating synthetic images")
    return TrainingPool(images, labels, seeds)


@dataclass
class Batch:
    """One training batch.

    Attributes
    ----------
    images : (B, 3, H, W) float32 tensor, RGB in 0..255
    gt : (P, H, W) bool tensor, one ground-truth mask per prompt
    image_index : (P,) int64 tensor, image of each prompt
    """

    images: torch.Tensor
    gt: torch.Tensor
    image_index: torch.Tensor


def pick_objects(labels: np.ndarray, rng: np.random.Generator, *, objects_per_image: int,
                 min_area: int) -> np.ndarray | None:
    """Masks ``(k, H, W)`` bool of up to ``objects_per_image`` random objects of at least ``min_area`` pixels.

    None when ``labels`` holds no such object (no random number is drawn then).
    """
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    ids = ids[counts >= min_area]
    if not ids.size:
        return None
    chosen = rng.choice(ids, size=min(objects_per_image, ids.size), replace=False)
    return labels[None] == chosen[:, None, None]


def augment_pair(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random rotation by a multiple of 90 degrees and flip of an image and its labels (the same for both)."""
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    # contrast jitter: a different window of the same data, as other limits would give
    lo, hi = rng.uniform(-12, 12), rng.uniform(230, 290)
    image = np.clip((image.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)
    return np.rint(image), np.ascontiguousarray(labels)


def sample_batch(
    pool: TrainingPool,
    rng: np.random.Generator,
    *,
    n_images: int = 4,
    objects_per_image: int = 8,
    min_area: int = 8,
) -> Batch:
    """Draw images (with flips, rotations, contrast jitter) and objects to prompt.

    Parameters
    ----------
    pool : TrainingPool
    rng : numpy Generator
        All randomness comes from here (reproducible).
    n_images : int
        Images per batch.
    objects_per_image : int
        Objects drawn per image (fewer when the image has fewer).
    min_area : int
        Objects with fewer visible pixels are not prompted.

    Returns
    -------
    Batch
    """
    imgs, gts, index = [], [], []
    picked = rng.choice(len(pool), size=n_images, replace=len(pool) < n_images)
    for b, i in enumerate(picked):
        image, labels = augment_pair(pool.images[i], pool.labels[i], rng)
        masks = pick_objects(labels, rng, objects_per_image=objects_per_image, min_area=min_area)
        if masks is not None:
            gts.append(masks)
            index += [b] * len(masks)
        imgs.append(np.repeat(image[None], 3, axis=0))
    if not gts:
        raise ValueError("the sampled images hold no objects; use a pool with objects")
    return Batch(
        images=torch.as_tensor(np.stack(imgs), dtype=torch.float32),
        gt=torch.as_tensor(np.concatenate(gts)),
        image_index=torch.as_tensor(index, dtype=torch.int64),
    )


def uniform_pixel(region: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniformly drawn pixel of each region.

    Parameters
    ----------
    region : (P, H, W) bool tensor
    generator : torch.Generator

    Returns
    -------
    xy : (P, 2) float32 tensor, (x, y) = (col, row) of the pixel (0, 0 where empty)
    found : (P,) bool tensor, False where the region is empty
    """
    p, h, w = region.shape
    score = torch.rand((p, h * w), generator=generator).to(region.device)
    score = torch.where(region.reshape(p, -1), score, torch.full_like(score, -1.0))
    flat = score.argmax(dim=1)
    found = region.reshape(p, -1).any(dim=1)
    xy = torch.stack([flat % w, flat // w], dim=1).to(torch.float32)
    return torch.where(found[:, None], xy, torch.zeros_like(xy)), found


def initial_prompts(
    gt: torch.Tensor,
    generator: torch.Generator,
    *,
    p_box: float = 0.5,
    box_noise: float = 0.1,
    max_box_noise: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAM's first prompt per object: one uniform positive point or a noisy box.

    Parameters
    ----------
    gt : (P, H, W) bool tensor
    generator : torch.Generator
    p_box : float
        Probability of a box prompt.
    box_noise, max_box_noise : float
        Each box coordinate moves by a normal offset of ``box_noise`` times the
        box side (standard deviation), capped at ``max_box_noise`` pixels (SAM).

    Returns
    -------
    is_box : (P,) bool tensor
    points_xy : (P, 1, 2) float32 tensor
    boxes_xyxy : (P, 4) float32 tensor (inclusive pixel extremes, jittered)
    """
    p, h, w = gt.shape
    xy, _ = uniform_pixel(gt, generator)
    rows, cols = gt.any(dim=2), gt.any(dim=1)
    ar_h, ar_w = torch.arange(h, device=gt.device), torch.arange(w, device=gt.device)
    r0 = torch.where(rows, ar_h, h).min(dim=1).values
    r1 = torch.where(rows, ar_h, -1).max(dim=1).values
    c0 = torch.where(cols, ar_w, w).min(dim=1).values
    c1 = torch.where(cols, ar_w, -1).max(dim=1).values
    boxes = torch.stack([c0, r0, c1, r1], dim=1).to(torch.float32)
    side = torch.stack([c1 - c0 + 1, r1 - r0 + 1] * 2, dim=1).to(torch.float32)
    noise = torch.randn((p, 4), generator=generator).to(gt.device) * box_noise * side
    boxes = boxes + noise.clamp(-max_box_noise, max_box_noise)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    is_box = torch.rand(p, generator=generator).to(gt.device) < p_box
    return is_box, xy[:, None], boxes


def corrective_points(
    pred: torch.Tensor, gt: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's next click: uniform in the error region of the previous mask.

    A false-negative pixel becomes a positive click, a false-positive pixel a
    negative one; when the prediction is already perfect the click is padding
    (label -1).

    Parameters
    ----------
    pred, gt : (P, H, W) bool tensors

    Returns
    -------
    points_xy : (P, 1, 2) float32 tensor
    labels : (P, 1) int64 tensor, 1 / 0 / -1
    """
    xy, found = uniform_pixel(pred ^ gt, generator)
    col, row = xy[:, 0].long(), xy[:, 1].long()
    positive = gt[torch.arange(gt.shape[0], device=gt.device), row, col]
    labels = torch.where(found, positive.long(), torch.full_like(positive, -1, dtype=torch.long))
    return xy[:, None], labels[:, None]
