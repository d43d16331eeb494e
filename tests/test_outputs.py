"""Output formats chosen by the suffix of ``-o``: zarr (v2 / v3), TIFF, GeoTIFF; and unknown suffixes."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile
import zarr
from test_batch import LIMITS, assert_compacted_equals_reference, blobs_volume, reference_slices
from test_batch_standins import threshold_segment

from napari_sam.cli import main
from napari_sam.volume import writers
from napari_sam.volume.batch import segment_volume
from napari_sam.volume.writers import tiff_staging_path, write_tiff

RUN = {"segment_fn": threshold_segment, "contrast_limits": LIMITS}


@pytest.mark.parametrize("name", ["labels.png", "labels", "labels.h5", "labels.zarr.bak"])
def test_unknown_suffix_is_a_usage_error_and_creates_nothing(tmp_path, capsys, name):
    src = tmp_path / "in.npy"
    np.save(src, blobs_volume(nz=1)[0])
    assert main(["segment", str(src), "-o", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert "suffix" in err and ".tif" in err and ".zarr" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]
    with pytest.raises(ValueError, match="suffix"):
        segment_volume(src, tmp_path / name, **RUN)


def test_tif_output_is_a_tiff_with_the_labels(tmp_path):
    vol = blobs_volume(nz=3)
    out = segment_volume(vol, tmp_path / "labels.tif", axes="ZYX", **RUN).compute()
    assert (tmp_path / "labels.tif").is_file()  # not a zarr directory named .tif
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        data = tif.asarray()
        assert not tif.is_bigtiff and tif.pages[0].tags[305].value == "napari-sam"
    assert data.shape == vol.shape and data.dtype == np.uint32
    assert_compacted_equals_reference(data, reference_slices(vol))  # the stand-in applied slice by slice
    np.testing.assert_array_equal(out, data)
    assert not tiff_staging_path(tmp_path / "labels.tif").exists()


def test_ome_tif_output_is_read_as_ome(tmp_path):
    vol = blobs_volume(nz=2)
    segment_volume(vol, tmp_path / "labels.ome.tif", axes="ZYX", **RUN)
    with tifffile.TiffFile(tmp_path / "labels.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "ZYX"
        assert_compacted_equals_reference(tif.asarray(), reference_slices(vol))


def test_large_tiff_is_bigtiff(tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "BIGTIFF_BYTES", 1000)
    segment_volume(blobs_volume(nz=2), tmp_path / "big.tiff", axes="ZYX", **RUN)
    with tifffile.TiffFile(tmp_path / "big.tiff") as tif:
        assert tif.is_bigtiff


def test_tiff_is_written_slice_by_slice(tmp_path):
    nz, side = 24, 512
    arr = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=(nz, side, side), chunks=(1, 256, 256),
                            dtype="uint32")
    for k in range(nz):
        arr[k] = np.arange(side * side, dtype=np.uint32).reshape(side, side) % 97 + k
    write_tiff(tmp_path / "s.zarr", tmp_path / "w.tif", axes="ZYX")  # warm-up: imports
    tracemalloc.start()
    try:
        write_tiff(tmp_path / "s.zarr", tmp_path / "s.tif", axes="ZYX")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    volume_bytes = nz * side * side * 4
    assert peak < volume_bytes / 4, f"{peak / 2**20:.1f} MiB for an {volume_bytes / 2**20:.0f} MiB volume"
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.tif"), arr[:])


def test_existing_tiff_overwrite_and_resume_rules(tmp_path):
    vol, target = blobs_volume(nz=2), tmp_path / "labels.tif"
    foreign = tmp_path / "photo.tif"
    tifffile.imwrite(foreign, np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match="not written by napari-sam"):
        segment_volume(vol, foreign, axes="ZYX", overwrite=True, **RUN)
    assert tifffile.imread(foreign).shape == (20, 20)
    segment_volume(vol, target, axes="ZYX", **RUN)
    with pytest.raises(ValueError, match="already exists"):
        segment_volume(vol, target, axes="ZYX", **RUN)
    with pytest.raises(ValueError, match="nothing to resume"):
        segment_volume(vol, target, axes="ZYX", resume=True, **RUN)
    other = blobs_volume(nz=2, seed=5)
    segment_volume(other, target, axes="ZYX", overwrite=True, **RUN)
    assert_compacted_equals_reference(tifffile.imread(target), reference_slices(other))


def test_interrupted_tiff_run_resumes_from_its_staging_store(tmp_path):
    vol, target = blobs_volume(nz=3), tmp_path / "labels.tif"
    calls = []

    def failing(image, *, channel_axis=None, contrast_limits=None):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return threshold_segment(image, channel_axis=channel_axis, contrast_limits=contrast_limits)

    with pytest.raises(RuntimeError, match="killed"):
        segment_volume(vol, target, axes="ZYX", segment_fn=failing, contrast_limits=LIMITS, workers=1)
    assert not target.exists() and tiff_staging_path(target).is_dir()
    segment_volume(vol, target, axes="ZYX", segment_fn=failing, contrast_limits=LIMITS, workers=1, resume=True)
    assert len(calls) == 4  # the finished slice was not segmented again
    assert_compacted_equals_reference(tifffile.imread(target), reference_slices(vol))
    assert not tiff_staging_path(target).exists()


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_format_option(tmp_path, fmt):
    vol = blobs_volume(nz=2)
    segment_volume(vol, tmp_path / "l.zarr", axes="ZYX", zarr_format=fmt, **RUN)
    assert (tmp_path / "l.zarr" / (".zarray" if fmt == 2 else "zarr.json")).is_file()
    arr = zarr.open_array(str(tmp_path / "l.zarr"), mode="r", zarr_format=fmt)
    assert_compacted_equals_reference(arr[:], reference_slices(vol))


def test_cli_zarr_format_is_checked(tmp_path, capsys):
    np.save(tmp_path / "in.npy", blobs_volume(nz=1)[0])
    with pytest.raises(SystemExit) as exc:  # argparse's usage error
        main(["segment", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.zarr"), "--zarr-format", "4"])
    assert exc.value.code == 2 and not (tmp_path / "o.zarr").exists()
    with pytest.raises(ValueError, match="zarr_format"):
        segment_volume(tmp_path / "in.npy", tmp_path / "o.zarr", zarr_format=4, **RUN)


GEO = {
    33550: (12, [30.0, 30.0, 0.0]),  # ModelPixelScaleTag
    33922: (12, [0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0]),  # ModelTiepointTag
    34735: (3, [1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32611, 3076, 0, 1, 9001]),  # GeoKeyDirectory
    34737: (2, "WGS 84 / UTM zone 11N|"),  # GeoAsciiParamsTag
}


def test_geotiff_input_gives_a_geotiff_with_the_same_crs_and_transform(tmp_path):
    image = blobs_volume(nz=1)[0]
    src = tmp_path / "scene.tif"
    extratags = [(code, dt, 0 if dt == 2 else len(v), v, True) for code, (dt, v) in GEO.items()]
    tifffile.imwrite(src, image, extratags=extratags)
    segment_volume(src, tmp_path / "labels.tif", **RUN)
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(tmp_path / "labels.tif") as b:
        for code in GEO:
            va, vb = a.pages[0].tags[code].value, b.pages[0].tags[code].value
            assert np.array_equal(np.asarray(va), np.asarray(vb)) if code != 34737 else va == vb, code
        assert b.pages[0].geotiff_tags["GTRasterTypeGeoKey"] == a.pages[0].geotiff_tags["GTRasterTypeGeoKey"]
        assert b.pages[0].geotiff_tags["ProjectedCSTypeGeoKey"] == a.pages[0].geotiff_tags["ProjectedCSTypeGeoKey"]
        assert_compacted_equals_reference(b.asarray()[None], reference_slices(image[None]))


def _with_level_translation(path, zarr_format):
    """Give level 1 of an OME-Zarr made by ``make_ome_zarr`` the half-pixel translation of 2x averaging."""
    grp = zarr.open_group(str(path), mode="r+")
    attrs = dict(grp.attrs)
    ms = (attrs["ome"] if zarr_format == 3 else attrs)["multiscales"][0]
    n = len(ms["axes"])
    ms["datasets"][1]["coordinateTransformations"].append(
        {"type": "translation", "translation": [0.0] * (n - 2) + [0.5, 0.5]})
    grp.attrs.update(attrs)
    return ms


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_labels_of_level_n_have_that_levels_scale_and_translation(tmp_path, zarr_format):
    from test_io import make_ome_zarr

    vol = blobs_volume(nz=2, ny=64, nx=64)
    path = make_ome_zarr(tmp_path / "img.zarr", vol, axes="zyx", zarr_format=zarr_format)
    image_ms = _with_level_translation(path, zarr_format)
    out = segment_volume(path, label_name="sam", level=1, **RUN).compute()
    assert out.shape == (2, 32, 32)
    grp_attrs = dict(zarr.open_group(str(path / "labels" / "sam"), mode="r").attrs)
    label_ms = (grp_attrs["ome"] if zarr_format == 3 else grp_attrs)["multiscales"][0]
    want = {t["type"]: t[t["type"]] for t in image_ms["datasets"][1]["coordinateTransformations"]}
    got = {t["type"]: t[t["type"]] for t in label_ms["datasets"][0]["coordinateTransformations"]}
    assert got == want == {"scale": [1.0, 2.0, 2.0], "translation": [0.0, 0.5, 0.5]}
    assert [t["type"] for t in label_ms["datasets"][0]["coordinateTransformations"]] == ["scale", "translation"]
    assert label_ms["axes"] == image_ms["axes"]


def test_v3_label_arrays_have_dimension_names(tmp_path):
    from test_io import make_ome_zarr

    vol = blobs_volume(nz=2, ny=32, nx=32)
    path = make_ome_zarr(tmp_path / "img.zarr", vol, axes="zyx", zarr_format=3)
    segment_volume(path, label_name="sam", **RUN)
    arr = zarr.open_array(str(path / "labels" / "sam" / "0"), mode="r")
    assert arr.metadata.dimension_names == ("z", "y", "x")  # NGFF 0.5: names of the multiscales axes
    segment_volume(vol, tmp_path / "plain.zarr", axes="ZYX", **RUN)
    assert zarr.open_array(str(tmp_path / "plain.zarr"), mode="r").metadata.dimension_names == ("z", "y", "x")


@pytest.mark.parametrize(("zarr_format", "level"), [(2, 0), (3, 0), (3, 1)])
def test_ome_labels_have_a_pyramid_matching_the_image_levels(tmp_path, zarr_format, level):
    from test_io import make_ome_zarr

    vol = blobs_volume(nz=2, ny=64, nx=64)
    path = make_ome_zarr(tmp_path / "img.zarr", vol, axes="zyx", zarr_format=zarr_format, levels=3)
    image_ms = _with_level_translation(path, zarr_format)
    segment_volume(path, label_name="sam", level=level, **RUN)
    grp_attrs = dict(zarr.open_group(str(path / "labels" / "sam"), mode="r").attrs)
    label_ms = (grp_attrs["ome"] if zarr_format == 3 else grp_attrs)["multiscales"][0]
    image_levels = image_ms["datasets"][level:]
    assert [d["path"] for d in label_ms["datasets"]] == [str(i) for i in range(len(image_levels))]
    base = zarr.open_array(str(path / "labels" / "sam" / "0"), mode="r")[:]
    for j, (lab, img) in enumerate(zip(label_ms["datasets"], image_levels)):
        assert lab["coordinateTransformations"] == img["coordinateTransformations"]
        arr = zarr.open_array(str(path / "labels" / "sam" / lab["path"]), mode="r")
        assert arr.shape == zarr.open_array(str(path / img["path"]), mode="r").shape
        np.testing.assert_array_equal(arr[:], base[:, :: 2 ** j, :: 2 ** j])  # nearest: ids are never mixed
        if zarr_format == 3:
            assert arr.metadata.dimension_names == ("z", "y", "x")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_labels_pass_ome_zarr_py_reader_and_the_ngff_spec(tmp_path, zarr_format):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from test_io import make_ome_zarr

    vol = blobs_volume(nz=2, ny=64, nx=64)
    path = make_ome_zarr(tmp_path / "img.zarr", vol, axes="zyx", zarr_format=zarr_format, levels=3)
    out = segment_volume(path, label_name="sam", **RUN).compute()
    # an independent reader: ome-zarr-py finds an image-label with the image's three levels
    loc = parse_url(str(path / "labels" / "sam"))
    assert loc is not None and loc.version == ("0.4" if zarr_format == 2 else "0.5")
    labels = [n for n in Reader(loc)() if any(isinstance(s, Label) for s in n.specs)]
    assert len(labels) == 1
    image = zarr.open_group(str(path), mode="r")
    assert [tuple(d.shape) for d in labels[0].data] == [image[str(i)].shape for i in range(3)]
    np.testing.assert_array_equal(np.asarray(labels[0].data[0]), out)
    # the NGFF text, checked by hand
    group, parent = (zarr.open_group(str(path / p), mode="r") for p in ("labels/sam", "labels"))
    if zarr_format == 3:
        attrs, parent_attrs = dict(group.attrs)["ome"], dict(parent.attrs)["ome"]
        assert attrs["version"] == parent_attrs["version"] == "0.5"
    else:
        attrs, parent_attrs = dict(group.attrs), dict(parent.attrs)
        assert attrs["multiscales"][0]["version"] == attrs["image-label"]["version"] == "0.4"
    assert parent_attrs["labels"] == ["sam"]
    assert attrs["image-label"]["source"]["image"] == "../../"
    ms = attrs["multiscales"][0]
    assert [(a["name"], a["type"]) for a in ms["axes"]] == [("z", "space"), ("y", "space"), ("x", "space")]
    for d in ms["datasets"]:
        kinds = [t["type"] for t in d["coordinateTransformations"]]
        assert kinds[0] == "scale" and set(kinds) <= {"scale", "translation"} and len(kinds) == len(set(kinds))
        assert all(len(t[t["type"]]) == 3 for t in d["coordinateTransformations"])
        arr = zarr.open_array(str(path / "labels" / "sam" / d["path"]), mode="r")
        assert np.issubdtype(arr.dtype, np.integer)
        if zarr_format == 3:
            assert arr.metadata.dimension_names == ("z", "y", "x")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_output_is_an_image_label_group(tmp_path, zarr_format):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    vol = blobs_volume(nz=2)
    target = tmp_path / "cells.ome.zarr"
    segment_volume(vol, target, axes="ZYX", zarr_format=zarr_format, **RUN)
    loc = parse_url(str(target))
    assert loc is not None and loc.version == ("0.4" if zarr_format == 2 else "0.5")
    nodes = [n for n in Reader(loc)() if any(isinstance(s, Label) for s in n.specs)]
    assert len(nodes) == 1 and [tuple(d.shape) for d in nodes[0].data] == [vol.shape]
    assert_compacted_equals_reference(np.asarray(nodes[0].data[0]), reference_slices(vol))
    attrs = dict(zarr.open_group(str(target), mode="r").attrs)
    ms = (attrs["ome"] if zarr_format == 3 else attrs)["multiscales"][0]
    assert [(a["name"], a["type"]) for a in ms["axes"]] == [("z", "space"), ("y", "space"), ("x", "space")]
    assert ms["datasets"] == [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * 3}]}]
    if zarr_format == 3:
        assert zarr.open_array(str(target / "0"), mode="r").metadata.dimension_names == ("z", "y", "x")
    with pytest.raises(ValueError, match="already exists"):
        segment_volume(vol, target, axes="ZYX", zarr_format=zarr_format, **RUN)
    segment_volume(vol, target, axes="ZYX", zarr_format=zarr_format, overwrite=True, **RUN)
    (tmp_path / "mine.ome.zarr").mkdir()
    (tmp_path / "mine.ome.zarr" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not written by napari-sam"):
        segment_volume(vol, tmp_path / "mine.ome.zarr", axes="ZYX", overwrite=True, **RUN)
    assert (tmp_path / "mine.ome.zarr" / "notes.txt").read_text() == "keep"


def test_ome_zarr_output_is_not_created_when_an_option_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="link-3d"):
        segment_volume(blobs_volume(nz=1)[0], tmp_path / "x.ome.zarr", link_3d=True, **RUN)
    assert not (tmp_path / "x.ome.zarr").exists()
