"""How many CPU threads torch and the BLAS / OpenMP libraries may use.

SAM's image encoder spends its time in torch's intra-op thread pool; numpy
and scipy use a BLAS library with a pool of its own.  On a shared machine, or
with several dask worker threads per process, every pool sized to all cores
oversubscribes the CPU and runs slower than one thread each.

* :func:`limit_threads` caps torch (``torch.set_num_threads``) and every
  BLAS / OpenMP pool loaded in the process (through ``threadpoolctl``) for the
  duration of a ``with`` block.  These settings are process-wide, so blocks
  running at once in several threads (dask worker threads) share one limit:
  the first block to enter applies it and the last to leave restores what
  was there before; a block never sees another block's exit undo its limit.
* :func:`default_threads` is the policy used when no number is given: on a
  ``dask.distributed`` worker, one thread per worker thread (the worker's
  ``nthreads`` slices then share its cores); on the local threads or processes
  scheduler with ``workers > 1``, the cores divided by the workers; with one
  local worker, torch's own default (all cores).
* :class:`ThreadLimited` wraps a per-slice segment function so each call runs
  under these limits, wherever dask runs it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["limit_threads", "default_threads", "check_threads", "ThreadLimited"]


def check_threads(threads: Any) -> int | None:
    """``threads`` as a positive int (or None); a clear error otherwise."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads (--threads) must be a positive integer, got {threads!r}")
    return int(threads)


@contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Run a block with at most ``threads`` torch intra-op and BLAS / OpenMP threads.

    Parameters
    ----------
    threads : int or None
        ``None`` changes nothing.

    Examples
    --------
    >>> import torch
    >>> with limit_threads(1):
    ...     torch.get_num_threads()
    1
    """
    threads = check_threads(threads)
    if threads is None:
        yield
        return
    _enter(threads)
    try:
        yield
    finally:
        _leave()


# Blocks active at once in this process, and what the first one replaced.  Every
# change to a pool happens under the lock: OpenBLAS's setters are process-wide and not
# safe to call from two threads at once.
_LOCK = threading.Lock()
_ACTIVE: list[int] = []
_SAVED: dict[str, Any] = {}


def _enter(threads: int) -> None:
    import torch
    from threadpoolctl import ThreadpoolController

    with _LOCK:
        controller = ThreadpoolController()  # the pools loaded now (a library may load mid-run)
        if not _ACTIVE:
            _SAVED["torch"] = torch.get_num_threads()
            _SAVED["pools"] = {}
        _ACTIVE.append(threads)
        limit = min(_ACTIVE)  # the tightest limit of the blocks running now (all equal in a batch run)
        for lib in controller.lib_controllers:
            if lib.filepath not in _SAVED["pools"]:
                _SAVED["pools"][lib.filepath] = (lib, lib.num_threads)
            _set_pool(lib, limit)
        torch.set_num_threads(limit)


def _leave() -> None:
    import torch

    with _LOCK:
        _ACTIVE.pop()
        if _ACTIVE:
            return
        for lib, before in _SAVED.pop("pools").values():
            _set_pool(lib, before)
        torch.set_num_threads(_SAVED.pop("torch"))


def _set_pool(lib: Any, n: int) -> None:
    lib.set_num_threads(n)
    if lib.internal_api == "openblas":
        # OpenMP builds of OpenBLAS also keep a per-thread count that wins over the
        # process-wide one; in pthreads builds this is the same process-wide setting.
        setter = getattr(lib.dynlib, "openblas_set_num_threads_local", None)
        if setter is not None:
            setter(n)


def on_dask_worker() -> bool:
    """Whether the caller runs inside a ``dask.distributed`` worker."""
    try:
        from distributed import get_worker
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    try:
        get_worker()
    except ValueError:
        return False
    return True


def default_threads(threads: int | None = None, *, scheduler: Any = None, workers: int | None = None) -> int | None:
    """The thread count for one running task (see the module docstring for the policy).

    Parameters
    ----------
    threads : int, optional
        An explicit choice; returned as is.
    scheduler : str or distributed.Client, optional
        As for :func:`~napari_sam.volume.batch.segment_volume`.
    workers : int, optional
        Local parallel tasks.

    Returns
    -------
    int or None
        ``None``: leave torch's default.
    """
    threads = check_threads(threads)
    if threads is not None:
        return threads
    if on_dask_worker():
        return 1
    if scheduler in (None, "threads", "processes") and workers is not None and workers > 1:
        return max(1, (os.cpu_count() or 1) // workers)
    return None


class ThreadLimited:
    """A segment function that runs under :func:`limit_threads` (picklable for process and cluster workers).

    Parameters
    ----------
    fn : callable
    threads : int, optional
        Explicit thread count; ``None`` applies :func:`default_threads` where the call runs.
    workers : int, optional
        Local parallel tasks (for the default).
    scheduler : optional
        The scheduler (for the default).
    """

    def __init__(self, fn: Callable, *, threads: int | None = None, workers: int | None = None,
                 scheduler: Any = None) -> None:
        self.__wrapped__ = fn  # inspect.signature sees the wrapped function's keywords
        self.threads = check_threads(threads)
        self.workers = workers
        self.scheduler = scheduler if isinstance(scheduler, str) or scheduler is None else "cluster"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        n = default_threads(self.threads, scheduler=self.scheduler, workers=self.workers)
        with limit_threads(n):
            return self.__wrapped__(*args, **kwargs)
