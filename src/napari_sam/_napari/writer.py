"""npe2 writers: save a Labels layer as a TIFF, or as OME-Zarr labels in a new store or an existing image.

``File > Save Selected Layers...`` with a name ending in ``.tif`` / ``.tiff``
or ``.ome.zarr`` (or ``viewer.layers.save(path, plugin="napari-sam-toolkit")``).

* TIFF: one page per 2-D slice, written slice by slice (a lazy dask layer is
  never loaded whole), BigTIFF when the labels exceed 4 GB; unsigned dtype
  (the smallest of uint8/16/32 that holds the largest id); the layer's scale
  is stored as the X / Y resolution.
* OME-Zarr, new store: a new NGFF 0.4 store (zarr v2, readable by napari-ome-zarr,
  ome-zarr-py and GDAL) holding ``labels/<layer name>``: an ``image-label``
  multiscale of one level with the layer's scale and translation; axes
  ``y x``, ``z y x``, ``t z y x`` or ``t c z y x`` by dimension.
* OME-Zarr, the image's store: when the path is an existing OME-Zarr image, the
  labels are added to it as ``labels/<layer name>`` (:mod:`napari_sam._napari.image_labels`)
  with the image's axes, scale, translation, NGFF version and zarr format, and a
  pyramid matching its levels; the image itself is not touched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_labels_tiff", "write_labels_ome_zarr"]

#: marks the arrays napari-sam wrote (what ``napari_sam.volume.output.written_by_napari_sam`` looks for)
WRITER_ATTRS = {"napari_sam": {"signature": {"writer": "napari-sam-toolkit.write_labels_ome_zarr"}}}
_AXES = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}
_AXIS_TYPE = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
#: TIFF files above this many bytes are written as BigTIFF
_BIGTIFF_BYTES = 2**32 - 2**25


def _level0(data: Any) -> Any:
    """The full-resolution array of a (possibly multiscale) layer."""
    return data[0] if isinstance(data, (list, tuple)) else data


def _label_dtype(data: Any) -> np.dtype:
    """The smallest unsigned dtype holding every id; negative ids are refused."""
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "iub":
        raise TypeError(f"a labels layer must hold integers, got dtype {dtype}")
    low, high = (int(v) for v in _minmax(data))
    if low < 0:
        raise ValueError(f"the labels hold negative ids (down to {low}); TIFF and OME-Zarr labels need ids >= 0")
    for candidate in (np.uint8, np.uint16, np.uint32, np.uint64):
        if high <= np.iinfo(candidate).max:
            return np.dtype(candidate)
    raise ValueError(f"label id {high} does not fit uint64")  # pragma: no cover


def _minmax(data: Any) -> tuple[int, int]:
    if hasattr(data, "compute"):
        import dask

        low, high = dask.compute(data.min(), data.max())
        return int(low), int(high)
    arr = np.asarray(data)
    return (int(arr.min()), int(arr.max())) if arr.size else (0, 0)


def _slices(data: Any, dtype: np.dtype) -> Iterator[np.ndarray]:
    """2-D slices in C order, read one at a time."""
    loop = tuple(data.shape[:-2])
    for idx in np.ndindex(*loop) if loop else [()]:
        plane = data[idx]
        plane = plane.compute() if hasattr(plane, "compute") else plane
        yield np.asarray(plane).astype(dtype, copy=False)


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: a Labels layer as a (Big)TIFF, one page per 2-D slice.

    Returns
    -------
    list of str
        The path written.
    """
    import tifffile

    data = _level0(data)
    if data.ndim < 2:
        raise ValueError(f"cannot save {data.ndim}-D labels as an image; a labels layer needs at least 2 dimensions")
    dtype = _label_dtype(data)
    nbytes = int(np.prod(data.shape)) * dtype.itemsize
    scale = list(meta.get("scale") or [1.0] * data.ndim)
    resolution = (1.0 / float(scale[-1]), 1.0 / float(scale[-2])) if all(float(s) > 0 for s in scale[-2:]) else None
    tifffile.imwrite(path, _slices(data, dtype), shape=tuple(int(s) for s in data.shape), dtype=dtype,
                     bigtiff=nbytes > _BIGTIFF_BYTES, photometric="minisblack", compression="zlib",
                     resolution=resolution, metadata={"axes": "Q" * (data.ndim - 2) + "YX"})
    return [path]


def _label_name(meta: dict) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(meta.get("name") or "labels")).strip("._") or "labels"
    return name


def write_labels_ome_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: a Labels layer as OME-Zarr labels (``labels/<name>``) in a new store or the image's.

    Returns
    -------
    list of str
        The store written.
    """
    import zarr

    from napari_sam.volume.io import ome_zarr_root, write_ome_labels_metadata

    data = _level0(data)
    if Path(path).exists() and ome_zarr_root(path) is not None:
        from napari_sam._napari.image_labels import add_labels_to_image

        return add_labels_to_image(path, data, name=_label_name(meta), dtype=_label_dtype(data),
                                   slices=_slices)
    if data.ndim not in _AXES:
        raise ValueError(f"OME-Zarr labels have 2 to 5 dimensions; this layer has {data.ndim}")
    if Path(path).exists():
        raise ValueError(f"{path} already exists and is not an OME-Zarr image; choose a new name for the "
                         "OME-Zarr store, or the image's own .ome.zarr to add the labels to it")
    dtype = _label_dtype(data)
    axes = [{"name": a, "type": _AXIS_TYPE[a]} for a in _AXES[data.ndim]]
    name = _label_name(meta)
    scale = [float(s) for s in (meta.get("scale") if meta.get("scale") is not None else [1.0] * data.ndim)]
    translate = [float(t) for t in (meta.get("translate") if meta.get("translate") is not None
                                    else [0.0] * data.ndim)]
    zarr.open_group(path, mode="w-", zarr_format=2)
    write_ome_labels_metadata(path, name, axes=axes, scale=scale, version="0.4", zarr_format=2)
    chunks = tuple([1] * (data.ndim - 2) + [min(1024, int(s)) for s in data.shape[-2:]])
    arr = zarr.create_array(os.path.join(path, "labels", name, "0"), shape=tuple(int(s) for s in data.shape),
                            chunks=chunks, dtype=dtype, fill_value=0, zarr_format=2, attributes=WRITER_ATTRS)
    loop = tuple(data.shape[:-2])
    for idx, plane in zip(np.ndindex(*loop) if loop else [()], _slices(data, dtype)):
        arr[idx] = plane
    if any(t != 0.0 for t in translate):
        group = zarr.open_group(os.path.join(path, "labels", name), mode="r+")
        multiscales = group.attrs["multiscales"]
        transforms = multiscales[0]["datasets"][0]["coordinateTransformations"]
        transforms.append({"type": "translation", "translation": translate})
        group.attrs["multiscales"] = multiscales
    return [path]
