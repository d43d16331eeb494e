"""Tier 2: the interactive session on ViewerModel with deterministic stand-in predictors (no Qt)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from napari.components import ViewerModel

from napari_sam._napari._testing import DiskPredictor, ThresholdPredictor
from napari_sam._napari.session import Session


def _disk(shape, centre_rc, radius):
    """Brute force: pixels whose centre (at index i) lies within ``radius`` of ``centre_rc``."""
    out = np.zeros(shape, bool)
    for i in range(shape[0]):
        for j in range(shape[1]):
            out[i, j] = (i - centre_rc[0]) ** 2 + (j - centre_rc[1]) ** 2 <= radius**2
    return out


def _points(viewer, coords, *, ndim, polarity=None, **kwargs):
    layer = viewer.add_points(np.asarray(coords, float).reshape(-1, ndim), ndim=ndim, **kwargs)
    if polarity is not None:
        layer.features = pd.DataFrame({"prompt": polarity})
    return layer


def test_world_to_data_with_scale_and_translate():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((40, 50)), scale=(2.0, 0.5), translate=(10.0, -3.0))
    # A point layer without transform: its data coordinates ARE world coordinates.
    pts = _points(viewer, [[10.0 + 2.0 * 12, -3.0 + 0.5 * 30]], ndim=2)
    session = Session(DiskPredictor(radius=4), img)
    preview = session.predict(viewer.dims, points_layer=pts)
    # pixel (12, 30) in image data coordinates
    np.testing.assert_array_equal(preview.objects[0].mask, _disk((40, 50), (12, 30), 4))


def test_points_layer_with_its_own_transform():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((30, 30)), scale=(3.0, 3.0), translate=(5.0, 5.0))
    # points layer scaled differently: data (4, 6) -> world (4*1.5+2, 6*1.5+2) = (8, 11)
    pts = _points(viewer, [[4.0, 6.0]], ndim=2, scale=(1.5, 1.5), translate=(2.0, 2.0))
    preview = Session(DiskPredictor(radius=3), img).predict(viewer.dims, points_layer=pts)
    expected_rc = ((8 - 5) / 3, (11 - 5) / 3)
    np.testing.assert_array_equal(preview.objects[0].mask, _disk((30, 30), expected_rc, 3))


def test_current_slice_in_3d_uses_only_points_on_it_and_commits_there():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((5, 32, 32)), scale=(2.0, 1.0, 1.0), translate=(10.0, 0, 0))
    labels = viewer.add_labels(np.zeros((5, 32, 32), np.uint16), scale=(2.0, 1.0, 1.0), translate=(10.0, 0, 0))
    viewer.dims.set_point(0, 14.0)  # world z 14 -> data slice 2
    pts = _points(viewer, [[14.0, 10.0, 10.0], [16.0, 20.0, 20.0]], ndim=3)  # second point is on slice 3
    session = Session(DiskPredictor(radius=3), img)
    preview = session.predict(viewer.dims, points_layer=pts)
    assert preview.ref.key == (2,)
    np.testing.assert_array_equal(preview.objects[0].mask, _disk((32, 32), (10, 10), 3))
    ids = session.commit(labels, viewer.dims)
    assert ids == [1]
    np.testing.assert_array_equal(labels.data[2] == 1, _disk((32, 32), (10, 10), 3))
    assert labels.data[[0, 1, 3, 4]].max() == 0


def test_current_slice_in_4d():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((2, 3, 24, 24)))
    labels = viewer.add_labels(np.zeros((2, 3, 24, 24), np.uint32))
    viewer.dims.current_step = (1, 2, 0, 0)
    pts = _points(viewer, [[5.0, 5.0]], ndim=2)  # a 2D layer applies to every slice
    session = Session(DiskPredictor(radius=2), img)
    session.predict(viewer.dims, points_layer=pts)
    session.commit(labels, viewer.dims)
    touched = np.argwhere(labels.data.reshape(6, -1).max(axis=1) > 0).ravel()
    assert touched.tolist() == [1 * 3 + 2]


def test_commit_never_overwrites_unless_asked_and_uses_next_free_id():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((30, 30)))
    existing = np.zeros((30, 30), np.int32)
    existing[10:20, 10:15] = 5  # the left half of where the disk will land
    labels = viewer.add_labels(existing.copy())
    pts = _points(viewer, [[14.5, 14.5]], ndim=2)
    session = Session(DiskPredictor(radius=6), img)
    disk = _disk((30, 30), (14.5, 14.5), 6)

    session.predict(viewer.dims, points_layer=pts)
    assert session.commit(labels, viewer.dims) == [6]
    np.testing.assert_array_equal(labels.data == 5, existing == 5)  # untouched
    np.testing.assert_array_equal(labels.data == 6, disk & (existing == 0))

    session.predict(viewer.dims, points_layer=pts)
    assert session.commit(labels, viewer.dims, overwrite=True) == [7]
    np.testing.assert_array_equal(labels.data == 7, disk)
    assert (labels.data == 5).sum() == ((existing == 5) & ~disk).sum()


def test_commit_without_prompt_or_on_other_slice_is_an_error():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((3, 20, 20)))
    labels = viewer.add_labels(np.zeros((3, 20, 20), np.uint8))
    session = Session(DiskPredictor(), img)
    with pytest.raises(ValueError, match="nothing to commit"):
        session.commit(labels, viewer.dims)
    session.predict(viewer.dims, points_layer=_points(viewer, [[5, 5]], ndim=2))
    viewer.dims.set_current_step(0, 2)
    with pytest.raises(ValueError, match="another slice"):
        session.commit(labels, viewer.dims)
    wrong = viewer.add_labels(np.zeros((3, 20, 21), np.uint8))
    viewer.dims.set_current_step(0, 1)
    session.predict(viewer.dims, points_layer=_points(viewer, [[5, 5]], ndim=2))
    with pytest.raises(ValueError, match="same shape|shape"):
        session.commit(wrong, viewer.dims)


def test_undo_reverts_a_multi_object_commit_in_one_step():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((40, 40)))
    labels = viewer.add_labels(np.zeros((40, 40), np.uint32))
    shapes = viewer.add_shapes([np.array([[2, 2], [12, 12]]), np.array([[20, 20], [35, 30]])],
                               shape_type="rectangle")
    predictor = DiskPredictor()
    calls = []
    original = predictor.predict_batch
    predictor.predict_batch = lambda *a, **k: calls.append(k) or original(*a, **k)
    session = Session(predictor, img)
    preview = session.predict(viewer.dims, shapes_layer=shapes)
    assert len(preview.objects) == 2 and len(calls) == 1  # several boxes -> one batched call
    assert session.commit(labels, viewer.dims) == [1, 2]
    assert set(np.unique(labels.data)) == {0, 1, 2}
    labels.undo()
    assert labels.data.max() == 0
    labels.redo()
    assert set(np.unique(labels.data)) == {0, 1, 2}


def test_box_prompt_geometry_and_polygon_mask_prompt():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((40, 40)))
    # napari rectangle over pixels 10..19 x 4..23: edges at -0.5 / +0.5 of the centres
    rect = viewer.add_shapes([np.array([[9.5, 3.5], [19.5, 23.5]])], shape_type="rectangle")
    predictor = DiskPredictor()
    seen = []
    original = predictor.predict
    predictor.predict = lambda *a, **k: seen.append(a) or original(*a, **k)
    Session(predictor, img).predict(viewer.dims, shapes_layer=rect)
    np.testing.assert_allclose(seen[-1][2], [9.5, 3.5, 19.5, 23.5])  # (r0, c0, r1, c1): the drawn extent
    assert seen[-1][3] is None
    poly = viewer.add_shapes([np.array([[5, 5], [5, 30], [30, 5]])], shape_type="polygon")
    Session(predictor, img).predict(viewer.dims, shapes_layer=poly)
    mask_input = seen[-1][3]
    assert mask_input.shape == (1, 256, 256)
    # the triangle's inside is positive, the far corner negative (256/40 = 6.4 low-res px per px)
    assert mask_input[0, int(10 * 6.4), int(10 * 6.4)] > 0 and mask_input[0, 200, 200] < 0


def test_negative_points_and_cycling_the_ambiguity_masks():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((40, 40)))
    labels = viewer.add_labels(np.zeros((40, 40), np.uint32))
    pts = _points(viewer, [[20, 20], [20, 26]], ndim=2, polarity=["positive", "negative"])
    session = Session(DiskPredictor(radius=6), img)
    preview = session.predict(viewer.dims, points_layer=pts)
    obj = preview.objects[0]
    assert obj.choice == 1  # best score first
    expected = _disk((40, 40), (20, 20), 6) & ~_disk((40, 40), (20, 26), 6)
    np.testing.assert_array_equal(obj.mask, expected)
    assert session.cycle() == 2 and session.cycle() == 0
    big = _disk((40, 40), (20, 20), 3) & ~_disk((40, 40), (20, 26), 3)
    np.testing.assert_array_equal(session.preview.objects[0].mask, big)
    session.commit(labels, viewer.dims)
    np.testing.assert_array_equal(labels.data == 1, big)


def test_only_negative_points_give_no_object():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((20, 20)))
    pts = _points(viewer, [[5, 5]], ndim=2, polarity=["negative"])
    assert Session(DiskPredictor(), img).predict(viewer.dims, points_layer=pts).objects == []


def test_latest_request_wins():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((20, 20)))
    pts = _points(viewer, [[5, 5]], ndim=2)
    session = Session(DiskPredictor(), img)
    old = session.next_request()
    session.next_request()
    assert session.predict(viewer.dims, points_layer=pts, request=old) is None


def test_embeddings_are_cached_per_slice():
    viewer = ViewerModel()
    img = viewer.add_image(np.random.default_rng(0).random((4, 16, 16)))
    pts = _points(viewer, [[5, 5]], ndim=2)
    predictor = DiskPredictor()
    session = Session(predictor, img, max_embeddings=2)
    for z in (0, 1, 0, 1):
        viewer.dims.set_current_step(0, z)
        session.predict(viewer.dims, points_layer=pts)
    assert predictor.n_encoded == 2
    assert session.precompute(viewer.dims) == 4
    assert predictor.n_encoded == 4  # slices 2 and 3; memory keeps only 2 -> the others recomputed
    np.testing.assert_array_equal(predictor.image, img.data[3])


def test_multiscale_and_rgb_images_use_full_resolution_planes():
    viewer = ViewerModel()
    base = np.zeros((64, 64), np.float32)
    img = viewer.add_image([base, base[::2, ::2]], multiscale=True, scale=(0.5, 0.5))
    pts = _points(viewer, [[10.0, 20.0]], ndim=2)  # world (10, 20) -> level-0 pixel (20, 40)
    preview = Session(DiskPredictor(radius=3), img).predict(viewer.dims, points_layer=pts)
    assert preview.ref.shape == (64, 64)
    np.testing.assert_array_equal(preview.objects[0].mask, _disk((64, 64), (20, 40), 3))

    rgb = viewer.add_image(np.zeros((2, 20, 24, 3), np.uint8), rgb=True)
    session = Session(DiskPredictor(), rgb)
    assert session.channel_axis == -1 and session.contrast_limits() is None
    assert session.predict(viewer.dims, points_layer=pts).ref.shape == (20, 24)


def test_3d_display_is_refused():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((4, 16, 16)))
    viewer.dims.ndisplay = 3
    with pytest.raises(ValueError, match="2D"):
        Session(DiskPredictor(), img).plane(viewer.dims)


def test_zarr_labels_are_written_per_slice_without_copy():
    zarr = pytest.importorskip("zarr")
    store = zarr.storage.MemoryStore()
    z = zarr.create_array(store=store, shape=(6, 32, 32), chunks=(1, 16, 16), dtype="uint32", fill_value=0)
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((6, 32, 32)))
    labels = viewer.add_labels(z)
    viewer.dims.set_current_step(0, 4)
    session = Session(DiskPredictor(radius=3), img)
    session.predict(viewer.dims, points_layer=_points(viewer, [[5.0, 5.0]], ndim=2))
    assert session.commit(labels, viewer.dims) == [1]
    assert labels.data is z
    chunk_keys = sorted(k for k in store._store_dict if k.startswith("c/"))
    assert chunk_keys == ["c/4/0/0"]  # only the touched chunk of the touched slice was written
    np.testing.assert_array_equal(z[4] == 1, _disk((32, 32), (5, 5), 3))
    # next free id on zarr data: computed once, then tracked
    session.predict(viewer.dims, points_layer=_points(viewer, [[20.0, 20.0]], ndim=2))
    assert session.commit(labels, viewer.dims) == [2]
    labels.undo()
    assert z[4].max() == 1


def test_dask_labels_are_refused_with_advice():
    da = pytest.importorskip("dask.array")
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((20, 20)))
    labels = viewer.add_labels(da.zeros((20, 20), dtype=np.uint32))
    session = Session(DiskPredictor(), img)
    session.predict(viewer.dims, points_layer=_points(viewer, [[5, 5]], ndim=2))
    with pytest.raises(ValueError, match="zarr"):
        session.commit(labels, viewer.dims)


def _ball_volume(shape=(15, 40, 40), centre=(7, 20, 20), radius=(5.5, 10, 10)):
    zz, yy, xx = np.indices(shape)
    d = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radius))
    return d <= 1


def test_propagation_follows_the_object_and_stops_where_it_vanishes():
    ball = _ball_volume()
    # a second object far away must not be picked up
    other = np.zeros_like(ball)
    other[:, 2:6, 33:38] = True
    viewer = ViewerModel()
    img = viewer.add_image((ball | other).astype(np.float32) * 100 + 5)
    labels = viewer.add_labels(np.zeros(ball.shape, np.uint32))
    viewer.dims.set_current_step(0, 7)
    session = Session(ThresholdPredictor(), img)
    session.predict(viewer.dims, points_layer=_points(viewer, [[20.0, 20.0]], ndim=2))
    [obj_id] = session.commit(labels, viewer.dims)
    progress = []
    lref, axis, masks = session.propagate(labels, viewer.dims, obj_id, min_area=1,
                                          progress=lambda d, t, s: progress.append((d, t)))
    expected = [z for z in range(ball.shape[0]) if ball[z].any() and z != 7]
    assert sorted(masks) == expected
    session.write_propagation(labels, lref, axis, masks, obj_id)
    np.testing.assert_array_equal(labels.data == obj_id, ball)
    assert progress[-1][0] == progress[-1][1]
    labels.undo()  # the propagation is one undo step
    np.testing.assert_array_equal(labels.data == obj_id, ball & (np.arange(15)[:, None, None] == 7))


def test_propagation_stops_on_low_overlap_and_can_be_cancelled():
    from napari_sam._napari.propagate import propagate_object
    from napari_sam.progress import Cancelled

    # the object jumps sideways after slice 3: IoU 0 -> stop
    vol = np.zeros((8, 30, 30), bool)
    vol[0:4, 5:15, 5:15] = True
    vol[4:8, 5:15, 18:28] = True
    predictor = ThresholdPredictor()
    prepare = lambda z: predictor.set_image(vol[z].astype(float))  # noqa: E731
    out = propagate_object(vol[0], 0, 8, predictor=predictor, prepare_slice=prepare, iou_threshold=0.5)
    assert sorted(out) == [1, 2, 3]
    with pytest.raises(Cancelled):
        propagate_object(vol[0], 0, 8, predictor=predictor, prepare_slice=prepare, cancel=lambda: True)
    with pytest.raises(ValueError, match="empty"):
        propagate_object(np.zeros((30, 30), bool), 0, 8, predictor=predictor, prepare_slice=prepare)


def test_several_boxes_each_get_the_zoom_of_a_prompt_pipeline():
    """A PromptPipeline zooms in predict() only, so several boxes go one at a time through it,
    not through the batched whole-view call (the built-in model's box masks of small nuclei)."""
    from napari_sam.synthetic import boxes_from_labels, make_nuclei_image

    image, lab = make_nuclei_image((256, 256), kind="nuclei", seed=1_001_004)  # evaluation seed
    boxes = boxes_from_labels(lab)[0][:3]
    viewer, session = _builtin_session(image, zoom=True)
    # napari rectangles whose edges lie half a pixel outside the first and last rows and columns
    drawn = boxes + [-0.5, -0.5, 0.5, 0.5]
    shapes = viewer.add_shapes([b.reshape(2, 2) for b in drawn], shape_type="rectangle")
    predictor = session.predictor
    single, batched = [], []
    original = predictor.predict
    predictor.predict = lambda *a, **k: single.append((a, original(*a, **k))) or single[-1][1]
    predictor.predict_batch = lambda *a, **k: batched.append(a)
    preview = session.predict(viewer.dims, shapes_layer=shapes)
    assert not batched and len(single) == len(preview.objects) == 3
    for obj, box, (args, (masks, _, _)) in zip(preview.objects, drawn, single):
        np.testing.assert_allclose(args[2], box)  # predict(points, labels, box_rc, mask_input)
        np.testing.assert_array_equal(obj.mask, masks[0])
    # and the window pass ran: the zoom's window predictor holds a window embedding
    assert predictor._windows.window is not None


def _builtin_session(image, *, zoom=False):
    from napari_sam.model.registry import load_model, recommended_zoom
    from napari_sam.predict.pipeline import PromptPipeline
    from napari_sam.predict.predictor import Predictor

    viewer = ViewerModel()
    img = viewer.add_image(image)
    model = load_model("builtin", device="cpu")
    predictor = PromptPipeline(model, device="cpu", **recommended_zoom("builtin")) if zoom else \
        Predictor(model, device="cpu")
    return viewer, Session(predictor, img)


def test_a_point_added_to_the_preview_corrects_the_mask_shown():
    """A point added to a points-only preview prompts all points with the shown candidate's
    logits as mask_input and one output (SAM's interactive recipe, the built-in model's
    training), with a plain predictor and a prompt pipeline (given the shown result itself as
    ``previous``); a new object, or points that do not extend the preview's, do not."""
    from napari_sam.synthetic import make_nuclei_image, sample_point_prompts

    image, lab = make_nuclei_image((256, 256), kind="nuclei", seed=1_001_004)  # evaluation seed
    pts, _, _ = sample_point_prompts(lab, seed=0)
    extra = np.array([[pts[0][0, 0] + 3, pts[0][0, 1]]])
    for zoom in (False, True):
        viewer, session = _builtin_session(image, zoom=zoom)
        calls = []
        original = session.predictor.predict
        session.predictor.predict = lambda *a, _o=original, _c=calls, **k: _c.append((a, k)) or _o(*a, **k)
        first = session.predict(viewer.dims, points_layer=_points(viewer, pts[0], ndim=2))
        assert len(first.objects[0].masks) == 3 and calls[-1][0][3] is None
        session.cycle()  # the user shows another candidate: that one is corrected
        shown = first.objects[0].logits[first.objects[0].choice]
        both = _points(viewer, np.vstack([pts[0], extra]), ndim=2, polarity=["positive", "negative"])
        second = session.predict(viewer.dims, points_layer=both)
        args, kwargs = calls[-1]
        previous = kwargs.pop("previous", None)
        assert (previous is not None) == zoom
        lab_, mask_input = args[1], previous.logits[None] if zoom else args[3]
        np.testing.assert_array_equal(lab_, [1, 0])
        np.testing.assert_array_equal(mask_input, shown[None])
        if zoom:  # the shown candidate, its points and its window logits
            np.testing.assert_array_equal(previous.mask, first.objects[0].mask)
            np.testing.assert_array_equal(previous.points_rc, pts[0])
            assert previous.window_logits is first.objects[0].window_logits[first.objects[0].choice]
        assert kwargs == {"multimask": False} and len(second.objects[0].masks) == 1
        # the same points again do not extend the preview's: a fresh prompt
        session.predict(viewer.dims, points_layer=both)
        assert calls[-1][0][3] is None and calls[-1][1] == {"multimask": True}
        # another object after a commit: fresh too
        labels = viewer.add_labels(np.zeros((256, 256), np.uint32))
        session.commit(labels, viewer.dims)
        session.predict(viewer.dims, points_layer=_points(viewer, np.vstack([pts[1], pts[2]]), ndim=2))
        assert calls[-1][0][3] is None


def test_commit_past_255_into_uint8_labels_widens_the_dtype():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((30, 30)))
    data = np.zeros((30, 30), np.uint8)
    data[0, 0] = 255
    labels = viewer.add_labels(data)
    pts = _points(viewer, [[15.0, 15.0]], ndim=2)
    session = Session(DiskPredictor(radius=3), img)
    session.predict(viewer.dims, points_layer=pts)
    assert session.commit(labels, viewer.dims) == [256]
    assert labels.data.dtype.itemsize >= 2 and labels.data[15, 15] == 256 and labels.data[0, 0] == 255


