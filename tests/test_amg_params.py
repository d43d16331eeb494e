"""AmgParams: the automatic generator's parameters as one checked, frozen object.

References: SAM's published defaults (``SAM_DEFAULTS``), a model card's values,
and the keyword API, whose results the dataclass API must reproduce exactly.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from test_amg_standin import StandInPredictor, blob_image

import napari_sam
from napari_sam.automatic.defaults import FROM_CARD, SAM_DEFAULTS
from napari_sam.automatic.generator import AutomaticMaskGenerator
from napari_sam.automatic.params import AmgParams
from napari_sam.model.cards import ModelCard
from napari_sam.tiled.tiles import segment_image
from napari_sam.volume.batch import segment_volume

KW = dict(points_per_side=8, pred_iou_thresh=0.8, stability_score_thresh=0.5, min_mask_region_area=4)


def _carded(amg: dict) -> StandInPredictor:
    pred = StandInPredictor()
    pred.model = SimpleNamespace(card=ModelCard(name="carded", config={"image_size": 64}, amg=amg))
    return pred


def test_fields_are_the_keys_of_sam_defaults_and_default_to_the_card():
    assert [f.name for f in dataclasses.fields(AmgParams)] == list(SAM_DEFAULTS)
    assert all(v is FROM_CARD for v in vars(AmgParams()).values())
    assert AmgParams().as_dict() == {}
    assert napari_sam.AmgParams is AmgParams


def test_resolve_takes_yours_then_the_card_then_sams_defaults():
    pred = _carded({"pred_iou_thresh": 0.5, "min_mask_region_area": 10})
    resolved = AmgParams(min_mask_region_area=3).resolve(pred)
    assert resolved.as_dict() == {**SAM_DEFAULTS, "pred_iou_thresh": 0.5, "min_mask_region_area": 3}
    assert AmgParams().resolve(StandInPredictor()).as_dict() == SAM_DEFAULTS  # no card: SAM's defaults
    grids = [np.array([[0.5, 0.5]])]
    with_grids = AmgParams(point_grids=grids).resolve(None)
    assert with_grids.points_per_side is None and np.array_equal(with_grids.point_grids[0], grids[0])


def test_replace_and_as_dict_round_trip():
    p = AmgParams(**KW)
    assert AmgParams(**p.as_dict()) == p == AmgParams.from_dict(KW)
    q = p.replace(pred_iou_thresh=0.6)
    assert q.pred_iou_thresh == 0.6 and p.pred_iou_thresh == 0.8  # frozen: p is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.pred_iou_thresh = 0.1  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"unknown parameter.*points_per_sid"):
        p.replace(points_per_sid=4)
    assert hash(p) == hash(AmgParams(**KW))


@pytest.mark.parametrize("name, value", [
    ("pred_iou_thresh", math.nan), ("pred_iou_thresh", 1.5), ("pred_iou_thresh", -0.1),
    ("stability_score_thresh", math.inf), ("stability_score_thresh", 1.01), ("box_nms_thresh", -0.5),
    ("crop_nms_thresh", 2.0), ("mask_nms_thresh", math.nan), ("points_per_side", 0),
    ("points_per_batch", 0), ("upsample_batch", -1), ("crop_n_layers", -1), ("min_mask_region_area", -5),
    ("crop_overlap_ratio", 1.0), ("refilter_margin", math.nan), ("nms_area_bonus", -1.0),
    ("stability_score_offset", math.nan), ("crop_n_points_downscale_factor", 0), ("points_per_side", 2.5),
    ("pred_iou_thresh", "0.5"), ("point_grids", [np.array([[0.5, 1.5]])]),
])
def test_values_out_of_range_are_clear_errors_everywhere(name, value):
    with pytest.raises((ValueError, TypeError), match=name):
        AmgParams(**{name: value})
    pred = StandInPredictor()
    with pytest.raises((ValueError, TypeError), match=name):  # the keyword API checks the same
        AutomaticMaskGenerator(pred, **{name: value})
    with pytest.raises((ValueError, TypeError), match=name):
        segment_image(blob_image((32, 32), [(16, 16)], [5]), pred, contrast_limits=(0, 1), **{name: value})


def test_filter_overrides_are_checked():
    image = blob_image((48, 48), [(12, 12), (30, 34)], [5, 7])
    gen = AutomaticMaskGenerator(StandInPredictor(), **KW)
    raw = gen.run_expensive(image, contrast_limits=(0, 1))
    for bad in (dict(pred_iou_thresh=math.nan), dict(box_nms_thresh=1.5), dict(min_mask_region_area=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            gen.filter(raw, **bad)


def test_a_card_value_out_of_range_names_the_card():
    with pytest.raises(ValueError, match=r"pred_iou_thresh.*model card"):
        AutomaticMaskGenerator(_carded({"pred_iou_thresh": 7.0}))


def test_params_object_and_keywords_give_the_same_masks():
    image = blob_image((64, 64), [(14, 14), (40, 44), (50, 12)], [6, 9, 4])
    by_kw = AutomaticMaskGenerator(StandInPredictor(), **KW)
    by_obj = AutomaticMaskGenerator(StandInPredictor(), params=AmgParams(**KW))
    assert by_obj.params == by_kw.params and by_obj.amg == by_kw.amg
    a = by_kw.generate(image, contrast_limits=(0, 1))
    b = by_obj.generate(image, contrast_limits=(0, 1))
    assert len(a) == len(b) > 0
    assert all(r.bbox_rc == s.bbox_rc and np.array_equal(r.mask, s.mask) for r, s in zip(a, b))
    # keywords are folded into params and win
    mixed = AutomaticMaskGenerator(StandInPredictor(), AmgParams(**KW), pred_iou_thresh=0.3)
    assert mixed.amg == by_kw.amg.replace(pred_iou_thresh=0.3)
    with pytest.raises(TypeError, match="AmgParams"):
        AutomaticMaskGenerator(StandInPredictor(), params=dict(KW))  # type: ignore[arg-type]


def test_attributes_set_like_the_official_generator_stay_in_step_with_amg():
    """Setting ``gen.<param>`` (as users of SamAutomaticMaskGenerator do) is checked, updates
    ``amg``/``params``/the point grids, and gives the masks of a generator built with that value."""
    image = blob_image((64, 64), [(14, 14), (40, 44), (50, 12)], [6, 9, 4])
    gen = AutomaticMaskGenerator(StandInPredictor(), **KW)
    gen.pred_iou_thresh = 0.3
    gen.points_per_side = 6
    gen.crop_n_layers = 1
    built = AutomaticMaskGenerator(StandInPredictor(), **{**KW, "pred_iou_thresh": 0.3, "points_per_side": 6,
                                                         "crop_n_layers": 1})
    assert gen.amg == built.amg and gen.params == built.params
    assert gen.pred_iou_thresh == 0.3 and len(gen.point_grids) == 2 and len(gen.point_grids[0]) == 36
    assert all(np.array_equal(a, b) for a, b in zip(gen.point_grids, built.point_grids))
    a = gen.generate(image, contrast_limits=(0, 1))
    b = built.generate(image, contrast_limits=(0, 1))
    assert len(a) == len(b) > 0
    assert all(r.bbox_rc == s.bbox_rc and np.array_equal(r.mask, s.mask) for r, s in zip(a, b))
    before = gen.amg
    with pytest.raises(ValueError, match="stability_score_thresh"):
        gen.stability_score_thresh = 1.5
    with pytest.raises(ValueError, match="point_grids"):
        gen.points_per_side = None
    assert gen.amg == before  # a refused value changes nothing


def test_segment_image_and_segment_volume_accept_amg():
    image = blob_image((64, 64), [(14, 14), (40, 44)], [6, 9])
    ref = segment_image(image, StandInPredictor(), contrast_limits=(0, 1), **KW)
    assert ref.max() > 0
    np.testing.assert_array_equal(
        segment_image(image, StandInPredictor(), contrast_limits=(0, 1), amg=AmgParams(**KW)), ref)
    np.testing.assert_array_equal(  # a keyword beside amg wins
        segment_image(image, StandInPredictor(), contrast_limits=(0, 1), amg=AmgParams(**KW).replace(
            pred_iou_thresh=0.99), pred_iou_thresh=0.8), ref)
    with pytest.raises(ValueError, match="pred_iou_thresh"):
        segment_volume(image[None], amg=AmgParams(**KW), pred_iou_thresh=math.nan)
    with pytest.raises(TypeError, match="custom segment_fn"):
        segment_volume(image[None], amg=AmgParams(**KW), segment_fn=lambda im, **kw: im > 0)


def test_fields_are_keyword_only():
    with pytest.raises(TypeError):
        AmgParams(16)  # type: ignore[misc]
