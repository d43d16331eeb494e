"""Data identity covers every slice: --resume and the embedding cache notice any changed pixel.

The cheap identity (path, shape, dtype, three sampled windows) misses edits elsewhere; each
test changes one pixel that the sampled windows do not see (checked first with
``data_identity`` itself) and expects the stale work to be refused, not reused.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_batch import LIMITS, blobs_volume
from test_batch_standins import threshold_segment
from test_cache import FakePredictor, _key

from napari_sam.volume.batch import segment_volume
from napari_sam.volume.cache import CacheMismatchError, CachingPredictor, EmbeddingCache, data_identity
from napari_sam.volume.slices import STATE_DIR


def _volume(k=0):
    """A (4, 300, 300) volume and a copy with one pixel of slice ``k`` changed where no sampled window looks."""
    vol = blobs_volume(nz=4, ny=300, nx=300)
    edited = vol.copy()
    edited[k, 100, 200] = 999 if vol[k, 100, 200] != 999 else 1
    assert data_identity(edited) == data_identity(vol)  # the sampled identity alone is blind to it
    return vol, edited


BROKEN = {"calls": 0, "fail_at": 3}


def _fails_on_slice_2(image, *, channel_axis=None, contrast_limits=None):
    """threshold_segment, except that the third call fails (two slices are finished, in any order)."""
    BROKEN["calls"] += 1
    if BROKEN["calls"] == BROKEN["fail_at"]:
        raise RuntimeError("killed")
    return threshold_segment(image, channel_axis=channel_axis, contrast_limits=contrast_limits)


@pytest.fixture(autouse=True)
def _broken_slice(monkeypatch):
    monkeypatch.setitem(BROKEN, "calls", 0)
    monkeypatch.setitem(BROKEN, "fail_at", 3)


@pytest.mark.parametrize("as_file", [False, True])
def test_resume_refuses_a_finished_slice_whose_pixels_changed(tmp_path, as_file):
    vol = blobs_volume(nz=4, ny=300, nx=300)
    src = tmp_path / "v.npy" if as_file else vol
    if as_file:
        np.save(src, vol)
    out = tmp_path / "o.zarr"
    with pytest.raises(RuntimeError, match="killed"):
        segment_volume(src, out, segment_fn=_fails_on_slice_2, contrast_limits=LIMITS, scheduler="synchronous")
    finished = sorted(int(p.stem.split("-")[1]) for p in (out / STATE_DIR).glob("slice-*.json"))
    assert len(finished) == 2
    _, edited = _volume(finished[-1])
    src2 = edited
    if as_file:
        np.save(src, edited)
        src2 = src
    BROKEN["fail_at"] = -1
    with pytest.raises(ValueError, match=rf"input changed since slice {finished[-1]} was segmented.*--overwrite"):
        segment_volume(src2, out, segment_fn=_fails_on_slice_2, contrast_limits=LIMITS, resume=True)


def test_resume_over_unchanged_input_still_works_and_equals_a_fresh_run(tmp_path):
    vol, _ = _volume()
    out = tmp_path / "o.zarr"
    with pytest.raises(RuntimeError):
        segment_volume(vol, out, segment_fn=_fails_on_slice_2, contrast_limits=LIMITS, scheduler="synchronous")
    BROKEN["fail_at"] = -1
    resumed = segment_volume(vol, out, segment_fn=_fails_on_slice_2, contrast_limits=LIMITS, resume=True).compute()
    fresh = segment_volume(vol, tmp_path / "f.zarr", segment_fn=threshold_segment, contrast_limits=LIMITS).compute()
    np.testing.assert_array_equal(resumed, fresh)


def test_cache_entry_from_other_pixels_is_refused(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", _key())
    tiles = [np.full((300, 300), v, np.uint16) for v in (1, 2)]
    first = CachingPredictor(FakePredictor(), cache)
    first.start_slice(0)
    for t in tiles:
        first.set_image(t)
    edited = tiles[1].copy()
    edited[100, 200] += 1  # the fake embedding is the pixel sum: a changed pixel changes it
    again = CachingPredictor(FakePredictor(), cache)
    again.start_slice(0)
    again.set_image(tiles[0])  # unchanged tile: reused
    assert again.hits == 1
    with pytest.raises(CacheMismatchError, match=r"s0/t1.*other pixels.*--reset-cache"):
        again.set_image(edited)


def test_embed_refuses_to_keep_entries_of_changed_slices(tmp_path, monkeypatch):
    import napari_sam.volume.source as source
    from napari_sam.volume.embed import embed_volume

    monkeypatch.setattr(source, "worker_predictor", lambda *a: FakePredictor())
    vol, edited = _volume()
    assert embed_volume(vol, tmp_path / "c", contrast_limits=LIMITS) == 4
    assert embed_volume(vol, tmp_path / "c", contrast_limits=LIMITS) == 4  # unchanged: kept
    with pytest.raises(CacheMismatchError, match=r"s0/t0"):
        embed_volume(edited, tmp_path / "c", contrast_limits=LIMITS)
    # --reset-cache alone does not help (the key still matches); a reset with the same data refills it
    assert embed_volume(edited, tmp_path / "c", contrast_limits=LIMITS, reset_cache=True) == 4
