"""Stitching across tiles: merge rule, ownership, order independence, block-wise writing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_sam.automatic.labels import masks_to_labels
from napari_sam.automatic.records import MaskRecord
from napari_sam.tiled.stitching import stitch_tiles, touches_inner_edge, write_labels
from napari_sam.tiled.tiles import tile_grid


def _record(full_mask: np.ndarray, score: float = 0.9) -> MaskRecord:
    rr, cc = np.nonzero(full_mask)
    r0, c0, r1, c1 = rr.min(), cc.min(), rr.max() + 1, cc.max() + 1
    m = full_mask[r0:r1, c0:c1].copy()
    return MaskRecord(m, (int(r0), int(c0), int(r1), int(c1)), int(m.sum()), score, 1.0, (0.0, 0.0), (0, 0, 1, 1))


def _disc(shape, centre, radius):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def _tile_view(shape, tiles, discs, rng, jitter):
    """What each tile 'sees': each disc clipped to the window, with a random per-tile pixel dropped."""
    per_tile = {}
    for t in tiles:
        w0, w1, w2, w3 = t.window
        recs = []
        for centre, radius in discs:
            full = _disc(shape, centre, radius)
            win = np.zeros(shape, dtype=bool)
            win[w0:w2, w1:w3] = full[w0:w2, w1:w3]
            if win.sum() < 3:
                continue
            if jitter:
                rr, cc = np.nonzero(win)
                k = rng.integers(len(rr))
                win[rr[k], cc[k]] = False  # each tile sees a slightly different mask
            recs.append(_record(win, score=float(rng.choice([0.9, 0.95]))))
        per_tile[t.index] = recs
    return per_tile


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(16, 40), st.integers(0, 14), st.data())
def test_stitching_is_independent_of_tile_order(seed, tile, halo, data):
    rng = np.random.default_rng(seed)
    shape = (90, 110)
    discs = [((int(rng.integers(5, 85)), int(rng.integers(5, 105))), int(rng.integers(2, 7))) for _ in range(10)]
    tiles = tile_grid(shape, tile, halo)
    per_tile = _tile_view(shape, tiles, discs, rng, jitter=True)
    ref = masks_to_labels(stitch_tiles(per_tile, tiles, shape), shape)
    order = data.draw(st.permutations(list(per_tile)))
    shuffled = {k: per_tile[k] for k in order}
    tiles_shuffled = [tiles[i] for i in data.draw(st.permutations(range(len(tiles))))]
    np.testing.assert_array_equal(masks_to_labels(stitch_tiles(shuffled, tiles_shuffled, shape), shape), ref)


def test_each_object_once_with_its_owner_representative():
    shape = (64, 64)
    tiles = tile_grid(shape, 32, 12)
    discs = [((30, 30), 5), ((10, 50), 4), ((50, 12), 6), ((33, 45), 5)]
    rng = np.random.default_rng(0)
    per_tile = _tile_view(shape, tiles, discs, rng, jitter=True)
    out = stitch_tiles(per_tile, tiles, shape)
    assert len(out) == len(discs)
    for rec in out:  # every kept record is whole (not cut) and owned by a tile whose core holds its centre
        cr, cc = (rec.bbox_rc[0] + rec.bbox_rc[2]) / 2, (rec.bbox_rc[1] + rec.bbox_rc[3]) / 2
        owners = [t for t in tiles if t.core[0] <= cr < t.core[2] and t.core[1] <= cc < t.core[3]]
        assert len(owners) == 1
        assert not touches_inner_edge(rec.bbox_rc, owners[0].window, shape)
    labels = masks_to_labels(out, shape)
    for centre, radius in discs:
        assert (labels[_disc(shape, centre, radius)] > 0).mean() > 0.9  # at most the jittered pixel is missing
    assert len(np.unique(labels[labels > 0])) == len(discs)


def test_cut_masks_are_dropped_and_merge_threshold_validated():
    shape = (40, 40)
    tiles = tile_grid(shape, 20, 0)
    assert touches_inner_edge((5, 5, 20, 10), tiles[0].window, shape)  # reaches the inner bottom edge
    assert not touches_inner_edge((0, 0, 10, 10), tiles[0].window, shape)  # image border is fine
    cut = _record(_disc(shape, (19, 10), 4) & (np.arange(40)[:, None] < 20))
    assert stitch_tiles({(0, 0): [cut]}, tiles, shape) == []
    with pytest.raises(ValueError):
        stitch_tiles({}, tiles, shape, merge_iou=0.0)
    with pytest.raises(ValueError):
        stitch_tiles({(9, 9): []}, tiles, shape)


def test_two_touching_objects_stay_two():
    shape = (40, 60)
    tiles = tile_grid(shape, (40, 30), 10)
    a = np.zeros(shape, bool)
    a[10:30, 20:30] = True
    b = np.zeros(shape, bool)
    b[10:30, 30:40] = True  # touches a along column 30, on the tile border
    per_tile = {(0, 0): [_record(a), _record(b)], (0, 1): [_record(a), _record(b)]}
    out = stitch_tiles(per_tile, tiles, shape)
    assert len(out) == 2
    lab = masks_to_labels(out, shape)
    assert lab[20, 25] != lab[20, 35] and lab[20, 25] > 0 and lab[20, 35] > 0


@pytest.mark.parametrize("block", [(7, 9), (16, 16), (64, 64)])
def test_write_labels_blockwise_equals_masks_to_labels(block):
    rng = np.random.default_rng(4)
    shape = (50, 45)
    recs = [_record(_disc(shape, (int(rng.integers(0, 50)), int(rng.integers(0, 45))), int(rng.integers(2, 12))),
                    score=float(rng.random())) for _ in range(25)]
    for overlap in ("smaller_on_top", "score"):
        ref = masks_to_labels(recs, shape, overlap=overlap)
        assert ref.max() < 25  # some objects are hidden, so ids must be compacted by the second pass
        out = np.full(shape, 7, dtype=np.uint32)
        write_labels(recs, out, overlap=overlap, block_shape=block)
        np.testing.assert_array_equal(out, ref)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([np.uint8, np.uint16, np.uint32, np.int32, np.int64]))
def test_relabel_sequential_equals_skimage(seed, dtype):
    from skimage.segmentation import relabel_sequential as skimage_relabel

    from napari_sam.automatic.labels import relabel_sequential

    rng = np.random.default_rng(seed)
    top = min(np.iinfo(dtype).max, 10**6)
    ids = rng.choice(np.arange(1, top), size=min(int(rng.integers(0, 30)), top - 1), replace=False)
    labels = rng.choice(np.concatenate([[0], ids]), size=(17, 23)).astype(dtype)
    out = relabel_sequential(labels, np.unique(labels))
    np.testing.assert_array_equal(out, skimage_relabel(labels)[0])
    assert out.dtype == np.uint32
    extra = np.concatenate([np.unique(labels), [int(top) - 1 + 2]])  # ids absent from this block keep their rank
    np.testing.assert_array_equal(relabel_sequential(labels[:5], extra), relabel_sequential(labels, extra)[:5])
