"""The wheel ships a valid npe2 manifest, and napari finds the installed plugin."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                "out", "docs", "benchmarks", ".hypothesis")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the working tree (the repository itself stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"
    shutil.copytree(REPO, src, symlinks=True, ignore=IGNORE)
    out = tmp / "dist"
    # offline when the build backend is already installed; else pip fetches it into an isolated env
    isolation = [] if importlib.util.find_spec("setuptools") else ["--use-pep517"]
    no_isolation = ["--no-build-isolation"] if not isolation else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *no_isolation, *isolation, "-q", "-w", str(out), str(src)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [whl] = out.glob("napari_sam_toolkit-*.whl")
    return whl


def test_wheel_contains_the_manifest_and_its_entry_point(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_sam/napari.yaml" in names
        shipped = zf.read("napari_sam/napari.yaml").decode()
        [ep_name] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = zf.read(ep_name).decode()
        assert "napari_sam/_napari/_sample_data.py" in names and "napari_sam/_qt/interactive.py" in names
    assert shipped == (REPO / "src" / "napari_sam" / "napari.yaml").read_text()
    assert "[napari.manifest]" in entry_points and "napari-sam = napari_sam:napari.yaml" in entry_points

    from npe2 import PluginManifest

    (tmp_path / "napari.yaml").write_text(shipped)
    manifest = PluginManifest.from_file(tmp_path / "napari.yaml")
    assert manifest.name == "napari-sam-toolkit"
    manifest.validate_imports()  # every python_name resolves to an importable object
    for cmd in manifest.contributions.commands:
        assert cmd.id.startswith("napari-sam-toolkit.")
        assert cmd.python_name.startswith(("napari_sam._napari.", "napari_sam._qt."))


def test_npe2_validate_cli():
    npe2 = Path(sys.executable).with_name("npe2")
    proc = subprocess.run([str(npe2), "validate", "napari-sam-toolkit"], capture_output=True, text=True)
    assert proc.returncode == 0 and "valid" in proc.stdout, proc.stdout + proc.stderr


def test_plugin_manager_discovers_the_installed_plugin():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    manifest = pm.get_manifest("napari-sam-toolkit")
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Interactive segmentation (SAM)", "Automatic segmentation (SAM)", "Fine-tune (SAM)"}
    samples = {s.key for s in manifest.contributions.sample_data}
    assert samples == {"nuclei_2d", "nuclei_3d"}
    segment_menu = manifest.contributions.menus["napari/layers/segment"]
    assert {m.command for m in segment_menu} == {"napari-sam-toolkit.interactive_widget", "napari-sam-toolkit.automatic_widget"}


def test_sample_data_commands_give_images():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    pm.activate("napari-sam-toolkit")
    for cmd_id, ndim in (("napari-sam-toolkit.sample_nuclei_2d", 2), ("napari-sam-toolkit.sample_nuclei_3d", 3)):
        [(data, meta, kind)] = pm.commands.execute(cmd_id)
        assert kind == "image" and data.ndim == ndim and np.issubdtype(data.dtype, np.integer)
        assert data.max() > data.min() and meta["name"]
