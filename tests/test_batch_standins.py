"""Deterministic stand-ins for the SAM per-slice function, importable by dask workers
and by CLI subprocesses (``python tests/test_batch_standins.py segment ...`` runs the CLI
with :func:`use_standin_model` applied)."""

from __future__ import annotations

import os
import time

import numpy as np
from skimage.measure import label


def threshold_segment(image, *, channel_axis=None, contrast_limits=None):
    """Objects = 4-connected components above the middle of the contrast limits."""
    img = np.asarray(image, dtype=np.float64)
    if channel_axis is not None:
        img = img.mean(axis=channel_axis)
    limits = np.asarray(contrast_limits, dtype=np.float64).reshape(-1, 2)
    middle = float((limits[:, 0].mean() + limits[:, 1].mean()) / 2)
    return label(img > middle, connectivity=1).astype(np.uint32)


def slow_threshold_segment(image, *, channel_axis=None, contrast_limits=None):
    """threshold_segment after sleeping ``$NAPARI_SAM_TEST_DELAY`` seconds (default 0.5)."""
    time.sleep(float(os.environ.get("NAPARI_SAM_TEST_DELAY", "0.5")))
    return threshold_segment(image, channel_axis=channel_axis, contrast_limits=contrast_limits)


def test_threshold_segment_matches_definition():
    img = np.zeros((8, 8), np.uint16)
    img[1:3, 1:3] = 100
    img[5:7, 4:8] = 100
    out = threshold_segment(img, contrast_limits=[[0, 100]])
    assert out.max() == 2 and (out > 0).sum() == 12


def pid_threshold_segment(image, *, channel_axis=None, contrast_limits=None):
    """threshold_segment that records the process id in ``$NAPARI_SAM_TEST_PIDS`` (a folder)."""
    folder = os.environ.get("NAPARI_SAM_TEST_PIDS")
    if folder:
        with open(os.path.join(folder, str(os.getpid())), "a") as fh:
            fh.write("x")
    return threshold_segment(image, channel_axis=channel_axis, contrast_limits=contrast_limits)


def tiled_threshold_segment(image, *, channel_axis=None, contrast_limits=None, out=None, tile: int = 1024,
                            block_shape=None):
    """The tiled SAM path with a cheap model: per ``tile`` window, threshold + components as mask records.

    The records go through the real stitching and, with ``out``, the real block-wise label writing of
    :mod:`napari_sam.tiled` (``block_shape`` as for :func:`~napari_sam.tiled.stitching.write_labels`), so
    the batch path streams the slice as it does for SAM; without ``out`` the labels are built in memory.
    Used by ``tests/test_batch_memory.py`` and ``benchmarks/batch.py --memory``.
    """
    from skimage.measure import regionprops

    from napari_sam.automatic.labels import masks_to_labels
    from napari_sam.automatic.records import MaskRecord
    from napari_sam.tiled.stitching import stitch_tiles, write_labels
    from napari_sam.tiled.tiles import tile_grid

    shape = tuple(int(s) for s in image.shape[:2])
    lo, hi = np.asarray(contrast_limits, dtype=np.float64).reshape(-1, 2)[0]
    tiles = tile_grid(shape, tile, 0)
    per_tile = {}
    for t in tiles:
        r0, c0, r1, c1 = t.window
        window = np.asarray(image[r0:r1, c0:c1])
        per_tile[t.index] = [
            MaskRecord(p.image.copy(), (p.bbox[0] + r0, p.bbox[1] + c0, p.bbox[2] + r0, p.bbox[3] + c0),
                       int(p.area), 0.9, 0.95, (p.centroid[0] + r0, p.centroid[1] + c0), t.window)
            for p in regionprops(label(window > (lo + hi) / 2))]
    records = stitch_tiles(per_tile, tiles, shape)
    return masks_to_labels(records, shape) if out is None else write_labels(records, out, block_shape=block_shape)


def write_blob_image(path, side: int, chunk: int = 1024) -> None:
    """A uint8 ``side`` x ``side`` zarr image of bright blobs, written by row blocks (never whole in memory)."""
    import zarr

    arr = zarr.create_array(store=str(path), shape=(side, side), chunks=(chunk, chunk), dtype="uint8")
    xx = np.arange(side, dtype=np.float32)
    for r in range(0, side, chunk):
        yy = np.arange(r, min(r + chunk, side), dtype=np.float32)[:, None]
        arr[r:r + len(yy)] = ((np.sin(yy / 23.0) * np.sin(xx / 29.0) > 0.3) * 200).astype(np.uint8)


def use_standin_model(patch=None, fn=None):
    """Make the CLI / ``segment_volume`` use a stand-in instead of the SAM model.

    ``patch`` is pytest's ``monkeypatch`` (restored after the test); without it the
    module attributes are set for the rest of the process (CLI subprocesses).
    """
    import napari_sam.volume.batch as batch

    fn = fn or threshold_segment

    def fake_sam(image, *, channel_axis, contrast_limits, model=None, **kwargs):
        if model == "vit_zz" or kwargs.get("device") == "banana":
            raise AssertionError("the model must be checked before any slice runs")
        return fn(image, channel_axis=channel_axis, contrast_limits=contrast_limits)

    def fake_predictor(model, checkpoint, device):
        if str(model) != "builtin" or device not in (None, "cpu"):  # what load_model would refuse
            raise ValueError(f"unknown model {model!r} or device {device!r}")
        return None

    setter = patch.setattr if patch is not None else setattr
    setter(batch, "sam_segment", fake_sam)
    setter(batch, "worker_predictor", fake_predictor)


if __name__ == "__main__":  # the CLI with the stand-in: used by subprocess tests
    import sys

    from napari_sam.cli import main

    use_standin_model(fn=globals()[os.environ.get("NAPARI_SAM_TEST_STANDIN", "threshold_segment")])
    sys.exit(main())
