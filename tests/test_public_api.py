"""The top-level names of ``napari_sam``: resolved lazily, and the same objects ``__init__.pyi`` names."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import napari_sam

STUB = Path(napari_sam.__file__).with_suffix(".pyi")


def _stub_imports() -> dict[str, str]:
    """name -> defining module, as the stub's ``from module import name as name`` lines say."""
    names = {}
    for node in ast.parse(STUB.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                assert alias.asname == alias.name, f"{alias.name} must be re-exported as itself"
                names[alias.name] = node.module
    return names


def test_all_lists_the_stub_names_and_the_version():
    assert sorted(napari_sam.__all__) == sorted(["__version__", *_stub_imports()])
    assert set(napari_sam.__all__) <= set(dir(napari_sam))


def test_every_public_name_is_the_object_its_module_defines():
    for name, module in _stub_imports().items():
        assert getattr(napari_sam, name) is getattr(importlib.import_module(module), name), name
    assert isinstance(napari_sam.__version__, str)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError):
        napari_sam.no_such_name
    assert not hasattr(napari_sam, "no_such_name")
