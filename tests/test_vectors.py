"""Polygon output (``--vector``, ``write_vectors``): read back with GDAL (pyogrio) and the json module,
rasterised back with rasterio, compared with the labels, the object table and the input's georeferencing."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import zarr
from test_batch import blobs_volume
from test_object_table import scored_segment

pytest.importorskip("pyogrio")
pytest.importorskip("rasterio")
pytest.importorskip("shapely")
import rasterio  # noqa: E402
import shapely  # noqa: E402
from affine import Affine  # noqa: E402
from pyogrio.raw import read as ogr_read  # noqa: E402
from rasterio.features import rasterize  # noqa: E402

from napari_sam.cli import main  # noqa: E402
from napari_sam.volume.vectors import write_vectors  # noqa: E402

SCORES = ("predicted_iou", "stability_score", "point_row", "point_col")


def read_features(path):
    """``(columns by name, shapely geometries, crs)`` as GDAL reads the file."""
    meta, _, wkb, fields = ogr_read(str(path))
    return dict(zip(meta["fields"], fields)), [shapely.from_wkb(g) for g in wkb], meta["crs"]


def tricky_labels():
    """Two slices: a ring (hole), a two-part object, diagonal neighbours, an object inside a hole, big ids."""
    lab = np.zeros((2, 30, 40), np.uint32)
    lab[0, 2:12, 2:12] = 5
    lab[0, 5:8, 5:8] = 0  # a hole
    lab[0, 15:20, 3:9] = 9
    lab[0, 22:25, 20:23] = 9  # second part of 9
    lab[0, 10, 20] = 11
    lab[0, 11, 21] = 12  # touches 11 at a corner only
    lab[1, 3:25, 3:30] = 2**32 - 2
    lab[1, 8:14, 8:14] = 3  # an object filling the other's hole
    lab[1, 27:29, 35:39] = 4
    return lab


def assert_polygons_are_the_labels(columns, geoms, labels, transform):
    """One feature per (slice, label); rasterising each gives back exactly its pixels."""
    stack = labels.ndim == 3
    slices = columns["slice"] if stack else np.zeros(len(geoms), int)
    expected = {(k, int(i)) for k in range(labels.shape[0] if stack else 1)
                for i in np.unique(labels[k] if stack else labels) if i}
    assert sorted(zip(slices.tolist(), columns["label"].tolist())) == sorted(expected)
    for k, lab, area, geom in zip(slices, columns["label"], columns["area"], geoms):
        plane = labels[k] if stack else labels
        mask = plane == lab
        drawn = rasterize([(geom, 1)], out_shape=plane.shape, transform=transform, fill=0, dtype="uint8") > 0
        assert np.array_equal(drawn, mask), f"slice {k} label {lab}"
        assert area == mask.sum() == pytest.approx(geom.area / abs(transform.a * transform.e))
        assert geom.is_valid


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_polygons_give_back_every_label_with_holes(tmp_path, suffix):
    labels = tricky_labels()
    scores = {"label": np.array([5, 9, 2**32 - 2]), "slice": np.array([0, 0, 1]),
              "predicted_iou": np.array([0.5, 0.9, 0.7]), "stability_score": np.array([0.1, 0.2, 0.3])}
    path = write_vectors(zarr.array(labels), tmp_path / f"objects{suffix}", scores=scores)
    columns, geoms, crs = read_features(path)
    assert_polygons_are_the_labels(columns, geoms, labels, Affine.identity())
    ring = geoms[list(columns["label"]).index(5)]
    assert len(ring.geoms) == 1 and len(ring.geoms[0].interiors) == 1  # the hole is kept
    assert len(geoms[list(columns["label"]).index(9)].geoms) == 2  # one feature, two parts
    big = list(columns["label"]).index(2**32 - 2)
    assert len(geoms[big].geoms[0].interiors) == 1
    for name in ("predicted_iou", "stability_score"):
        got = dict(zip(zip(columns["slice"].tolist(), columns["label"].tolist()), columns[name]))
        for k, lab, value in zip(scores["slice"], scores["label"], scores[name]):
            assert got[(int(k), int(lab))] == value
        assert np.isnan(got[(1, 3)])  # no scores: empty
    if suffix == ".geojson":  # the plain json reader sees the same features, in pixel coordinates (x = column)
        doc = json.loads(path.read_text())
        assert len(doc["features"]) == len(geoms)
        first = doc["features"][list(columns["label"]).index(4)]
        xs, ys = np.array(first["geometry"]["coordinates"][0][0]).T
        assert (xs.min(), xs.max(), ys.min(), ys.max()) == (35, 39, 27, 29)
    else:
        assert crs is None  # pixel coordinates: no CRS


def test_a_2d_image_has_no_slice_column_and_empty_labels_write_an_empty_layer(tmp_path):
    labels = tricky_labels()[0]
    columns, geoms, _ = read_features(write_vectors(labels, tmp_path / "a.gpkg"))
    assert "slice" not in columns
    assert_polygons_are_the_labels(columns, geoms, labels, Affine.identity())
    columns, geoms, _ = read_features(write_vectors(np.zeros((2, 5, 5), np.uint8), tmp_path / "empty.gpkg"))
    assert geoms == [] and len(columns["label"]) == 0


def test_cli_vector_matches_the_table_and_the_labels(tmp_path, monkeypatch):
    from test_batch_standins import use_standin_model

    use_standin_model(monkeypatch, fn=lambda image, **kw: scored_segment(image))
    np.save(tmp_path / "v.npy", blobs_volume(nz=3))
    code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--quiet", "--threads", "1",
                 "--contrast-limits", "0", "1000", "--table", str(tmp_path / "t.csv"),
                 "--vector", str(tmp_path / "p.gpkg")])
    assert code == 0
    labels = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[:]
    columns, geoms, _ = read_features(tmp_path / "p.gpkg")
    assert_polygons_are_the_labels(columns, geoms, labels, Affine.identity())
    with open(tmp_path / "t.csv", newline="") as fh:
        table = {(int(r["slice"]), int(r["label"])): r for r in csv.DictReader(fh)}
    assert len(table) == len(geoms)
    for i, key in enumerate(zip(columns["slice"].tolist(), columns["label"].tolist())):
        assert float(table[key]["area"]) == columns["area"][i]
        for name in SCORES:
            assert float(table[key][name]) == columns[name][i]
    # without --table the scores are still there (from a table kept only for the run)
    code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o2.zarr"), "--quiet", "--threads", "1",
                 "--contrast-limits", "0", "1000", "--vector", str(tmp_path / "p2.geojson")])
    assert code == 0
    again, _, _ = read_features(tmp_path / "p2.geojson")
    np.testing.assert_array_equal(again["predicted_iou"], columns["predicted_iou"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr", "o2.zarr", "p.gpkg", "p2.geojson", "t.csv",
                                                          "v.npy"]


def test_geotiff_input_gives_polygons_in_its_crs(tmp_path, monkeypatch):
    from test_batch_standins import use_standin_model

    use_standin_model(monkeypatch, fn=lambda image, **kw: scored_segment(image))
    image = blobs_volume(nz=1, ny=40, nx=50)[0]
    image[30:36, 41:47] = 1000  # an object at a known place
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -20.0, 4100000.0)  # 10 m columns, 20 m rows
    with rasterio.open(tmp_path / "geo.tif", "w", driver="GTiff", width=50, height=40, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=transform) as dst:
        dst.write(image, 1)
    code = main(["segment", str(tmp_path / "geo.tif"), "-o", str(tmp_path / "labels.tif"), "--quiet",
                 "--threads", "1", "--contrast-limits", "0", "1000", "--vector", str(tmp_path / "p.gpkg")])
    assert code == 0
    columns, geoms, crs = read_features(tmp_path / "p.gpkg")
    assert rasterio.crs.CRS.from_user_input(crs) == rasterio.crs.CRS.from_epsg(32633)
    with rasterio.open(tmp_path / "labels.tif") as src:  # GDAL reads the labels GeoTIFF
        labels = src.read(1)
    assert_polygons_are_the_labels(columns, geoms, labels, transform)
    lab = labels[33, 44]
    box = geoms[list(columns["label"]).index(lab)].bounds
    assert box == (500000.0 + 41 * 10, 4100000.0 - 36 * 20, 500000.0 + 47 * 10, 4100000.0 - 30 * 20)


def test_bad_paths_and_existing_files(tmp_path):
    labels = tricky_labels()
    with pytest.raises(ValueError, match=r"\.gpkg .*\.geojson"):
        write_vectors(labels, tmp_path / "objects.shp")
    foreign = tmp_path / "mine.geojson"
    foreign.write_text('{"type": "FeatureCollection", "features": []}')
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not written by napari-sam"):
            write_vectors(labels, foreign, overwrite=overwrite)
    assert foreign.read_text() == '{"type": "FeatureCollection", "features": []}'
    ours = write_vectors(labels[:1], tmp_path / "ours.gpkg")
    with pytest.raises(ValueError, match="--overwrite"):
        write_vectors(labels, ours)
    write_vectors(labels, ours, overwrite=True)
    assert len(read_features(ours)[1]) == 7  # both slices now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.geojson", "ours.gpkg"]  # no temporary files left
    with pytest.raises(TypeError, match="integer"):
        write_vectors(labels.astype(float), tmp_path / "f.gpkg")


def test_cli_refuses_a_bad_vector_before_the_run(tmp_path, capsys):
    np.save(tmp_path / "v.npy", blobs_volume(nz=2))
    (tmp_path / "p.gpkg").write_bytes(b"not mine")
    for target, message in (("p.shp", ".gpkg"), ("p.gpkg", "not written by napari-sam")):
        code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--quiet",
                     "--vector", str(tmp_path / target), "--overwrite"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()
    assert (tmp_path / "p.gpkg").read_bytes() == b"not mine"


def test_missing_geo_extra_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyogrio", None)
    monkeypatch.setitem(sys.modules, "pyogrio.raw", None)
    with pytest.raises(ImportError, match=r'pip install "napari-sam-toolkit\[geo\]"'):
        write_vectors(np.zeros((4, 4), np.uint8), tmp_path / "a.gpkg")
    np.save(tmp_path / "v.npy", blobs_volume(nz=2))
    code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--quiet",
                 "--vector", str(tmp_path / "p.gpkg")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and 'pip install "napari-sam-toolkit[geo]"' in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()  # checked before the run


def test_labels_are_read_one_slice_at_a_time(tmp_path):
    class Recorder:
        """A (2, 30, 40) label volume that records every read."""

        def __init__(self, data):
            self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

        def __getitem__(self, index):
            out = self.data[index]
            self.reads.append(out.shape)
            return out

    labels = Recorder(tricky_labels())
    columns, geoms, _ = read_features(write_vectors(labels, tmp_path / "a.gpkg"))
    assert labels.reads == [(30, 40), (30, 40)]
    assert_polygons_are_the_labels(columns, geoms, labels.data, Affine.identity())


def test_a_coarser_geotiff_level_keeps_the_objects_on_the_map(tmp_path, monkeypatch):
    from rasterio.enums import Resampling
    from test_batch_standins import use_standin_model

    use_standin_model(monkeypatch, fn=lambda image, **kw: scored_segment(image))
    image = np.zeros((40, 50), np.uint16)
    image[10:20, 10:30] = 1000
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -20.0, 4100000.0)
    with rasterio.open(tmp_path / "geo.tif", "w", driver="GTiff", width=50, height=40, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=transform) as dst:
        dst.write(image, 1)
        dst.build_overviews([2], Resampling.nearest)
    code = main(["segment", str(tmp_path / "geo.tif"), "--level", "1", "-o", str(tmp_path / "l.zarr"), "--quiet",
                 "--threads", "1", "--contrast-limits", "0", "1000", "--vector", str(tmp_path / "p.geojson")])
    assert code == 0
    _, [geom], _ = read_features(tmp_path / "p.geojson")
    # the object's full-resolution footprint: columns 10..30 (10 m), rows 10..20 (20 m)
    assert geom.bounds == (500100.0, 4100000.0 - 20 * 20, 500300.0, 4100000.0 - 10 * 20)
