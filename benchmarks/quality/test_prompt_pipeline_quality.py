"""Quality of the built-in model's prompt pipeline steps, against the ground truth of unseen images.

Each test measures what one step of :class:`napari_sam.predict.pipeline.PromptPipeline`
gains (or, for a step the card ships off, does not gain) and checks it against the
tolerance band in ``bands_prompt_pipeline.json`` beside this file.  The bands hold
numbers measured on one model: re-measure them (``pytest -s`` prints each value) and
update the json when the model is retrained.  The steps' behaviour itself is proven
against independent references in ``tests/``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from napari_sam.model.registry import BUILTIN_WEIGHTS, load_model, recommended_zoom
from napari_sam.predict.pipeline import PromptPipeline
from napari_sam.predict.predictor import Predictor
from napari_sam.synthetic import boxes_from_labels, make_nuclei_image, sample_point_prompts
from napari_sam.training.evaluate import correction_click, prompted_ious

BANDS = json.loads(Path(__file__).with_name("bands_prompt_pipeline.json").read_text(encoding="utf-8"))
EVAL_SEED = 1_001_000  # the evaluation seeds of scripts/eval_builtin.py (never trained on)
SMALL_MASK_RULE = (18, 1.5)  # the small-mask rule the card once shipped: (diameter px, logit)


@pytest.fixture(scope="module")
def builtin():
    sha = hashlib.sha256(BUILTIN_WEIGHTS.read_bytes()).hexdigest()
    if sha != BANDS["model_sha256"]:
        pytest.fail(f"the built-in model ({sha[:12]}) is not the one the bands were measured on "
                    f"({BANDS['model_sha256'][:12]}): re-measure bands_prompt_pipeline.json.")
    return load_model("builtin", device="cpu")


def _within(name: str, value: float) -> None:
    band = BANDS["bands"][name]
    lo, hi = band["min"], band["max"]
    print(f"\n{name}: {value:.4f} (band [{lo}, {hi}], measured {band['measured']})")
    assert (lo is None or value >= lo) and (hi is None or value <= hi), (name, value, band)


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_zoom_beats_the_whole_view_on_small_nuclei(builtin):
    """On nuclei below 20 px the zoomed click and box IoU against the whole-view pass."""
    zp, plain = PromptPipeline(builtin, device="cpu", **recommended_zoom("builtin")), Predictor(builtin, device="cpu")
    z_pt, p_pt, z_bx, p_bx = [], [], [], []
    for seed in (EVAL_SEED + 4, EVAL_SEED + 5):
        img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=seed)
        zp.set_image(img)
        plain.set_image(img)
        pts, plab, ids = sample_point_prompts(lab, seed=seed)
        boxes, box_ids = boxes_from_labels(lab)
        box_of = dict(zip(box_ids.tolist(), boxes))
        for p, pl, oid in zip(pts, plab, ids):
            gt = lab == oid
            rows, cols = np.nonzero(gt)
            if max(np.ptp(rows), np.ptp(cols)) + 1 >= 20:
                continue
            for pred, out in ((zp, z_pt), (plain, p_pt)):
                m, s, _ = pred.predict(p, pl, multimask=True)
                out.append(_iou(m[int(np.argmax(s))], gt))
            for pred, out in ((zp, z_bx), (plain, p_bx)):
                out.append(_iou(pred.predict(box_rc=box_of[int(oid)], multimask=False)[0][0], gt))
    assert len(z_pt) >= 30
    _within("zoom_point_gain_small_nuclei", np.mean(z_pt) - np.mean(p_pt))
    _within("zoom_box_gain_small_nuclei", np.mean(z_bx) - np.mean(p_bx))


def test_refine_box_improves_clicks(builtin):
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 9)
    ious = {rounds: prompted_ious(PromptPipeline(builtin, device="cpu", context=4, min_side=128, refine_box=rounds),
                                  [img], [lab], prompt="point") for rounds in (0, 2)}
    _within("refine_box_gain", ious[2].mean() - ious[0].mean())


def test_recenter_makes_clicks_depend_less_on_where_they_land(builtin):
    """A click anywhere inside an object against a click at its centre, with and without recentring."""
    agree = {False: [], True: []}
    for seed in (EVAL_SEED + 9, EVAL_SEED + 4):
        img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=seed)
        anywhere, lab_a, ids = sample_point_prompts(lab, mode="uniform", seed=5)
        centre, lab_c, ids_c = sample_point_prompts(lab, mode="center", seed=5)
        assert np.array_equal(ids, ids_c)
        for recenter in (False, True):
            zp = PromptPipeline(builtin, device="cpu", **{**recommended_zoom("builtin"), "recenter": recenter})
            zp.set_image(img)
            for k in range(min(40, len(ids))):
                ma, sa, _ = zp.predict(anywhere[k], lab_a[k])
                mc, sc, _ = zp.predict(centre[k], lab_c[k])
                agree[recenter].append(_iou(ma[int(np.argmax(sa))], mc[int(np.argmax(sc))]))
    plain, rec = np.array(agree[False]), np.array(agree[True])
    _within("recenter_agreement_gain", rec.mean() - plain.mean())
    _within("recenter_identical_gain", (rec == 1).mean() - (plain == 1).mean())


def test_small_mask_rule_does_not_gain(builtin):
    """The card ships the small-mask rule off; this fails (time to switch it on) if it gains again."""
    assert recommended_zoom("builtin")["small_mask_threshold"] is None
    img, lab = make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 10)  # small nuclei
    lab = np.where(np.isin(lab, np.unique(lab)[1:41]), lab, 0)  # 40 objects keep the test short
    kw = dict(device="cpu", context=4, min_side=128, refine_box=1)
    ious = {name: prompted_ious(PromptPipeline(builtin, **kw, **extra), [img], [lab], prompt="point")
            for name, extra in (("usual", {}), ("rule", {"small_mask_threshold": SMALL_MASK_RULE}))}
    assert (ious["rule"] != ious["usual"]).sum() >= 5  # the rule still re-runs small clicks
    _within("small_mask_rule_gain", ious["rule"].mean() - ious["usual"].mean())


def test_snapping_improves_clicks(builtin):
    """The card's pipeline with and without edge snapping, one click per object on an unseen
    nuclei image (60 objects) and an unseen cells image (all 24)."""
    zoom = recommended_zoom("builtin")
    assert zoom["edge_snap"] is not None
    off = {**zoom, "edge_snap": None}
    pooled = {"off": [], "on": []}
    for kind, seed in (("nuclei", EVAL_SEED + 11), ("cells", EVAL_SEED + 20_011)):
        img, lab = make_nuclei_image((256, 256), kind=kind, seed=seed)
        lab = np.where(np.isin(lab, np.unique(lab)[1:61]), lab, 0)
        ious = {name: prompted_ious(PromptPipeline(builtin, device="cpu", **kw), [img], [lab], prompt="point")
                for name, kw in (("off", off), ("on", zoom))}
        _within(f"edge_snap_gain_{kind}", ious["on"].mean() - ious["off"].mean())
        for name, values in ious.items():
            pooled[name].extend(values)
    _within("edge_snap_gain_pooled", np.mean(pooled["on"]) - np.mean(pooled["off"]))


def _dense_small_nuclei():
    """The first evaluation image past the other tests' with a median nucleus below 9 px."""
    return make_nuclei_image((256, 256), kind="nuclei", seed=EVAL_SEED + 30_010)


