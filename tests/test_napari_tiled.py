"""Tier 2: the session on large planes (tiled prompts) and its embedding bookkeeping (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest
from encoder_runs import count_encoder_runs
from napari.components import ViewerModel

import napari_sam
from napari_sam._napari._testing import DiskPredictor
from napari_sam._napari.session import Session
from napari_sam.synthetic import make_nuclei_image


def _iou(a, b):
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_has_embedding_is_true_once_the_slice_is_embedded():
    viewer = ViewerModel()
    img = viewer.add_image(np.random.default_rng(0).random((3, 32, 32)))
    session = Session(DiskPredictor(), img)
    ref = session.plane(viewer.dims)
    assert not session.has_embedding(ref)
    session.prepare(ref)
    assert session.has_embedding(ref)
    assert not session.has_embedding(ref.with_index(0, 2))


@pytest.fixture(scope="module")
def big():
    return make_nuclei_image((4096, 4096), seed=0)


def test_click_on_a_4096_image_is_decoded_in_its_tile(big):
    image, labels = big
    viewer = ViewerModel()
    layer = viewer.add_image(image, scale=(0.5, 0.5), translate=(7.0, 3.0))
    predictor = napari_sam.make_predictor("builtin", device="cpu")
    calls = count_encoder_runs(predictor)
    session = Session(predictor, layer)
    ref = session.plane(viewer.dims)
    assert session.uses_tiles(ref) and session.has_embedding(ref)
    session.prepare(ref)
    assert calls == []  # nothing is embedded before a prompt needs it
    # an object inside a 512 crop, clicked at its centre
    r0, c0 = 1088, 2112
    sub = labels[r0:r0 + 512, c0:c0 + 512]
    obj = [i for i in np.unique(sub[200:300, 200:300]) if i][0]
    rr, cc = np.nonzero(labels == obj)
    pt = np.array([rr[len(rr) // 2], cc[len(cc) // 2]], float)
    points = viewer.add_points([pt * 0.5 + [7.0, 3.0]])
    preview = session.predict(viewer.dims, points_layer=points)
    assert len(calls) == 1  # one tile embedded, not the 4096² plane
    got = preview.objects[0].mask
    # the reference: the same click on the 512² crop, whole, same model and contrast limits
    ref_pred = napari_sam.make_predictor("builtin", device="cpu")
    ref_pred.set_image(image[r0:r0 + 512, c0:c0 + 512], contrast_limits=layer.contrast_limits)
    masks, scores, _ = ref_pred.predict((pt - [r0, c0])[None], [1])
    expected = np.zeros_like(got)
    expected[r0:r0 + 512, c0:c0 + 512] = masks[int(np.argmax(scores))]
    assert _iou(got, expected) >= 0.9
    # commit writes the object where it is in the plane
    target = viewer.add_labels(np.zeros(image.shape, np.uint16), scale=(0.5, 0.5), translate=(7.0, 3.0))
    ids = session.commit(target, viewer.dims)
    np.testing.assert_array_equal(target.data == ids[0], got)
    # a second click in the same tile: no new embedding
    points.data = [pt * 0.5 + [7.0, 3.5]]
    session.predict(viewer.dims, points_layer=points)
    assert len(calls) == 1


def test_tiling_can_be_forced_off_and_on():
    viewer = ViewerModel()
    img = viewer.add_image(np.zeros((600, 600), np.uint8))
    predictor = napari_sam.make_predictor("builtin", device="cpu")
    ref = Session(predictor, img).plane(viewer.dims)
    assert Session(predictor, img).uses_tiles(ref)  # 600 > 2 x 256
    assert not Session(predictor, img, tiled=False).uses_tiles(ref)
    small = viewer.add_image(np.zeros((300, 300), np.uint8))
    assert not Session(predictor, small).uses_tiles(Session(predictor, small).plane(viewer.dims))
    assert Session(predictor, small, tiled=True).uses_tiles(Session(predictor, small).plane(viewer.dims))


def test_prompt_dots_are_sized_in_screen_pixels():
    from napari_sam._napari import prompt_layers as pl

    viewer = ViewerModel()
    for side in (64, 4096):
        img = viewer.add_image(np.zeros((side, side), np.uint8))
        layer = pl.make_points_layer(viewer, img)
        lo, hi = layer.canvas_size_limits
        assert 4 <= lo <= hi <= 16  # a few screen pixels at every zoom, not 68 image pixels


def test_quality_hint_for_a_grayscale_model_outside_its_domain():
    """The hint follows the card's ``domain`` (the built-in model's is grayscale), not a model name."""
    from napari_sam._napari.session import quality_hint
    from napari_sam.model.registry import get_card

    builtin, vit_b = get_card("builtin"), get_card("vit_b")
    assert builtin.domain == "grayscale" and vit_b.domain == ""
    viewer = ViewerModel()
    grey = viewer.add_image(np.zeros((32, 32), np.uint8))
    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), rgb=True)
    assert "RGB" in quality_hint(builtin, rgb, [0.9]) and "checkpoint" in quality_hint(builtin, rgb)
    assert "low" in quality_hint(builtin, grey, [0.2, 0.3, 0.9])
    assert quality_hint(builtin, grey, [0.9]) == "" and quality_hint(vit_b, rgb, [0.1]) == ""
    assert quality_hint(None, rgb, [0.1]) == ""


def test_a_correction_on_a_tiled_plane_matches_the_untiled_correction_on_its_tile():
    """A point added to the shown object re-prompts with all its points and the shown mask's logits."""
    image, labels = make_nuclei_image((1024, 1024), seed=3)
    viewer = ViewerModel()
    layer = viewer.add_image(image)
    session = Session(napari_sam.make_predictor("builtin", device="cpu"), layer)
    ref = session.plane(viewer.dims)
    assert session.uses_tiles(ref)
    # two nuclei close to each other, far from the plane's border
    centres = {i: np.argwhere(labels == i).mean(0) for i in np.unique(labels[300:700, 300:700]) if i}
    ids = sorted(centres)
    a, b = min(((i, j) for i in ids for j in ids if i < j),
               key=lambda p: np.linalg.norm(centres[p[0]] - centres[p[1]]))
    pa, pb = np.round(centres[a]), np.round(centres[b])
    points = viewer.add_points([pa])
    first = session.predict(viewer.dims, points_layer=points).objects[0]
    points.add([pb])
    corrected = session.predict(viewer.dims, points_layer=points).objects[0]
    assert corrected.tile_window == first.tile_window
    assert len(corrected.masks) == 1  # one output, as SAM's interactive recipe
    # the reference: the same two clicks on the window's crop, embedded whole (untiled)
    r0, c0, r1, c1 = first.tile_window
    pred = napari_sam.make_predictor("builtin", device="cpu")
    pred.set_image(image[r0:r1, c0:c1], contrast_limits=layer.contrast_limits)
    off = np.array([r0, c0], float)
    masks, scores, logits = pred.predict((pa - off)[None], [1])
    best = int(np.argmax(scores))
    np.testing.assert_array_equal(first.mask[r0:r1, c0:c1], masks[best])
    want, _, _ = pred.predict(np.stack([pa, pb]) - off, [1, 1], None, logits[best][None], multimask=False)
    got = corrected.mask[r0:r1, c0:c1]
    assert _iou(got, want[0]) >= 0.95
    assert not corrected.mask[:r0].any() and not corrected.mask[r1:].any()
    # the correction mattered: without the shown mask's logits the answer differs
    plain, _, _ = pred.predict(np.stack([pa, pb]) - off, [1, 1], multimask=False)
    assert _iou(plain[0], want[0]) < 0.95  # (0.82 here): a decode without them would fail the check above
    assert _iou(first.mask, corrected.mask) < 0.9  # and the added point changed the object


