"""Polygons of labels for GIS tools: one feature per label and slice, as GeoPackage or GeoJSON.

:func:`write_vectors` turns a label image or volume into polygons, reading one 2-D
slice at a time, and writes them with GDAL (through pyogrio) slice by slice:

* ``.gpkg`` — a GeoPackage layer ``labels`` (QGIS, geopandas, ArcGIS, ...).
* ``.geojson`` — a GeoJSON feature collection.

Each feature is a ``MultiPolygon`` (an object may have several parts) with holes kept,
traced along pixel edges (GDAL's polygonize, through ``rasterio.features.shapes``), so
rasterising a feature gives back exactly its pixels.  Attributes: ``label``, ``slice``
(only for stacks: the flat index over the leading axes, as in the object table),
``area`` (pixels) and the scores of :data:`~napari_sam.volume.tables.SCORE_NAMES`
(empty where a label has no scores).

Coordinates: with ``transform`` / ``crs`` (:func:`georeference` reads them from a
GeoTIFF input) the polygons are in the input's CRS; without, in pixel units with
``x`` = column and ``y`` = row of the pixel corners (no CRS).

Needs the optional ``geo`` extra: ``pip install "napari-sam-toolkit[geo]"``.
"""
from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.volume.tables import SCORE_NAMES

__all__ = ["VECTOR_DRIVERS", "check_vector_target", "georeference", "read_scores", "write_vectors"]

#: output suffix -> GDAL driver
VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON"}
#: how a vector file napari-sam wrote is recognised (layer description)
DESCRIPTION = "Labels written by napari-sam"
_INSTALL = 'pip install "napari-sam-toolkit[geo]"'


def _geo_modules() -> tuple[Any, Any, Any]:
    """``(rasterio.features, shapely, pyogrio.raw)``, or an ImportError that says how to install them."""
    try:
        import pyogrio.raw
        import rasterio.features
        import shapely
    except ImportError as exc:
        raise ImportError(f"polygon output (--vector) needs rasterio, shapely and pyogrio ({exc.name} is "
                          f"missing): install them with {_INSTALL}") from exc
    return rasterio.features, shapely, pyogrio.raw


def _driver(path: Path) -> str:
    driver = VECTOR_DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise ValueError(f"cannot tell the polygon format of {str(path)!r} from its suffix: use .gpkg "
                         "(GeoPackage) or .geojson (GeoJSON)")
    return driver


def _written_by_napari_sam(path: Path) -> bool:
    try:
        import pyogrio

        info = pyogrio.read_info(path)
    except Exception:  # noqa: BLE001 - not a readable vector file: not ours
        return False
    return str((info.get("layer_metadata") or {}).get("DESCRIPTION", "")).startswith(DESCRIPTION)


