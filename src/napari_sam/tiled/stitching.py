"""Label images from mask records, and the merge of records across tiles.

Painting (:func:`masks_to_labels`, :func:`write_labels`) and stitching
(:func:`stitch_tiles`) follow the skeleton of dask-image's ``ndmeasure.label``:
records of every tile get global node ids, duplicates seen by neighbouring
tiles are linked in a graph (here by mask IoU inside the halo, not by
touching: two touching cells are two objects), connected components of the
graph (``scipy.sparse.csgraph``) become objects, and a lookup table maps them
to contiguous label ids.  Nothing depends on the order in which tiles were
processed: tiles are visited by their grid index, and every tie is broken by
record content or tile index.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from napari_sam.automatic.labels import id_order, label_scores, paint_order, paint_record, relabel_sequential
from napari_sam.automatic.nms import box_iou

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.automatic.records import MaskRecord


__all__ = ['Tile', 'shift_record', 'touches_inner_edge', 'stitch_tiles', 'write_labels']


@dataclass(frozen=True)
class Tile:
    """One tile of a 2D image.

    Attributes
    ----------
    index : (tile_row, tile_col)
    core : (r0, c0, r1, c1)
        Pixels this tile is responsible for (half-open); cores partition the image.
    window : (r0, c0, r1, c1)
        Core grown by the halo and clipped to the image: what is segmented.
    """

    index: tuple[int, int]
    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]


def shift_record(rec: MaskRecord, dr: int, dc: int) -> MaskRecord:
    """The same record moved by ``(dr, dc)`` pixels (window -> image coordinates)."""
    r0, c0, r1, c1 = rec.bbox_rc
    k0, k1, k2, k3 = rec.crop_box_rc
    return type(rec)(
        rec.mask,
        (r0 + dr, c0 + dc, r1 + dr, c1 + dc),
        rec.area,
        rec.predicted_iou,
        rec.stability_score,
        (rec.point_rc[0] + dr, rec.point_rc[1] + dc),
        (k0 + dr, k1 + dc, k2 + dr, k3 + dc),
    )


def touches_inner_edge(bbox_rc: Sequence[int], window: Sequence[int], image_shape: Sequence[int]) -> bool:
    """True when a box (image coordinates) reaches an edge of ``window`` that is not an image edge.

    Such a mask is probably cut by the window: the neighbouring tile sees the whole object.
    """
    r0, c0, r1, c1 = bbox_rc
    w0, w1, w2, w3 = window
    return bool(
        (r0 <= w0 and w0 > 0)
        or (c0 <= w1 and w1 > 0)
        or (r1 >= w2 and w2 < image_shape[0])
        or (c1 >= w3 and w3 < image_shape[1])
    )


def _centre_in(bbox: np.ndarray, core: Sequence[int]) -> np.ndarray:
    cr = (bbox[:, 0] + bbox[:, 2]) / 2.0
    cc = (bbox[:, 1] + bbox[:, 3]) / 2.0
    return (cr >= core[0]) & (cr < core[2]) & (cc >= core[1]) & (cc < core[3])


def _mask_iou(a: MaskRecord, b: MaskRecord) -> float:
    r0, c0 = max(a.bbox_rc[0], b.bbox_rc[0]), max(a.bbox_rc[1], b.bbox_rc[1])
    r1, c1 = min(a.bbox_rc[2], b.bbox_rc[2]), min(a.bbox_rc[3], b.bbox_rc[3])
    if r0 >= r1 or c0 >= c1:
        return 0.0
    ma = a.mask[r0 - a.bbox_rc[0] : r1 - a.bbox_rc[0], c0 - a.bbox_rc[1] : c1 - a.bbox_rc[1]]
    mb = b.mask[r0 - b.bbox_rc[0] : r1 - b.bbox_rc[0], c0 - b.bbox_rc[1] : c1 - b.bbox_rc[1]]
    inter = int(np.count_nonzero(ma & mb))
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def stitch_tiles(
    tile_records: Mapping[tuple[int, int], Sequence[MaskRecord]],
    tiles: Sequence[Tile],
    image_shape: tuple[int, int],
    *,
    merge_iou: float = 0.5,
) -> list[MaskRecord]:
    """Merge per-tile records (image coordinates) into one record per object.

    1. Records touching an inner edge of their tile's window are dropped.
    2. Records of different tiles whose masks overlap with IoU > ``merge_iou``
       are linked; connected components of these links are objects.
       (With ``merge_iou >= 0.5`` two disjoint masks of one tile can never end
       up in the same object.)
    3. An object is kept when at least one of its records is *owned*: the
       centre of its bounding box lies in the core of the tile that found it.
       Its representative is an owned record with the highest predicted IoU
       (then stability score, then lowest tile index).

    Parameters
    ----------
    tile_records : mapping tile index -> records
        Any insertion order; the result does not depend on it.
    tiles : sequence of Tile
    image_shape : (H, W)
    merge_iou : float in (0, 1]

    Returns
    -------
    list of MaskRecord, ordered by tile index then record order within the tile.
    """
    if not 0.0 < merge_iou <= 1.0:
        raise ValueError(f"merge_iou must be in (0, 1], got {merge_iou}")
    by_index = {t.index: t for t in tiles}
    missing = set(tile_records) - set(by_index)
    if missing:
        raise ValueError(f"records given for unknown tiles {sorted(missing)}")
    nodes: list[MaskRecord] = []
    node_tile: list[tuple[int, int]] = []
    owned: list[bool] = []
    spans: dict[tuple[int, int], tuple[int, int]] = {}
    for index in sorted(tile_records):
        tile = by_index[index]
        kept = [r for r in tile_records[index] if not touches_inner_edge(r.bbox_rc, tile.window, image_shape)]
        start = len(nodes)
        nodes.extend(kept)
        node_tile.extend([index] * len(kept))
        if kept:
            owned.extend(_centre_in(np.array([r.bbox_rc for r in kept], dtype=np.float64), tile.core).tolist())
        spans[index] = (start, len(nodes))
    n = len(nodes)
    if n == 0:
        return []
    boxes = np.array([r.bbox_rc for r in nodes], dtype=np.float64)
    rows: list[int] = []
    cols: list[int] = []
    indices = sorted(spans)
    win = np.array([by_index[i].window for i in indices], dtype=np.int64).reshape(-1, 4)
    for i, a in enumerate(indices):
        later = np.arange(i + 1, len(indices))
        near = later[
            (win[later, 0] < win[i, 2]) & (win[i, 0] < win[later, 2]) & (win[later, 1] < win[i, 3]) & (win[i, 1] < win[later, 3])
        ]
        for b in (indices[j] for j in near):
            (a0, a1), (b0, b1) = spans[a], spans[b]
            if a0 == a1 or b0 == b1:
                continue
            biou = box_iou(boxes[a0:a1], boxes[b0:b1])
            for ia, ib in zip(*np.nonzero(biou > 0)):
                if _mask_iou(nodes[a0 + ia], nodes[b0 + ib]) > merge_iou:
                    rows.append(a0 + int(ia))
                    cols.append(b0 + int(ib))
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    owned_arr = np.array(owned, dtype=bool)
    best: dict[int, int] = {}
    for k in range(n):
        if not owned_arr[k]:
            continue
        comp = int(component[k])
        j = best.get(comp)
        if j is None or (nodes[k].predicted_iou, nodes[k].stability_score) > (nodes[j].predicted_iou, nodes[j].stability_score):
            best[comp] = k  # k visits tiles in index order, so ties keep the lower tile index
    return [nodes[k] for k in sorted(best.values())]


def _blocks(shape: tuple[int, int], block: tuple[int, int]) -> Iterator[tuple[int, int, int, int]]:
    for r0 in range(0, shape[0], block[0]):
        for c0 in range(0, shape[1], block[1]):
            yield r0, c0, min(r0 + block[0], shape[0]), min(c0 + block[1], shape[1])


def write_labels(
    records: Sequence[MaskRecord],
    out: Any,
    *,
    overlap: str = "smaller_on_top",
    block_shape: tuple[int, int] | None = None,
    return_scores: bool = False,
) -> Any:
    """Paint records into ``out`` block by block, with contiguous ids 1..N.

    Gives exactly :func:`masks_to_labels` (same overlap policy and ids) without
    ever holding the whole label image: pass 1 paints provisional ids (the
    records' :func:`id_order` rank) block by block and collects which ids are
    visible; pass 2 maps them to 1..N through a lookup table, block by block.

    Parameters
    ----------
    records : sequence of MaskRecord (image coordinates)
    out : (H, W) array supporting ``out[r0:r1, c0:c1]`` read and write
        (numpy, zarr, ...); an unsigned integer dtype able to hold N.
    block_shape : (bh, bw), optional
        Defaults to a multiple of ``out.chunks`` near 2048 x 2048 (zarr) or 2048 x 2048.
    return_scores : bool
        Also return the scores of the record behind each label, as
        :func:`~napari_sam.automatic.labels.masks_to_labels` does.

    Returns
    -------
    out
        Or ``(out, scores)`` with ``return_scores``.
    """
    shape = (int(out.shape[0]), int(out.shape[1]))
    if len(out.shape) != 2:
        raise ValueError(f"out must be a 2D array, got shape {tuple(out.shape)}")
    if block_shape is None:
        chunks = getattr(out, "chunks", None)
        if isinstance(chunks, tuple) and len(chunks) == 2 and all(isinstance(c, int) for c in chunks):
            block_shape = tuple(max(1, 2048 // c) * c for c in chunks)  # type: ignore[assignment]
        else:
            block_shape = (2048, 2048)
    order = paint_order(records, overlap)
    ranked = id_order(records)
    provisional = np.empty(len(records), dtype=np.int64)
    provisional[ranked] = np.arange(1, len(records) + 1)
    if len(records) >= np.iinfo(np.uint32).max:
        raise ValueError("too many objects for uint32 labels")
    boxes = np.array([r.bbox_rc for r in records], dtype=np.int64).reshape(-1, 4)
    rank_of = np.empty(len(records), dtype=np.int64)
    rank_of[order] = np.arange(len(records))
    present: set[int] = set()
    for b in _blocks(shape, block_shape):  # pass 1: provisional ids
        hit = np.flatnonzero((boxes[:, 0] < b[2]) & (boxes[:, 2] > b[0]) & (boxes[:, 1] < b[3]) & (boxes[:, 3] > b[1]))
        canvas = np.zeros((b[2] - b[0], b[3] - b[1]), dtype=np.uint32)
        for k in hit[np.argsort(rank_of[hit])]:
            paint_record(canvas, records[k], int(provisional[k]), (b[0], b[1]))
        present.update(int(v) for v in np.unique(canvas))
        out[b[0] : b[2], b[1] : b[3]] = canvas
    ids = np.array(sorted(present), dtype=np.int64)
    positive = ids[ids > 0]
    if not np.array_equal(positive, np.arange(1, len(positive) + 1)):  # else already contiguous: no second pass
        for b in _blocks(shape, block_shape):  # pass 2: lookup table
            block = np.asarray(out[b[0] : b[2], b[1] : b[3]])
            out[b[0] : b[2], b[1] : b[3]] = relabel_sequential(block, ids)
    if return_scores:
        return out, label_scores(records, ranked[positive - 1])
    return out