def test_precompute_on_a_tiled_plane_embeds_every_tile_once_and_clicks_reuse_them():
    from napari_sam.progress import Cancelled

    image, labels = make_nuclei_image((768, 768), seed=4)
    viewer = ViewerModel()
    layer = viewer.add_image(image)
    predictor = napari_sam.make_predictor("builtin", device="cpu")
    encoded = count_encoder_runs(predictor)
    session = Session(predictor, layer)
    ref = session.plane(viewer.dims)
    windows = session.tiler(ref).windows()
    assert len(windows) == 36  # 768 px in 256 px tiles, 128 px apart
    # cancel after the third tile: the work stops between tiles
    stop = __import__("threading").Event()
    seen = []

    def progress(done, total, desc):
        seen.append((done, total))
        if done == 3:
            stop.set()

    with pytest.raises(Cancelled):
        session.precompute(viewer.dims, progress=progress, cancel=stop)
    assert len(encoded) == 3 and seen[-1] == (3, 36)
    assert session.precompute(viewer.dims, progress=progress) == 36
    assert len(encoded) == 36 and seen[-1] == (36, 36)  # the three done before were kept
    # clicks anywhere now run no encoder, and give what a session without precompute gives
    fresh = Session(napari_sam.make_predictor("builtin", device="cpu"), layer)
    checked = 0
    for i in [i for i in np.unique(labels) if i][:: max(1, len(np.unique(labels)) // 6)][:6]:
        rr, cc = np.nonzero(labels == i)
        k = len(rr) // 2
        points = viewer.add_points([[rr[k], cc[k]]])
        before = len(encoded)
        got = session.predict(viewer.dims, points_layer=points).objects[0]
        want = fresh.predict(viewer.dims, points_layer=points).objects[0]
        viewer.layers.remove(points)
        np.testing.assert_array_equal(got.mask, want.mask)
        if got.tile_window in windows:  # (an object crossing tiles is decoded again around itself)
            assert len(encoded) == before, "a click on a precomputed tile ran the encoder"
            checked += 1
    assert checked >= 3
