"""The built-in model card's tuned values, checked against their tuning records.

Not part of ``make test`` (``testpaths = ["tests"]``): these checks compare a
setting of the shipped card with the measurements that picked it
(``benchmarks/results/builtin_model_history.json``), with margins measured on
one model.  Re-run them after each retraining::

    PYTHONPATH=src python -m pytest benchmarks/quality/test_card_history.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_sam.model.registry import load_model, model_card
from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.synthetic import make_nuclei_image
from napari_sam.training.evaluate import prompted_ious

HISTORY = json.loads(
    (Path(__file__).resolve().parents[1] / "results" / "builtin_model_history.json").read_text(encoding="utf-8")
)
EVAL_SEED = 1_001_000  # the evaluation seeds of scripts/eval_builtin.py (never trained on)


@pytest.fixture(scope="module")
def builtin():
    return load_model("builtin", device="cpu")


def test_the_card_is_the_model_the_history_describes():
    assert model_card("builtin").sha256 == HISTORY["source_sha256"]


def test_small_mask_threshold_is_off_because_it_no_longer_gains(builtin):
    """Quality, the shipped choice: the small-mask rule (re-run a click whose mask is below 18 px
    at threshold 1.5) raised v2's small clicks (+0.08 on the rows it re-ran, this image); model v3's
    small masks no longer reach past their objects, the rule gains nothing on the selection images
    (session 15: 636 clicks 0.8803 with it, 0.8804 without) and costs ~40 % more time, so the card
    ships it off. Fails (time to re-enable it) if the rule gains again on this unseen image."""
    assert model_card("builtin").prompt_pipeline["small_mask_threshold"] is None
    rule = HISTORY["small_mask_threshold_tuning"]["picked"]  # v2's (18, 1.5)
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 10)  # small nuclei
    keep = np.isin(lab, np.unique(lab)[1:41])  # 40 objects keep the test short
    lab = np.where(keep, lab, 0)
    kw = dict(device="cpu", context=4, min_side=128, refine_box=1)
    ious = {}
    for name, extra in (("usual", {}), ("rule", {"small_mask_threshold": rule})):
        ious[name] = prompted_ious(PromptPipeline(builtin, **kw, **extra), [img], [lab], prompt="point")
    assert (ious["rule"] != ious["usual"]).sum() >= 5  # the rule still re-runs small clicks
    assert ious["rule"].mean() < ious["usual"].mean() + 0.01, {k: v.mean() for k, v in ious.items()}
