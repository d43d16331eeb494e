"""User images and instance labels -> square training slices for fine-tuning.

Images are normalised like inference (:func:`napari_sam.normalize.to_rgb_uint8`,
percentile limits of each slice), resized so their longest side is the model's
input size and padded bottom/right, as :class:`~napari_sam.Predictor` does.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from skimage.transform import resize

from napari_sam.normalize import to_rgb_uint8

__all__ = ["as_slices", "prepare_slices", "slices_sha256"]


def _open(source: Any, what: str) -> np.ndarray:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ValueError(f"{what} file {path} does not exist.")
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile

            return np.asarray(tifffile.imread(path))
        if path.lower().endswith(".npy"):
            return np.load(path, allow_pickle=False)
        import zarr

        return np.asarray(zarr.open(path, mode="r")[...])
    return np.asarray(source)  # numpy, dask (computed), zarr


def as_slices(source: Any, what: str) -> list[np.ndarray]:
    """A list of 2-D slices from an array, a path, or a sequence of either.

    A 2-D array is one slice, a 3-D array a stack of slices (a trailing axis of
    length 3 on an image is read as RGB).
    """
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    out: list[np.ndarray] = []
    for item in items:
        arr = _open(item, what)
        rgb = what == "image" and arr.ndim >= 3 and arr.shape[-1] == 3
        plane_ndim = 3 if rgb else 2
        if arr.ndim < plane_ndim or arr.ndim > plane_ndim + 1:
            raise ValueError(
                f"{what} of shape {arr.shape}: expected 2-D (Y, X) slices or a 3-D stack of them."
            )
        out.extend([arr] if arr.ndim == plane_ndim else list(arr))
    return out


def _check_labels(labels: list[np.ndarray], images: list[np.ndarray]) -> None:
    if len(labels) != len(images):
        raise ValueError(
            f"got {len(images)} image slice(s) but {len(labels)} label slice(s); give one label image per image."
        )
    for i, (img, lab) in enumerate(zip(images, labels)):
        if lab.dtype.kind == "f" or lab.dtype.kind not in "iub":
            raise TypeError(
                f"labels must be an integer instance label image (0 = background); slice {i} is {lab.dtype}. "
                "Convert with labels.astype(np.int32) if the values are whole numbers."
            )
        if lab.shape != img.shape[:2]:
            raise ValueError(
                f"labels slice {i} has shape {lab.shape} but its image has shape {img.shape[:2]}; "
                "labels must cover the image pixel for pixel."
            )


def prepare_slices(
    images: Any, labels: Any, *, size: int, min_objects: int = 2
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Normalised, resized, padded RGB slices and labels of the slices that hold labels.

    Parameters
    ----------
    images, labels : array, path or sequence of them
        See :func:`napari_sam.finetune`.
    size : int
        The model input side.
    min_objects : int
        Fewest objects over all slices.

    Returns
    -------
    rgb : (N, size, size, 3) uint8 ndarray
    lab : (N, size, size) int32 ndarray
    kept : list of int, the indices of the slices used
    """
    imgs, labs = as_slices(images, "image"), as_slices(labels, "labels")
    _check_labels(labs, imgs)
    kept = [i for i, lab in enumerate(labs) if lab.any()]
    if not kept:
        raise ValueError("the labels are empty (all 0); paint or commit some objects before fine-tuning.")
    n_obj = sum(len(np.unique(labs[i])) - 1 for i in kept)
    if n_obj < min_objects:
        raise ValueError(
            f"the labels hold {n_obj} object(s); fine-tuning needs at least {min_objects} annotated objects "
            "(give each object its own label value)."
        )
    rgb = np.zeros((len(kept), size, size, 3), np.uint8)
    lab_out = np.zeros((len(kept), size, size), np.int32)
    for j, i in enumerate(kept):
        img = imgs[i]
        if img.dtype.kind == "f" and not np.isfinite(img).all():
            raise ValueError(f"image slice {i} holds NaN or infinite values; fill them before fine-tuning.")
        img_rgb = to_rgb_uint8(img)
        h, w = img_rgb.shape[:2]
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        rgb[j, :nh, :nw] = np.rint(resize(img_rgb, (nh, nw, 3), order=1, preserve_range=True,
                                          anti_aliasing=scale < 1)).astype(np.uint8)
        lab_out[j, :nh, :nw] = resize(labs[i].astype(np.int64), (nh, nw), order=0, preserve_range=True,
                                      anti_aliasing=False).astype(np.int32)
    return rgb, lab_out, kept


def slices_sha256(rgb: np.ndarray, lab: np.ndarray) -> str:
    """Hex sha256 of the prepared training slices and labels (what the model saw; a saved model's ``data_sha256``).

    Not :func:`napari_sam.volume.cache.data_identity`, which samples a few windows of an image for cache keys.
    """
    import hashlib

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(rgb).tobytes())
    h.update(np.ascontiguousarray(lab).tobytes())
    return h.hexdigest()


def split_holdout(n: int, fraction: float) -> tuple[list[int], list[int]]:
    """Train / held-out slice indices: the last ``ceil(fraction * n)`` slices, when 2 or more slices."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    k = min(n - 1, max(1, int(np.ceil(fraction * n))))
    return list(range(n - k)), list(range(n - k, n))


