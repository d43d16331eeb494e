"""The prompt pipeline's interface and its small pure steps (napari_sam.predict.pipeline, refine,
correction, options): results passed explicitly, options checked once, nothing mutated."""

from __future__ import annotations

import numpy as np
import pytest
from _tiny_sam import tiny_sam_config
from scipy import ndimage as ndi

from napari_sam.model.registry import build_model
from napari_sam.predict.correction import PreviousResult, extends_prompt, localise_correction
from napari_sam.predict.options import PromptOptions
from napari_sam.predict.pipeline import PromptPipeline, PromptResult
from napari_sam.predict.predictor import Predictor
from napari_sam.predict.refine import accept_recentred, is_small_mask, recentre_point, refinement_box
from napari_sam.predict.zoom import clicked_part, object_extent


@pytest.fixture(scope="module")
def tiny():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return build_model(tiny_sam_config())


def test_options_are_the_card_keywords():
    """A model card's prompt_pipeline dict (lists for pairs) becomes tuples of floats; unknown keys are refused."""
    card = {"context": 4, "min_side": 128, "flips": True, "refine_box": 2, "recenter": True,
            "small_mask_threshold": None, "edge_snap": [-1, 3], "split_touching": 0.2, "local_correction": [2, 1]}
    o = PromptOptions(**card)
    assert (o.context, o.min_side, o.edge_snap, o.local_correction) == (4.0, 128, (-1.0, 3.0), (2.0, 1.0))
    assert o.small_mask_threshold is None and o.split_touching == 0.2 and o.keep_better
    assert set(card) <= set(PromptOptions.names())
    with pytest.raises(TypeError, match="unknown prompt pipeline option"):
        PromptPipeline(object(), zoom_factor=3)


def test_pipeline_wraps_a_predictor_and_never_changes_it(tiny):
    """Built from a model or around a Predictor; its threshold is an argument of each pass, so the
    predictor's own ``mask_threshold`` stays the model's."""
    plain = Predictor(tiny, device="cpu")
    pipe = PromptPipeline(plain, prompt_mask_threshold=2.0, edge_snap=(-1, 1), refine_box=1, recenter=True)
    assert pipe.predictor is plain and pipe.mask_threshold == plain.mask_threshold == 0.0
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    pipe.set_image(image)
    result = pipe.predict([[20, 25]], [1])
    masks, scores, logits = result  # unpacks as Predictor.predict's tuple
    assert isinstance(result, PromptResult) and len(result) == 3 and result[0] is masks
    assert masks.shape == (3, 40, 50) and scores.shape == (3,) and logits.shape == (3, *pipe.mask_input_size)
    assert plain.mask_threshold == 0.0
    with pytest.raises(TypeError, match="Predictor or a Sam"):
        PromptPipeline("vit_b")
    with pytest.raises(TypeError, match="device"):
        PromptPipeline(plain, device="cpu")


def test_previous_is_explicit_and_checked(tiny):
    pipe = PromptPipeline(tiny, device="cpu", min_zoom=1e6)  # no zoom: the whole view only
    plain = Predictor(tiny, device="cpu")
    image = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    pipe.set_image(image)
    plain.set_image(image)
    first = pipe.predict([[20, 25]], [1])
    prev = first.previous(1)
    assert prev.mask.shape == (40, 50) and prev.logits.shape == pipe.mask_input_size and prev.window_logits is None
    np.testing.assert_array_equal(prev.points_rc, [[20, 25]])
    # a correction is the plain prompt with the previous logits as its mask prompt
    got = pipe.predict([[20, 25], [10, 10]], [1, 0], previous=prev, multimask=False)
    want = plain.predict([[20, 25], [10, 10]], [1, 0], None, first.logits[1][None], multimask=False)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="not both"):
        pipe.predict([[20, 25]], [1], mask_input=first.logits[:1], previous=prev)
    with pytest.raises(TypeError, match="PreviousResult"):
        pipe.predict([[20, 25]], [1], previous=first.logits[1])
    with pytest.raises(ValueError, match="another image"):
        pipe.predict([[20, 25]], [1], previous=PreviousResult(np.zeros((10, 10), bool), prev.logits))
    with pytest.raises(ValueError, match="both points_rc and point_labels"):
        PreviousResult(prev.mask, prev.logits, points_rc=[[1, 2]])


