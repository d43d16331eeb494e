"""The npe2 writers: a Labels layer saved from a ViewerModel as TIFF and as OME-Zarr labels, read back
with tifffile and zarr."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

napari = pytest.importorskip("napari")
from napari.components import ViewerModel  # noqa: E402


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    lab = np.zeros((3, 40, 50), np.int64)  # napari's default labels dtype; ids fit uint16
    for k in range(3):
        for i in range(1, 6):
            r, c = rng.integers(0, 34, 2)
            lab[k, r:r + 6, c:c + 6] = 300 * i + k
    return lab


@pytest.fixture(autouse=True)
def plugins():
    """napari's plugin manager finds the installed plugins (the GUI does this at start-up)."""
    import npe2

    npe2.PluginManager.instance().discover()


def save(viewer, path):
    return viewer.layers.save(str(path), plugin="napari-sam-toolkit")


@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
def test_save_labels_as_tiff(tmp_path, labels, suffix):
    viewer = ViewerModel()
    viewer.add_labels(labels, name="cells", scale=(2.0, 0.5, 0.25))
    written = save(viewer, tmp_path / f"cells{suffix}")
    assert written == [str(tmp_path / f"cells{suffix}")]
    back = tifffile.imread(written[0])
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.uint16
    with tifffile.TiffFile(written[0]) as tif:
        assert len(tif.pages) == 3  # one page per slice
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(4.0)  # 1 / 0.25 px per unit


def test_save_lazy_labels_as_tiff(tmp_path, labels):
    viewer = ViewerModel()
    viewer.add_labels(da.from_array(labels.astype(np.uint32), chunks=(1, 40, 50)), name="lazy")
    [path] = save(viewer, tmp_path / "lazy.tif")
    np.testing.assert_array_equal(tifffile.imread(path), labels)


def test_save_labels_as_ome_zarr(tmp_path, labels):
    viewer = ViewerModel()
    viewer.add_labels(labels, name="my cells", scale=(2.0, 0.5, 0.25), translate=(0.0, 10.0, 0.0))
    [path] = save(viewer, tmp_path / "cells.ome.zarr")
    root = zarr.open_group(path, mode="r")
    assert root["labels"].attrs["labels"] == ["my_cells"]
    group = root["labels/my_cells"]
    assert "image-label" in group.attrs
    [ms] = group.attrs["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    transforms = ms["datasets"][0]["coordinateTransformations"]
    assert transforms[0] == {"type": "scale", "scale": [2.0, 0.5, 0.25]}
    assert transforms[1] == {"type": "translation", "translation": [0.0, 10.0, 0.0]}
    back = group[ms["datasets"][0]["path"]]
    np.testing.assert_array_equal(back[:], labels)
    assert back.dtype == np.uint16
    from napari_sam._napari.writer import write_labels_ome_zarr

    with pytest.raises(ValueError, match="already exists"):  # never overwrites a store
        write_labels_ome_zarr(path, labels, {"name": "again"})


def test_negative_ids_are_refused(tmp_path):
    from napari_sam._napari.writer import write_labels_tiff

    with pytest.raises(ValueError, match="negative"):
        write_labels_tiff(str(tmp_path / "x.tif"), np.array([[0, -1]]), {})


def test_2d_labels_both_formats(tmp_path):
    from napari_sam._napari.writer import write_labels_ome_zarr, write_labels_tiff

    lab = np.zeros((30, 20), np.int32)
    lab[3:9, 4:7] = 70000  # needs 32 bits
    [tif] = write_labels_tiff(str(tmp_path / "a.tif"), lab, {"scale": [1.0, 1.0]})
    back = tifffile.imread(tif)
    assert back.dtype == np.uint32 and np.array_equal(back, lab)
    [store] = write_labels_ome_zarr(str(tmp_path / "a.ome.zarr"), [lab, lab[::2, ::2]], {"name": "x"})
    group = zarr.open_group(store, mode="r")["labels/x"]
    assert [a["name"] for a in group.attrs["multiscales"][0]["axes"]] == ["y", "x"]
    np.testing.assert_array_equal(group["0"][:], lab)
    with pytest.raises(ValueError, match="2 to 5"):
        write_labels_ome_zarr(str(tmp_path / "b.ome.zarr"), np.zeros((2,) * 6, np.uint8), {})
