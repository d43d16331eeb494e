"""Object tables: one row per object and slice, with its geometry and the scores SAM gave it.

Columns (:data:`COLUMNS`): ``label``, ``slice`` (flat index of the 2-D slice),
``area``, ``bbox-0`` .. ``bbox-3`` (``r0, c0, r1, c1``, half-open) and
``centroid-0`` / ``centroid-1`` (row, col), named and computed as
``skimage.measure.regionprops_table`` does, then ``predicted_iou``,
``stability_score`` and the prompt point ``point_row`` / ``point_col`` of the
mask behind the label (NaN where a label has no scores).  A table is a dict
of numpy columns (``pandas.DataFrame(table)`` makes a data frame) and is
written as CSV with :func:`write_table`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COLUMNS", "SCORE_NAMES", "object_table", "slice_table", "write_table", "volume_table"]

#: per-object scores carried from the mask records to the table
SCORE_NAMES = ("predicted_iou", "stability_score", "point_row", "point_col")
COLUMNS = ("label", "slice", "area", "bbox-0", "bbox-1", "bbox-2", "bbox-3", "centroid-0", "centroid-1",
           *SCORE_NAMES)


def slice_table(labels: np.ndarray, scores: Mapping[str, Any] | None = None, *, slice_index: int = 0
                ) -> dict[str, np.ndarray]:
    """The table of one ``(Y, X)`` label image; ``scores`` rows are matched by their ``label`` column."""
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a slice table needs a 2-D label image, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    ids = None
    if int(labels.max(initial=0)) > labels.size:  # sparse large ids (e.g. per-slice id blocks): number them 1..n
        ids, inverse = np.unique(labels, return_inverse=True)
        labels = inverse.reshape(labels.shape) + (0 if ids[0] == 0 else 1)
        ids = ids if ids[0] == 0 else np.concatenate([[0], ids])
    props = regionprops_table(labels, properties=("label", "area", "bbox", "centroid"))
    n = len(props["label"])
    found_ids = np.asarray(props["label"], dtype=np.int64)
    table: dict[str, np.ndarray] = {
        "label": found_ids if ids is None else ids[found_ids].astype(np.int64),
        "slice": np.full(n, int(slice_index), dtype=np.int64),
    }
    for name in COLUMNS[2:9]:
        table[name] = np.asarray(props[name])
    for name in SCORE_NAMES:
        table[name] = np.full(n, np.nan)
    if scores is not None and len(scores.get("label", ())):
        ids = np.asarray(scores["label"], dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        pos = np.minimum(np.searchsorted(ids[order], table["label"]), ids.size - 1)
        found = ids[order][pos] == table["label"]
        for name in SCORE_NAMES:
            if name in scores:
                table[name][found] = np.asarray(scores[name], dtype=np.float64)[order][pos[found]]
    return table


def _concat(tables: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not tables:
        return slice_table(np.zeros((1, 1), np.uint32))
    return {name: np.concatenate([t[name] for t in tables]) for name in COLUMNS}


def object_table(
    labels: Any,
    scores: Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    path: str | os.PathLike | None = None,
    overlap: str = "smaller_on_top",
) -> dict[str, np.ndarray]:
    """One row per object (and slice) of a label image or volume, with the objects' scores.

    Parameters
    ----------
    labels : (Y, X) or (..., Y, X) integer array (numpy, dask, zarr)
        Slices are read one at a time; ``slice`` is the flat index over the leading axes.
    scores : dict of columns or sequence of MaskRecord, optional
        The per-label scores from ``masks_to_labels(..., return_scores=True)`` or
        ``segment_image(..., return_scores=True)`` (a ``label`` column and
        :data:`SCORE_NAMES`; an optional ``slice`` column for volumes).  A list
        of mask records is painted again with
        :func:`~napari_sam.automatic.labels.masks_to_labels` (``overlap``) to
        know which label each became: pass the records that made ``labels``.
    path : path, optional
        Also write the table as CSV there.
    overlap : {"smaller_on_top", "score"}
        Only with records: the overlap policy used to make ``labels``.

    Returns
    -------
    dict of str -> ndarray
        The columns of :data:`COLUMNS` (``pandas.DataFrame(table)`` for a data frame).

    Examples
    --------
    >>> import numpy as np
    >>> from napari_sam.automatic.records import MaskRecord
    >>> from napari_sam.automatic.labels import masks_to_labels
    >>> rec = MaskRecord(np.ones((2, 3), bool), (1, 1, 3, 4), 6, 0.9, 0.95, (2.0, 2.0), (0, 0, 5, 5))
    >>> labels, scores = masks_to_labels([rec], (5, 5), return_scores=True)
    >>> table = object_table(labels, scores)
    >>> int(table["area"][0]), float(table["predicted_iou"][0]), [int(table[f"bbox-{i}"][0]) for i in range(4)]
    (6, 0.9, [1, 1, 3, 4])
    """
    shape = tuple(int(s) for s in getattr(labels, "shape", np.shape(labels)))
    if len(shape) < 2:
        raise ValueError(f"labels must be at least 2-D (..., Y, X), got shape {shape}")
    if scores is not None and not isinstance(scores, Mapping):
        from napari_sam.automatic.labels import masks_to_labels

        if len(shape) != 2:
            raise ValueError("mask records describe one 2-D image; for a volume pass the score columns")
        _, scores = masks_to_labels(list(scores), shape, overlap=overlap, return_scores=True)
    loop = shape[:-2]
    tables = []
    for k in range(int(np.prod(loop)) if loop else 1):
        idx = np.unravel_index(k, loop) if loop else ()
        plane = labels[tuple(int(i) for i in idx)]
        plane = np.asarray(plane.compute() if hasattr(plane, "compute") else plane)
        tables.append(slice_table(plane, _slice_scores(scores, k), slice_index=k))
    table = _concat(tables)
    if path is not None:
        write_table(table, path)
    return table


def _slice_scores(scores: Mapping[str, Any] | None, k: int) -> Mapping[str, Any] | None:
    if scores is None or "slice" not in scores:
        return scores
    keep = np.asarray(scores["slice"]) == k
    return {name: np.asarray(col)[keep] for name, col in scores.items()}


def write_table(table: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a table (dict of equal-length columns) as CSV with a header row; returns the path."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".txt"):
        raise ValueError(f"the object table is written as CSV: give a path ending in .csv, got {path}")
    names = list(table)
    columns = [np.asarray(table[n]) for n in names]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in zip(*columns):
            writer.writerow([_cell(v) for v in row])
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return "" if np.isnan(value) else repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def volume_table(out_path: str | os.PathLike, *, n_slices: int, out_index: Sequence[tuple], block: int,
                 path: str | os.PathLike) -> Path:
    """The object table of a finished ``segment_volume`` output, from its labels and stored scores.

    Reads one slice at a time; the scores saved per slice with local ids are
    mapped to the final ids through the relabelling tables (or the id blocks).
    """
    import zarr

    from napari_sam.volume.slices import STATE_DIR

    state = Path(out_path) / STATE_DIR
    arr = zarr.open_array(str(out_path), mode="r")
    tables_file = state / "tables.npz"
    lookup = np.load(tables_file) if tables_file.exists() else None
    try:
        rows = []
        for k in range(n_slices):
            scores = None
            if (state / f"scores-{k}.npz").exists():
                with np.load(state / f"scores-{k}.npz") as stored:
                    scores = {name: stored[name] for name in stored.files}
                local = scores["label"].astype(np.int64)
                if lookup is not None:
                    scores["label"] = lookup[f"t{k}"][local]
                else:
                    scores["label"] = local + (k + 1) * block
            rows.append(slice_table(np.asarray(arr[out_index[k]]), scores, slice_index=k))
    finally:
        if lookup is not None:
            lookup.close()
    return write_table(_concat(rows), path)