def test_commit_into_labels_with_another_scale_and_translate_lands_at_the_same_world_place():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((40, 40)), scale=(1.0, 1.0), translate=(0.0, 0.0))
    # labels at half the resolution, shifted by 4 world units
    labels = viewer.add_labels(np.zeros((24, 24), np.uint16), scale=(2.0, 2.0), translate=(4.0, 4.0))
    pts = _points(viewer, [[20.0, 24.0]], ndim=2)
    session = Session(DiskPredictor(radius=6), img)
    preview = session.predict(viewer.dims, points_layer=pts)
    [obj] = session.commit(labels, viewer.dims)
    # brute force: a labels pixel is in the object when its centre (world) falls on an image pixel of the mask
    mask = preview.objects[0].mask
    expected = np.zeros((24, 24), bool)
    for i in range(24):
        for j in range(24):
            r, c = int(round(i * 2.0 + 4.0)), int(round(j * 2.0 + 4.0))
            expected[i, j] = 0 <= r < 40 and 0 <= c < 40 and mask[r, c]
    np.testing.assert_array_equal(labels.data == obj, expected)
    assert expected.sum() > 20


def test_commit_into_a_rotated_labels_layer_is_refused():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((30, 30)))
    labels = viewer.add_labels(np.zeros((30, 30), np.uint16), rotate=30)
    pts = _points(viewer, [[15.0, 15.0]], ndim=2)
    session = Session(DiskPredictor(radius=3), img)
    session.predict(viewer.dims, points_layer=pts)
    with pytest.raises(ValueError, match="rotate"):
        session.commit(labels, viewer.dims)
    assert labels.data.max() == 0


def test_cancelled_propagation_keeps_the_finished_slices_as_one_undo_step():
    import itertools

    zz = np.arange(8)[:, None, None]
    vol = np.broadcast_to(np.pad(np.ones((10, 10), bool), 10), (8, 30, 30)) & (zz >= 0)
    viewer = ViewerModel()
    img = viewer.add_image(vol.astype(float))
    labels = viewer.add_labels(np.zeros((8, 30, 30), np.uint16))
    labels.data[0] = vol[0] * 5
    viewer.dims.set_current_step(0, 0)
    session = Session(ThresholdPredictor(), img)
    counter = itertools.count()
    cancel = lambda: next(counter) >= 3  # noqa: E731  -- stop before the 4th slice
    lref, axis, masks = session.propagate(labels, viewer.dims, 5, cancel=cancel, keep_partial=True)
    assert masks.cancelled and sorted(masks) == [1, 2, 3]
    before = labels.data.copy()
    session.write_propagation(labels, lref, axis, masks, 5)
    np.testing.assert_array_equal(labels.data[1:4] == 5, vol[1:4])
    assert not labels.data[4:].any()
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
