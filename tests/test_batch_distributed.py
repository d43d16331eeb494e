"""A real dask.distributed LocalCluster (2 worker processes on loopback) gives the local result."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_batch import LIMITS, blobs_volume
from test_batch_standins import pid_threshold_segment, threshold_segment

from napari_sam.volume.batch import segment_volume

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pids = tmp_path_factory.mktemp("pids")
    os.environ["NAPARI_SAM_TEST_PIDS"] = str(pids)  # inherited by the worker processes
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cl:
        cl.pid_dir = pids
        yield cl
    os.environ.pop("NAPARI_SAM_TEST_PIDS", None)


@pytest.mark.slow
def test_distributed_equals_local(tmp_path, cluster):
    vol = blobs_volume(nz=8, seed=3)
    np.save(tmp_path / "v.npy", vol)
    local = segment_volume(tmp_path / "v.npy", tmp_path / "local.zarr", segment_fn=threshold_segment,
                           link_3d=True).compute()
    progress = []
    remote = segment_volume(tmp_path / "v.npy", tmp_path / "remote.zarr", segment_fn=pid_threshold_segment,
                            link_3d=True, scheduler=cluster.scheduler_address,
                            progress=lambda d, t, desc: progress.append((d, t, desc))).compute()
    np.testing.assert_array_equal(remote, local)
    assert (8, 8, "slices") in progress
    with distributed.Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
    used = {int(p.name) for p in cluster.pid_dir.iterdir()}
    assert used and used <= worker_pids and os.getpid() not in used  # slices ran on the cluster
    assert sum(len(p.read_text()) for p in cluster.pid_dir.iterdir()) == 8  # once per slice


@pytest.mark.slow
def test_process_scheduler_equals_threads(tmp_path):
    vol = blobs_volume(nz=4, seed=4)
    np.save(tmp_path / "v.npy", vol)
    threads = segment_volume(tmp_path / "v.npy", tmp_path / "t.zarr", segment_fn=threshold_segment,
                             contrast_limits=LIMITS).compute()
    procs = segment_volume(tmp_path / "v.npy", tmp_path / "p.zarr", segment_fn=threshold_segment,
                           contrast_limits=LIMITS, scheduler="processes", workers=2).compute()
    np.testing.assert_array_equal(procs, threads)
