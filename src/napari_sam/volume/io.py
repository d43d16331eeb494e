"""Lazy image input and labels output for headless runs.

Inputs are opened lazily as dask arrays: TIFF / OME-TIFF / GeoTIFF (through
tifffile's zarr store, so only the pages a task touches are read), zarr v2 and
v3 arrays, OME-Zarr (multiscale, axes from its metadata) and ``.npy``
(memory-mapped).

Axes are named with the letters ``T Z C Y X S`` (``S`` = RGB samples, last).
They come from the user (``axes=``), else from trustworthy metadata (OME,
ImageJ, OME-Zarr, zarr dimension names), else from the shape: ``YX`` for 2-D,
``ZYX`` for 3-D.  A shape that could be read two ways (3-D with a last
dimension of 3 or 4, or anything 4-D and up without metadata) raises a
``ValueError`` asking for ``axes``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from napari_sam.volume.integrity import DataWarning, NamedChunks, check_tiff, missing_chunks, present_mask, tiff_log

AXES_LETTERS = "TZCYXS"

#: GeoTIFF tags kept in the output attributes (code -> name).
GEOTIFF_TAGS = {
    33550: "ModelPixelScaleTag",
    33922: "ModelTiepointTag",
    34264: "ModelTransformationTag",
    34735: "GeoKeyDirectoryTag",
    34736: "GeoDoubleParamsTag",
    34737: "GeoAsciiParamsTag",
}

__all__ = [
    "AXES_LETTERS",
    "DataWarning",
    "GEOTIFF_TAGS",
    "open_image",
    "validate_axes",
    "infer_axes",
    "ome_zarr_root",
    "write_ome_labels_metadata",
    "prepare_labels_array",
]


def validate_axes(axes: str, ndim: int) -> str:
    """Check an axes string such as ``"ZYX"`` against an array's ``ndim``.

    Parameters
    ----------
    axes : str
        One letter per dimension from ``T Z C Y X S`` (case-insensitive).
    ndim : int
        Number of dimensions of the array.

    Returns
    -------
    str
        The upper-case axes string.

    Raises
    ------
    TypeError
        ``axes`` is not a string.
    ValueError
        Unknown or repeated letters, a length other than ``ndim``, no Y or X,
        X before Y, or S (RGB samples) not last.

    Examples
    --------
    >>> validate_axes("zyx", 3)
    'ZYX'
    >>> validate_axes("ZXY", 3)
    Traceback (most recent call last):
    ...
    ValueError: axes 'ZXY': Y must come before X (row, column order)
    """
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'ZYX', got {type(axes).__name__}")
    axes = axes.upper()
    bad = sorted(set(axes) - set(AXES_LETTERS))
    if bad:
        raise ValueError(
            f"axes {axes!r} contains unknown letter(s) {bad}; use only {' '.join(AXES_LETTERS)} "
            "(T time, Z depth, C channel, Y rows, X columns, S RGB samples)"
        )
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes!r} repeats a letter; each axis may appear once")
    if len(axes) != ndim:
        raise ValueError(
            f"axes {axes!r} has {len(axes)} letters but the image has {ndim} dimensions; "
            "give one letter per dimension"
        )
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes {axes!r} must contain both Y and X")
    if axes.index("Y") > axes.index("X"):
        raise ValueError(f"axes {axes!r}: Y must come before X (row, column order)")
    if "S" in axes and axes[-1] != "S":
        raise ValueError(f"axes {axes!r}: S (RGB samples) must be the last axis")
    return axes


def infer_axes(shape: tuple[int, ...]) -> str:
    """Guess axes from a shape alone; raise when the guess would be ambiguous."""
    ndim = len(shape)
    if ndim == 2:
        return "YX"
    if ndim == 3:
        if shape[-1] in (3, 4):
            raise ValueError(
                f"cannot tell whether an image of shape {tuple(shape)} is a stack of "
                f"{shape[0]} slices (axes 'ZYX') or an RGB(A) image (axes 'YXS'); "
                "pass axes explicitly (--axes ZYX or --axes YXS)"
            )
        return "ZYX"
    raise ValueError(
        f"cannot guess the axes of a {ndim}-D image of shape {tuple(shape)} without metadata; "
        "pass axes explicitly, e.g. --axes TZYX or --axes ZCYX"
    )


def _clean_metadata_axes(axes: str, shape: tuple[int, ...]) -> str | None:
    """Map tifffile / NGFF axes to ours; None when they are not all known."""
    mapped = axes.upper().replace("I", "Z")
    if set(mapped) <= set(AXES_LETTERS) and len(set(mapped)) == len(mapped) == len(shape):
        return mapped
    return None


# ---------------------------------------------------------------------------- TIFF


def _open_tiff(path: Path, level: int) -> tuple[da.Array, str | None, dict]:
    import tifffile

    meta: dict[str, Any] = {"format": "tiff"}
    with tiff_log() as errors, tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        nlevels = len(series.levels)
        if not 0 <= level < nlevels:
            raise ValueError(f"{path} has {nlevels} resolution level(s); level must be 0..{nlevels - 1}")
        check_tiff(tif, series.levels[level], path, errors)
        page = series.pages[0] if series.pages else tif.pages[0]
        geo = {}
        for code, name in GEOTIFF_TAGS.items():
            tag = page.tags.get(code) if page is not None else None
            if tag is not None:
                value = tag.value
                geo[name] = value.tolist() if isinstance(value, np.ndarray) else (
                    list(value) if isinstance(value, tuple) else value
                )
        if geo:
            meta["geotiff"] = geo
            meta["format"] = "geotiff"
        axes = None
        if tif.is_ome or tif.is_imagej:
            meta["format"] = "ome-tiff" if tif.is_ome else "imagej-tiff"
            axes = _clean_metadata_axes(series.axes, series.levels[level].shape)
        elif series.axes.endswith("S") and getattr(getattr(page, "photometric", None), "name", "") == "RGB":
            shape = series.levels[level].shape
            lead = len(shape) - 3
            if lead in (0, 1):
                axes = ("Z" if lead else "") + "YXS"
    store = tifffile.imread(path, aszarr=True, level=level)
    arr = zarr.open_array(store, mode="r")
    return NamedChunks(arr, str(path)).to_dask(), axes, meta


# ---------------------------------------------------------------------------- zarr


def read_attrs(node: Any) -> dict:
    """A zarr group's or array's attributes, with NGFF 0.5's ``ome`` namespace unpacked."""
    attrs = dict(node.attrs)
    if "ome" in attrs and isinstance(attrs["ome"], dict):  # NGFF 0.5 (zarr v3)
        merged = dict(attrs["ome"])
        merged.setdefault("_ome_nested", True)
        return merged
    return attrs


