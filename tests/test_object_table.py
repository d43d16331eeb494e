"""Object tables: scores kept through masks -> labels (painting, block-wise writing, tiles, volumes),
geometry equal to skimage's regionprops_table, CSV readable by pandas / the csv module."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import zarr
from skimage.measure import label as cc_label
from skimage.measure import regionprops_table
from test_amg_standin import StandInPredictor, random_blobs
from test_batch import blobs_volume

from napari_sam import object_table
from napari_sam.automatic.labels import masks_to_labels, paint_order
from napari_sam.automatic.records import MaskRecord
from napari_sam.cli import main
from napari_sam.tiled.stitching import write_labels
from napari_sam.tiled.tiles import segment_image, segment_records
from napari_sam.volume.batch import segment_volume
from napari_sam.volume.ids import id_block_for

LIMITS = [[0.0, 1000.0]]


def random_records(n=40, shape=(64, 80), seed=0):
    """Overlapping random ellipses with unique scores (some fully covered by others)."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    records = []
    for i in range(n):
        r, c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        a, b = rng.uniform(2, 14), rng.uniform(2, 14)
        full = ((rr - r) / a) ** 2 + ((cc - c) / b) ** 2 <= 1
        if not full.any():
            continue
        ys, xs = np.nonzero(full)
        box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
        records.append(MaskRecord(full[box[0]:box[2], box[1]:box[3]].copy(), box, int(full.sum()),
                                  0.5 + i / 1000, 0.6 + i / 2000, (float(r), float(c)), (0, 0) + shape))
    for rec in records[:2]:  # same masks with a lower score: painted under their twin, never visible
        records.append(MaskRecord(rec.mask, rec.bbox_rc, rec.area, rec.predicted_iou - 0.25, 0.1, (0.5, 0.5),
                                   rec.crop_box_rc))
    return records


def painted_record_index(records, shape, overlap="smaller_on_top"):
    """Brute force: paint record index + 1 in paint order; returns which record owns each pixel."""
    canvas = np.zeros(shape, np.int64)
    for k in paint_order(records, overlap):
        r0, c0, r1, c1 = records[k].bbox_rc
        canvas[r0:r1, c0:c1][records[k].mask] = k + 1
    return canvas


def assert_scores_follow_painted_records(labels, scores, records, owner):
    assert list(scores["label"]) == list(range(1, int(labels.max()) + 1))
    for i, lab in enumerate(scores["label"]):
        owners = np.unique(owner[labels == lab])
        assert owners.size == 1, f"label {lab} painted from several records"
        rec = records[int(owners[0]) - 1]
        assert scores["predicted_iou"][i] == rec.predicted_iou
        assert scores["stability_score"][i] == rec.stability_score
        assert (scores["point_row"][i], scores["point_col"][i]) == rec.point_rc


@pytest.mark.parametrize("overlap", ["smaller_on_top", "score"])
def test_masks_to_labels_scores_are_the_painted_records(overlap):
    records = random_records()
    labels, scores = masks_to_labels(records, (64, 80), overlap=overlap, return_scores=True)
    np.testing.assert_array_equal(labels, masks_to_labels(records, (64, 80), overlap=overlap))
    owner = painted_record_index(records, (64, 80), overlap)
    assert int(labels.max()) < len(records)  # some records are covered entirely: their scores must not appear
    assert_scores_follow_painted_records(labels, scores, records, owner)


@pytest.mark.parametrize("block", [(7, 9), (64, 80)])
def test_write_labels_scores_equal_masks_to_labels(block):
    records = random_records(seed=3)
    ref_labels, ref_scores = masks_to_labels(records, (64, 80), return_scores=True)
    out = zarr.zeros((64, 80), chunks=(16, 16), dtype=np.uint32)
    out, scores = write_labels(records, out, block_shape=block, return_scores=True)
    np.testing.assert_array_equal(out[:], ref_labels)
    assert scores.keys() == ref_scores.keys()
    for name in scores:
        np.testing.assert_array_equal(scores[name], ref_scores[name])


