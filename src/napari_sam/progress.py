"""Progress and cancellation protocol shared by every long-running core function.

Core code never prints progress bars itself: it calls a ``progress`` callback and
polls a ``cancel`` token.  The CLI adapts these to tqdm, the napari widgets to
napari's progress and a thread worker's abort flag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, Union


class Cancelled(RuntimeError):
    """Raised inside long-running work when its cancel token is set."""


class ProgressCallback(Protocol):
    def __call__(self, done: int, total: int, desc: str) -> None: ...


#: A cancel token: anything with ``is_set()`` (``threading.Event``) or a callable returning bool.
CancelToken = Union[Any, Callable[[], bool], None]


def is_cancelled(cancel: CancelToken) -> bool:
    """Return True when ``cancel`` (an Event-like object, a callable, or None) asks to stop."""
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return bool(is_set())
    if callable(cancel):
        return bool(cancel())
    raise TypeError(
        "cancel must be None, an object with is_set() such as threading.Event, "
        f"or a callable returning bool; got {type(cancel).__name__}"
    )


def check_cancelled(cancel: CancelToken) -> None:
    """Raise :class:`Cancelled` when ``cancel`` asks to stop."""
    if is_cancelled(cancel):
        raise Cancelled("cancelled by the user")


def report(progress: ProgressCallback | None, done: int, total: int, desc: str = "") -> None:
    """Call ``progress`` if given; a no-op otherwise."""
    if progress is not None:
        progress(done, total, desc)
