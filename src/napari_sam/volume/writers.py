"""Output formats chosen by the output's suffix, and the TIFF / GeoTIFF labels writer.

* ``.zarr`` — a zarr labels array (zarr format 3 by default, 2 with ``zarr_format=2``).
* ``.ome.zarr`` — an NGFF image-label group (0.4 on zarr v2, 0.5 on zarr v3) holding the
  labels array at ``0``, readable by ome-zarr-py and napari-ome-zarr.
* ``.tif`` / ``.tiff`` / ``.ome.tif`` / ``.ome.tiff`` — a TIFF (BigTIFF above
  :data:`BIGTIFF_BYTES`).  The run writes a zarr staging store beside the file
  (``.<name>.napari-sam-zarr``), so ``--resume`` continues an interrupted run there;
  the TIFF is written from it slice by slice when every slice is done (never the
  whole volume in memory), renamed into place, and the staging store is removed.
  A GeoTIFF input's georeferencing tags (CRS and transform) are copied.

Anything else is refused with a ``ValueError``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

__all__ = ["BIGTIFF_BYTES", "finish_output", "ome_labels_array_path", "resolve_output", "write_ome_labels_group", "check_tiff_target", "finish_tiff", "open_written", "output_format", "tiff_staging_path",
           "write_tiff", "written_tiff_by_napari_sam"]

#: a TIFF whose pixel data exceed this is written as BigTIFF (classic TIFF offsets end at 4 GiB)
BIGTIFF_BYTES = 2**31 - 2**25

#: the TIFF ``Software`` tag napari-sam writes (how an output to overwrite is recognised)
SOFTWARE = "napari-sam"

_TIFF = (".tif", ".tiff")
_GEO_CODES = {"ModelPixelScaleTag": (33550, 12), "ModelTiepointTag": (33922, 12),
              "ModelTransformationTag": (34264, 12), "GeoKeyDirectoryTag": (34735, 3),
              "GeoDoubleParamsTag": (34736, 12), "GeoAsciiParamsTag": (34737, 2)}


def output_format(path: str | os.PathLike) -> str:
    """``"zarr"``, ``"ome-zarr"`` or ``"tiff"`` from the output's suffix; ``ValueError`` for any other suffix.

    An existing directory is a zarr store whatever its name (an output of an earlier
    version to resume, or a folder that the overwrite checks then refuse).
    """
    if Path(path).is_dir() and not str(path).lower().rstrip("/").endswith(".ome.zarr"):
        return "zarr"
    name = Path(path).name.lower().rstrip("/")
    if name.endswith(".ome.zarr"):
        return "ome-zarr"
    if name.endswith(".zarr"):
        return "zarr"
    if name.endswith(_TIFF):
        return "tiff"
    raise ValueError(f"cannot tell the output format of {str(path)!r} from its suffix: use .zarr (zarr labels "
                     "array), .ome.zarr (OME-Zarr labels), or .tif / .tiff / .ome.tif (TIFF labels)")


def tiff_staging_path(path: str | os.PathLike) -> Path:
    """The zarr store a TIFF output is written through (beside it; kept until the TIFF is complete)."""
    path = Path(path)
    return path.with_name(f".{path.name}.napari-sam-zarr")


def written_tiff_by_napari_sam(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TIFF whose ``Software`` tag says napari-sam wrote it."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags.get(305)
            return tag is not None and str(tag.value).startswith(SOFTWARE)
    except Exception:  # noqa: BLE001 - not a readable TIFF: not ours
        return False


def check_tiff_target(final: Path, *, resume: bool, overwrite: bool) -> None:
    """An existing TIFF output is replaced only with overwrite, and only when napari-sam wrote it."""
    if not final.exists():
        return
    if final.is_dir() or not written_tiff_by_napari_sam(final):
        raise ValueError(f"the output {final} exists and was not written by napari-sam, so it is not replaced; "
                         "choose another output path, or remove it yourself if it is no longer needed")
    if resume:
        raise ValueError(f"the TIFF output {final} is complete, there is nothing to resume; use --overwrite "
                         "(overwrite=True) to write it again")
    if not overwrite:
        raise ValueError(f"output {final} already exists; pass --overwrite (overwrite=True) to replace it")


def _geo_extratags(geotiff: dict | None) -> list[tuple]:
    """tifffile ``extratags`` that copy a GeoTIFF input's georeferencing (read by ``open_image``)."""
    tags = []
    for name, value in (geotiff or {}).items():
        if name not in _GEO_CODES:
            continue
        code, dtype = _GEO_CODES[name]
        if dtype == 2:
            tags.append((code, 2, 0, str(value), True))
        else:
            values = [float(v) for v in value] if dtype == 12 else [int(v) for v in value]
            tags.append((code, dtype, len(values), values, True))
    return tags


