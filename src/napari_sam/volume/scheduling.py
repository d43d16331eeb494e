"""Running per-slice dask tasks on a local scheduler or a dask.distributed cluster, with progress and cancel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask

from napari_sam.progress import CancelToken, ProgressCallback, check_cancelled, is_cancelled, report

__all__ = ["compute_tasks"]


def compute_tasks(
    tasks: Sequence[Any],
    *,
    scheduler: Any = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken = None,
    desc: str = "",
    offset: int = 0,
    total: int | None = None,
) -> list:
    """Compute dask delayed ``tasks`` and return their results in order.

    Parameters
    ----------
    scheduler : None, str or distributed.Client
        ``None``/``"threads"``, ``"processes"``, ``"synchronous"`` run locally;
        any other string is a dask.distributed scheduler address
        (``"tcp://host:8786"``); a ``Client`` is used as is.
    workers : int, optional
        Number of local workers (ignored for a cluster).
    progress, cancel
        ``progress(offset + done, total, desc)`` after each task; ``cancel`` is
        checked before each task starts locally and after each result on a cluster.
    """
    tasks = list(tasks)
    total = len(tasks) + offset if total is None else total
    if not tasks:
        return []
    report(progress, offset, total, desc)
    local = {None: "threads", "threads": "threads", "processes": "processes",
             "synchronous": "synchronous", "sync": "synchronous"}
    if isinstance(scheduler, str) and scheduler in local or scheduler is None:
        from dask.callbacks import Callback

        keys = {t.key for t in tasks}
        done = [0]

        def _pre(key, dsk, state):
            check_cancelled(cancel)

        def _post(key, result, dsk, state, worker_id):
            if key in keys:
                done[0] += 1
                report(progress, offset + done[0], total, desc)

        kwargs = {"num_workers": workers} if workers and local[scheduler] != "synchronous" else {}
        with Callback(pretask=_pre, posttask=_post):
            return list(dask.compute(*tasks, scheduler=local[scheduler], **kwargs))
    from distributed import Client, as_completed

    if isinstance(scheduler, Client):
        client = scheduler
    else:
        try:
            client = Client(str(scheduler), timeout=5)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot reach the dask scheduler {scheduler} within 5 s ({exc}); check the "
                                  "address and that `dask scheduler` runs there, or drop --scheduler") from None
    try:
        futures = client.compute(tasks)
        order = {f.key: i for i, f in enumerate(futures)}
        results: list = [None] * len(futures)
        done = 0
        for fut in as_completed(futures):
            results[order[fut.key]] = fut.result()
            done += 1
            report(progress, offset + done, total, desc)
            if is_cancelled(cancel):
                client.cancel(futures)
                check_cancelled(cancel)
        return results
    finally:
        if client is not scheduler:
            client.close()