def ome_zarr_root(path: str | os.PathLike) -> dict | None:
    """Describe an OME-Zarr image group, or return None when ``path`` is not one.

    Returns
    -------
    dict or None
        ``{"root", "version", "zarr_format", "axes", "datasets", "multiscale"}``.
    """
    try:
        node = zarr.open(str(path), mode="r")
    except Exception:
        return None
    if not isinstance(node, zarr.Group):
        return None
    attrs = read_attrs(node)
    multiscales = attrs.get("multiscales")
    if not multiscales:
        return None
    ms = multiscales[0]
    names = []
    for ax in ms.get("axes", []):
        names.append((ax["name"] if isinstance(ax, dict) else str(ax)).upper())
    return {
        "root": str(Path(path)),
        "version": str(ms.get("version", attrs.get("version", "0.4"))),
        "zarr_format": node.metadata.zarr_format,
        "axes": "".join(names),
        "datasets": ms["datasets"],
        "multiscale": ms,
    }


def _open_zarr(path: Path, level: int) -> tuple[da.Array, str | None, dict]:
    ome = ome_zarr_root(path)
    if ome is not None:
        datasets = ome["datasets"]
        if not 0 <= level < len(datasets):
            raise ValueError(
                f"{path} has {len(datasets)} resolution level(s); level must be 0..{len(datasets) - 1}"
            )
        arr = zarr.open_array(str(path / datasets[level]["path"]), mode="r")
        axes = _clean_metadata_axes(ome["axes"], arr.shape) if ome["axes"] else None
        scale = translation = None
        for tr in datasets[level].get("coordinateTransformations", []):
            if tr.get("type") == "scale":
                scale = list(tr["scale"])
            elif tr.get("type") == "translation":
                translation = list(tr["translation"])
        return _zarr_input(arr, path / datasets[level]["path"], {"format": "ome-zarr", "ome_zarr": ome,
                                                                 "scale": scale, "translation": translation}, axes)
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"{path} is not a readable zarr array or OME-Zarr image: {exc}") from exc
    if isinstance(node, zarr.Group):
        arrays = sorted(name for name, _ in node.arrays())
        hint = f" It contains arrays {arrays}; point at one of them, e.g. {path / arrays[0]}." if arrays else ""
        raise ValueError(f"{path} is a zarr group without OME-Zarr multiscales metadata.{hint}")
    if level != 0:
        raise ValueError(f"{path} is a single zarr array; it has no resolution level {level}")
    axes = None
    dims = getattr(node.metadata, "dimension_names", None)
    own = node.attrs.get("napari_sam", {})
    if isinstance(own, dict) and "axes" in own:
        axes = _clean_metadata_axes(own["axes"], node.shape)
    elif dims and all(d for d in dims):
        axes = _clean_metadata_axes("".join(str(d)[:1] for d in dims), node.shape) if all(
            len(str(d)) == 1 for d in dims
        ) else None
    elif "_ARRAY_DIMENSIONS" in node.attrs:
        names = node.attrs["_ARRAY_DIMENSIONS"]
        if all(len(str(d)) == 1 for d in names):
            axes = _clean_metadata_axes("".join(names), node.shape)
    return _zarr_input(node, path, {"format": f"zarr-v{node.metadata.zarr_format}"}, axes)


