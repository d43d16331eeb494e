"""segment_volume with a deterministic stand-in segment function, on real files.

References are computed independently: the stand-in applied to each slice
directly (brute force), scipy/numpy IoU bookkeeping for the 3-D links, and the
local scheduler's result for the distributed run.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile
import zarr
from test_batch_standins import threshold_segment
from test_io import make_ome_zarr

from napari_sam.progress import Cancelled
from napari_sam.volume.batch import segment_volume
from napari_sam.volume.slices import STATE_DIR, canonical_view, id_block_for, volume_contrast_limits

LIMITS = [[0.0, 1000.0]]  # threshold at 500


def blobs_volume(nz=6, ny=48, nx=40, seed=0):
    """Bright rectangles (value 1000) on 0, a few per slice, random but separated."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((nz, ny, nx), np.uint16)
    for z in range(nz):
        for _ in range(rng.integers(2, 6)):
            r, c = rng.integers(0, ny - 6), rng.integers(0, nx - 6)
            vol[z, r:r + rng.integers(2, 6), c:c + rng.integers(2, 6)] = 1000
    return vol


def reference_slices(vol):
    """The stand-in applied to each slice on its own: local labels 1..n_k."""
    return [threshold_segment(s, contrast_limits=LIMITS) for s in vol]


def assert_compacted_equals_reference(out, refs):
    offset = 0
    for k, ref in enumerate(refs):
        expected = np.where(ref > 0, ref + offset, 0)
        np.testing.assert_array_equal(out[k], expected, err_msg=f"slice {k}")
        offset += int(ref.max())


def test_ids_unique_across_slices_and_compacted(tmp_path):
    vol = blobs_volume()
    np.save(tmp_path / "v.npy", vol)
    done = []
    out = segment_volume(tmp_path / "v.npy", tmp_path / "out.zarr", segment_fn=threshold_segment,
                         contrast_limits=LIMITS, progress=lambda d, t, desc: done.append((d, t, desc)))
    out = out.compute()
    assert out.dtype == np.uint32
    refs = reference_slices(vol)
    assert_compacted_equals_reference(out, refs)
    assert (6, 6, "slices") in done and (6, 6, "relabelling") in done
    arr = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert arr.chunks == (1, 48, 40)
    assert arr.attrs["napari_sam"]["state"] == "complete"
    assert arr.attrs["napari_sam"]["n_labels"] == sum(int(r.max()) for r in refs)


def test_no_compact_keeps_fixed_id_blocks(tmp_path):
    vol = blobs_volume()
    out = segment_volume(vol, tmp_path / "out.zarr", segment_fn=threshold_segment, contrast_limits=LIMITS,
                         compact=False).compute()
    block = id_block_for(vol.shape[0])
    for k, ref in enumerate(reference_slices(vol)):
        np.testing.assert_array_equal(out[k], np.where(ref > 0, ref.astype(np.int64) + (k + 1) * block, 0))
    ids = [set(np.unique(s)) - {0} for s in out]
    assert all(not (ids[i] & ids[j]) for i in range(len(ids)) for j in range(i))


def test_lazy_result_without_output():
    """Default (compact) ids: slice k is offset by the object count of slices 0..k-1, so ids are 1..N."""
    vol = blobs_volume(nz=3)
    lazy = segment_volume(vol, segment_fn=threshold_segment, contrast_limits=LIMITS)
    assert lazy.shape == vol.shape and lazy.dtype == np.uint32
    refs = reference_slices(vol)
    offset = 0
    for k, ref in enumerate(refs):
        np.testing.assert_array_equal(lazy[k].compute(), np.where(ref > 0, ref.astype(np.int64) + offset, 0))
        offset += int(ref.max())
    assert int(lazy.max().compute()) == offset


def test_lazy_result_no_compact_keeps_id_blocks():
    vol = blobs_volume(nz=3)
    lazy = segment_volume(vol, segment_fn=threshold_segment, contrast_limits=LIMITS, compact=False)
    block = id_block_for(3)
    for k, ref in enumerate(reference_slices(vol)):
        np.testing.assert_array_equal(lazy[k].compute(), np.where(ref > 0, ref.astype(np.int64) + k * block, 0))


