"""Tier 2: automatic segmentation glue and session layers on ViewerModel (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest
from encoder_runs import count_encoder_runs
from napari.components import ViewerModel

from napari_sam._napari._testing import ComponentGenerator
from napari_sam._napari.automatic import AutomaticSession
from napari_sam._napari.prompt_layers import (
    clear_prompts,
    make_labels_layer,
    make_points_layer,
    make_preview_layer,
    make_shapes_layer,
    set_polarity,
    toggle_polarity,
)


def _squares_volume():
    """3 slices; slice z has squares of sides 10, 20 and 30 px (areas 100, 400, 900) from z on."""
    vol = np.zeros((3, 80, 80), np.float32)
    for z in range(3):
        for side, (r, c) in zip((10, 20, 30), ((2, 2), (2, 40), (40, 2))):
            if z == 0 or side >= 10 * (z + 1):
                vol[z, r:r + side, c:c + side] = 1
    return vol


def _session(image_layer):
    made = []

    def factory(predictor, **params):
        made.append(ComponentGenerator(predictor, **params))
        return made[-1]

    return AutomaticSession(None, image_layer, make_generator=factory,
                            to_labels=ComponentGenerator.to_labels), made


def _as_sets(labels):
    """A labelling as a set of frozensets of pixel indices (independent of id numbering)."""
    return {frozenset(np.flatnonzero(labels == i)) for i in np.unique(labels) if i}


def test_current_slice_run_and_instant_refilter_match_a_fresh_run():
    vol = _squares_volume()
    viewer = ViewerModel()
    img = viewer.add_image(vol)
    viewer.dims.set_current_step(0, 0)
    session, made = _session(img)
    refs = session.planes(viewer.dims)
    first = session.run(refs, params={"pred_iou_thresh": 0.0, "min_mask_region_area": 0})
    assert len(_as_sets(first[refs[0]])) == 3
    # raise the threshold: only the 900 px square has score 0.9 > 0.5
    refiltered = session.refilter(pred_iou_thresh=0.5)
    assert made[0].n_expensive == 1  # no model run
    fresh, _ = _session(img)
    expected = fresh.run(refs, params={"pred_iou_thresh": 0.5, "min_mask_region_area": 0})
    assert _as_sets(refiltered[refs[0]]) == _as_sets(expected[refs[0]])
    assert len(_as_sets(refiltered[refs[0]])) == 1
    with pytest.raises(ValueError, match="re-filtered"):
        session.refilter(points_per_side=8)


def test_stack_run_writes_every_slice_with_unique_ids():
    vol = _squares_volume()
    viewer = ViewerModel()
    img = viewer.add_image(vol)
    session, _ = _session(img)
    refs = session.planes(viewer.dims, scope="stack")
    assert [r.key for r in refs] == [(0,), (1,), (2,)]
    progress = []
    res = session.run(refs, params={"pred_iou_thresh": 0.0, "min_mask_region_area": 0},
                      progress=lambda d, t, s: progress.append((d, t)))
    out = make_labels_layer(viewer, img, name="auto")
    top = AutomaticSession.write(out, res)
    ids_per_slice = [set(np.unique(out.data[z])) - {0} for z in range(3)]
    assert [len(s) for s in ids_per_slice] == [3, 2, 1]
    assert not (ids_per_slice[0] & ids_per_slice[1]) and not (ids_per_slice[1] & ids_per_slice[2])
    assert top == 6 and progress[-1] == (3, 3)
    for z in range(3):  # each slice's objects are exactly the bright squares of that slice
        from scipy import ndimage as ndi

        expected, _ = ndi.label(vol[z] > 0.5)
        assert _as_sets(out.data[z]) == _as_sets(expected)


def test_slice_run_keeps_other_slices_and_ids_above_base():
    vol = _squares_volume()
    viewer = ViewerModel()
    img = viewer.add_image(vol)
    out = viewer.add_labels(np.zeros(vol.shape, np.uint32))
    out.data[0, 70:75, 70:75] = 9
    viewer.dims.set_current_step(0, 1)
    session, _ = _session(img)
    res = session.run(session.planes(viewer.dims), params={"pred_iou_thresh": 0.0, "min_mask_region_area": 0})
    AutomaticSession.write(out, res, base=9)
    assert set(np.unique(out.data[1])) == {0, 10, 11}
    assert (out.data[0] == 9).sum() == 25 and out.data[2].max() == 0


def test_cancel_and_bad_scope():
    from napari_sam.progress import Cancelled

    viewer = ViewerModel()
    img = viewer.add_image(_squares_volume())
    session, _ = _session(img)
    with pytest.raises(Cancelled):
        session.run(session.planes(viewer.dims, scope="stack"), cancel=lambda: True)
    with pytest.raises(ValueError, match="scope"):
        session.planes(viewer.dims, scope="everything")
    with pytest.raises(ValueError, match="re-filter"):
        session.refilter(pred_iou_thresh=0.5)


def test_session_layers_polarity_colours_and_clear():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((4, 40, 50)), scale=(2.0, 1.0, 1.0), translate=(5.0, 0, 0))
    pts = make_points_layer(viewer, img)
    shapes = make_shapes_layer(viewer, img)
    preview = make_preview_layer(viewer, img)
    labels = make_labels_layer(viewer, img)
    assert pts.ndim == 3 and tuple(pts.scale) == (2.0, 1.0, 1.0) and tuple(pts.translate) == (5.0, 0, 0)
    assert labels.data.shape == (4, 40, 50) and labels.data.dtype == np.uint16  # widened by a commit that needs it
    assert preview.data.shape == (40, 50)
    pts.add([[0, 5, 5]])
    assert toggle_polarity(pts) == "negative"
    pts.add([[0, 6, 6]])
    assert pts.features["prompt"].tolist() == ["positive", "negative"]
    np.testing.assert_allclose(pts.face_color[:, :3], [[0, 1, 0], [1, 0, 0]])  # lime, red
    set_polarity(pts, [1], "positive")
    np.testing.assert_allclose(pts.face_color[1, :3], [0, 1, 0])
    assert pts.feature_defaults["prompt"].iloc[0] == "negative"  # the toggle state survives
    pts.add([[0, 7, 7]])
    assert pts.features["prompt"].tolist()[-1] == "negative"
    shapes.add_rectangles([np.array([[0, 1, 1], [0, 1, 9], [0, 9, 9], [0, 9, 1]])])
    clear_prompts(pts, shapes)
    assert len(pts.data) == 0 and shapes.nshapes == 0


def test_big_images_get_zarr_labels(monkeypatch):
    import napari_sam._napari.prompt_layers as pl

    monkeypatch.setattr(pl, "ZARR_LABELS_ABOVE", 1000)
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((3, 30, 30)))
    labels = pl.make_labels_layer(viewer, img)
    assert not isinstance(labels.data, np.ndarray) and labels.data.shape == (3, 30, 30)


def _discs(shape=(128, 128)):
    """Discs on a 128 px image: the stand-in's 256 px low-res logits map back exactly (factor 2)."""
    rr, cc = np.indices(shape)
    gt = np.zeros(shape, np.uint32)
    for k, (r, c, rad) in enumerate(((25, 25, 10), (64, 85, 13), (105, 30, 9), (100, 105, 11)), start=1):
        gt[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] = k
    return np.where(gt > 0, 200.0, 20.0).astype(np.float32), gt


