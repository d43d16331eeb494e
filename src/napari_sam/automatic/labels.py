"""Label images painted from mask records.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.automatic.records import MaskRecord


__all__ = ['OVERLAP_POLICIES', 'SCORE_COLUMNS', 'paint_order', 'masks_to_labels', 'id_order', 'relabel_sequential',
           'paint_record', 'label_scores']

#: columns of the per-label score table (see :func:`label_scores`)
SCORE_COLUMNS = ("label", "predicted_iou", "stability_score", "point_row", "point_col")


OVERLAP_POLICIES = ("smaller_on_top", "score")


def paint_order(records: Sequence[MaskRecord], overlap: str = "smaller_on_top") -> np.ndarray:
    """Order in which records are painted (later ones win where they overlap).

    ``"smaller_on_top"``: larger areas first, so small objects lying on big
    ones stay visible; ``"score"``: lowest predicted IoU first, so the
    highest-scoring mask wins.  Remaining ties are broken by predicted IoU /
    area, then by the bounding box, so the order depends only on the records'
    content, never on their order in the list.
    """
    if overlap not in OVERLAP_POLICIES:
        raise ValueError(f"overlap must be one of {OVERLAP_POLICIES}, got {overlap!r}")
    n = len(records)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    area = np.array([r.area for r in records], dtype=np.float64)
    score = np.array([r.predicted_iou for r in records], dtype=np.float64)
    bbox = np.array([r.bbox_rc for r in records], dtype=np.float64).reshape(n, 4)
    stab = np.array([r.stability_score for r in records], dtype=np.float64)
    tail = [np.arange(n), bbox[:, 3], bbox[:, 2], bbox[:, 1], bbox[:, 0], stab]
    if overlap == "smaller_on_top":
        keys = [*tail, score, -area]
    else:
        keys = [*tail, -area, score]
    return np.lexsort(keys)


def masks_to_labels(
    records: Sequence[MaskRecord],
    shape: tuple[int, int],
    *,
    overlap: str = "smaller_on_top",
    origin: tuple[int, int] = (0, 0),
    return_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Paint mask records into a label image.

    Parameters
    ----------
    records : sequence of MaskRecord
        Boxes in image coordinates.
    shape : (H, W)
        Output shape.
    overlap : {"smaller_on_top", "score"}
        Overlap policy, see :func:`paint_order`.
    origin : (row, col)
        Image coordinate of the output's ``[0, 0]`` (to paint one window of a
        larger image); parts outside the window are clipped.
    return_scores : bool
        Also return the scores of the record behind each label (see :func:`label_scores`).

    Returns
    -------
    labels : (H, W) uint32 ndarray
        0 is background; ids 1..N are contiguous, numbered in the order of the
        objects' bounding boxes (top-left first), and every id is visible
        (objects entirely covered by others are left out).
    scores : dict of str -> (N,) ndarray
        Only with ``return_scores``: row ``i`` describes label ``i + 1``.

    Examples
    --------
    A 3 x 3 square with a single pixel on it (the smaller object stays on top):

    >>> import numpy as np
    >>> from napari_sam.automatic.records import MaskRecord
    >>> square = MaskRecord(np.ones((3, 3), bool), (1, 1, 4, 4), 9, 0.9, 0.95, (2.0, 2.0), (0, 0, 5, 6))
    >>> dot = MaskRecord(np.ones((1, 1), bool), (2, 4, 3, 5), 1, 0.8, 0.95, (2.0, 4.0), (0, 0, 5, 6))
    >>> masks_to_labels([square, dot], (5, 6))
    array([[0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0, 0],
           [0, 1, 1, 1, 2, 0],
           [0, 1, 1, 1, 0, 0],
           [0, 0, 0, 0, 0, 0]], dtype=uint32)
    """
    order = paint_order(records, overlap)
    canvas = np.zeros(tuple(int(s) for s in shape), dtype=np.uint32)
    rank = id_order(records)
    provisional = np.empty(len(records), dtype=np.int64)
    provisional[rank] = np.arange(1, len(records) + 1)
    for k in order:
        paint_record(canvas, records[k], int(provisional[k]), origin)
    present = np.unique(canvas)
    labels = relabel_sequential(canvas, present)
    if not return_scores:
        return labels
    return labels, label_scores(records, rank[present[present > 0] - 1])