def test_lazy_result_from_tiff_computes_with_processes(tmp_path):
    vol = blobs_volume(nz=3)
    tifffile.imwrite(tmp_path / "v.tif", vol)
    lazy = segment_volume(tmp_path / "v.tif", segment_fn=threshold_segment, contrast_limits=LIMITS)
    out = lazy.compute(scheduler="processes", num_workers=2)  # tasks reopen the file: no open handles pickled
    offset = 0
    for k, ref in enumerate(reference_slices(vol)):
        np.testing.assert_array_equal(out[k], np.where(ref > 0, ref.astype(np.int64) + offset, 0))
        offset += int(ref.max())


def test_input_is_never_modified(tmp_path):
    vol = blobs_volume(nz=2)
    copy = vol.copy()
    segment_volume(vol, tmp_path / "o.zarr", segment_fn=threshold_segment)
    np.testing.assert_array_equal(vol, copy)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_link_3d_joins_by_iou_not_by_touching(tmp_path):
    vol = np.zeros((6, 30, 30), np.uint16)
    vol[0:4, 2:12, 2:12] = 1000          # A: same square in slices 0-3 -> one object
    vol[3:6, 20:28, 20:28] = 1000         # B: slices 3-5 -> one object
    vol[4:6, 2:12, 10:20] = 1000          # C: touches A's footprint at slice 3->4 with IoU < 0.5
    sq_a = np.zeros((30, 30), bool)
    sq_a[2:12, 2:12] = True
    sq_c = np.zeros((30, 30), bool)
    sq_c[2:12, 10:20] = True
    assert 0 < iou(sq_a, sq_c) < 0.5  # overlapping, so 3-D connectivity alone would merge A and C
    out = segment_volume(vol, tmp_path / "o.zarr", segment_fn=threshold_segment, contrast_limits=LIMITS,
                         link_3d=True).compute()
    a_ids = set(np.unique(out[0:4, 2:12, 2:12]))
    b_ids = set(np.unique(out[3:6, 20:28, 20:28]))
    c_ids = set(np.unique(out[4:6, 2:12, 12:20]))
    assert len(a_ids) == len(b_ids) == len(c_ids) == 1
    assert len(a_ids | b_ids | c_ids) == 3 and 0 not in a_ids | b_ids | c_ids
    assert set(np.unique(out)) == {0, 1, 2, 3}  # compact ids, numbered in slice order
    assert out[0, 5, 5] == 1


def test_link_3d_needs_z(tmp_path):
    with pytest.raises(ValueError, match="no Z"):
        segment_volume(np.zeros((3, 8, 8)), tmp_path / "o.zarr", axes="TYX", segment_fn=threshold_segment,
                       link_3d=True)


def test_existing_output_needs_overwrite_or_resume(tmp_path):
    vol = blobs_volume(nz=2)
    segment_volume(vol, tmp_path / "o.zarr", segment_fn=threshold_segment, contrast_limits=LIMITS)
    with pytest.raises(ValueError, match="already exists.*--overwrite"):
        segment_volume(vol, tmp_path / "o.zarr", segment_fn=threshold_segment, contrast_limits=LIMITS)
    other = vol.copy()
    other[:, :10] = 1000
    out = segment_volume(other, tmp_path / "o.zarr", segment_fn=threshold_segment, contrast_limits=LIMITS,
                         overwrite=True).compute()
    assert_compacted_equals_reference(out, reference_slices(other))
    with pytest.raises(ValueError, match="differs in .*data"):
        segment_volume(vol, tmp_path / "o.zarr", segment_fn=threshold_segment, contrast_limits=LIMITS,
                       resume=True)


