"""Never delete or mix a user's data: --overwrite, write targets, options checked first, the output lock.

Each test reproduces a case where an earlier version deleted data that was not its
own, destroyed a complete result because of a typo, or wrote into its own input.
The reference for "unchanged" is a byte copy of the files taken before the run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from test_batch import LIMITS, assert_compacted_equals_reference, blobs_volume, reference_slices
from test_batch_standins import threshold_segment, use_standin_model
from test_io import make_ome_zarr

from napari_sam.cli import main
from napari_sam.volume.batch import segment_volume


def snapshot(folder: Path) -> dict:
    """Every file below ``folder`` -> its bytes (the independent reference for 'untouched')."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture
def standin(monkeypatch):
    use_standin_model(monkeypatch)


@pytest.fixture
def done_run(tmp_path, standin):
    """A complete CLI output o.zarr of a 3-slice volume."""
    vol = blobs_volume(nz=3)
    np.save(tmp_path / "v.npy", vol)
    args = ["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--contrast-limits", "0", "1000",
            "--quiet"]
    assert main(args) == 0
    return args, vol, snapshot(tmp_path / "o.zarr")


# ------------------------------------------------------------------ --overwrite only replaces our own output


def test_overwrite_refuses_a_folder_napari_sam_did_not_write(tmp_path, capsys, standin):
    np.save(tmp_path / "v.npy", blobs_volume(nz=2))
    theirs = tmp_path / "thesis"
    (theirs / "chapter").mkdir(parents=True)
    (theirs / "chapter" / "draft.txt").write_text("years of work")
    before = snapshot(theirs)
    code = main(["segment", str(tmp_path / "v.npy"), "-o", str(theirs), "--overwrite", "--quiet"])
    assert code == 2
    assert "not written by napari-sam" in capsys.readouterr().err
    assert snapshot(theirs) == before
    with pytest.raises(ValueError, match="not written by napari-sam"):
        segment_volume(tmp_path / "v.npy", theirs, segment_fn=threshold_segment, contrast_limits=LIMITS,
                       overwrite=True)
    assert snapshot(theirs) == before


def test_overwrite_refuses_a_foreign_zarr_array(tmp_path, standin):
    np.save(tmp_path / "v.npy", blobs_volume(nz=2))
    other = zarr.create_array(store=str(tmp_path / "raw.zarr"), shape=(2, 48, 40), dtype="uint16")
    other[...] = 7
    before = snapshot(tmp_path / "raw.zarr")
    assert main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "raw.zarr"), "--overwrite",
                 "--quiet"]) == 2
    assert snapshot(tmp_path / "raw.zarr") == before


def test_output_that_is_a_file_is_refused_and_kept(tmp_path, capsys, standin):
    np.save(tmp_path / "v.npy", blobs_volume(nz=2))
    (tmp_path / "notes.zarr").write_text("not a folder")
    assert main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "notes.zarr"), "--overwrite",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "existing file" in err and "Traceback" not in err
    assert (tmp_path / "notes.zarr").read_text() == "not a folder"


@pytest.mark.parametrize("bad", [["--model", "vit_zz"], ["--device", "banana"], ["--tile", "0"], ["--tile", "1"],
                                 ["--pred-iou-thresh", "nan"], ["--stability-score-thresh", "1.5"],
                                 ["--link-3d", "--link-iou", "nan"]])
def test_a_typo_with_overwrite_keeps_the_complete_result(tmp_path, capsys, done_run, bad):
    args, vol, before = done_run
    assert main([*args, "--overwrite", *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert snapshot(tmp_path / "o.zarr") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr", "v.npy"]  # nothing left behind


def test_bad_options_create_nothing(tmp_path, standin):
    np.save(tmp_path / "v.npy", blobs_volume(nz=2))
    for bad in (["--tile", "0"], ["--model", "vit_zz"], ["--link-3d", "--link-iou", "2"], ["--level", "-1"]):
        code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "new.zarr"), "--quiet", *bad])
        assert code == 2, bad
        assert not (tmp_path / "new.zarr").exists(), bad


