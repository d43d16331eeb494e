"""Automatic generation vs the official ``SamAutomaticMaskGenerator``: every mask, one to one.

``tests/fixtures/amg_official/<model>_<image>.json.gz`` hold what the official
generator (segment-anything 1.0 on torch 2.14.1 / torchvision 0.29.1) returned
for the same weights, image and parameters; ``scripts/make_amg_fixtures.py``
made them.  Each case exercises one part of the algorithm: the default
thresholds, low thresholds (box NMS decides), a tight box NMS, a crop layer
(crop-edge filter and NMS across crops), the small-region cleanup and its
second NMS, and both together.  Our generator must return the same masks:
same count, each official mask matched by a mask with identical pixels
(hash of the bbox-local pixels), the same box and area, and scores within
float tolerance.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.automatic.defaults import SAM_DEFAULTS
from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.model import build_model
from napari_sam.predict.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "amg_official"
SCORE_ATOL = 1e-4

_spec = importlib.util.spec_from_file_location("make_amg_fixtures", REPO / "scripts" / "make_amg_fixtures.py")
make_amg_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_amg_fixtures)

FILES = sorted(FIXTURES.glob("*.json.gz"))
_THRESHOLDS = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh",
               "min_mask_region_area")


def test_fixtures_present():
    assert len(FILES) >= 2, f"reference fixtures missing in {FIXTURES}; run scripts/make_amg_fixtures.py"


@pytest.fixture(scope="module")
def predictors():
    cache: dict[str, Predictor] = {}

    def get(model_name: str) -> Predictor:
        if model_name not in cache:
            path, key, weights = make_amg_fixtures.MODELS[model_name]
            config = json.loads((REPO / path).read_text())
            model = build_model(config[key] if key else config)
            state = torch.load(REPO / weights, map_location="cpu")
            model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
            cache[model_name] = Predictor(model.eval(), device="cpu")
        return cache[model_name]

    return get


def ours_as_official(records) -> list[dict]:
    """Our records in the fixture's form (official XYWH boxes: width = last column - first column)."""
    out = []
    for rec in records:
        r0, c0, r1, c1 = rec.bbox_rc
        out.append({
            "bbox_xywh": [c0, r0, c1 - 1 - c0, r1 - 1 - r0],
            "area": int(rec.area),
            "predicted_iou": float(rec.predicted_iou),
            "stability_score": float(rec.stability_score),
            "hash": make_amg_fixtures.local_mask_hash(rec.mask, (r0, c0)),
        })
    return out


def run_ours(predictor: Predictor, image: np.ndarray, cases: dict) -> dict[str, list[dict]]:
    """Our generator on every case: one expensive pass per crop setting, then ``filter`` per case.

    The expensive pass keeps every candidate down to the lowest thresholds of
    the cases it serves, so ``filter`` with a case's parameters is
    ``generate`` with them.
    """
    results: dict[str, list[dict]] = {}
    by_layers: dict[int, list[str]] = {}
    for name, case in cases.items():
        by_layers.setdefault(int(case["params"].get("crop_n_layers", 0)), []).append(name)
    for layers, names in by_layers.items():
        # the official generator's defaults, not the built-in model card's recommendations
        gen = AutomaticMaskGenerator(predictor, **{**SAM_DEFAULTS, "points_per_side": 32, "crop_n_layers": layers})
        params = [cases[n]["params"] for n in names]
        raw = gen.run_expensive(
            image,
            min_pred_iou=min(p.get("pred_iou_thresh", gen.pred_iou_thresh) for p in params),
            min_stability_score=min(p.get("stability_score_thresh", gen.stability_score_thresh) for p in params),
        )
        for name, p in zip(names, params):
            results[name] = ours_as_official(gen.filter(raw, **{k: p[k] for k in _THRESHOLDS if k in p}))
    return results


def compare(official: list[dict], ours: list[dict]) -> tuple[int, list[str]]:
    """Number of official masks matched one to one (by hash), and a description of each mismatch."""
    problems = []
    by_hash: dict[str, list[dict]] = {}
    for m in ours:
        by_hash.setdefault(m["hash"], []).append(m)
    matched = 0
    for m in official:
        cands = by_hash.get(m["hash"])
        if not cands:
            problems.append(f"official mask box {m['bbox_xywh']} area {m['area']} iou {m['predicted_iou']:.4f}"
                            " missing from ours")
            continue
        # identical masks (tiny ones, from neighbouring points) pair by their scores
        o = cands.pop(int(np.argmin([abs(c["predicted_iou"] - m["predicted_iou"])
                                     + abs(c["stability_score"] - m["stability_score"]) for c in cands])))
        matched += 1
        if o["bbox_xywh"] != m["bbox_xywh"] or o["area"] != m["area"]:
            problems.append(f"box/area {o['bbox_xywh']}/{o['area']} vs official {m['bbox_xywh']}/{m['area']}")
        for key in ("predicted_iou", "stability_score"):
            if abs(o[key] - m[key]) > SCORE_ATOL:
                problems.append(f"{key} {o[key]:.6f} vs official {m[key]:.6f} (box {m['bbox_xywh']})")
    extra = Counter(h for h, left in by_hash.items() for _ in left)
    for h, n in extra.items():
        box = by_hash[h][0]["bbox_xywh"]
        problems.append(f"{n} extra mask(s) of ours, box {box}")
    return matched, problems


@pytest.mark.parametrize("path", FILES, ids=[p.name.split(".")[0] for p in FILES])
def test_matches_official_generator(path, predictors):
    reference = make_amg_fixtures.read_reference(path)
    image = make_amg_fixtures.load_image(reference["image"])
    assert list(image.shape[:2]) == reference["image_shape"]
    ours = run_ours(predictors(reference["model"]), image, reference["cases"])
    failures = []
    for case, ref in reference["cases"].items():
        matched, problems = compare(ref["masks"], ours[case])
        if problems or len(ours[case]) != len(ref["masks"]):
            failures.append(
                f"{case}: official {len(ref['masks'])}, ours {len(ours[case])}, identical {matched}; "
                + "; ".join(problems[:4])
            )
    assert not failures, "\n".join(failures)
