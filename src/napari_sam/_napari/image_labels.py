"""Add a Labels layer to an existing OME-Zarr image as ``labels/<name>`` (the writer's "into the image" case).

The labels take the image's axes (a channel axis ``c`` of size 1 when the image has
one and the layer has not), the scale and translation of its full-resolution level,
its NGFF version and zarr format (0.4 on zarr v2, 0.5 on zarr v3 with
``dimension_names``), and one label level per image level (nearest-neighbour, see
:func:`napari_sam.volume.ome.write_label_pyramid`).  Only ``labels/`` is written:
the image's arrays and metadata stay as they were.  A label group of the same name
is replaced only when napari-sam wrote every array in it.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_labels_to_image"]

#: files a label group holds besides its arrays (zarr v2 and v3 metadata)
_GROUP_FILES = {".zattrs", ".zgroup", "zarr.json"}


def _image_transforms(dataset: dict, axes: str) -> tuple[list[float], list[float] | None]:
    """Scale and translation of an image level, the channel axis neutral."""
    scale, shift = [1.0] * len(axes), None
    for tr in dataset.get("coordinateTransformations", []):
        if tr.get("type") == "scale":
            scale = [1.0 if a == "C" else float(v) for a, v in zip(axes, tr["scale"])]
        elif tr.get("type") == "translation":
            shift = [0.0 if a == "C" else float(v) for a, v in zip(axes, tr["translation"])]
    return scale, shift


def _check_replaceable(group: Path) -> None:
    """An existing label group is replaced only when napari-sam wrote it: its full-resolution array carries
    napari-sam's attributes and it holds nothing but the levels its ``multiscales`` list."""
    import zarr

    from napari_sam.volume.io import read_attrs
    from napari_sam.volume.output import written_by_napari_sam

    try:
        datasets = read_attrs(zarr.open_group(str(group), mode="r"))["multiscales"][0]["datasets"]
        levels = {str(d["path"]) for d in datasets}
    except Exception:  # noqa: BLE001 - not a label group: not ours
        levels = set()
    entries = list(group.iterdir())
    unknown = [p.name for p in entries if p.name not in levels | _GROUP_FILES]
    if unknown or not written_by_napari_sam(group / "0"):
        raise ValueError(f"the image already has labels named {group.name!r} that napari-sam did not write; "
                         "rename the Labels layer to save it beside them")


def add_labels_to_image(
    path: str | os.PathLike,
    data: Any,
    *,
    name: str,
    dtype: np.dtype,
    slices: Callable[[Any, np.dtype], Iterator[np.ndarray]],
) -> list[str]:
    """Write ``data`` as ``labels/<name>`` of the OME-Zarr image at ``path``.

    Parameters
    ----------
    path : path
        An existing OME-Zarr image.
    data : (..., Y, X) integer array
        The layer's full-resolution labels: the image's level-0 shape, without or with
        a channel axis of size 1 where the image has ``c``.
    name : str
        The label group's name (safe for a path).
    dtype : numpy dtype
        The stored dtype.
    slices : callable
        ``slices(data, dtype)`` yields the 2-D slices of ``data`` in C order.

    Returns
    -------
    list of str
        ``[path]``.
    """
    import zarr

    from napari_sam._napari.writer import WRITER_ATTRS
    from napari_sam.volume.io import ome_zarr_root, write_ome_labels_metadata
    from napari_sam.volume.ome import write_label_pyramid

    ome = ome_zarr_root(path)
    if ome is None:
        raise ValueError(f"{path} is not an OME-Zarr image")
    axes, zarr_format = ome["axes"], int(ome["zarr_format"])
    image_shape = tuple(zarr.open_array(str(Path(path) / ome["datasets"][0]["path"]), mode="r").shape)
    shape = tuple(1 if a == "C" else int(n) for a, n in zip(axes, image_shape))
    channel = axes.find("C")
    layer_shape = tuple(int(n) for n in data.shape)
    insert_c = channel >= 0 and len(layer_shape) == len(axes) - 1
    expected = shape[:channel] + shape[channel + 1:] if insert_c else shape
    if layer_shape != expected:
        raise ValueError(f"the labels have shape {layer_shape} but the image {path} has axes {axes.lower()} and "
                         f"shape {image_shape} (labels need {expected}); save them as a new .ome.zarr instead")
    group = Path(path) / "labels" / name
    if group.exists():
        _check_replaceable(group)
        shutil.rmtree(group)  # every array in it is napari-sam's (checked above)
    scale, shift = _image_transforms(ome["datasets"][0], axes)
    write_ome_labels_metadata(path, name, axes=list(ome["multiscale"]["axes"]), scale=scale, translation=shift,
                              version=ome["version"], zarr_format=zarr_format)
    chunks = tuple([1] * (len(shape) - 2) + [min(1024, n) for n in shape[-2:]])
    arr = zarr.create_array(str(group / "0"), shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                            zarr_format=zarr_format, attributes=WRITER_ATTRS,
                            dimension_names=[a.lower() for a in axes] if zarr_format == 3 else None)
    loop = layer_shape[:-2]
    for idx, plane in zip(np.ndindex(*loop) if loop else [()], slices(data, dtype)):
        if insert_c:
            idx = idx[:channel] + (0,) + idx[channel:]
        arr[idx] = plane
    write_label_pyramid(path, name, base_level=0)
    return [str(path)]
