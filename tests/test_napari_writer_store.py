"""The plugin writer adds a Labels layer to an existing OME-Zarr image (made by ome-zarr-py): the image's
files stay byte for byte, the labels are read by ome-zarr-py's reader and napari-ome-zarr's with the image's
scale; and napari-ome-zarr opens the label groups the CLI writes."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

napari = pytest.importorskip("napari")
ome_zarr = pytest.importorskip("ome_zarr")
from napari.components import ViewerModel  # noqa: E402
from ome_zarr.format import FormatV04, FormatV05  # noqa: E402
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Multiscales, Reader  # noqa: E402
from ome_zarr.writer import write_image, write_labels  # noqa: E402

from napari_sam._napari.writer import write_labels_ome_zarr  # noqa: E402

SCALE = [1.0, 2.0, 0.5, 0.25]  # c z y x of the full-resolution level


@pytest.fixture(autouse=True)
def plugins():
    import npe2

    npe2.PluginManager.instance().discover()


def make_image(path, zarr_format):
    """A c z y x image with 3 levels written by ome-zarr-py (NGFF 0.4 on zarr v2, 0.5 on zarr v3)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4000, (2, 3, 48, 64), dtype=np.uint16)
    fmt = FormatV04() if zarr_format == 2 else FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    transforms = [[{"type": "scale", "scale": [1.0, 2.0, 0.5 * 2**i, 0.25 * 2**i]},
                   {"type": "translation", "translation": [0.0, 0.0, 3.0, 4.0]}] for i in range(3)]
    write_image(image, root, axes="czyx", fmt=fmt, coordinate_transformations=transforms,
                scaler=ome_zarr.scale.Scaler(max_layer=2))
    return image


def snapshot(root):
    """Hash of every file of the store outside ``labels/``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and p.relative_to(root).parts[0] != "labels"}


def cells(shape):
    lab = np.zeros(shape, np.int32)
    for k in range(shape[0]):
        lab[k, 5 + k:20, 10:30] = 7 + k
        lab[k, 30:40, 40:60] = 400
    return lab


def ome_label(root, name):
    """ome-zarr-py's reading of ``labels/<name>``: ``(levels as numpy, transforms of each level)``."""
    nodes = [n for n in Reader(parse_url(str(Path(root) / "labels" / name)))() if any(isinstance(s, Label)
                                                                                     for s in n.specs)]
    assert len(nodes) == 1
    node = nodes[0]
    return [np.asarray(d) for d in node.data], node.metadata["coordinateTransformations"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_labels_saved_into_the_image_store(tmp_path, zarr_format):
    root = tmp_path / "img.ome.zarr"
    image = make_image(root, zarr_format)
    before = snapshot(root)
    lab = cells((3, 48, 64))
    viewer = ViewerModel()
    viewer.add_labels(lab, name="my cells", scale=SCALE[1:])
    [written] = viewer.layers.save(str(root), plugin="napari-sam-toolkit")
    assert Path(written) == root and snapshot(root) == before  # the image is bit for bit what it was
    # ome-zarr-py still reads the image, and finds the new label with the image's levels and transforms
    img_node = next(n for n in Reader(parse_url(str(root)))() if any(isinstance(s, Multiscales) for s in n.specs))
    np.testing.assert_array_equal(np.asarray(img_node.data[0]), image)
    levels, transforms = ome_label(root, "my_cells")
    image_ms = zarr.open_group(str(root), mode="r").attrs
    image_ms = (image_ms["ome"] if zarr_format == 3 else image_ms)["multiscales"][0]
    assert len(levels) == len(image_ms["datasets"]) == 3
    np.testing.assert_array_equal(levels[0], lab[None])  # c of size 1
    for level, labels_tr, image_ds in zip(levels, transforms, image_ms["datasets"]):
        shape = zarr.open_array(str(root / image_ds["path"]), mode="r").shape
        assert level.shape == (1, *shape[1:])
        assert labels_tr == image_ds["coordinateTransformations"]
    assert transforms[0][0]["scale"] == SCALE
    np.testing.assert_array_equal(levels[1], lab[None, :, ::2, ::2])  # nearest: ids never averaged
    labels_attrs = zarr.open_group(str(root / "labels"), mode="r").attrs
    assert (labels_attrs["ome"] if zarr_format == 3 else labels_attrs)["labels"] == ["my_cells"]
    if zarr_format == 3:
        assert zarr.open_array(str(root / "labels/my_cells/0"), mode="r").metadata.dimension_names == \
            ("c", "z", "y", "x")
    # saved again (napari-sam's own label): replaced
    write_labels_ome_zarr(str(root), lab * 2, {"name": "my cells"})
    assert ome_label(root, "my_cells")[0][0].max() == 800 and snapshot(root) == before


def test_foreign_labels_and_wrong_shapes_are_refused(tmp_path):
    root = tmp_path / "img.ome.zarr"
    make_image(root, 2)
    theirs = np.zeros((1, 3, 48, 64), np.uint8)
    theirs[0, 0, :4, :4] = 1
    write_labels(theirs, zarr.open_group(str(root), mode="r+"), name="nuclei", axes="czyx", fmt=FormatV04())
    files = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="did not write"):
        write_labels_ome_zarr(str(root), cells((3, 48, 64)), {"name": "nuclei"})
    with pytest.raises(ValueError, match=r"labels need \(3, 48, 64\)"):
        write_labels_ome_zarr(str(root), cells((3, 48, 60)), {"name": "other"})
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == files  # nothing written
    not_an_image = tmp_path / "plain.ome.zarr"
    zarr.open_group(str(not_an_image), mode="w")
    with pytest.raises(ValueError, match="not an OME-Zarr image"):
        write_labels_ome_zarr(str(not_an_image), cells((3, 48, 64)), {"name": "x"})


@pytest.mark.skipif(sys.version_info < (3, 11), reason="napari-ome-zarr 0.10 needs Python 3.11")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_napari_ome_zarr_opens_what_napari_sam_wrote(tmp_path, zarr_format, monkeypatch):
    from napari_ome_zarr import napari_get_reader
    from test_batch import blobs_volume
    from test_object_table import scored_segment

    from napari_sam.volume.batch import segment_volume

    root = tmp_path / "img.ome.zarr"
    make_image(root, zarr_format)
    lab = cells((3, 48, 64))
    write_labels_ome_zarr(str(root), lab, {"name": "mine"})
    # and a standalone image-label group written by segment_volume (-o labels.ome.zarr)
    vol = blobs_volume(nz=3, ny=48, nx=64)
    sam = segment_volume(np.asarray(vol), tmp_path / "cli.ome.zarr", segment_fn=lambda im, **kw: scored_segment(im),
                         contrast_limits=[[0.0, 1000.0]], axes="ZYX", zarr_format=zarr_format).compute()
    layers = napari_get_reader(str(root))()
    [(data, meta, kind)] = [layer for layer in layers if str(layer[1].get("name", "")).endswith("mine")]
    assert kind == "labels"
    np.testing.assert_array_equal(np.asarray(data[0]), lab[None])  # c of size 1 kept by the reader
    assert list(meta["scale"]) == SCALE
    [(_, image_meta, _)] = [layer for layer in layers if layer[2] == "image"]
    assert list(image_meta["scale"]) == SCALE[1:]  # the image's channels split: the same z y x scale
    [(data, meta, kind)] = napari_get_reader(str(tmp_path / "cli.ome.zarr"))()
    assert kind == "labels"
    np.testing.assert_array_equal(np.asarray(data[0] if isinstance(data, list) else data), sam)
