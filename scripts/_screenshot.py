"""Shared set-up of the screenshot scripts (``make_*screenshot*.py``): a real napari window and its event loop.

Imported by the scripts beside it (``scripts/`` is on ``sys.path`` when one of them runs); napari and Qt are
imported only when a viewer is opened, so ``--help`` works without an X server.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: where the pictures of the documentation live
OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def parse_args(doc: str | None) -> argparse.Namespace:
    """The scripts take no options: ``--help`` prints the module docstring (its usage) and exits."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.parse_args()


def open_viewer(*, size: tuple[int, int] = (1400, 950)) -> Any:
    """A shown ``napari.Viewer`` of ``size`` (width, height), with warnings silenced (no toasts over the canvas)."""
    import warnings

    warnings.simplefilter("ignore")
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*size)
    return viewer


def settle(seconds: float = 0.3) -> None:
    """Run the Qt event loop for ``seconds`` (redraws, queued signals)."""
    from qtpy.QtWidgets import QApplication

    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait_until(condition: Callable[[], bool], *, timeout: float = 60.0) -> bool:
    """Run the event loop until ``condition()`` holds or ``timeout`` seconds have passed; whether it held."""
    from qtpy.QtWidgets import QApplication

    end = time.time() + timeout
    while not condition() and time.time() < end:
        QApplication.processEvents()
        time.sleep(0.05)
    return bool(condition())


def close_notifications(viewer: Any) -> None:
    """Close napari's notification toasts so they do not cover the picture."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def screenshot(viewer: Any, *, canvas_only: bool = False, settle_s: float = 0.5) -> np.ndarray:
    """The window (or only its canvas) as an RGBA array, after closing toasts and letting it redraw."""
    close_notifications(viewer)
    settle(settle_s)
    return viewer.screenshot(canvas_only=canvas_only, flash=False)
