"""Shared test configuration.

The reference fixtures (outputs of the official SAM / MobileSAM code) are read
from ``$NAPARI_SAM_FIXTURES`` (default ``../shared/fixtures`` next to the
repository).  Tests that need them *fail* when they are missing: CI must never
pass silently without the proof that our model computes what SAM computes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# the built-in model's recipe (scripts/builtin_recipe.py) is a development tool, not part of the wheel
sys.path.insert(0, str(REPO_ROOT / "scripts"))


def fixtures_root() -> Path:
    return Path(os.environ.get("NAPARI_SAM_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def sam_reference_dir() -> Path:
    """``<fixtures>/sam_reference``; fails (not skips) when absent."""
    path = fixtures_root() / "sam_reference"
    if not (path / "checkpoint_keys.json").is_file():
        pytest.fail(
            f"SAM reference fixtures not found at {path}. Set NAPARI_SAM_FIXTURES to the "
            "folder that contains sam_reference/ (normally ../shared/fixtures)."
        )
    return path


@pytest.fixture(scope="session")
def builtin_model():
    """The shipped built-in model, loaded once (hash-checked, strict) for the whole run.

    Tests use it as *a* model (a real decoder with meaningful masks); what it
    scores on data is a benchmark (benchmarks/quality), not a test.  Do not
    modify it: build another model for tests that train or change weights.
    """
    from napari_sam.model.registry import load_model

    return load_model("builtin", device="cpu")


@pytest.fixture(scope="session")
def reference_tiny_vit(sam_reference_dir):
    """The reference fixtures' random-weight ``tiny_vit`` SAM (config + weights), loaded once."""
    from napari_sam.model.registry import load_model

    ref = sam_reference_dir / "tiny_vit"
    return load_model(ref / "config.json", checkpoint=ref / "weights.pt", device="cpu")