def test_extends_prompt():
    prev = PreviousResult(np.zeros((4, 4), bool), np.zeros((8, 8)), [[1, 2]], [1])
    assert extends_prompt(prev, [[1, 2], [3, 3]], [1, 0])
    assert not extends_prompt(prev, [[3, 3], [1, 2]], [0, 1])  # reordered
    assert not extends_prompt(prev, [[1, 2], [3, 3]], [0, 0])  # a label changed
    assert not extends_prompt(prev, [[1, 2]], [1])  # nothing added
    assert not extends_prompt(PreviousResult(np.zeros((4, 4), bool), np.zeros((8, 8))), [[1, 2]], [1])


@pytest.mark.parametrize("positive", [True, False])
def test_localise_correction_against_a_distance_transform(positive):
    """Inside the disk of radius k * d + c around the point: the new masks; outside: the shown mask.
    ``d`` from an independent Euclidean distance transform."""
    rng = np.random.default_rng(int(positive))
    shown = ndi.gaussian_filter(rng.normal(size=(40, 40)), 4) > 0
    new = rng.random((2, 40, 40)) > 0.5
    wrong = ~shown if positive else shown
    r, c = (int(v) for v in np.argwhere(wrong)[len(np.argwhere(wrong)) // 2])
    d = ndi.distance_transform_edt(wrong)[r, c]
    yy, xx = np.mgrid[:40, :40]
    disk = np.hypot(yy - r, xx - c) <= 1.5 * d + 2
    got = localise_correction(new, shown, (r, c), positive, 1.5, 2)
    np.testing.assert_array_equal(got, np.where(disk[None], new, shown[None]))


def test_refinement_and_recentring_rules():
    # extent (exclusive ends) -> SAM box of first and last row/column
    np.testing.assert_array_equal(refinement_box((2, 3, 10, 8)), [2, 3, 9, 7])
    disk = np.hypot(*np.mgrid[-10:11, -10:11]) <= 6
    assert recentre_point(disk, (10, 10)) is None  # already at the centre
    np.testing.assert_array_equal(recentre_point(disk, (10, 14)), [10, 10])
    assert recentre_point(np.zeros((5, 5), bool), (2, 2)) is None
    # the re-run must keep the user's click inside its best mask, and score at least as high
    again = np.zeros((2, 21, 21), bool)
    again[1] = disk
    assert accept_recentred((10, 14), np.array([0.5]), again, np.array([0.1, 0.6]))
    assert not accept_recentred((10, 14), np.array([0.7]), again, np.array([0.1, 0.6]))
    assert not accept_recentred((0, 0), np.array([0.5]), again, np.array([0.1, 0.6]))
    # small: non-empty and below a disk of the diameter, by area
    assert is_small_mask(disk, 20) and not is_small_mask(disk, 5) and not is_small_mask(disk & False, 20)


def test_object_extent_and_clicked_part():
    mask = np.zeros((30, 30), bool)
    mask[2:6, 2:6] = True
    mask[20:28, 10:14] = True
    part = clicked_part(mask, [[22, 11]], [1])
    assert part[20:28, 10:14].all() and not part[2:6, 2:6].any()
    assert object_extent([[22, 11]], [1], None, part) == (20.0, 10.0, 28.0, 14.0)
    # a positive click outside the mask is inside the extent; a box wins over the mask
    assert object_extent([[29, 29]], [1], None, part) == (20.0, 10.0, 30.0, 30.0)
    assert object_extent(None, None, (1, 2, 3, 4), part) == (1.0, 2.0, 3.0, 4.0)
    assert object_extent([[5, 5]], [0], None, None) is None