def test_overwrite_keeps_the_old_output_until_the_new_run_completes(tmp_path):
    vol = blobs_volume(nz=4)
    out = tmp_path / "o.zarr"
    segment_volume(vol, out, segment_fn=threshold_segment, contrast_limits=LIMITS)
    before = snapshot(out)

    def fails_on_slice_2(image, *, channel_axis=None, contrast_limits=None, slice_index=0):
        if slice_index == 2:
            raise RuntimeError("worker lost")
        return threshold_segment(image, channel_axis=channel_axis, contrast_limits=contrast_limits)

    with pytest.raises(RuntimeError, match="worker lost"):
        segment_volume(vol, out, segment_fn=fails_on_slice_2, contrast_limits=LIMITS, overwrite=True,
                       scheduler="synchronous")
    assert snapshot(out) == before  # the complete result is still there, untouched
    # the corrected rerun replaces it, and leaves no staging folder or lock behind
    new = segment_volume(vol, out, segment_fn=threshold_segment, contrast_limits=[[0.0, 600.0]], overwrite=True)
    expected = [threshold_segment(s, contrast_limits=[[0.0, 600.0]]) for s in vol]
    assert_compacted_equals_reference(new.compute(), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]


def test_resume_continues_an_interrupted_overwrite(tmp_path):
    vol = blobs_volume(nz=4)
    out = tmp_path / "o.zarr"
    segment_volume(vol, out, segment_fn=threshold_segment, contrast_limits=[[0.0, 600.0]])
    before = snapshot(out)
    broken = {"slice": 2}

    def flaky(image, *, channel_axis=None, contrast_limits=None, slice_index=0):
        if slice_index == broken["slice"]:
            raise RuntimeError("killed")
        return threshold_segment(image, channel_axis=channel_axis, contrast_limits=contrast_limits)

    with pytest.raises(RuntimeError):
        segment_volume(vol, out, segment_fn=flaky, contrast_limits=LIMITS, overwrite=True, scheduler="synchronous")
    assert snapshot(out) == before
    with pytest.raises(ValueError, match="differs"):  # other settings: not the interrupted run
        segment_volume(vol, out, segment_fn=flaky, contrast_limits=[[0.0, 700.0]], resume=True)
    broken["slice"] = -1
    res = segment_volume(vol, out, segment_fn=flaky, contrast_limits=LIMITS, resume=True, scheduler="synchronous")
    assert_compacted_equals_reference(res.compute(), reference_slices(vol))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]


# ------------------------------------------------------------------ write targets never overlap the input


def test_label_name_cannot_escape_the_labels_group(tmp_path, capsys, standin):
    vol = blobs_volume(nz=2, ny=32, nx=32)
    path = make_ome_zarr(tmp_path / "img.zarr", vol, axes="zyx", zarr_format=2, levels=2)
    before = snapshot(path)
    for name in ("../1/c", "../../x", "a/b", "..", ".hidden", "a\\b"):
        code = main(["segment", str(path), "--label-name", name, "--overwrite", "--contrast-limits", "0", "1000",
                     "--quiet"])
        assert code == 2, name
        assert "not a plain name" in capsys.readouterr().err
    assert snapshot(path) == before


def test_array_input_backed_by_the_output_store_is_refused(tmp_path):
    path = tmp_path / "data.zarr"
    arr = zarr.create_array(store=str(path), shape=(3, 48, 40), chunks=(1, 48, 40), dtype="uint16")
    arr[...] = blobs_volume(nz=3)
    before = snapshot(path)
    for target in (path, path / "inside"):
        with pytest.raises(ValueError, match="overlaps the input"):
            segment_volume(da.from_zarr(str(path)), target, segment_fn=threshold_segment, contrast_limits=LIMITS,
                           overwrite=True)
    with pytest.raises(ValueError, match="overlaps the input"):  # the same with an opened zarr.Array
        segment_volume(da.from_zarr(zarr.open_array(str(path), mode="r")), path, segment_fn=threshold_segment,
                       contrast_limits=LIMITS, overwrite=True)
    assert snapshot(path) == before


def test_output_inside_an_ome_zarr_input_is_refused(tmp_path, standin):
    vol = blobs_volume(nz=2, ny=32, nx=32)
    path = make_ome_zarr(tmp_path / "img.zarr", vol, axes="zyx", zarr_format=2, levels=2)
    before = snapshot(path)
    assert main(["segment", str(path), "-o", str(path / "0"), "--overwrite", "--quiet"]) == 2
    assert snapshot(path) == before