def check_vector_target(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check a polygon output before a run: known suffix, geo extra installed, and an existing file replaced
    only with ``overwrite`` and only when napari-sam wrote it.  Returns the path; creates nothing."""
    path = Path(path)
    _driver(path)
    _geo_modules()
    if path.exists():
        if path.is_dir() or not _written_by_napari_sam(path):
            raise ValueError(f"the polygon output {path} exists and was not written by napari-sam, so it is not "
                             "replaced; choose another path, or remove it yourself if it is no longer needed")
        if not overwrite:
            raise ValueError(f"polygon output {path} already exists; pass --overwrite (overwrite=True) to replace it")
    return path


def georeference(source: Any, *, shape: tuple[int, int] | None = None) -> tuple[Any, str | None]:
    """``(affine transform, CRS as WKT)`` of a GeoTIFF input, or ``(None, None)`` for anything else.

    Parameters
    ----------
    source : path or array
        The segmented input; only a TIFF with GeoTIFF tags is georeferenced.
    shape : (int, int), optional
        ``(Y, X)`` of the labels; when it differs from the file's (a coarser ``--level``)
        the transform is scaled to it.
    """
    if not isinstance(source, (str, os.PathLike)) or not str(source).lower().endswith((".tif", ".tiff")):
        return None, None
    import tifffile

    with tifffile.TiffFile(source) as tif:
        if not any(code in tif.pages[0].tags for code in (33550, 33922, 34264)):
            return None, None
    _geo_modules()
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(source) as ds:
            transform, crs, full = ds.transform, ds.crs, (ds.height, ds.width)
    if shape is not None and tuple(shape) != full:
        from affine import Affine

        sx, sy = full[1] / shape[1], full[0] / shape[0]  # pixels of the level are this many file pixels
        transform = Affine(transform.a * sx, transform.b * sy, transform.c, transform.d * sx, transform.e * sy,
                           transform.f)
    return transform, None if crs is None else crs.to_wkt()


def read_scores(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The ``label``, ``slice`` and score columns of an object table CSV (:func:`~napari_sam.object_table`)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {"label": np.array([int(r["label"]) for r in rows], np.int64),
           "slice": np.array([int(r.get("slice") or 0) for r in rows], np.int64)}
    for name in SCORE_NAMES:
        out[name] = np.array([float(r[name]) if r.get(name) else np.nan for r in rows], np.float64)
    return out


def _slice_polygons(plane: np.ndarray, transform: Any) -> tuple[np.ndarray, np.ndarray, list]:
    """``(ids, areas, multipolygons)`` of one 2-D label image, ids ascending."""
    features, shapely, _ = _geo_modules()
    ids, inverse = np.unique(plane, return_inverse=True)
    index = inverse.reshape(plane.shape).astype(np.int32)  # shapes() needs int32; ids may be up to uint64
    areas = np.bincount(index.ravel(), minlength=ids.size)
    parts: dict[int, list] = {}
    for geom, value in features.shapes(index, mask=plane != 0, connectivity=4, transform=transform):
        parts.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    keep = [i for i in range(ids.size) if ids[i] != 0]
    return ids[keep].astype(np.int64), areas[keep], [shapely.MultiPolygon(parts[i]) for i in keep]


def write_vectors(
    labels: Any,
    path: str | os.PathLike,
    *,
    scores: Mapping[str, Any] | str | os.PathLike | None = None,
    transform: Any = None,
    crs: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Write one polygon per label (and slice) of ``labels`` as a GeoPackage or GeoJSON file.

    Parameters
    ----------
    labels : (Y, X) or (..., Y, X) integer array (numpy, dask, zarr)
        Read one 2-D slice at a time.
    path : path
        ``.gpkg`` or ``.geojson``; written under a temporary name beside it and renamed into place.
    scores : dict of columns or path to a CSV, optional
        An object table (:func:`~napari_sam.object_table` or ``--table``): its score
        columns are copied to the features with the same ``label`` and ``slice``.
    transform : affine.Affine, optional
        Pixel -> map coordinates (:func:`georeference`); default: pixel coordinates
        (``x`` = column, ``y`` = row).
    crs : str, optional
        The coordinate reference system (WKT or ``"EPSG:NNNN"``); default none.
    overwrite : bool
        Replace an existing file that napari-sam wrote (others are never replaced).
    progress : callable, optional
        ``progress(done, total, desc)`` after each slice.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = check_vector_target(path, overwrite=overwrite)
    _, shapely, raw = _geo_modules()
    from affine import Affine

    if transform is None:
        transform = Affine.identity()
    shape = tuple(int(s) for s in getattr(labels, "shape", np.shape(labels)))
    if len(shape) < 2:
        raise ValueError(f"labels must be at least 2-D (..., Y, X), got shape {shape}")
    if np.dtype(labels.dtype).kind not in "iub":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if isinstance(scores, (str, os.PathLike)):
        scores = read_scores(scores)
    elif scores is not None:
        scores = {name: np.asarray(col) for name, col in scores.items()}
    loop = shape[:-2]
    n = int(np.prod(loop)) if loop else 1
    names = ["label", *(["slice"] if loop else []), "area", *SCORE_NAMES]
    driver = _driver(path)
    # GDAL appends to a GeoPackage with the declared field types, but re-reads an appended GeoJSON and
    # narrows its integer fields; so slices always go to a GeoPackage, which a GeoJSON is made from at the end
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.gpkg")
    options = dict(layer="labels", geometry_type="MultiPolygon", crs=crs, layer_options={"DESCRIPTION": DESCRIPTION})
    written = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="'crs' was not provided")
            for k in range(n):
                plane = labels[tuple(int(i) for i in np.unravel_index(k, loop))] if loop else labels[...]
                plane = np.asarray(plane.compute() if hasattr(plane, "compute") else plane)
                ids, areas, geoms = _slice_polygons(plane, transform)
                if ids.size or (k == n - 1 and not written):
                    columns = [ids, *([np.full(ids.size, k, np.int64)] if loop else []), areas.astype(np.int64),
                               *_score_columns(scores, ids, k)]
                    raw.write(str(tmp), np.array([g.wkb for g in geoms], dtype=object), columns, names,
                              driver="GPKG", append=written, **options)
                    written = True
                if progress is not None:
                    progress(k + 1, n, "polygons")
            if driver == "GeoJSON":
                _to_geojson(tmp, path, names, options)
            else:
                os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".geojson")):
            if leftover.exists():
                leftover.unlink()
    return path


def _to_geojson(gpkg: Path, path: Path, names: list[str], options: dict) -> None:
    """Write the features of ``gpkg`` as the GeoJSON ``path`` (in one write: its features are held in memory)."""
    _, _, raw = _geo_modules()
    meta, _, geometry, fields = raw.read(str(gpkg))
    tmp = gpkg.with_name(gpkg.name + ".geojson")
    raw.write(str(tmp), geometry, list(fields), names, driver="GeoJSON", **options)
    os.replace(tmp, path)


def _score_columns(scores: Mapping[str, Any] | None, ids: np.ndarray, k: int) -> list[np.ndarray]:
    """The score columns for ``ids`` of slice ``k`` (NaN where the table has no row)."""
    out = [np.full(ids.size, np.nan) for _ in SCORE_NAMES]
    if scores is None or not len(scores.get("label", ())):
        return out
    labels = np.asarray(scores["label"], np.int64)
    rows = np.ones(labels.size, bool) if "slice" not in scores else np.asarray(scores["slice"]) == k
    lookup = {int(lab): i for i, lab in zip(np.flatnonzero(rows), labels[rows])}
    for j, lab in enumerate(ids):
        i = lookup.get(int(lab))
        if i is not None:
            for col, name in zip(out, SCORE_NAMES):
                if name in scores:
                    col[j] = float(scores[name][i])
    return out
