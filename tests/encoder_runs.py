"""Test helper: count a predictor's image-encoder runs."""

from __future__ import annotations

from typing import Any


def count_encoder_runs(predictor: Any) -> list[int]:
    """Wrap ``predictor.set_image`` in place; the returned list grows by one item per encoder run."""
    runs: list[int] = []
    original = predictor.set_image

    def set_image(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return original(*args, **kwargs)

    predictor.set_image = set_image
    return runs
