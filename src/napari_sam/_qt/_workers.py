"""Background work for the widgets: napari thread workers with progress, cancel and errors.

The long functions are tier-1/2 functions taking ``progress`` and ``cancel``;
here they run in a ``napari.qt.threading`` worker, the progress callback is
marshalled to the GUI thread, and an error is shown ONCE as a napari
notification (a plain superqt worker: napari's own worker would also relay it,
and an unconnected worker re-raises it).  A cancel is information, not an error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from magicgui.widgets import ProgressBar
from napari.utils.notifications import show_error, show_info
from superqt.utils import create_worker, ensure_main_thread

from napari_sam.progress import Cancelled

__all__ = ["Runner"]


class Runner:
    """Runs one background job at a time per *lane* and reports progress into a bar.

    Parameters
    ----------
    bar : magicgui.widgets.ProgressBar
        Shows ``done / total`` of the running job.
    status : callable(str) -> None
        Receives short status messages.
    """

    def __init__(self, bar: ProgressBar, status: Callable[[str], None]) -> None:
        self.bar = bar
        self.status = status
        self.cancel_event = threading.Event()
        self.workers: dict[str, Any] = {}
        self.closed = False

    @ensure_main_thread
    def _progress(self, done: int, total: int, desc: str) -> None:
        if self.closed:
            return
        self.bar.max = max(int(total), 1)
        self.bar.value = min(int(done), self.bar.max)
        if desc:
            self.status(desc)

    def busy(self, lane: str | None = None) -> bool:
        """Whether a job (of ``lane``, or any) is still running."""
        lanes = [lane] if lane else list(self.workers)
        return any(self.workers.get(k) is not None for k in lanes)

    def start(self, lane: str, func: Callable[..., Any], *args: Any,
              on_done: Callable[[Any], None] | None = None, with_progress: bool = False,
              cancellable: bool = False, **kwargs: Any) -> Any:
        """Start ``func(*args, **kwargs)`` in a worker thread; ``on_done(result)`` on the GUI thread.

        ``with_progress`` passes ``progress=``; ``cancellable`` passes
        ``cancel=`` (a fresh Event, set by :meth:`cancel`).
        """
        if with_progress:
            kwargs["progress"] = self._progress
        if cancellable:
            self.cancel_event = threading.Event()
            kwargs["cancel"] = self.cancel_event
        worker = create_worker(func, *args, _start_thread=False, _connect={"errored": self._error}, **kwargs)
        if on_done is not None:
            worker.returned.connect(lambda result: None if self.closed else on_done(result))
        worker.finished.connect(lambda: self._finished(lane, worker))
        self.workers[lane] = worker
        worker.start()
        return worker

    def _finished(self, lane: str, worker: Any) -> None:
        if self.workers.get(lane) is worker:
            self.workers[lane] = None

    def _error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.status("cancelled")
            show_info("napari-sam: cancelled")
            return
        self.status(f"error: {exc}")
        show_error(f"napari-sam: {exc}")

    def cancel(self) -> None:
        """Ask the running cancellable job to stop."""
        self.cancel_event.set()

    def wait(self, timeout_ms: int = 60_000) -> None:
        """Block (processing Qt events) until every job is done; for tests and scripts."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        timer = QElapsedTimer()
        timer.start()
        while self.busy() and timer.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            threading.Event().wait(0.005)
        QCoreApplication.processEvents()