def test_real_amg_and_tiling_with_the_stand_in_model():
    """The default generator (napari_sam.amg) and the tiled path (napari_sam.tiled.tiles) find every disc."""
    from napari_sam._napari._testing import ThresholdPredictor

    image, gt = _discs()
    viewer = ViewerModel()
    img = viewer.add_image(image)
    params = {"points_per_side": 16, "min_mask_region_area": 0}
    session = AutomaticSession(ThresholdPredictor(), img)
    refs = session.planes(viewer.dims)
    untiled = session.run(refs, params=params)[refs[0]]
    assert _as_sets(untiled) == _as_sets(gt)
    assert session.can_refilter
    assert session.refilter(pred_iou_thresh=0.95)[refs[0]].max() == 0  # stand-in scores are 0.9
    tiled = session.run(refs, params=params, tile_shape=(80, 80), halo=(24, 24))[refs[0]]
    # tiles are not 128 px, so the stand-in's 256 px logits map back with ~1 px edge errors
    found, truth = _as_sets(tiled), _as_sets(gt)
    assert len(found) == len(truth)
    for obj in truth:
        assert max(len(obj & f) / len(obj | f) for f in found) > 0.8
    assert session.can_refilter  # a tiled run keeps each tile's candidates too


def test_builtin_models_recommended_params_run_and_refilter_in_the_session(builtin_model):
    """The built-in model's shipped AMG parameters (mask NMS included) pass the session's checks
    and re-filter without the model to what a fresh run at the stricter threshold gives.
    How well they find nuclei is a benchmark (benchmarks/quality)."""
    from napari_sam.model.registry import recommended_amg_params
    from napari_sam.predict.predictor import Predictor
    from napari_sam.synthetic import make_nuclei_image

    image, _ = make_nuclei_image((128, 128), kind="nuclei", seed=1_001_004)
    viewer = ViewerModel()
    img = viewer.add_image(image)
    params = {**recommended_amg_params("builtin"), "points_per_side": 12}
    assert params.get("mask_nms_thresh") is not None
    session = AutomaticSession(Predictor(builtin_model, device="cpu"), img)
    refs = session.planes(viewer.dims)
    labels = session.run(refs, params=params)[refs[0]]
    assert labels.max() > 0
    stricter = session.refilter(pred_iou_thresh=0.8)[refs[0]]
    fresh = AutomaticSession(Predictor(builtin_model, device="cpu"), img)
    expected = fresh.run(refs, params={**params, "pred_iou_thresh": 0.8})[refs[0]]
    assert _as_sets(stricter) == _as_sets(expected)
    assert len(_as_sets(stricter)) <= len(_as_sets(labels))


