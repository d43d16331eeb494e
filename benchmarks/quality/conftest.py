"""Shared set-up of the model-quality checks (``make quality``).

These checks are benchmarks, not behaviour tests: each asserts that a number
measured on one trained model (mIoU, F1, object counts...) stays inside a
tolerance band.  The bands live beside the checks in ``bands_<name>.json``::

    {
      "model": "builtin",
      "model_sha256": "<sha256 of the weights the bands were measured on>",
      "date": "YYYY-MM-DD",
      "checks": {
        "<key>": {"measured": 0.91, "min": 0.85, "max": null, "note": "what is measured"}
      }
    }

``min``/``max`` may be ``null`` (one-sided band).  A band file measured on
other weights than the shipped ones fails every check that reads it, with a
message that says to re-measure: after each retraining run ``make quality``
with ``--quality-remeasure`` to print the new values, update ``measured``,
``model_sha256``, ``date`` and, if the model really changed, the bands.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# the built-in model's recipe (seeds, data dir) lives in scripts/, outside the wheel
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # tests/_tiny_sam.py and similar helpers

BUILTIN_WEIGHTS = REPO_ROOT / "src" / "napari_sam" / "data" / "builtin_model.pt"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quality")
    group.addoption(
        "--quality-remeasure", action="store_true", default=False,
        help="record every measured value and write bands_<name>.measured.json files beside the bands "
        "(for updating the bands after a retraining); checks still run against the stored bands",
    )
    group.addoption(
        "--quality-any-model", action="store_true", default=False,
        help="compare against the stored bands even when they were measured on other weights",
    )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (the same digest the model registry checks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bands:
    """Tolerance bands of one ``bands_<name>.json`` file; :meth:`check` asserts a value is inside."""

    name: str
    path: Path
    data: dict[str, Any]
    current_sha256: str | None
    any_model: bool = False
    measured: dict[str, float] = field(default_factory=dict)

    def entry(self, key: str) -> dict[str, Any]:
        checks = self.data.get("checks", {})
        if key not in checks:
            pytest.fail(f"{self.path.name} has no band {key!r}; add it (measured, min, max) before checking it.")
        return checks[key]

    def _check_model(self) -> None:
        stored = self.data.get("model_sha256")
        if self.any_model or self.current_sha256 is None or stored == self.current_sha256:
            return
        pytest.fail(
            f"{self.path.name} was measured on weights sha256 {str(stored)[:12]}..., the shipped model is "
            f"{self.current_sha256[:12]}...: re-measure (make quality QUALITY_ARGS=--quality-remeasure), "
            "update the bands, or pass --quality-any-model to compare anyway."
        )

    def check(self, key: str, value: float) -> None:
        """Assert ``value`` lies in the band ``key`` (inclusive); records it for ``--quality-remeasure``."""
        value = float(value)
        self.measured[key] = value
        entry = self.entry(key)
        self._check_model()
        lo, hi = entry.get("min"), entry.get("max")
        assert math.isfinite(value), f"{key}: measured {value}"
        msg = f"{key} = {value:.4f} outside the band [{lo}, {hi}] (measured {entry.get('measured')} on {self.data.get('date')})"
        if lo is not None:
            assert value >= lo, msg
        if hi is not None:
            assert value <= hi, msg


class _BandRegistry:
    def __init__(self, config: pytest.Config, current_sha256: str | None) -> None:
        self._config = config
        self._sha = current_sha256
        self._bands: dict[str, Bands] = {}

    def __call__(self, name: str) -> Bands:
        if name not in self._bands:
            path = HERE / f"bands_{name}.json"
            if not path.is_file():
                pytest.fail(f"no tolerance bands at {path}")
            data = json.loads(path.read_text(encoding="utf-8"))
            sha = self._sha if data.get("model", "builtin") == "builtin" else None
            self._bands[name] = Bands(name, path, data, sha, self._config.getoption("--quality-any-model"))
        return self._bands[name]

    def write_measured(self) -> None:
        for bands in self._bands.values():
            if not bands.measured:
                continue
            out = bands.path.with_suffix(".measured.json")
            record = {
                "model": bands.data.get("model", "builtin"),
                "model_sha256": self._sha,
                "date": datetime.date.today().isoformat(),
                "measured": bands.measured,
            }
            out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def builtin_sha256() -> str:
    """sha256 of the shipped built-in weights (the model the bands are measured on)."""
    assert BUILTIN_WEIGHTS.is_file(), f"the built-in model is not shipped ({BUILTIN_WEIGHTS} missing)"
    return sha256_file(BUILTIN_WEIGHTS)


@pytest.fixture(scope="session")
def bands(request: pytest.FixtureRequest, builtin_sha256: str):
    """Factory: ``bands("builtin")`` reads ``bands_builtin.json`` beside the checks."""
    registry = _BandRegistry(request.config, builtin_sha256)
    yield registry
    if request.config.getoption("--quality-remeasure"):
        registry.write_measured()


@pytest.fixture(scope="session")
def builtin_model():
    """The shipped built-in model, loaded once (through the registry, hash-checked), in eval mode."""
    from napari_sam.model.registry import load_model

    return load_model("builtin", device="cpu")


@pytest.fixture
def builtin_predictor(builtin_model):
    """A fresh predictor on the shared built-in model (predictors hold per-image state)."""
    from napari_sam.predict.predictor import Predictor

    return Predictor(builtin_model, device="cpu")
