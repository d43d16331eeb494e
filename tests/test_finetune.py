"""Fine-tuning on user labels, saved models and micro-sam checkpoints (tiny random-weight SAM)."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
import torch
from _tiny_sam import tiny_sam_config

import napari_sam
from napari_sam.model.cards import ModelCard
from napari_sam.model.registry import REGISTRY
from napari_sam.synthetic import make_nuclei_image
from napari_sam.training.finetune import _sample, evaluate_model
from napari_sam.training.inputs import prepare_slices
from napari_sam.training.loop import init_for_training, train_step


@pytest.fixture(scope="module")
def data():
    pairs = [make_nuclei_image((48, 48), n_objects=3, seed=s) for s in range(3)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    model = napari_sam.build_model(tiny_sam_config(), device="cpu")
    init_for_training(model)  # the recipe's start: decoder attention peaked at the clicks
    return model


def _fixed_loss(model, batch) -> float:
    with torch.no_grad():
        return float(train_step(model, batch, torch.Generator().manual_seed(1), focal_weight=20.0)["loss"])


def test_finetune_lowers_loss_and_raises_iou(tiny, data):
    images, labels = data
    rgb, lab, kept = prepare_slices(images, labels, size=128)
    assert kept == [0, 1, 2]
    batch, _ = _sample(rgb, lab, kept, np.random.default_rng(5), n_images=3, objects_per_image=6, augment=False)
    before_loss, before = _fixed_loss(tiny, batch), evaluate_model(tiny, rgb, lab, automatic=False)
    ref = {k: v.clone() for k, v in tiny.state_dict().items()}
    tuned = napari_sam.finetune(tiny, images, labels, steps=60, lr=1e-2, device="cpu")
    # the base model is not modified
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in ref.items())
    assert _fixed_loss(tuned, batch) < 0.6 * before_loss
    after = evaluate_model(tuned, rgb, lab, automatic=False)
    assert after["click_miou"] > before["click_miou"] + 0.03
    rep = tuned.finetune_report
    assert rep["steps_done"] == 60 and rep["objects"] == int(sum(len(np.unique(x)) - 1 for x in labels))
    assert rep["train_encoder"] is True  # small encoder: trained by default


def test_frozen_encoder_keeps_encoder_and_uses_cache(tiny, data):
    images, labels = data
    tuned = napari_sam.finetune(tiny, images, labels, steps=3, train_encoder=False, device="cpu")
    # the report names the data it trained on: sha256 of the prepared slices, then their labels
    rgb, lab, _ = prepare_slices(images, labels, size=tiny.image_size)
    digest = hashlib.sha256(np.ascontiguousarray(rgb).tobytes() + np.ascontiguousarray(lab).tobytes()).hexdigest()
    assert tuned.finetune_report["data_sha256"] == digest
    for (name, a), b in zip(tiny.image_encoder.state_dict().items(), tuned.image_encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(tiny.mask_decoder.state_dict()["iou_token.weight"],
                           tuned.mask_decoder.state_dict()["iou_token.weight"])


def test_saved_model_round_trips_bit_exactly(tiny, data, tmp_path):
    images, labels = data
    tuned = napari_sam.finetune(tiny, images, labels, steps=2, validation=0.34, validate_automatic=False,
                                device="cpu")
    card = napari_sam.save_model(tuned, tmp_path / "mine")
    assert {p.name for p in (tmp_path / "mine").iterdir()} == {"model.pt", "model.card.json", "training.json"}
    loaded = napari_sam.load_model(tmp_path / "mine")
    for k, v in tuned.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.card.name == "mine" and loaded.card.sha256 == card.sha256
    assert "before" in tuned.finetune_report and "after" in tuned.finetune_report
    # the card can be registered and builds the same predictor everywhere
    napari_sam.register_model(tmp_path / "mine" / "model.card.json")
    try:
        assert "mine" in napari_sam.available_models()
        predictor = napari_sam.make_predictor(tmp_path / "mine")
        same = napari_sam.make_predictor("mine")
        predictor.set_image(images[0])
        same.set_image(images[0])
        a = predictor.predict(np.array([[10.0, 10.0]]), np.array([1]))[0]
        b = same.predict(np.array([[10.0, 10.0]]), np.array([1]))[0]
        np.testing.assert_array_equal(a, b)
    finally:
        REGISTRY.pop("mine", None)
    with pytest.raises(ValueError, match="already holds"):
        napari_sam.save_model(tuned, tmp_path / "mine")
    # a corrupted weights file is refused (sha256 of the card)
    (tmp_path / "mine" / "model.pt").write_bytes((tmp_path / "mine" / "model.pt").read_bytes()[:-8] + b"x" * 8)
    with pytest.raises(ValueError):
        napari_sam.load_model(tmp_path / "mine")


def test_micro_sam_layout_loads(tiny, tmp_path):
    state = tiny.state_dict()
    ckpt = {"model_state": {f"sam.{k}": v for k, v in state.items()},
            "decoder_state": {"base.weight": torch.zeros(2)}, "iteration": 5, "epoch": 1}
    path = tmp_path / "best.pt"
    torch.save(ckpt, path)
    REGISTRY["tiny_test"] = ModelCard(name="tiny_test", config=tiny_sam_config())
    try:
        with pytest.warns(UserWarning, match="decoder_state"):
            loaded = napari_sam.load_model(path)
    finally:
        REGISTRY.pop("tiny_test")
    for k, v in state.items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.warns(UserWarning):
        same = napari_sam.load_model(tiny_sam_config(), checkpoint=path)  # with an explicit config
    assert torch.equal(same.mask_decoder.iou_token.weight, tiny.mask_decoder.iou_token.weight)
    # multi-GPU prefix, no decoder state, a missing tensor is refused strictly
    ckpt = {"model_state": {f"module.sam.{k}": v for k, v in list(state.items())[1:]}}
    torch.save(ckpt, path)
    with pytest.raises(ValueError):
        napari_sam.load_model(tiny_sam_config(), checkpoint=path)


def test_cancel_and_resume(tiny, data, tmp_path):
    images, labels = data
    ckpt = tmp_path / "run.pt"
    stop = threading.Event()
    seen = []

    def progress(done, total, desc):
        seen.append(done)
        if done == 3:
            stop.set()

    part = napari_sam.finetune(tiny, images, labels, steps=6, progress=progress, cancel=stop,
                               checkpoint=ckpt, device="cpu")
    assert part.finetune_report["cancelled"] and part.finetune_report["steps_done"] == 3
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    resumed = napari_sam.finetune(tiny, images, labels, steps=6, checkpoint=ckpt, resume=True, device="cpu")
    assert resumed.finetune_report["steps_done"] == 6 and len(resumed.losses) == 3
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 6
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, state["model"][k])


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (np.zeros((3, 40, 40), np.int32), ValueError, "shape"),
        (np.zeros((3, 48, 48), np.int32), ValueError, "empty"),
        (np.ones((3, 48, 48), np.float32), TypeError, "integer"),
        ("one", ValueError, "at least 2"),
    ],
)
def test_bad_inputs(tiny, data, labels, error, match):
    images, good = data
    if isinstance(labels, str):
        labels = np.zeros_like(good)
        labels[0, 5:15, 5:15] = 1
    with pytest.raises(error, match=match):
        napari_sam.finetune(tiny, images, labels, steps=1, device="cpu")
    with pytest.raises(ValueError, match="steps"):
        napari_sam.finetune(tiny, images, good, steps=0, device="cpu")


class _TrainerState:  # stands for the Python objects a training checkpoint pickles beside the weights
    pass


def test_micro_sam_exported_layout_and_pickled_trainer_state(tiny, tmp_path):
    state = tiny.state_dict()
    path = tmp_path / "exported.pt"
    torch.save({"model_state": dict(state), "decoder_state": {"x": torch.zeros(1)}}, path)  # no prefix
    with pytest.warns(UserWarning, match="decoder_state"):
        loaded = napari_sam.load_model(tiny_sam_config(), checkpoint=path)
    assert torch.equal(loaded.mask_decoder.iou_token.weight, tiny.mask_decoder.iou_token.weight)
    torch.save({"model_state": {f"sam.{k}": v for k, v in state.items()}, "trainer": _TrainerState()}, path)
    with pytest.raises(ValueError, match="export_custom_sam_model"):
        napari_sam.load_model(path)


def test_large_encoders_are_frozen_by_default(tiny, data, monkeypatch):
    from napari_sam.training import finetune as ft

    monkeypatch.setattr(ft, "_SMALL_ENCODER_PARAMS", 0)  # the tiny encoder now counts as ViT-B-sized
    images, labels = data
    tuned = napari_sam.finetune(tiny, images, labels, steps=2, device="cpu")
    assert tuned.finetune_report["train_encoder"] is False
    assert all(torch.equal(a, b) for a, b in zip(tiny.image_encoder.parameters(), tuned.image_encoder.parameters()))


def test_schedule_is_fitted_to_the_time_limit():
    from napari_sam.training.finetune import _fit_schedule
    from napari_sam.training.loop import TrainConfig

    cfg = TrainConfig(steps=1000, warmup_steps=20)
    # 10 steps took 5 s, 60 s allowed: about 0.95 * 55 / 0.5 = 104 more steps fit
    fitted = _fit_schedule(cfg, 10, 10, 5.0, 60.0)
    assert fitted.steps == 10 + int(0.95 * 55 / 0.5)
    assert _fit_schedule(fitted, 20, 20, 5.0, 60.0).steps == fitted.steps  # faster steps never lengthen it
    assert _fit_schedule(cfg, 10, 10, 5.0, float("inf")) is cfg  # no limit: the schedule as asked
    assert _fit_schedule(cfg, 10, 10, 70.0, 60.0).steps == 11  # past the limit: end now


def test_time_limited_run_plans_a_schedule_it_can_finish(tiny, data):
    images, labels = data
    tuned = napari_sam.finetune(tiny, images, labels, steps=100_000, lr=1e-3, device="cpu", time_limit_s=3.0)
    rep = tuned.finetune_report
    assert 5 <= rep["steps_done"] <= rep["steps"] < 100_000
