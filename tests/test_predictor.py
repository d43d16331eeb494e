"""Predictor behaviour: input validation, embeddings, sizes derived from the model, batching.

Uses a tiny random SAM with a 128 px encoder input (features (1, 32, 8, 8), low-res
logits 32 x 32) so that nothing may assume the official 1024 / 64 / 256 sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_sam import tiny_sam_config

from napari_sam.model import build_model
from napari_sam.normalize import to_rgb_uint8
from napari_sam.predict.predictor import Embedding, Predictor, preprocess_shape

CONFIG = tiny_sam_config()
H, W = 50, 80


def _model(seed: int = 0, config: dict = CONFIG):
    torch.manual_seed(seed)
    return build_model(config)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, size=(H, W), dtype=np.uint16)


@pytest.fixture(scope="module")
def predictor(image):
    p = Predictor(_model(), device="cpu")
    p.set_image(image)
    return p


class _EncoderCalled(RuntimeError):
    pass


def _forbid_encoder(model):
    def boom(*args, **kwargs):
        raise _EncoderCalled("the image encoder must not run")

    model.image_encoder.forward = boom
    return model


def test_sizes_come_from_the_model(predictor):
    assert predictor.is_image_set
    assert predictor.features.shape == (1, 32, 8, 8)
    assert predictor.original_size == (H, W)
    assert predictor.input_size == (80, 128) == preprocess_shape((H, W), 128)
    masks, scores, logits = predictor.predict([[10.0, 20.0]], [1])
    assert masks.shape == (3, H, W) and masks.dtype == bool
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert logits.shape == (3, 32, 32) and logits.dtype == np.float32
    masks, _, logits = predictor.predict(box_rc=[5, 5, 40, 70], mask_input=logits[0], multimask=False)
    assert masks.shape == (1, H, W) and logits.shape == (1, 32, 32)


def test_preprocess_shape_uses_official_rounding():
    assert preprocess_shape((300, 500), 1024) == (614, 1024)  # 300 * 2.048 = 614.4
    assert preprocess_shape((768, 1024), 1024) == (768, 1024)
    assert preprocess_shape((1, 3), 128) == (43, 128)  # 42.67 rounds up
    assert preprocess_shape((250, 100), 1024) == (1024, 410)  # 409.6


def test_non_uint8_image_is_normalised_like_to_rgb_uint8(predictor, image):
    other = Predictor(predictor.model, device="cpu")
    other.set_image(to_rgb_uint8(image))
    torch.testing.assert_close(other.features, predictor.features, rtol=0, atol=0)


def test_set_image_never_modifies_input():
    image = np.random.default_rng(1).normal(size=(30, 40, 3)).astype(np.float32)
    before = image.copy()
    Predictor(_model(), device="cpu").set_image(image, channel_axis=-1)
    np.testing.assert_array_equal(image, before)


def test_upsample_logits_equals_model_postprocess(predictor):
    low = torch.randn(5, 32, 32)
    expected = predictor.model.postprocess_masks(low[None], predictor.input_size, predictor.original_size)[0]
    torch.testing.assert_close(predictor.upsample_logits(low), expected)
    assert predictor.upsample_logits(low[:0]).shape == (0, H, W)
    with pytest.raises(ValueError, match=r"\(K, m, m\)"):
        predictor.upsample_logits(low[0])


def test_predict_batch_decodes_all_prompts_in_one_call(predictor):
    calls = []
    handle = predictor.model.mask_decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        rng = np.random.default_rng(2)
        points = rng.uniform([0, 0], [H - 1, W - 1], size=(7, 3, 2))
        labels = np.array([[1, 0, -1]] * 7)  # -1 pads prompts with fewer points
        out = predictor.predict_batch(torch.as_tensor(points), torch.as_tensor(labels), multimask=False)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert out.low_res_logits.shape == (7, 1, 32, 32) and out.scores.shape == (7, 1)
    assert out.mask_logits.shape == (7, 1, H, W)
    torch.testing.assert_close(
        out.mask_logits[:, 0], predictor.upsample_logits(out.low_res_logits[:, 0])
    )


def test_mask_only_prompt(predictor):
    _, _, logits = predictor.predict([[25, 40]], [1], multimask=False)
    masks, scores, _ = predictor.predict(mask_input=logits)
    assert masks.shape == (3, H, W) and scores.shape == (3,)


def test_embedding_round_trip_skips_the_encoder(predictor, tmp_path):
    embedding = predictor.get_embedding()
    assert isinstance(embedding.features, np.ndarray) and embedding.features.dtype == np.float32
    assert embedding.features.shape == (1, 32, 8, 8) and embedding.image_size == 128
    embedding.save(tmp_path / "emb.npz")
    restored = Embedding.load(tmp_path / "emb.npz")
    np.testing.assert_array_equal(restored.features, embedding.features)

    model = _forbid_encoder(_model())  # same seed: same weights
    fresh = Predictor(model, device="cpu")
    assert not fresh.is_image_set
    fresh.set_embedding(restored)
    assert fresh.original_size == (H, W) and fresh.input_size == (80, 128)
    prompt = dict(points_rc=[[12.5, 60.0], [30, 10]], point_labels=[1, 0], box_rc=[2, 3, 45, 77])
    for got, want in zip(fresh.predict(**prompt), predictor.predict(**prompt)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(_EncoderCalled):
        fresh.set_image(np.zeros((8, 8)))


def test_set_embedding_rejects_incompatible_embeddings(predictor):
    good = predictor.get_embedding()
    fresh = Predictor(_model(), device="cpu")
    with pytest.raises(TypeError, match="Embedding"):
        fresh.set_embedding({"features": good.features})
    bad_cases = [
        (dict(features=good.features[:, :16]), r"shape \(1, 16, 8, 8\).*needs \(1, 32, 8, 8\)"),
        (dict(image_size=1024), "image_size 1024"),
        (dict(model_id="vit-1024-0123456789ab"), "comes from model"),
        (dict(input_size=(50, 80)), "input_size"),
        (dict(original_size=(0, 80)), "original_size"),
    ]
    for change, message in bad_cases:
        fields = {**good.__dict__, **change}
        with pytest.raises(ValueError, match=message):
            fresh.set_embedding(Embedding(**fields))
    assert not fresh.is_image_set
    other = dict(CONFIG, image_encoder=dict(CONFIG["image_encoder"], depth=2))
    with pytest.raises(ValueError, match="comes from model"):
        Predictor(_model(config=other), device="cpu").set_embedding(good)


def test_reset_image(image):
    p = Predictor(_model(), device="cpu")
    p.set_image(image)
    p.reset_image()
    assert not p.is_image_set and p.original_size is None
    with pytest.raises(ValueError, match="set_image"):
        p.predict([[1, 1]], [1])


def test_calls_before_set_image_raise():
    p = Predictor(_model(), device="cpu")
    for call in (
        lambda: p.predict([[1, 1]], [1]),
        lambda: p.predict_batch(boxes_rc=[[0, 0, 5, 5]]),
        lambda: p.features,
        p.get_embedding,
        lambda: p.upsample_logits(torch.zeros(1, 32, 32)),
    ):
        with pytest.raises(ValueError, match=r"set_image\(image\)"):
            call()


def test_model_without_sam_parts_is_a_type_error():
    with pytest.raises(TypeError, match="Sam model"):
        Predictor(torch.nn.Linear(2, 2), device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(points_rc=[[H, 5]], point_labels=[1]), rf"outside the image of shape \({H}, {W}\)"),
        (dict(points_rc=[[5, -3]], point_labels=[1]), rf"outside the image of shape \({H}, {W}\)"),
        (dict(points_rc=[[5, 5], [6, 6]], point_labels=[1]), "2 points but point_labels"),
        (dict(points_rc=[[5, 5]]), "one label per point"),
        (dict(point_labels=[1]), "one label per point"),
        (dict(points_rc=[[5, 5]], point_labels=[2]), r"\{0, 1\}"),
        (dict(points_rc=[[5, 5]], point_labels=[-1]), r"\{0, 1\}"),
        (dict(points_rc=[5, 5], point_labels=[1]), r"\(N, 2\)"),
        (dict(points_rc=[[5, 5, 1]], point_labels=[1]), r"\(N, 2\)"),
        (dict(points_rc=[[np.nan, 5]], point_labels=[1]), "NaN"),
        (dict(box_rc=[30, 5, 10, 40]), "r1 < r0"),
        (dict(box_rc=[5, 40, 30, 10]), "c1 < c0"),
        (dict(box_rc=[5, 5, 30]), r"\(4\)"),
        (dict(box_rc=[5, 5, 30, W + 10]), "outside the image"),
        (dict(mask_input=np.zeros((256, 256))), r"\(1, 32, 32\)"),
        (dict(mask_input=np.zeros((3, 32, 32))), r"\(1, 32, 32\)"),
        ({}, "no prompt given"),
    ],
)
def test_predict_rejects_bad_prompts(predictor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)


def test_predict_batch_rejects_bad_prompts(predictor):
    with pytest.raises(ValueError, match="batch size"):
        predictor.predict_batch(np.zeros((3, 1, 2)), np.ones((3, 1)), boxes_rc=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        predictor.predict_batch(np.zeros((3, 2)), np.ones((3,)))
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        predictor.predict_batch(mask_input=np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="empty"):
        predictor.predict_batch(boxes_rc=np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"\{0, 1, -1\}|\{0, 1, -1\}|-1 = padding"):
        predictor.predict_batch(np.zeros((1, 1, 2)), np.full((1, 1), 3))


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((2, 10, 10, 3)), dict(channel_axis=-1), "one plane"),
        (np.zeros(10), {}, "2-D image"),
        (np.zeros((0, 10)), {}, "empty"),
        (np.array([["a", "b"], ["c", "d"]]), {}, "dtype"),
        (np.full((10, 10), np.nan), {}, "NaN"),
        (np.zeros((10, 10)), dict(channel_axis=0), "no channel axis"),
        (np.zeros((10, 10, 4)), dict(channel_axis=5), "out of range"),
        (np.zeros((6, 10, 10)), {}, "channel_axis"),
        (np.zeros((10, 10, 7)), dict(channel_axis=-1), "channels="),
    ],
)
def test_set_image_rejects_bad_images(image, kwargs, message):
    p = Predictor(_model(), device="cpu")
    with pytest.raises(ValueError, match=message):
        p.set_image(image, **kwargs)
    assert not p.is_image_set
