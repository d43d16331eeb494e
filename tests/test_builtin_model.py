"""The shipped built-in model: card and weights, hash check, strict loading.

Its quality (mIoU, F1 against the generator's ground truth) is a benchmark:
``benchmarks/quality/test_builtin_quality.py`` (``make quality``).
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch
from builtin_recipe import DATA_DIR, VAL_SEED_START, sha256_file

PT = DATA_DIR / "builtin_model.pt"
CARD = DATA_DIR / "builtin_model.card.json"
# seeds of the held-out evaluation images (scripts/eval_builtin.py uses VAL_SEED_START + 1000 + i)
SMOKE_SEEDS = [VAL_SEED_START + 1000 + i for i in range(4)]


@pytest.fixture(scope="module")
def card():
    from napari_sam.model.cards import ModelCard

    assert PT.is_file() and CARD.is_file(), "the built-in model files are not shipped"
    return ModelCard.from_json(CARD)


@pytest.fixture(scope="module")
def model(builtin_model):
    return builtin_model


def test_files_and_hash(card):
    assert card.name == "builtin" and card.weights == PT.name
    assert card.sha256 == sha256_file(PT)
    assert PT.stat().st_size <= 20 * 2**20
    state = torch.load(PT, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())
    cfg = card.config
    for key in ("image_encoder", "prompt_embed_dim", "image_size", "mask_in_chans", "decoder"):
        assert key in cfg
    assert cfg["image_encoder"]["type"] in ("vit", "tiny_vit")
    assert card.training and card.source  # provenance, in a line or two
    assert CARD.stat().st_size < 2048  # a card, not a lab notebook


def test_loads_strictly_with_shipped_weights(model, card):
    state = torch.load(PT, weights_only=True)
    own = model.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k].cpu(), v), k
    assert model.image_size == card.config["image_size"]
    assert not model.training
    assert model.card == card


def test_corrupted_copy_fails_hash_check(tmp_path, monkeypatch, card):
    from napari_sam.model import catalog
    from napari_sam.model import registry as models

    bad_pt, bad_card = tmp_path / PT.name, tmp_path / CARD.name
    shutil.copy(PT, bad_pt)
    shutil.copy(CARD, bad_card)
    data = bytearray(bad_pt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle of the tensor data
    bad_pt.write_bytes(bytes(data))
    assert sha256_file(bad_pt) != card.sha256
    copy = dict(models.REGISTRY)
    monkeypatch.setattr(models, "REGISTRY", copy)
    monkeypatch.setattr(catalog, "REGISTRY", copy)  # the catalogue the registry re-exports
    models.register_model(bad_card, overwrite=True)  # the copy: weights beside it
    with pytest.raises(models.CheckpointError, match="corrupt"):
        models.load_model("builtin", device="cpu")
    # the intact copy passes through the same code path
    shutil.copy(PT, bad_pt)
    assert models.load_model("builtin", device="cpu").image_size == card.config["image_size"]


def test_set_image_is_fast(model):
    """Target 0.3 s on the 2-core machine; the bound here is loose for busy CI runners."""
    from napari_sam.predict.predictor import Predictor

    predictor = Predictor(model, device="cpu")
    image = np.zeros((512, 512), np.uint16)
    predictor.set_image(image)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        predictor.set_image(image)
        times.append(time.perf_counter() - t)
    assert np.median(times) < 1.5


def test_prompted_ious_threshold_at_the_predictors_mask_threshold(model):
    """The evaluation's batched path thresholds where the predictor does (it used a fixed 0.0).

    Reference: each object's box prompted alone through ``Predictor.predict``, whose masks are
    ``logits > mask_threshold``.
    """
    from napari_sam.predict.predictor import Predictor
    from napari_sam.synthetic import boxes_from_labels, make_nuclei_image
    from napari_sam.training.evaluate import prompted_ious

    image, lab = make_nuclei_image((128, 128), kind="nuclei", seed=SMOKE_SEEDS[1])
    boxes, ids = boxes_from_labels(lab)
    boxes, ids = boxes[:5], ids[:5]
    assert len(ids) == 5
    lab = np.where(np.isin(lab, ids), lab, 0)  # five objects are enough
    predictor = Predictor(model, device="cpu")
    predictor.mask_threshold = 2.0  # not the 0.0 the batched path used to apply
    batched = prompted_ious(predictor, [image], [lab], prompt="box")
    single = []
    for box, oid in zip(boxes, ids):  # predictor still holds the image's embedding
        mask = predictor.predict(box_rc=box, multimask=False)[0][0]
        truth = lab == oid
        single.append((mask & truth).sum() / max((mask | truth).sum(), 1))
    np.testing.assert_allclose(batched, single, atol=0.02)
    assert batched.any()  # the check is not vacuous: some masks overlap their object
    predictor.mask_threshold = 1e6  # no logit is that high: every mask empty
    assert not prompted_ious(predictor, [image], [lab], prompt="box").any()