def test_tiled_run_refilters_to_what_a_new_tiled_run_gives(builtin_model):
    """After a tiled run, a stricter threshold re-filters (no model) to exactly what
    napari_sam.tiled.tiles.segment_image gives with that threshold."""
    from napari_sam.model.registry import recommended_amg_params
    from napari_sam.predict.predictor import Predictor
    from napari_sam.synthetic import make_nuclei_image
    from napari_sam.tiled.tiles import segment_image

    image, _ = make_nuclei_image((200, 200), kind="nuclei", seed=3)
    viewer = ViewerModel()
    img = viewer.add_image(image)
    params = {**recommended_amg_params("builtin"), "points_per_side": 8, "crop_n_layers": 0}
    predictor = Predictor(builtin_model, device="cpu")
    session = AutomaticSession(predictor, img)
    refs = session.planes(viewer.dims)
    seen = []
    session.run(refs, params=params, tile_shape=(100, 100), halo=(16, 16),
                progress=lambda d, t, desc: seen.append((d, t, desc)))
    assert any("tile 4/4" in desc for _, _, desc in seen) and seen[-1][0] == seen[-1][1]
    stricter = params["pred_iou_thresh"] + 0.2
    calls = count_encoder_runs(predictor)
    got = session.refilter(pred_iou_thresh=stricter)[refs[0]]
    assert calls == []  # no model run
    del predictor.set_image
    expected = segment_image(image, predictor, contrast_limits=np.asarray(img.contrast_limits, float)[None],
                             tile_shape=(100, 100), halo=(16, 16), **{**params, "pred_iou_thresh": stricter})
    np.testing.assert_array_equal(got, expected)


def test_cancel_keeps_the_finished_slices(monkeypatch):
    """keep_partial: a cancel after the first slice returns that slice (and says it was cancelled)."""
    import threading

    from napari_sam._napari._testing import ThresholdPredictor
    from napari_sam.progress import Cancelled

    image, gt = _discs()
    stack = np.stack([image] * 3)
    viewer = ViewerModel()
    img = viewer.add_image(stack)
    session = AutomaticSession(ThresholdPredictor(), img)
    refs = session.planes(viewer.dims, scope="stack")
    cancel = threading.Event()

    def progress(done, total, desc):
        if desc.startswith("slice 2/3"):
            cancel.set()

    params = {"points_per_side": 8, "min_mask_region_area": 0}
    with pytest.raises(Cancelled):
        session.run(refs, params=params, progress=progress, cancel=cancel)
    cancel.clear()
    out = session.run(refs, params=params, progress=progress, cancel=cancel, keep_partial=True)
    assert session.cancelled and list(out) == [refs[0]]
    assert _as_sets(out[refs[0]]) == _as_sets(gt)


def test_write_undoable_is_one_undo_step_and_widens_uint8():
    from napari_sam._napari.automatic import edited_planes, write_undoable

    viewer = ViewerModel()
    labels = viewer.add_labels(np.zeros((2, 20, 20), np.uint8))
    viewer.dims.set_current_step(0, 1)
    img = viewer.add_image(np.zeros((2, 20, 20)))
    ref = AutomaticSession(None, img).planes(viewer.dims)[0]
    result = np.zeros((20, 20), np.uint32)
    result[2:5, 2:5] = 1
    result[10:12, 10:12] = 2
    top, digests = write_undoable(labels, {ref: result}, base=254)  # ids 255 and 256
    assert top == 256 and labels.data.dtype != np.uint8
    assert labels.data[1, 3, 3] == 255 and labels.data[1, 11, 11] == 256
    assert edited_planes(labels, digests) == []
    labels.data_setitem((np.array([1]), np.array([15]), np.array([15])), 7)  # painted by hand
    assert edited_planes(labels, digests) == [ref]
    before = labels.data.copy()
    write_undoable(labels, {ref: np.zeros((20, 20), np.uint32)})
    assert labels.data.max() == 0
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