def test_cutting_improves_clicks_on_dense_small_nuclei(builtin):
    zoom = {**recommended_zoom("builtin"), "split_touching": 0.2}
    img, lab = _dense_small_nuclei()
    pts, plab, ids = sample_point_prompts(lab, seed=0)
    miou = {}
    for h in (None, 0.2):
        zp = PromptPipeline(builtin, device="cpu", **{**zoom, "split_touching": h})
        zp.set_image(img)
        ious = []
        for p, pl, oid in zip(pts[:100], plab[:100], ids[:100]):
            masks, scores, _ = zp.predict(p, pl, multimask=True)
            ious.append(_iou(masks[int(np.argmax(scores))], lab == oid))
        miou[h] = float(np.mean(ious))
    _within("split_touching_click_gain", miou[0.2] - miou[None])


def test_cutting_improves_boxes_on_dense_small_nuclei(builtin):
    zoom = recommended_zoom("builtin")
    img, lab = _dense_small_nuclei()
    boxes, ids = boxes_from_labels(lab)
    ious = {}
    for h in (None, 0.2):
        zp = PromptPipeline(builtin, device="cpu", **{**zoom, "split_touching": h})
        zp.set_image(img)
        ious[h] = np.array([_iou(zp.predict(box_rc=b, multimask=False)[0][0], lab == oid)
                            for b, oid in zip(boxes[:100], ids[:100])])
    gain = ious[0.2] - ious[None]
    _within("split_touching_boxes_better", float((gain > 0).sum()))
    _within("split_touching_boxes_worse", float((gain < 0).sum()))
    _within("split_touching_box_gain", gain.mean())