def test_cancel_then_resume_equals_uninterrupted(tmp_path):
    vol = blobs_volume(nz=8)
    np.save(tmp_path / "v.npy", vol)
    seen = []
    stop = threading.Event()

    def progress(done, total, desc):
        seen.append(done)
        if done >= 3:
            stop.set()

    with pytest.raises(Cancelled):
        segment_volume(tmp_path / "v.npy", tmp_path / "o.zarr", segment_fn=threshold_segment,
                       contrast_limits=LIMITS, workers=1, progress=progress, cancel=stop)
    state = tmp_path / "o.zarr" / STATE_DIR
    finished = sorted(state.glob("slice-*.json"))
    assert 3 <= len(finished) < 8
    # simulate a slice killed half-way: data written without its done marker -> must be redone
    todo = next(k for k in range(8) if not (state / f"slice-{k}.json").exists())
    zarr.open_array(str(tmp_path / "o.zarr"), mode="r+")[todo, :5] = 123
    calls = []

    def counting(image, **kw):
        calls.append(1)
        return threshold_segment(image, **kw)

    counting.__qualname__ = threshold_segment.__qualname__
    counting.__module__ = threshold_segment.__module__
    out = segment_volume(tmp_path / "v.npy", tmp_path / "o.zarr", segment_fn=counting,
                         contrast_limits=LIMITS, resume=True).compute()
    assert len(calls) == 8 - len(finished)  # finished slices were skipped
    assert_compacted_equals_reference(out, reference_slices(vol))


def test_interrupted_relabelling_is_idempotent(tmp_path):
    vol = blobs_volume(nz=4)
    segment_volume(vol, tmp_path / "o.zarr", segment_fn=threshold_segment, contrast_limits=LIMITS,
                   link_3d=True)
    expected = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[...]
    # rerun the relabel stage over slices already relabelled (markers removed): nothing changes
    for marker in (tmp_path / "o.zarr" / STATE_DIR).glob("final-*"):
        marker.unlink()
    out = segment_volume(vol, tmp_path / "o.zarr", segment_fn=threshold_segment, contrast_limits=LIMITS,
                         link_3d=True, resume=True).compute()
    np.testing.assert_array_equal(out, expected)


def test_channels_and_axes(tmp_path):
    vol = blobs_volume(nz=3)
    stack = np.stack([np.zeros_like(vol), vol], axis=1)  # Z C Y X, objects in channel 1
    tifffile.imwrite(tmp_path / "c.ome.tif", stack, ome=True, metadata={"axes": "ZCYX"})
    with pytest.raises(ValueError, match="--channel"):
        segment_volume(tmp_path / "c.ome.tif", tmp_path / "o.zarr", segment_fn=threshold_segment)
    out = segment_volume(tmp_path / "c.ome.tif", tmp_path / "o.zarr", channel=1, segment_fn=threshold_segment,
                         contrast_limits=LIMITS).compute()
    assert_compacted_equals_reference(out, reference_slices(vol))
    seen = {}

    def record(image, *, channel_axis, contrast_limits):
        seen.update(shape=image.shape, channel_axis=channel_axis, limits=np.asarray(contrast_limits))
        return threshold_segment(image, channel_axis=channel_axis, contrast_limits=contrast_limits)

    segment_volume(tmp_path / "c.ome.tif", tmp_path / "o2.zarr", channels=[1, 0], segment_fn=record)
    assert seen["shape"] == (48, 40, 2) and seen["channel_axis"] == -1 and seen["limits"].shape == (2, 2)
    with pytest.raises(ValueError, match="out of range"):
        segment_volume(tmp_path / "c.ome.tif", tmp_path / "o3.zarr", channel=5, segment_fn=threshold_segment)