# ------------------------------------------------------------------ one writer per output


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, capsys, standin):
    vol = blobs_volume(nz=2)
    np.save(tmp_path / "v.npy", vol)
    lock = tmp_path / ".o.zarr.lock"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "started": time.time()}))
        code = main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--quiet"])
        assert code == 1
        err = capsys.readouterr().err
        assert f"pid {live.pid}" in err and "being written by another napari-sam run" in err
        assert not (tmp_path / "o.zarr").exists()
    finally:
        live.kill()
        live.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    vol = blobs_volume(nz=2)
    lock = tmp_path / ".o.zarr.lock"
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}))
    out = segment_volume(vol, tmp_path / "o.zarr", segment_fn=threshold_segment, contrast_limits=LIMITS)
    assert_compacted_equals_reference(out.compute(), reference_slices(vol))
    assert not lock.exists()


def test_a_lock_from_another_host_is_respected(tmp_path):
    lock = tmp_path / ".o.zarr.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere.example", "started": time.time()}))
    from napari_sam.volume.output import OutputLockedError

    with pytest.raises(OutputLockedError, match="elsewhere.example"):
        segment_volume(blobs_volume(nz=2), tmp_path / "o.zarr", segment_fn=threshold_segment,
                       contrast_limits=LIMITS)


def test_two_concurrent_cli_runs_never_mix(tmp_path):
    """Two writers start together on one output: one finishes, the other is refused (no mixed output)."""
    vol = blobs_volume(nz=6, seed=3)
    np.save(tmp_path / "v.npy", vol)
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               NAPARI_SAM_TEST_DELAY="0.3", NAPARI_SAM_TEST_STANDIN="slow_threshold_segment")
    base = [sys.executable, str(tests / "test_batch_standins.py"), "segment", str(tmp_path / "v.npy"), "-o",
            str(tmp_path / "o.zarr"), "--quiet", "--workers", "1"]
    runs = [subprocess.Popen([*base, "--contrast-limits", "0", "1000"], env=env, stderr=subprocess.PIPE, text=True),
            subprocess.Popen([*base, "--contrast-limits", "0", "600", "--overwrite"], env=env,
                             stderr=subprocess.PIPE, text=True)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(c for c, _ in results)
    assert codes[0] == 0, results
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")
    assert out.attrs["napari_sam"]["state"] == "complete"
    limits = out.attrs["napari_sam"]["signature"]["contrast_limits"]
    expected = [threshold_segment(s, contrast_limits=limits) for s in vol]
    assert_compacted_equals_reference(out[...], expected)  # every slice from the same run
    for code, err in results:
        assert code == 0 or "being written by another napari-sam run" in err or "already exists" in err, err


# ------------------------------------------------------------------ other inputs that used to give tracebacks


def test_empty_array_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no pixels"):
        segment_volume(np.zeros((0, 8, 8), np.uint16), tmp_path / "o.zarr", segment_fn=threshold_segment)
    assert not (tmp_path / "o.zarr").exists()


def test_unreachable_scheduler_fails_fast(tmp_path, capsys):
    np.save(tmp_path / "v.npy", blobs_volume(nz=2))
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach the dask scheduler"):
        segment_volume(tmp_path / "v.npy", tmp_path / "o.zarr", segment_fn=threshold_segment,
                       contrast_limits=LIMITS, scheduler="tcp://127.0.0.1:9")
    assert time.monotonic() - start < 8


def test_cache_that_is_a_file_is_a_usage_error(tmp_path, capsys, standin):
    np.save(tmp_path / "v.npy", blobs_volume(nz=2))
    (tmp_path / "cache").write_text("x")
    assert main(["segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.zarr"), "--cache",
                 str(tmp_path / "cache"), "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_ctrl_c_stops_quickly_keeps_finished_slices_and_prints_no_traceback(tmp_path):
    import signal

    from napari_sam.volume.slices import STATE_DIR

    np.save(tmp_path / "v.npy", blobs_volume(nz=6))
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               NAPARI_SAM_TEST_DELAY="4", NAPARI_SAM_TEST_STANDIN="slow_threshold_segment")
    proc = subprocess.Popen([sys.executable, str(tests / "test_batch_standins.py"), "segment", str(tmp_path / "v.npy"),
                             "-o", str(tmp_path / "o.zarr"), "--quiet", "--workers", "1", "--contrast-limits", "0",
                             "1000"], env=env, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "o.zarr" / STATE_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(state.glob("slice-*.json")):
        assert proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # inside the next (4 s) slice
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=30)
    elapsed = time.monotonic() - start
    err = proc.stderr.read()
    assert code == 130 and elapsed < 2.5, (code, elapsed, err)
    assert "Traceback" not in err and "--resume" in err
    assert len(list(state.glob("slice-*.json"))) >= 1
    assert not (tmp_path / ".o.zarr.lock").exists()
