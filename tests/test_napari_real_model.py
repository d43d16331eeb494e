"""Tier 2 with the real model code: the session's prompts reach the real Predictor unchanged.

The reference fixture model (``tiny_vit``, random weights) stands in for a
checkpoint: its masks are arbitrary, so every check compares the session's
path (napari layers -> prompts -> predictor) against direct core calls with
the expected data coordinates.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_sam._napari.propagate import mask_iou
from napari_sam._napari.session import Session


@pytest.fixture(scope="module")
def predictor(reference_tiny_vit):
    from napari_sam.predict.predictor import Predictor

    return Predictor(reference_tiny_vit, device="cpu")


@pytest.fixture(scope="module")
def rgb(sam_reference_dir):
    return np.load(sam_reference_dir / "tiny_vit" / "image_1.npy")  # (300, 500, 3) uint8


class Counting:
    """Wraps a predictor and counts encoder runs."""

    def __init__(self, inner):
        self.inner = inner
        self.n_encoded = 0

    def set_image(self, *args, **kwargs):
        self.n_encoded += 1
        return self.inner.set_image(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_points_and_boxes_reach_the_predictor_in_data_coordinates(predictor, rgb):
    viewer = ViewerModel()
    img = viewer.add_image(rgb, rgb=True, scale=(2.0, 2.0), translate=(10.0, 20.0))
    data_rc = np.array([[120.0, 210.0], [40.0, 300.0]])
    pts = viewer.add_points(data_rc * 2 + [10, 20], ndim=2)  # world coordinates
    pts.features = {"prompt": ["positive", "negative"]}
    session = Session(predictor, img)
    preview = session.predict(viewer.dims, points_layer=pts)
    masks, scores, _ = predictor.predict(data_rc, np.array([1, 0]), multimask=True)
    np.testing.assert_array_equal(preview.objects[0].masks, masks)
    np.testing.assert_allclose(preview.objects[0].scores, scores)

    box = np.array([[50.0, 100.0], [200.0, 100.0], [200.0, 400.0], [50.0, 400.0]])
    shapes = viewer.add_shapes([box * 2 + [10, 20]], shape_type="rectangle")
    preview = session.predict(viewer.dims, shapes_layer=shapes)
    masks, scores, _ = predictor.predict(box_rc=np.array([50.0, 100.0, 200.0, 400.0]), multimask=False)
    np.testing.assert_array_equal(preview.objects[0].mask, masks[0])


def test_several_boxes_batched_equal_single_predictions(predictor, rgb):
    viewer = ViewerModel()
    img = viewer.add_image(rgb, rgb=True)
    boxes = [np.array([[10.0, 10.0], [10.0, 150.0], [120.0, 150.0], [120.0, 10.0]]),
             np.array([[150.0, 250.0], [150.0, 480.0], [290.0, 480.0], [290.0, 250.0]])]
    shapes = viewer.add_shapes(boxes, shape_type="rectangle")
    preview = Session(predictor, img).predict(viewer.dims, shapes_layer=shapes)
    assert len(preview.objects) == 2
    for obj, box in zip(preview.objects, boxes):
        box_rc = np.r_[box.min(axis=0), box.max(axis=0)]
        single, _, _ = predictor.predict(box_rc=box_rc, multimask=False)
        assert (obj.mask == single[0]).mean() >= 0.999


def test_commit_real_mask_and_undo(predictor, rgb):
    viewer = ViewerModel()
    img = viewer.add_image(rgb, rgb=True)
    labels = viewer.add_labels(np.zeros(rgb.shape[:2], np.uint16))
    pts = viewer.add_points([[150.0, 250.0]], ndim=2)
    session = Session(predictor, img)
    preview = session.predict(viewer.dims, points_layer=pts)
    expected = preview.objects[0].mask.copy()
    assert expected.any()
    assert session.commit(labels, viewer.dims) == [1]
    np.testing.assert_array_equal(labels.data == 1, expected)
    labels.undo()
    assert labels.data.max() == 0


def test_disk_cache_skips_the_encoder_and_gives_the_same_masks(predictor, rgb, tmp_path):
    viewer = ViewerModel()
    stack = np.stack([rgb[..., 0], rgb[..., 1]])  # (2, 300, 500) grayscale slices
    img = viewer.add_image(stack)
    pts = viewer.add_points([[100.0, 100.0]], ndim=2)
    viewer.dims.set_current_step(0, 1)
    first = Counting(predictor)
    session = Session(first, img)
    session.open_disk_cache(tmp_path / "cache.zarr", model_id="tiny_vit")
    expected = session.predict(viewer.dims, points_layer=pts).objects[0].masks
    assert first.n_encoded == 1
    second = Counting(predictor)
    other = Session(second, img)
    other.open_disk_cache(tmp_path / "cache.zarr", model_id="tiny_vit")
    got = other.predict(viewer.dims, points_layer=pts).objects[0].masks
    assert second.n_encoded == 0
    np.testing.assert_array_equal(got, expected)
    img.contrast_limits = (10, 100)  # another normalisation -> the cache refuses
    with pytest.raises(ValueError, match="contrast_limits"):
        Session(second, img).open_disk_cache(tmp_path / "cache.zarr", model_id="tiny_vit")


def test_propagation_with_the_real_model_obeys_its_stopping_rule(predictor, rgb):
    viewer = ViewerModel()
    stack = np.stack([rgb[..., 0]] * 3)
    img = viewer.add_image(stack)
    labels = viewer.add_labels(np.zeros(stack.shape, np.uint32))
    viewer.dims.set_current_step(0, 1)
    session = Session(predictor, img)
    box = viewer.add_shapes([np.array([[60.0, 120.0], [60.0, 380.0], [240.0, 380.0], [240.0, 120.0]])],
                            shape_type="rectangle")
    session.predict(viewer.dims, shapes_layer=box)
    [obj] = session.commit(labels, viewer.dims, overwrite=True)
    seed = labels.data[1] == obj
    lref, axis, masks = session.propagate(labels, viewer.dims, obj, iou_threshold=0.2, min_area=10)
    assert set(masks) <= {0, 2}
    for z, m in masks.items():
        assert m.shape == seed.shape and m.sum() >= 10 and mask_iou(seed, m) >= 0.2
    session.write_propagation(labels, lref, axis, masks, obj, overwrite=True)
    for z in (0, 2):
        np.testing.assert_array_equal(labels.data[z] == obj, masks.get(z, np.zeros_like(seed)))


def test_mask_prompts_follow_the_models_mask_input_size(builtin_model):
    """Propagation feeds the previous mask back at the model's own mask-input size.

    The built-in model takes (1, m, m) mask prompts with m = 4 x its embedding
    side, not the official 256; a 256 prompt would be refused by the predictor.
    How far it follows a nucleus is a benchmark (benchmarks/quality).
    """
    from napari_sam._napari.propagate import mask_input_side, mask_prompt_logits, propagate_object
    from napari_sam.predict.predictor import Predictor
    from napari_sam.synthetic import make_nuclei_stack

    predictor = Predictor(builtin_model, device="cpu")
    side = mask_input_side(predictor)
    assert side == predictor.mask_input_size[0] != 256
    assert mask_prompt_logits(np.ones((30, 50), bool), size=side).shape == (1, side, side)
    stack, truth = make_nuclei_stack((3, 96, 96), seed=3)
    ids, counts = np.unique(truth[1][truth[1] > 0], return_counts=True)
    seed = truth[1] == ids[np.argmax(counts)]
    calls = []
    real_predict = predictor.predict

    def predict(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("mask_input"))
        return real_predict(*args, **kwargs)

    predictor.predict = predict
    masks = propagate_object(seed, 1, 3, predictor=predictor,
                             prepare_slice=lambda z: predictor.set_image(stack[z]), iou_threshold=0.1)
    prompts = [m for m in calls if m is not None]
    assert prompts and all(np.shape(m) == (1, side, side) for m in prompts)
    for z, m in masks.items():  # the stopping rule: a kept mask overlaps the previous one (here the seed)
        assert m.shape == seed.shape and mask_iou(m, seed) >= 0.1