def _zarr_input(arr: Any, where: Path, meta: dict, axes: str | None) -> tuple[da.Array, str | None, dict]:
    """The dask array of a zarr input (chunk errors name the store), and its missing chunks in ``meta``."""
    data = NamedChunks(arr, str(where)).to_dask()
    missing, total = missing_chunks(arr)
    if missing:
        meta["missing_chunks"] = {"store": str(where), "missing": [list(c) for c in missing], "total": total,
                                  "fill_value": arr.fill_value, "present": present_mask(data, arr, missing)}
    return data, axes, meta


# ---------------------------------------------------------------------------- public


def open_image(
    path: str | os.PathLike, *, axes: str | None = None, level: int = 0
) -> tuple[da.Array, str, dict]:
    """Open an image or volume lazily.

    Parameters
    ----------
    path : str or PathLike
        A ``.tif``/``.tiff`` (incl. OME-TIFF, GeoTIFF), a zarr v2/v3 array, an
        OME-Zarr image group, or a ``.npy`` file.
    axes : str, optional
        Overrides the axes found in metadata, e.g. ``"ZYX"``, ``"TZCYX"``, ``"YXS"``.
    level : int
        Resolution level of a multiscale input (0 = full resolution).

    Returns
    -------
    data : dask.array.Array
        The lazy pixel data, any dtype, in file order.
    axes : str
        One letter per dimension of ``data``.
    metadata : dict
        ``format``, ``path``, ``axes_source`` (``"user"``, ``"metadata"`` or
        ``"shape"``), and where present ``scale``, ``geotiff`` (tag name -> value)
        and ``ome_zarr`` (see :func:`ome_zarr_root`).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"input {path} does not exist")
    if not isinstance(level, (int, np.integer)) or level < 0:
        raise ValueError(f"level must be a non-negative integer, got {level!r}")
    suffix = path.name.lower()
    if suffix.endswith((".tif", ".tiff", ".btf", ".tf8")):
        data, meta_axes, meta = _open_tiff(path, int(level))
    elif suffix.endswith(".npy"):
        if level != 0:
            raise ValueError(f"{path} is a single .npy array; it has no resolution level {level}")
        data = da.from_array(np.load(path, mmap_mode="r"), chunks="auto")
        meta_axes, meta = None, {"format": "npy"}
    elif path.is_dir() or suffix.endswith(".zarr"):
        data, meta_axes, meta = _open_zarr(path, int(level))
    else:
        raise ValueError(
            f"unsupported input {path}: expected .tif/.tiff, .npy, a zarr array or an OME-Zarr folder"
        )
    meta["path"] = str(path.resolve())
    if axes is not None:
        final, source = validate_axes(axes, data.ndim), "user"
    elif meta_axes is not None:
        final, source = validate_axes(meta_axes, data.ndim), "metadata"
    else:
        final, source = infer_axes(tuple(data.shape)), "shape"
    meta["axes_source"] = source
    return data, final, meta


def write_ome_labels_metadata(
    root: str | os.PathLike, name: str, *, axes: list[dict], scale: list[float] | None,
    version: str, zarr_format: int, translation: list[float] | None = None,
) -> None:
    """Register ``labels/<name>`` (an array at ``labels/<name>/0``) in an OME-Zarr image.

    Writes the ``labels`` group's list of names and the label group's
    ``multiscales`` + ``image-label`` metadata (NGFF 0.4 for zarr v2, 0.5 for zarr v3).
    ``scale`` and ``translation`` are the segmented image level's, so the labels lie
    exactly on the pixels they were computed from (also for ``--level N``).
    """
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(scale) if scale else [1.0] * len(axes)}]
    if translation is not None and any(float(t) != 0.0 for t in translation):
        transforms.append({"type": "translation", "translation": [float(t) for t in translation]})
    ms: dict[str, Any] = {
        "name": name,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": transforms}],
    }
    label_meta: dict[str, Any] = {"source": {"image": "../../"}}
    root_grp = zarr.open_group(str(root), mode="r+")
    labels_grp = root_grp.require_group("labels")
    existing = read_attrs(labels_grp).get("labels", [])
    names = list(existing) + ([name] if name not in existing else [])
    label_grp = labels_grp.require_group(name)
    if zarr_format == 3 or not version.startswith("0.4"):
        labels_grp.attrs["ome"] = {"version": version, "labels": names}
        label_grp.attrs["ome"] = {"version": version, "multiscales": [ms], "image-label": label_meta}
    else:
        ms["version"] = version
        label_meta["version"] = version
        labels_grp.attrs["labels"] = names
        label_grp.attrs.update({"multiscales": [ms], "image-label": label_meta})


def json_safe(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples inside ``value`` to JSON types."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def prepare_labels_array(
    out_path: Path, *, shape: tuple, chunks: tuple, signature: dict, attrs: dict,
    resume: bool, overwrite: bool, zarr_format: int, dimension_names: list[str] | None = None,
) -> None:
    """Create the uint32 labels array of a run, or check an existing one before resuming.

    ``signature`` (JSON-safe dict of everything that determines the labels) is
    stored in ``attrs["napari_sam"]["signature"]`` (and ``dimension_names`` on a zarr v3
    array, as NGFF 0.5 requires for OME-Zarr labels); resuming with a different
    signature raises ``ValueError`` naming the differing entries.  An existing
    output is replaced only with ``overwrite``.
    """
    if out_path.exists():
        if overwrite:
            from napari_sam.volume.output import refuse_foreign

            refuse_foreign(out_path)  # never delete what napari-sam did not write
            shutil.rmtree(out_path)
        elif resume:
            try:
                arr = zarr.open_array(str(out_path), mode="r")
            except Exception as exc:
                raise ValueError(f"cannot resume: {out_path} is not a labels array written by napari-sam") from exc
            old = arr.attrs.get("napari_sam", {}).get("signature")
            if old is None:
                raise ValueError(f"cannot resume: {out_path} was not written by napari-sam; use --overwrite")
            diff = sorted(k for k in set(old) | set(signature) if old.get(k) != signature.get(k))
            if diff:
                raise ValueError(
                    f"cannot resume {out_path}: the run differs in {', '.join(diff)}; "
                    "rerun with the same input and options, or use --overwrite to start again"
                )
            return
        else:
            raise ValueError(
                f"output {out_path} already exists; pass --resume to continue an interrupted run "
                "or --overwrite to replace it (resume=True / overwrite=True in Python)"
            )
    arr = zarr.create_array(
        store=str(out_path), shape=shape, chunks=chunks, dtype="uint32", fill_value=0,
        zarr_format=zarr_format, dimension_names=dimension_names if zarr_format == 3 else None,
        attributes=json_safe({**attrs, "napari_sam": {**attrs.get("napari_sam", {}),
                                                                                "signature": signature}}),
    )
    del arr
