"""Thread limits: torch and BLAS in one block, per dask worker thread, the CLI option."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from test_batch import LIMITS, blobs_volume
from test_batch_standins import threshold_segment
from threadpoolctl import threadpool_info

from napari_sam.cli import main
from napari_sam.threads import ThreadLimited, default_threads, limit_threads
from napari_sam.volume.batch import segment_volume

SEEN: list[tuple[int, int | None, int]] = []


def recording_segment(image, *, channel_axis=None, contrast_limits=None, slice_index=0):
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    SEEN.append((torch.get_num_threads(), min(blas) if blas else None, slice_index))
    return threshold_segment(image, channel_axis=channel_axis, contrast_limits=contrast_limits)


def test_limit_threads_caps_torch_and_blas_then_restores():
    before = torch.get_num_threads()
    with limit_threads(1):
        assert torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert torch.get_num_threads() == before
    with limit_threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="positive integer"):
        with limit_threads(bad):
            pass
    with pytest.raises(ValueError, match="threads"):
        segment_volume(blobs_volume(nz=1), segment_fn=threshold_segment, threads=bad)


def test_default_policy(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_threads(3) == 3
    assert default_threads(None, workers=4) == 4
    assert default_threads(None, workers=32) == 1
    assert default_threads(None, workers=1) is None  # one local slice at a time: torch's own default
    assert default_threads(None, scheduler="synchronous", workers=4) is None


def test_segment_volume_threads_apply_in_every_worker_thread():
    SEEN.clear()
    vol = blobs_volume(nz=4)
    out = segment_volume(vol, segment_fn=recording_segment, contrast_limits=LIMITS, threads=1, workers=2).compute()
    np.testing.assert_array_equal(out > 0, vol > 500)
    assert sorted(s[2] for s in SEEN) == [0, 1, 2, 3]  # the wrapper keeps the slice_index keyword
    # torch's pool is where SAM spends its time; BLAS pools are process-wide and OpenBLAS decides
    # per call which count a worker thread sees, so they are checked in the calling thread above.
    assert all(torch_n == 1 for torch_n, _, _ in SEEN), SEEN


def test_one_torch_thread_per_thread_of_a_distributed_worker():
    distributed = pytest.importorskip("distributed")
    SEEN.clear()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl:
        with distributed.Client(cl) as client:
            segment_volume(blobs_volume(nz=3), segment_fn=recording_segment, contrast_limits=LIMITS,
                           scheduler=client).compute()
    assert len(SEEN) == 3 and all(torch_n == 1 for torch_n, _, _ in SEEN)


def test_wrapper_is_transparent():
    wrapped = ThreadLimited(recording_segment, threads=1)
    result = {}
    t = threading.Thread(target=lambda: result.update(out=wrapped(np.zeros((4, 4)), contrast_limits=LIMITS)))
    t.start()
    t.join()
    assert result["out"].shape == (4, 4)
    import inspect

    assert "slice_index" in inspect.signature(wrapped).parameters


def test_cli_rejects_bad_threads(tmp_path, capsys):
    np.save(tmp_path / "v.npy", blobs_volume(nz=1))
    code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--threads", "0"])
    assert code == 2 and "--threads" in capsys.readouterr().err


def _pool_counts() -> tuple[int, int | None]:
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return torch.get_num_threads(), (max(blas) if blas else None)


def test_a_block_leaving_does_not_undo_the_limit_of_a_block_still_running():
    before = _pool_counts()
    with limit_threads(1):  # the main thread set a limit once before (OpenBLAS remembers it)
        pass
    inner_entered, first_left = threading.Event(), threading.Event()
    seen = {}

    def short():
        with limit_threads(1):
            inner_entered.wait(10)
        first_left.set()

    def long():
        with limit_threads(1):
            inner_entered.set()
            first_left.wait(10)
            seen["after the other left"] = _pool_counts()

    threads = [threading.Thread(target=short), threading.Thread(target=long)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["after the other left"] == (1, 1)  # torch and BLAS still limited
    assert _pool_counts() == before


def test_repeated_overlapping_blocks_always_restore_every_pool():
    # OpenBLAS's setters are process-wide: calls racing from several threads once left BLAS limited
    for _ in range(50):
        test_a_block_leaving_does_not_undo_the_limit_of_a_block_still_running()