def write_tiff(source: str | os.PathLike, path: str | os.PathLike, *, axes: str,
               geotiff: dict | None = None) -> Path:
    """Write the labels array at ``source`` (zarr) as a TIFF at ``path``, one 2-D slice at a time.

    Parameters
    ----------
    source : path
        A complete labels array written by napari-sam, ``(*loop, Y, X)`` uint32.
    path : path
        The TIFF to write; written under a temporary name beside it and renamed into place.
    axes : str
        Axes of ``source`` (e.g. ``"YX"``, ``"ZYX"``); stored in the TIFF's metadata.
    geotiff : dict, optional
        The input's GeoTIFF tags by name (``open_image``'s ``meta["geotiff"]``), copied
        so the labels keep the input's CRS and transform.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import tifffile

    arr = zarr.open_array(str(source), mode="r")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    loop_shape = tuple(int(s) for s in arr.shape[:-2])
    n = int(np.prod(loop_shape, dtype=np.int64)) if loop_shape else 1
    bigtiff = arr.nbytes > BIGTIFF_BYTES
    ome = path.name.lower().endswith((".ome.tif", ".ome.tiff"))

    def slices():
        for k in range(n):
            idx = np.unravel_index(k, loop_shape) if loop_shape else ()
            yield np.asarray(arr[tuple(int(i) for i in idx)])

    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=ome) as tif:
            tif.write(slices(), shape=tuple(arr.shape), dtype=arr.dtype, software=SOFTWARE, photometric="minisblack",
                      compression="zlib", metadata={"axes": axes},
                      extratags=_geo_extratags(geotiff))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def finish_tiff(staging: Path, path: Path, *, axes: str, geotiff: dict | None) -> None:
    """Write the TIFF from the complete staging store, then remove the store (it is ours)."""
    write_tiff(staging, path, axes=axes, geotiff=geotiff)
    shutil.rmtree(staging, ignore_errors=True)


def open_written(path: Path, fmt: str) -> Any:
    """The written labels as a dask array (read lazily from the zarr array or the TIFF)."""
    import dask.array as da

    if fmt == "tiff":
        import tifffile

        return da.from_zarr(zarr.open_array(tifffile.imread(path, aszarr=True), mode="r"))
    return da.from_zarr(zarr.open_array(str(path), mode="r"))


_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}


def ome_labels_array_path(path: Path) -> Path:
    """The array path (``path/0``) of an ``.ome.zarr`` labels output; refuses a folder napari-sam did not write."""
    from napari_sam.volume.output import written_by_napari_sam

    if path.exists() and not (path.is_dir() and written_by_napari_sam(path / "0")):
        raise ValueError(f"the output {path} exists and was not written by napari-sam, so it is not replaced; "
                         "choose another output path, or remove it yourself if it is no longer needed")
    return path / "0"


def write_ome_labels_group(path: Path, *, axes: str, scale: list | None, translation: list | None,
                           zarr_format: int) -> None:
    """The NGFF ``multiscales`` + ``image-label`` metadata of a standalone labels group (one level, ``0``)."""
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [float(v) for v in scale] if scale
                                         else [1.0] * len(axes)}]
    if translation is not None and any(float(t) for t in translation):
        transforms.append({"type": "translation", "translation": [float(t) for t in translation]})
    ms: dict[str, Any] = {"name": path.name, "datasets": [{"path": "0", "coordinateTransformations": transforms}],
                          "axes": [{"name": a.lower(), "type": _AXIS_TYPES[a]} for a in axes]}
    label: dict[str, Any] = {}
    grp = zarr.open_group(str(path), mode="a", zarr_format=zarr_format)
    if zarr_format == 3:
        grp.attrs["ome"] = {"version": "0.5", "multiscales": [ms], "image-label": label}
    else:
        ms["version"] = label["version"] = "0.4"
        grp.attrs.update({"multiscales": [ms], "image-label": label})


def resolve_output(output: Any, *, resume: bool, overwrite: bool) -> tuple[str | None, Path | None, Any]:
    """``(format, final path, path the zarr run writes)`` for an output; checks only, creates nothing."""
    if output is None:
        return None, None, None
    fmt, final = output_format(output), Path(output)
    if fmt == "tiff":  # the run writes a zarr staging store; the TIFF is written from it at the end
        check_tiff_target(final, resume=resume, overwrite=overwrite)
        return fmt, final, tiff_staging_path(final)
    if fmt == "ome-zarr":  # an image-label group with the labels array at 0
        return fmt, final, ome_labels_array_path(final)
    return fmt, final, output


def _axes_values(values: Any, axes: str, neutral: float) -> list | None:
    """Per-axis scale/translation of the input level for the output's axes (None when unknown or mismatched)."""
    if values is None or len(values) != len(axes):
        return None
    return [neutral if a == "C" else float(v) for a, v in zip(axes, values)]


def finish_output(fmt: str, final: Path, written: Path, *, axes: str, zarr_format: int, meta: dict) -> Any:
    """After a complete run: the OME-Zarr group metadata, or the TIFF from the staging store; the result, lazily."""
    if fmt == "tiff":
        finish_tiff(written, final, axes=axes, geotiff=meta.get("geotiff"))
        return open_written(final, "tiff")
    write_ome_labels_group(final, axes=axes, zarr_format=zarr_format,
                           scale=_axes_values(meta.get("scale"), axes, 1.0),
                           translation=_axes_values(meta.get("translation"), axes, 0.0))
    return open_written(written, "zarr")