def id_order(records: Sequence[MaskRecord]) -> np.ndarray:
    """Record indices in label-id order: by bounding box (top-left first), then area, then score."""
    n = len(records)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    bbox = np.array([r.bbox_rc for r in records], dtype=np.int64).reshape(n, 4)
    area = np.array([r.area for r in records], dtype=np.int64)
    score = np.array([r.predicted_iou for r in records], dtype=np.float64)
    return np.lexsort([np.arange(n), -score, area, bbox[:, 3], bbox[:, 2], bbox[:, 1], bbox[:, 0]])


def relabel_sequential(labels: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Map the sorted nonzero ids in ``present`` to 1..N (order kept); 0 stays 0.

    Parameters
    ----------
    labels : integer ndarray
    present : 1D integer ndarray
        Every id that occurs anywhere in the full label image (may be a superset of ``labels``' ids).

    Returns
    -------
    uint32 ndarray of ``labels``' shape
    """
    from skimage.util import map_array  # the compiled lookup behind skimage.segmentation.relabel_sequential

    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    present = np.unique(np.asarray(present, dtype=np.int64))
    present = present[present > 0]
    if labels.dtype.kind == "u":
        present = present[present <= np.iinfo(labels.dtype).max]
    new = np.arange(1, present.size + 1, dtype=np.uint32)
    return map_array(labels, present.astype(labels.dtype), new)


def paint_record(canvas: np.ndarray, rec: MaskRecord, value: int, origin: tuple[int, int] = (0, 0)) -> None:
    """Write ``value`` where ``rec.mask`` is True into ``canvas`` whose ``[0, 0]`` is image pixel ``origin``."""
    r0, c0, r1, c1 = rec.bbox_rc
    h, w = canvas.shape
    a0, b0 = r0 - origin[0], c0 - origin[1]
    a1, b1 = r1 - origin[0], c1 - origin[1]
    ca0, cb0, ca1, cb1 = max(a0, 0), max(b0, 0), min(a1, h), min(b1, w)
    if ca0 >= ca1 or cb0 >= cb1:
        return
    m = rec.mask[ca0 - a0 : ca1 - a0, cb0 - b0 : cb1 - b0]
    canvas[ca0:ca1, cb0:cb1][m] = value


def label_scores(records: Sequence[MaskRecord], sources: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
    """The per-label score table: label ``i + 1`` was painted from ``records[sources[i]]``.

    Parameters
    ----------
    records : sequence of MaskRecord
    sources : (N,) ints
        Index into ``records`` of the record behind each label ``1..N``.

    Returns
    -------
    dict of str -> (N,) ndarray
        ``label`` (uint32, ``1..N``), ``predicted_iou`` and ``stability_score``
        (float64), ``point_row`` / ``point_col`` (float64, the grid point that
        prompted the mask, image coordinates); see :data:`SCORE_COLUMNS`.
    """
    sources = np.asarray(sources, dtype=np.int64).reshape(-1)
    chosen = [records[int(i)] for i in sources]
    return {
        "label": np.arange(1, sources.size + 1, dtype=np.uint32),
        "predicted_iou": np.array([r.predicted_iou for r in chosen], dtype=np.float64),
        "stability_score": np.array([r.stability_score for r in chosen], dtype=np.float64),
        "point_row": np.array([r.point_rc[0] for r in chosen], dtype=np.float64),
        "point_col": np.array([r.point_rc[1] for r in chosen], dtype=np.float64),
    }