def test_contrast_limits_match_numpy_percentiles():
    vol = np.random.default_rng(1).gamma(2.0, 100.0, size=(5, 20, 30)).astype(np.float32)
    import dask.array as da

    view, _, has_ch = canonical_view(da.from_array(vol), "ZYX")
    limits = volume_contrast_limits(view, has_channels=has_ch, max_slices=5, max_samples=10 ** 6)
    np.testing.assert_allclose(limits[0], np.percentile(vol.astype(np.float64), [0.5, 99.5]))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_labels_group(tmp_path, zarr_format):
    vol = blobs_volume(nz=3, ny=32, nx=32)
    img = np.stack([vol, vol // 2], axis=0)  # C Z Y X
    path = make_ome_zarr(tmp_path / "img.zarr", img, axes="czyx", zarr_format=zarr_format)
    out = segment_volume(path, label_name="sam", channel=0, segment_fn=threshold_segment,
                         contrast_limits=LIMITS).compute()
    assert out.shape == (1, 3, 32, 32)
    assert_compacted_equals_reference(out[0], reference_slices(vol))
    label_attrs = dict(zarr.open_group(str(path / "labels" / "sam"), mode="r").attrs)
    labels_attrs = dict(zarr.open_group(str(path / "labels"), mode="r").attrs)
    if zarr_format == 3:
        label_attrs, labels_attrs = label_attrs["ome"], labels_attrs["ome"]
    assert labels_attrs["labels"] == ["sam"]
    assert "image-label" in label_attrs
    ms = label_attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["datasets"][0]["path"] == "0"
    arr = zarr.open_array(str(path / "labels" / "sam" / "0"), mode="r")
    assert arr.metadata.zarr_format == zarr_format and arr.dtype == np.uint32


def test_geotiff_tags_are_kept_in_output(tmp_path):
    data = blobs_volume(nz=1)[0]
    extratags = [(33550, "d", 3, (10.0, 10.0, 0.0), True),
                 (33922, "d", 6, (0.0, 0.0, 0.0, 300000.0, 5000000.0, 0.0), True),
                 (34735, "H", 8, (1, 1, 0, 1, 1024, 0, 1, 1), True)]
    tifffile.imwrite(tmp_path / "geo.tif", data, extratags=extratags)
    segment_volume(tmp_path / "geo.tif", tmp_path / "o.zarr", segment_fn=threshold_segment,
                   contrast_limits=LIMITS)
    geo = zarr.open_array(str(tmp_path / "o.zarr"), mode="r").attrs["geotiff"]
    assert geo["ModelPixelScaleTag"] == [10.0, 10.0, 0.0]
    assert geo["ModelTiepointTag"][3] == 300000.0
    assert geo["GeoKeyDirectoryTag"][:4] == [1, 1, 0, 1]


def test_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="path or an array"):
        segment_volume(42, tmp_path / "o.zarr", segment_fn=threshold_segment)
    with pytest.raises(ValueError, match="resume or overwrite"):
        segment_volume(np.zeros((8, 8)), tmp_path / "o.zarr", resume=True, overwrite=True,
                       segment_fn=threshold_segment)
    with pytest.raises(TypeError, match="dtype"):
        segment_volume(np.zeros((8, 8), complex), tmp_path / "o.zarr", segment_fn=threshold_segment)
    with pytest.raises(ValueError, match="returned shape"):
        segment_volume(np.zeros((8, 8)), tmp_path / "o.zarr", segment_fn=lambda im, **kw: np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="OME-Zarr"):
        segment_volume(np.zeros((8, 8)), label_name="x", segment_fn=threshold_segment)
    np.save(tmp_path / "in.npy", np.zeros((8, 8)))
    with pytest.raises(ValueError, match="overlaps the input"):
        segment_volume(tmp_path / "in.npy", tmp_path / "in.npy", overwrite=True, segment_fn=threshold_segment)
    assert (tmp_path / "in.npy").is_file()


def test_model_is_loaded_once_per_worker_not_per_slice(tmp_path, monkeypatch):
    import napari_sam.model.build
    import napari_sam.predict.factory
    import napari_sam.tiled.tiles

    built = []
    monkeypatch.setattr(napari_sam.model.build, "build_sam", lambda cfg: built.append(cfg) or _FakeSam())
    monkeypatch.setattr(napari_sam.predict.factory, "Predictor", lambda model, device=None: ("predictor", model))
    monkeypatch.setattr(napari_sam.tiled.tiles, "segment_image",
                        lambda image, predictor, **kw: threshold_segment(image, contrast_limits=LIMITS))
    vol = blobs_volume(nz=5)
    out = segment_volume(vol, tmp_path / "o.zarr", model=str(tmp_path / "once.json"), workers=1).compute()
    assert built == [str(tmp_path / "once.json")]  # one worker thread -> one model for 5 slices
    assert_compacted_equals_reference(out, reference_slices(vol))


class _FakeSam:
    def eval(self):
        return self


def test_resume_with_a_partial_segment_fn(tmp_path):
    import functools

    vol = blobs_volume(nz=3)
    fn = functools.partial(threshold_segment)
    first = segment_volume(vol, tmp_path / "o.zarr", segment_fn=fn, contrast_limits=LIMITS).compute()
    again = segment_volume(vol, tmp_path / "o.zarr", segment_fn=functools.partial(threshold_segment),
                           contrast_limits=LIMITS, resume=True).compute()
    np.testing.assert_array_equal(again, first)
