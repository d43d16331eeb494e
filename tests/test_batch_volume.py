"""Volume helpers against brute-force references: renumbering, IoU links, lookup tables, axes views."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_sam.volume.slices import (
    apply_table,
    canonical_view,
    id_block_for,
    relabel_tables,
    sequential_labels,
    slice_overlap_edges,
)

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("ids", [np.array([0, 3, 7, 9]), np.array([2, 5]), np.array([0, 10 ** 9, 4, 77])])
def test_sequential_labels_matches_rank_of_ids(ids):
    labels = RNG.choice(ids, size=(30, 20)).astype(np.int64)
    out, n = sequential_labels(labels)
    present = sorted(set(labels.ravel().tolist()) - {0})
    expected = np.zeros_like(labels)
    for rank, value in enumerate(present, start=1):  # brute force: i-th smallest id -> i
        expected[labels == value] = rank
    np.testing.assert_array_equal(out, expected)
    assert n == len(present) and out.dtype == np.uint32
    shifted, _ = sequential_labels(labels, offset=3_000_000_000)
    np.testing.assert_array_equal(shifted, np.where(expected > 0, expected + 3_000_000_000, 0))


def test_sequential_labels_rejects_bad_output():
    with pytest.raises(TypeError, match="integer labels"):
        sequential_labels(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="negative"):
        sequential_labels(np.array([[-1, 0]]))


def test_overlap_edges_match_pairwise_iou():
    a = RNG.integers(0, 6, size=(24, 24))
    b = a.copy()
    b[RNG.random(a.shape) < 0.3] = 0  # b: a with some pixels removed -> IoU < 1
    b[:, :4] = 5
    for thr in (0.2, 0.5, 0.8):
        got = {tuple(e) for e in slice_overlap_edges(a, b, min_iou=thr)}
        expected = set()
        for i in range(1, 6):
            for j in range(1, 6):
                inter = ((a == i) & (b == j)).sum()
                union = ((a == i) | (b == j)).sum()
                if inter and inter / union > thr:
                    expected.add((i, j))
        assert got == expected


def _components_brute(counts, edges):
    """Union-find over (slice, local id) nodes; final ids by first node in slice order."""
    nodes = [(k, i) for k, n in enumerate(counts) for i in range(1, n + 1)]
    parent = {v: v for v in nodes}

    def find(v):
        while parent[v] != v:
            v = parent[v]
        return v

    for k, j, pairs in edges:
        for p, q in pairs:
            parent[find((k, int(p)))] = find((j, int(q)))
    first = {}
    for v in nodes:
        first.setdefault(find(v), len(first) + 1)
    return {v: first[find(v)] for v in nodes}


def test_relabel_tables_match_union_find():
    counts = [3, 0, 4, 2]
    edges = [(0, 2, np.array([[1, 2], [3, 4]])), (2, 3, np.array([[2, 1], [4, 2]]))]
    tables = relabel_tables(counts, edges)
    brute = _components_brute(counts, edges)
    for k, n in enumerate(counts):
        assert tables[k][0] == 0 and tables[k].size == n + 1
        for i in range(1, n + 1):
            assert tables[k][i] == brute[(k, i)]
    assert [t.tolist() for t in relabel_tables([2, 1])] == [[0, 1, 2], [0, 3]]  # plain compaction


def test_apply_table_is_idempotent():
    block = id_block_for(3)
    offset = 2 * block
    table = np.array([0, 7, 3], np.uint32)
    raw = np.array([[0, offset + 1, offset + 2]], np.uint32)
    once = apply_table(raw, table, offset=offset)
    np.testing.assert_array_equal(once, [[0, 7, 3]])
    half = np.array([[0, 7, offset + 2]], np.uint32)  # a chunk relabelled before an interruption
    np.testing.assert_array_equal(apply_table(half, table, offset=offset), once)
    np.testing.assert_array_equal(apply_table(once, table, offset=offset), once)


def test_id_block_fits_uint32():
    for n in (1, 7, 1000, 100_000):
        block = id_block_for(n)
        assert (n + 1) * block <= 2 ** 32 - 1 and block > 1


def test_canonical_view_orders_axes_and_selects_channels():
    data = np.arange(2 * 3 * 4 * 5 * 6).reshape(3, 2, 4, 5, 6)  # C T Z Y X... as "CTZYX"
    view, loop, has_ch = canonical_view(da.from_array(data), "CTZYX", channels=[2, 0])
    assert loop == "TZ" and has_ch and view.shape == (2, 4, 5, 6, 2)
    np.testing.assert_array_equal(view.compute(), np.moveaxis(data, 0, -1)[..., [2, 0]])
    view1, loop1, has1 = canonical_view(da.from_array(data), "CTZYX", channel=1)
    np.testing.assert_array_equal(view1.compute(), data[1])
    rgb = np.zeros((5, 6, 4), np.uint8)
    v, _, h = canonical_view(da.from_array(rgb), "YXS")
    assert h and v.shape == (5, 6, 3)  # RGBA -> RGB
    with pytest.raises(ValueError, match="either channel"):
        canonical_view(da.from_array(rgb), "YXS", channel=0, channels=[0])
    with pytest.raises(ValueError, match="one to three"):
        canonical_view(da.from_array(rgb), "YXS", channels=[0, 1, 2, 3])
