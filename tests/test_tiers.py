"""The three tiers of docs/architecture.md: core never imports napari/Qt; glue never imports Qt."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import napari_sam

FORBIDDEN_IN_CORE = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")
FORBIDDEN_IN_GLUE = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt")


def _core_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(napari_sam.__path__, prefix="napari_sam."):
        if info.name.startswith(("napari_sam._napari", "napari_sam._qt")):
            continue
        names.append(info.name)
    return names


def _imported_after(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _offenders(loaded: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if m.split(".")[0] in forbidden)


def test_core_never_imports_napari_or_qt():
    modules = _core_modules()
    assert "napari_sam.progress" in modules  # the walk found the package
    loaded = _imported_after(modules)
    assert not _offenders(loaded, FORBIDDEN_IN_CORE), _offenders(loaded, FORBIDDEN_IN_CORE)


def test_napari_glue_never_imports_qt():
    glue = [
        info.name
        for info in pkgutil.walk_packages(napari_sam.__path__, prefix="napari_sam.")
        if info.name.startswith("napari_sam._napari")
    ]
    loaded = _imported_after(glue)
    assert not _offenders(loaded, FORBIDDEN_IN_GLUE), _offenders(loaded, FORBIDDEN_IN_GLUE)


def test_import_napari_sam_is_light():
    loaded = _imported_after(["napari_sam"])
    assert "torch" not in loaded and "napari" not in loaded
