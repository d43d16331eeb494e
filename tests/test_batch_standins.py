"""Deterministic stand-ins for the SAM per-slice function, importable by dask workers
and by CLI subprocesses (``--segment-fn test_batch_standins:threshold_segment``)."""

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