@pytest.mark.parametrize("pipeline", [False, True])
def test_corrections_improve_poor_masks_of_cells(builtin, pipeline, monkeypatch):
    """Through the plugin's session on an unseen cells image: every object whose first click has
    IoU < 0.8 gets a second click at the point deepest in its larger error region (positive if
    missed, negative if extra: SAM's protocol).  As a correction of the shown mask it is compared
    with the first click and with the same two points prompted afresh (three candidates, best)."""
    napari = pytest.importorskip("napari")
    import pandas as pd

    import napari_sam.predict.pipeline as pipeline_module
    from napari_sam._napari.session import Session

    image, lab = make_nuclei_image((256, 256), kind="cells", seed=1_021_002)
    pts, _, ids = sample_point_prompts(lab, seed=0)
    viewer = napari.components.ViewerModel()
    predictor = PromptPipeline(builtin, device="cpu", **recommended_zoom("builtin")) if pipeline else \
        Predictor(builtin, device="cpu")
    session = Session(predictor, viewer.add_image(image))
    localised = []
    original = pipeline_module.localise_correction
    monkeypatch.setattr(pipeline_module, "localise_correction", lambda *a: localised.append(1) or original(*a))

    def points(coords, polarity):
        layer = viewer.add_points(np.asarray(coords, float).reshape(-1, 2), ndim=2)
        layer.features = pd.DataFrame({"prompt": polarity})
        return layer

    first, corrected, afresh = [], [], []
    for p, oid in zip(pts, ids):
        gt = lab == oid
        session.preview = None
        m1 = session.predict(viewer.dims, points_layer=points(p, ["positive"])).objects[0].mask
        if _iou(m1, gt) >= 0.8:
            continue
        q, label = correction_click(m1, gt)
        both = points(np.vstack([p, q]), ["positive", "positive" if label else "negative"])
        first.append(_iou(m1, gt))
        corrected.append(_iou(session.predict(viewer.dims, points_layer=both).objects[0].mask, gt))
        session.preview = None
        afresh.append(_iou(session.predict(viewer.dims, points_layer=both).objects[0].mask, gt))
    assert len(first) >= 8, len(first)
    assert len(localised) == (len(first) if pipeline else 0)  # the card's local_correction applies
    kind = "pipeline" if pipeline else "plain"
    _within(f"correction_gain_{kind}", np.mean(corrected) - np.mean(first))
    _within(f"correction_vs_afresh_{kind}", np.mean(corrected) - np.mean(afresh))
