"""open_image on real files: TIFF, OME-TIFF, ImageJ, GeoTIFF, zarr v2/v3, OME-Zarr, .npy."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.volume.io import ome_zarr_root, open_image, validate_axes, write_ome_labels_metadata

RNG = np.random.default_rng(0)


def _vol(shape, dtype=np.uint16):
    return RNG.integers(0, 4000, size=shape).astype(dtype)


def test_plain_tiff_stack_is_lazy_zyx(tmp_path):
    data = _vol((5, 40, 30))
    tifffile.imwrite(tmp_path / "a.tif", data)
    arr, axes, meta = open_image(tmp_path / "a.tif")
    assert isinstance(arr, da.Array) and axes == "ZYX" and meta["axes_source"] == "shape"
    assert arr.chunks[0] == (1,) * 5  # one page per chunk: a task reads only its slice
    np.testing.assert_array_equal(arr.compute(), data)
    np.testing.assert_array_equal(arr[3].compute(), data[3])


def test_ome_tiff_axes_from_metadata(tmp_path):
    data = _vol((3, 2, 24, 20))
    tifffile.imwrite(tmp_path / "a.ome.tif", data, ome=True, metadata={"axes": "ZCYX"})
    arr, axes, meta = open_image(tmp_path / "a.ome.tif")
    assert axes == "ZCYX" and meta["format"] == "ome-tiff" and meta["axes_source"] == "metadata"
    np.testing.assert_array_equal(arr.compute(), data)
    # --axes overrides metadata
    _, axes2, meta2 = open_image(tmp_path / "a.ome.tif", axes="tcyx")
    assert axes2 == "TCYX" and meta2["axes_source"] == "user"


def test_imagej_hyperstack(tmp_path):
    data = _vol((2, 3, 16, 16))
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, metadata={"axes": "TZYX"})
    arr, axes, _ = open_image(tmp_path / "ij.tif")
    assert axes == "TZYX"
    np.testing.assert_array_equal(arr.compute(), data)


def test_rgb_tiff_is_yxs(tmp_path):
    data = _vol((20, 24, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    arr, axes, _ = open_image(tmp_path / "rgb.tif")
    assert axes == "YXS"
    np.testing.assert_array_equal(arr.compute(), data)


def test_geotiff_tags_are_reported(tmp_path):
    data = _vol((16, 16))
    extratags = [
        (33550, "d", 3, (0.5, 0.5, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
        (34735, "H", 8, (1, 1, 0, 1, 1024, 0, 1, 1), True),
    ]
    tifffile.imwrite(tmp_path / "geo.tif", data, extratags=extratags)
    arr, axes, meta = open_image(tmp_path / "geo.tif")
    assert axes == "YX" and meta["format"] == "geotiff"
    assert meta["geotiff"]["ModelPixelScaleTag"] == [0.5, 0.5, 0.0]
    assert meta["geotiff"]["ModelTiepointTag"][3:5] == [500000.0, 4000000.0]
    assert meta["geotiff"]["GeoKeyDirectoryTag"] == [1, 1, 0, 1, 1024, 0, 1, 1]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_arrays(tmp_path, zarr_format):
    data = _vol((4, 32, 32))
    z = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=data.shape, chunks=(1, 16, 16),
                          dtype=data.dtype, zarr_format=zarr_format)
    z[...] = data
    arr, axes, meta = open_image(tmp_path / "a.zarr")
    assert axes == "ZYX" and meta["format"] == f"zarr-v{zarr_format}"
    assert arr.chunks[0] == (1, 1, 1, 1)
    np.testing.assert_array_equal(arr.compute(), data)


def test_zarr_v3_dimension_names(tmp_path):
    data = _vol((2, 3, 16, 16))
    z = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=data.shape, chunks=(1, 1, 16, 16),
                          dtype=data.dtype, dimension_names=["t", "z", "y", "x"])
    z[...] = data
    _, axes, meta = open_image(tmp_path / "a.zarr")
    assert axes == "TZYX" and meta["axes_source"] == "metadata"


def make_ome_zarr(path, data, axes="zyx", zarr_format=2, levels=2):
    """A minimal OME-Zarr image (NGFF 0.4 on zarr v2, 0.5 on zarr v3) with a 2x pyramid in Y, X."""
    grp = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    datasets = []
    level = data
    for i in range(levels):
        a = grp.create_array(str(i), shape=level.shape, chunks=level.shape, dtype=level.dtype)
        a[...] = level
        scale = [1.0] * (len(axes) - 2) + [2.0 ** i, 2.0 ** i]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        level = level[..., ::2, ::2]
    types = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    ms = {"axes": [{"name": a, "type": types[a]} for a in axes], "datasets": datasets, "name": "img"}
    if zarr_format == 2:
        ms["version"] = "0.4"
        grp.attrs["multiscales"] = [ms]
    else:
        grp.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return path


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_levels_and_axes(tmp_path, zarr_format):
    data = _vol((2, 3, 32, 32))
    path = make_ome_zarr(tmp_path / "img.zarr", data, axes="czyx", zarr_format=zarr_format)
    arr, axes, meta = open_image(path)
    assert axes == "CZYX" and meta["format"] == "ome-zarr"
    np.testing.assert_array_equal(arr.compute(), data)
    arr1, _, meta1 = open_image(path, level=1)
    np.testing.assert_array_equal(arr1.compute(), data[..., ::2, ::2])
    assert meta1["scale"] == [1.0, 1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="resolution level"):
        open_image(path, level=5)
    info = ome_zarr_root(path)
    assert info["version"] == ("0.4" if zarr_format == 2 else "0.5") and info["zarr_format"] == zarr_format


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_labels_metadata(tmp_path, zarr_format):
    path = make_ome_zarr(tmp_path / "img.zarr", _vol((3, 16, 16)), zarr_format=zarr_format, levels=1)
    info = ome_zarr_root(path)
    write_ome_labels_metadata(path, "cells", axes=info["multiscale"]["axes"], scale=[1, 1, 1],
                              version=info["version"], zarr_format=zarr_format)
    write_ome_labels_metadata(path, "nuclei", axes=info["multiscale"]["axes"], scale=None,
                              version=info["version"], zarr_format=zarr_format)
    labels = dict(zarr.open_group(str(path / "labels"), mode="r").attrs)
    cells = dict(zarr.open_group(str(path / "labels" / "cells"), mode="r").attrs)
    if zarr_format == 3:
        labels, cells = labels["ome"], cells["ome"]
    assert labels["labels"] == ["cells", "nuclei"]
    assert cells["image-label"]["source"]["image"] == "../../"
    assert cells["multiscales"][0]["datasets"][0]["path"] == "0"
    assert [a["name"] for a in cells["multiscales"][0]["axes"]] == ["z", "y", "x"]


def test_npy_is_memory_mapped(tmp_path):
    data = _vol((3, 20, 20))
    np.save(tmp_path / "a.npy", data)
    arr, axes, meta = open_image(tmp_path / "a.npy")
    assert axes == "ZYX" and meta["format"] == "npy"
    np.testing.assert_array_equal(arr.compute(), data)


@pytest.mark.parametrize("shape", [(20, 20, 3), (20, 20, 4)])
def test_ambiguous_shape_asks_for_axes(tmp_path, shape):
    np.save(tmp_path / "a.npy", np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match="--axes"):
        open_image(tmp_path / "a.npy")
    _, axes, _ = open_image(tmp_path / "a.npy", axes="YXS")
    assert axes == "YXS"


def test_4d_without_metadata_asks_for_axes(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="--axes"):
        open_image(tmp_path / "a.npy")


@pytest.mark.parametrize("axes, match", [
    ("ZYQ", "unknown letter"), ("ZZX", "repeats"), ("YX", "3 dimensions"), ("ZXY", "Y must come before X"),
    ("SYX", "S .* last"), ("ZCT", "both Y and X"),
])
def test_bad_axes(axes, match):
    with pytest.raises(ValueError, match=match):
        validate_axes(axes, 3)


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        open_image(tmp_path / "missing.tif")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported input"):
        open_image(tmp_path / "a.png")
    grp = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    grp.create_array("raw", shape=(4, 4), dtype="u1")
    with pytest.raises(ValueError, match="point at one of them"):
        open_image(tmp_path / "g.zarr")