def test_tiled_scores_are_the_stitched_records():
    image, _, _ = random_blobs((96, 112), 12, rmin=4, rmax=8, gap=5, margin=3, seed=2)
    amg = {"points_per_side": 24, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    records, shape = segment_records(image, StandInPredictor(), contrast_limits=(0, 1), tile_shape=48, halo=16, **amg)
    labels, scores = segment_image(image, StandInPredictor(), contrast_limits=(0, 1), tile_shape=48, halo=16,
                                   return_scores=True, **amg)
    assert labels.max() > 5
    assert_scores_follow_painted_records(labels, scores, records, painted_record_index(records, shape))


def test_object_table_geometry_is_regionprops_and_reads_back(tmp_path):
    records = random_records(seed=1)
    labels, scores = masks_to_labels(records, (64, 80), return_scores=True)
    table = object_table(labels, records, path=tmp_path / "objects.csv")
    ref = regionprops_table(labels, properties=("label", "area", "bbox", "centroid"))
    for name in ref:
        np.testing.assert_allclose(table[name], ref[name])
    owner = painted_record_index(records, (64, 80))
    assert_scores_follow_painted_records(labels, {k: table[k] for k in scores}, records, owner)
    assert (table["slice"] == 0).all()
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas comes with the napari extra
        with open(tmp_path / "objects.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        read = {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}
    else:
        read = {k: v.to_numpy() for k, v in pd.read_csv(tmp_path / "objects.csv").items()}
    assert list(read) == list(table)
    for name in table:
        np.testing.assert_allclose(read[name], table[name])


def test_object_table_of_a_volume_and_bad_input():
    vol = np.zeros((2, 3, 20, 20), np.uint32)
    vol[0, 1, 2:5, 3:9] = 7
    vol[1, 2, 10:12, 10:12] = 7
    table = object_table(vol)
    assert table["slice"].tolist() == [1, 5] and table["area"].tolist() == [18, 4]
    assert np.isnan(table["predicted_iou"]).all()
    with pytest.raises(ValueError, match="2-D"):
        object_table(np.zeros(5, np.uint32))
    with pytest.raises(ValueError, match=".csv"):
        object_table(vol, path="objects.xlsx")


def scored_segment(image, *, channel_axis=None, contrast_limits=None):
    """Threshold + connected components; scores are functions of each object's pixels.

    Labels come out in reverse order (n..1), so a table that ignored the id mapping fails.
    """
    img = np.asarray(image, dtype=np.float64)
    lab = cc_label(img > 500, connectivity=1).astype(np.uint32)
    n = int(lab.max())
    lab[lab > 0] = n + 1 - lab[lab > 0]
    ids = np.arange(1, n + 1)
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    first = [np.argwhere(lab == i)[0] for i in ids]
    return lab, {"label": ids, "predicted_iou": area / 1000.0, "stability_score": 1.0 - area / 1000.0,
                 "point_row": np.array([f[0] for f in first], float), "point_col": np.array([f[1] for f in first], float)}


@pytest.mark.parametrize("options", [{}, {"compact": False}, {"link_3d": True}])
def test_segment_volume_table_matches_labels_and_scores(tmp_path, options):
    vol = blobs_volume(nz=4)
    vol[1:3, 5:12, 5:12] = 1000  # one object on two slices: linked by link_3d
    out = segment_volume(vol, tmp_path / "out.zarr", segment_fn=scored_segment, contrast_limits=LIMITS,
                         table=tmp_path / "objects.csv", axes="ZYX", **options).compute()
    pd = pytest.importorskip("pandas")
    table = pd.read_csv(tmp_path / "objects.csv")
    expected_rows = 0
    offset = [(k + 1) * id_block_for(out.shape[0]) if options.get("compact") is False else 0
              for k in range(out.shape[0])]
    for k in range(out.shape[0]):
        local = np.where(out[k] > 0, out[k] - offset[k], 0)  # regionprops cannot take ids near 2**32
        ref = regionprops_table(local, properties=("label", "area", "bbox", "centroid"))
        ref["label"] = ref["label"] + offset[k]
        rows = table[table["slice"] == k].sort_values("label")
        expected_rows += len(ref["label"])
        for name in ref:
            np.testing.assert_allclose(rows[name].to_numpy(), ref[name], err_msg=f"slice {k} {name}")
        np.testing.assert_allclose(rows["predicted_iou"], ref["area"] / 1000.0)
        np.testing.assert_allclose(rows["stability_score"], 1.0 - ref["area"] / 1000.0)
        for lab, r, c in zip(rows["label"], rows["point_row"], rows["point_col"]):
            assert out[k][int(r), int(c)] == lab  # the prompt point lies in its own object
    assert len(table) == expected_rows > 8
    if options.get("link_3d"):
        assert table["label"].nunique() < len(table)  # one 3-D object: rows on two slices share an id


def test_table_needs_an_output():
    with pytest.raises(ValueError, match="needs an output"):
        segment_volume(blobs_volume(nz=2), segment_fn=scored_segment, contrast_limits=LIMITS, table="t.csv")


def test_cli_table_option(tmp_path, monkeypatch):
    from test_batch_standins import use_standin_model

    use_standin_model(monkeypatch, fn=lambda image, **kw: scored_segment(image))
    vol = blobs_volume(nz=3)
    np.save(tmp_path / "v.npy", vol)
    code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--quiet",
                 "--table", str(tmp_path / "objects.csv"), "--contrast-limits", "0", "1000", "--threads", "1"])
    assert code == 0
    with open(tmp_path / "objects.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[:]
    assert len(rows) == int(labels.max()) and all(float(r["predicted_iou"]) > 0 for r in rows)
