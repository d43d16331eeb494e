"""Keep large temporary buffers in the process heap (glibc only).

glibc serves allocations above a threshold (128 kB, adapting up to 32 MB) with
``mmap`` and returns freed memory to the kernel; every interactive click then
page-faults its multi-megabyte decoder temporaries back in, which costs several
milliseconds per click on the CPU.  :func:`tune_malloc` raises the ``mmap`` and
trim thresholds once per process so that freed buffers are reused.  Memory is
still returned to the kernel above the trim threshold (256 MB of free heap), and
buffers above 64 MB (encoder activations) still use ``mmap``.

It changes a process-wide setting (napari and every other library in the
process share the allocator), so it is opt-in: set ``NAPARI_SAM_TUNE_MALLOC=1``
before starting Python.  Without it :func:`tune_malloc` does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ENV_VAR", "tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 * 2**20
TRIM_THRESHOLD = 256 * 2**20
_done: bool | None = None


#: environment variable that switches the tuning on ("1", "true", "yes" or "on")
ENV_VAR = "NAPARI_SAM_TUNE_MALLOC"


def tune_malloc() -> bool:
    """Apply the thresholds once when ``NAPARI_SAM_TUNE_MALLOC=1`` (Linux/glibc).

    Returns
    -------
    bool
        Whether the thresholds are in effect: False without the environment
        variable, on other platforms and with other C libraries.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get(ENV_VAR, "").strip().lower() not in ("1", "true", "yes", "on"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another C library
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
