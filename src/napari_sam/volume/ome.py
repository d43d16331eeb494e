"""A multiscale pyramid for OME-Zarr labels that matches the image's resolution levels.

Labels are computed on one image level (``--level N``) and stored as ``labels/<name>/0``.
:func:`write_label_pyramid` adds one label level for every coarser image level
(``N+1``, ``N+2``, ...), downsampled by nearest neighbour (ids are never averaged) to
exactly that level's shape, and lists them in the label group's ``multiscales`` with
that image level's ``coordinateTransformations`` (scale and translation), so a viewer
shows every label level on the image level of the same resolution.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from napari_sam.volume.io import ome_zarr_root, read_attrs

__all__ = ["write_label_pyramid"]


def _transforms(dataset: dict, axes: str) -> list[dict[str, Any]]:
    """A dataset's scale (and translation) with the channel axis neutral (labels have ``c`` of size 1)."""
    out = []
    for tr in dataset.get("coordinateTransformations", []):
        kind = tr.get("type")
        if kind in ("scale", "translation"):
            neutral = 1.0 if kind == "scale" else 0.0
            out.append({"type": kind, kind: [neutral if a == "C" else float(v) for a, v in zip(axes, tr[kind])]})
    return out


def write_label_pyramid(root: str | os.PathLike, name: str, *, base_level: int) -> int:
    """Write label levels ``1..`` under ``labels/<name>`` for the image levels after ``base_level``.

    Parameters
    ----------
    root : path
        The OME-Zarr image (its ``labels/<name>/0`` is complete).
    name : str
        The label group's name.
    base_level : int
        The image level the labels were computed on.

    Returns
    -------
    int
        Number of label levels, the full-resolution one included.
    """
    ome = ome_zarr_root(root)
    if ome is None:
        raise ValueError(f"{root} is not an OME-Zarr image")
    axes, datasets = ome["axes"], ome["datasets"]
    group_path = Path(root) / "labels" / name
    base = da.from_zarr(zarr.open_array(str(group_path / "0"), mode="r"))
    base_shape = zarr.open_array(str(Path(root) / datasets[base_level]["path"]), mode="r").shape
    grp = zarr.open_group(str(group_path), mode="r+")
    zarr_format = int(ome["zarr_format"])
    chunks = zarr.open_array(str(group_path / "0"), mode="r").chunks
    entries = []
    for j, level in enumerate(range(base_level + 1, len(datasets)), start=1):
        shape = zarr.open_array(str(Path(root) / datasets[level]["path"]), mode="r").shape
        index = []
        for a, n0, n in zip(axes, base_shape, shape):
            step = 1 if a in "CTZ" and n == n0 else max(1, round(n0 / max(n, 1)))
            index.append(slice(0, None, step) if a != "C" else slice(None))
        level_data = base[tuple(index)]
        level_data = level_data[tuple(slice(0, 1 if a == "C" else n) for a, n in zip(axes, shape))]
        arr = grp.create_array(str(j), shape=level_data.shape, dtype=base.dtype, fill_value=0, overwrite=True,
                               chunks=tuple(min(c, s) for c, s in zip(chunks, level_data.shape)),
                               dimension_names=[a.lower() for a in axes] if zarr_format == 3 else None)
        da.store(level_data, arr, lock=False)
        entries.append({"path": str(j), "coordinateTransformations": _transforms(datasets[level], axes)})
    attrs = read_attrs(grp)
    ms = dict(attrs["multiscales"][0])
    ms["datasets"] = [ms["datasets"][0], *entries]
    if zarr_format == 3 or "ome" in dict(grp.attrs):
        grp.attrs["ome"] = {**dict(grp.attrs)["ome"], "multiscales": [ms]}
    else:
        grp.attrs["multiscales"] = [ms]
    return 1 + len(entries)
