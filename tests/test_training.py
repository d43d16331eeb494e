"""Tests of the training package (tiny models, a few steps)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from napari_sam.model import build_model
from napari_sam.training.data import (
    corrective_points,
    initial_prompts,
    make_pool,
    normalize_to_rgb,
    sample_batch,
)
from napari_sam.training.evaluate import correction_click, match_instances
from napari_sam.training.loop import TrainConfig, train, train_step
from napari_sam.training.losses import dice_loss, focal_loss, mask_iou, sam_loss

TINY = {
    "image_encoder": {
        "type": "vit", "embed_dim": 32, "depth": 1, "num_heads": 2, "global_attn_indexes": [0],
        "window_size": 4, "patch_size": 16, "img_size": 64, "mlp_ratio": 2.0, "out_chans": 32,
    },
    "prompt_embed_dim": 32,
    "image_size": 64,
    "mask_in_chans": 8,
    "decoder": {"depth": 1, "mlp_dim": 64, "num_heads": 2, "num_multimask_outputs": 3,
                "iou_head_depth": 2, "iou_head_hidden_dim": 32},
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded (and do not fight other jobs for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_pool():
    return make_pool(range(3), shape=(64, 64))


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(TINY).train()


# ------------------------------------------------------------------ losses
def test_focal_loss_matches_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6))
    t = rng.random((2, 5, 6)) > 0.5
    p = 1 / (1 + np.exp(-x))
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = np.where(t, p, 1 - p)
    ref = (np.where(t, 0.25, 0.75) * ce * (1 - p_t) ** 2).mean(axis=(1, 2))
    got = focal_loss(torch.tensor(x), torch.tensor(t))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)


def test_dice_and_iou():
    t = torch.zeros(1, 8, 8, dtype=torch.bool)
    t[0, 2:6, 2:6] = True
    perfect = torch.where(t, 50.0, -50.0)
    assert float(dice_loss(perfect, t)) < 1e-6
    assert float(dice_loss(-perfect, t)) > 0.9
    half = perfect.clone()
    half[0, 2:4] = -50.0  # predict the lower half of the square only
    assert float(mask_iou(half, t)) == pytest.approx(0.5)
    assert float(mask_iou(torch.full((1, 4, 4), -1.0), torch.zeros(1, 4, 4, dtype=torch.bool))) == 1.0


def test_sam_loss_output_choice():
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[:, 2:6, 2:6] = True
    good, bad = torch.where(gt, 20.0, -20.0), torch.where(gt, -20.0, 20.0)
    # token 0 bad, token 2 the only good ambiguity output
    logits = torch.stack([bad, bad, good, bad], dim=1)
    res = sam_loss(logits, torch.zeros(2, 4), gt, torch.tensor([True, False]))
    assert res["primary"].tolist() == [2, 0]  # multimask -> best ambiguity token; else token 0
    # the IoU head is regressed to the true IoUs
    true = mask_iou(logits, gt[:, None].expand_as(logits))
    exact = sam_loss(logits, true, gt, torch.tensor([True, False]))
    assert float(exact["iou_mse"]) == 0.0 and float(res["iou_mse"]) > 0.1


# ------------------------------------------------------------------ prompts
def test_initial_prompts_brute_force():
    gt = torch.zeros(3, 20, 30, dtype=torch.bool)
    gt[0, 2:5, 3:9] = True
    gt[1, 10:19, 0:4] = True
    gt[2, 0:20, 29] = True
    g = torch.Generator().manual_seed(0)
    is_box, pts, boxes = initial_prompts(gt, g, p_box=0.5, box_noise=0.0)
    for k in range(3):
        rr, cc = np.nonzero(gt[k].numpy())
        assert boxes[k].tolist() == [cc.min(), rr.min(), cc.max(), rr.max()]  # (x0, y0, x1, y1)
        x, y = pts[k, 0].long().tolist()
        assert gt[k, y, x]
    _, _, noisy = initial_prompts(gt, torch.Generator().manual_seed(1), box_noise=0.1)
    assert not torch.equal(noisy, boxes)
    assert (noisy[:, 0::2] >= 0).all() and (noisy[:, 0::2] <= 29).all()


def test_corrective_points_from_error_region():
    gt = torch.zeros(3, 10, 10, dtype=torch.bool)
    gt[:, 2:8, 2:8] = True
    pred = gt.clone()
    pred[0, 2:8, 2:5] = False  # false negatives only -> positive click
    pred[1, 0, :] = True  # false positives only -> negative click
    g = torch.Generator().manual_seed(3)
    pts, lab = corrective_points(pred, gt, g)
    assert lab[:, 0].tolist() == [1, 0, -1]  # a perfect mask gets a padding point
    x0, y0 = pts[0, 0].long().tolist()
    assert gt[0, y0, x0] and not pred[0, y0, x0]
    x1, y1 = pts[1, 0].long().tolist()
    assert pred[1, y1, x1] and not gt[1, y1, x1]


def test_correction_click_is_deepest_in_the_larger_error():
    """SAM's evaluation click: positive at the centre of a missed disk, negative at the centre
    of a wrongly taken one (the larger error wins), None for an exact mask."""
    yy, xx = np.mgrid[:40, :60]
    truth = np.hypot(yy - 20, xx - 15) <= 8
    missed_disk = np.hypot(yy - 20, xx - 45) <= 6
    point, label = correction_click(truth, truth | missed_disk)
    np.testing.assert_array_equal(point, [20, 45])
    assert label == 1
    small_extra = np.hypot(yy - 5, xx - 5) <= 2
    point, label = correction_click(truth | missed_disk | small_extra, truth)
    np.testing.assert_array_equal(point, [20, 45])
    assert label == 0
    assert correction_click(truth, truth) == (None, 0)


def test_normalize_to_rgb():
    img = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    before = img.copy()
    rgb = normalize_to_rgb(img)
    np.testing.assert_array_equal(img, before)
    assert rgb.shape == (100, 100, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    with pytest.raises(ValueError, match="2D"):
        normalize_to_rgb(np.zeros((2, 3, 4)))


def test_sample_batch(tiny_pool):
    batch = sample_batch(tiny_pool, np.random.default_rng(0), n_images=2, objects_per_image=3)
    assert batch.images.shape == (2, 3, 64, 64)
    assert batch.gt.shape[0] == batch.image_index.shape[0] <= 6
    assert batch.gt.any(dim=(1, 2)).all()
    # every ground-truth mask is one object of its (augmented) image: it is a
    # single label of the pool after undoing nothing -> at least its area is > 0 and masks differ
    assert len({m.numpy().tobytes() for m in batch.gt}) == batch.gt.shape[0]


# ------------------------------------------------------------------ training
def test_one_step_finite_and_loss_decreases_on_fixed_batch(tiny_pool):
    model = _model(0)
    batch = sample_batch(tiny_pool, np.random.default_rng(0), n_images=2, objects_per_image=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        res = train_step(model, batch, torch.Generator().manual_seed(0), n_passes=2)
        opt.zero_grad()
        res["loss"].backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        opt.step()
        losses.append(float(res["loss"]))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_train_reproducible_and_writes_outputs(tiny_pool, tmp_path):
    cfg = TrainConfig(steps=3, n_images=2, objects_per_image=2, n_passes=2, warmup_steps=1,
                      val_every=2, threads=1, seed=5)
    val = sample_batch(tiny_pool, np.random.default_rng(9), n_images=1, objects_per_image=2)
    states, logs = [], []
    for run in ("a", "b"):
        model = _model(1)
        summary = train(model, tiny_pool, cfg, tmp_path / run, val_batch=val)
        assert summary["steps_done"] == 3
        states.append(model.state_dict())
        with open(tmp_path / run / "log.csv") as f:
            logs.append([r["loss"] for r in csv.DictReader(f)])
        for name in ("last.pt", "best.pt", "log.csv", "train_config.json", "summary.json"):
            assert (tmp_path / run / name).is_file()
    assert logs[0] == logs[1] and len(logs[0]) == 3
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    other = _model(1)
    train(other, tiny_pool, TrainConfig(**{**cfg.__dict__, "seed": 6}), tmp_path / "c")
    assert any(not torch.equal(states[0][k], other.state_dict()[k]) for k in states[0])


def test_stop_after_keeps_the_schedule_of_the_full_run(tiny_pool, tmp_path):
    from napari_sam.progress import Cancelled

    cfg = TrainConfig(steps=4, n_images=2, objects_per_image=2, n_passes=2, warmup_steps=1, threads=1, seed=3)
    stopped = _model(1)
    summary = train(stopped, tiny_pool, TrainConfig(**{**cfg.__dict__, "stop_after": 2}), tmp_path / "a")
    assert summary["steps_done"] == 2
    # reference: the 4-step run cancelled once its second step is done
    done = []
    reference = _model(1)
    with pytest.raises(Cancelled):
        train(reference, tiny_pool, cfg, tmp_path / "b", progress=lambda d, t, s: done.append(d),
              cancel=lambda: len(done) >= 2)
    short = _model(1)
    train(short, tiny_pool, TrainConfig(**{**cfg.__dict__, "steps": 2}), tmp_path / "c")  # its own schedule
    ref, got = reference.state_dict(), stopped.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert any(not torch.equal(short.state_dict()[k], got[k]) for k in ref)


def test_train_step_rejects_wrong_size(tiny_pool):
    model = _model(0)
    batch = sample_batch(tiny_pool, np.random.default_rng(0), n_images=1, objects_per_image=1)
    batch.images = batch.images[..., :32, :32]
    with pytest.raises(ValueError, match="64 x 64"):
        train_step(model, batch, torch.Generator())


# ------------------------------------------------------------------ evaluation
def test_match_instances_brute_force():
    from napari_sam.synthetic import make_nuclei_image

    _, gt = make_nuclei_image((96, 96), seed=3)
    pred = gt.copy()
    ids = np.unique(gt)[1:]
    pred[pred == ids[0]] = 0  # a missed object
    pred[(pred == ids[1])] = 0
    pred[np.nonzero(gt == ids[1])[0][:3], np.nonzero(gt == ids[1])[1][:3]] = ids[1]  # tiny -> IoU < .5
    pred[:5, :5] = 999  # a false positive (background corner)
    res = match_instances(pred, gt)
    # brute force over all pairs
    tp = 0
    for a in np.unique(pred)[1:]:
        for b in ids:
            inter = np.sum((pred == a) & (gt == b))
            union = np.sum((pred == a) | (gt == b))
            tp += inter / union > 0.5
    assert res["tp"] == tp
    assert res["fn"] == len(ids) - tp
    assert res["fp"] == len(np.unique(pred)) - 1 - tp
    assert res["f1"] == pytest.approx(2 * tp / (2 * tp + res["fp"] + res["fn"]))
    assert match_instances(gt, gt)["f1"] == 1.0


# ------------------------------------------------------------------ export


def test_export_writes_a_card_that_loads_and_appends_the_provenance_to_the_history(tmp_path):
    """Exporting writes the weights and a small card (the runtime's only input), and appends the
    full provenance to the history file. ``merge=True`` (the training script's default) keeps the
    old card's tuned settings and records which model the new one replaces; ``merge=False``
    writes a card with no recommendations. The card loads strictly, like any model."""
    import dataclasses
    import json

    from builtin_recipe import export_builtin, sha256_file

    from napari_sam.model.cards import ModelCard
    from napari_sam.model.registry import load_model

    history = tmp_path / "history.json"
    old_state = _model(0).state_dict()
    pt, card_path = export_builtin(old_state, TINY, {"steps": 1, "seconds": 120}, out_dir=tmp_path, name="m",
                                   history=history)
    old = ModelCard.from_json(card_path)
    assert card_path.name == "m.card.json" and old.sha256 == sha256_file(pt) and old.weights == "m.pt"
    assert old.config == TINY and old.amg == {} and old.prompt_pipeline == {} and "1 steps" in old.training
    dataclasses.replace(old, amg={"pred_iou_thresh": 0.4}, prompt_pipeline={"context": 4}).to_json(card_path)

    new_state = _model(1).state_dict()
    pt, card_path = export_builtin(new_state, TINY, {"steps": 2}, out_dir=tmp_path, name="m", merge=True,
                                   history=history)
    new = ModelCard.from_json(card_path)
    assert new.sha256 == sha256_file(pt) != old.sha256
    assert new.amg == {"pred_iou_thresh": 0.4} and new.prompt_pipeline == {"context": 4}
    assert card_path.stat().st_size < 2048
    loaded = load_model(card_path, device="cpu")
    for k, v in new_state.items():
        assert torch.equal(loaded.state_dict()[k], v.float()), k
    assert loaded.card == new

    exports = json.loads(history.read_text())["exports"]
    assert [e["training"] for e in exports] == [{"steps": 1, "seconds": 120}, {"steps": 2}]
    assert exports[1]["replaces"] == old.sha256 and exports[1]["sha256"] == new.sha256
    assert exports[1]["n_parameters"] == sum(v.numel() for v in new_state.values())

    pt, card_path = export_builtin(_model(1).state_dict(), TINY, {"steps": 3}, out_dir=tmp_path, name="m",
                                   history=history)
    fresh = ModelCard.from_json(card_path)
    assert fresh.amg == {} and fresh.prompt_pipeline == {}
    assert len(json.loads(history.read_text())["exports"]) == 3
