"""The click-floor of ``benchmarks/predictor.py --floor`` times the products a click really computes.

``_click_products`` lists the matrix products of one foreground click with
their shapes; its time against the official click is reported as the floor for
exact float32 decoding.  Counted with torch's FLOP counter, the products it
runs must match the products ``Predictor.predict`` runs (the small token-side
products aside), so the floor is neither padded nor thinned.  The same count
guards the click's arithmetic: if a path of the decoder stopped being used
(e.g. the low-rank first upscaling or the four-token final attention), the
click would do more multiply-adds than the floor and this test fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_sam.model import build_model
from napari_sam.predict.predictor import Embedding, Predictor, preprocess_shape

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from predictor import _click_products  # noqa: E402


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_floor_products_match_the_click():
    torch.manual_seed(0)
    model = build_model("vit_t").eval()  # the official decoder (vit_b's), small encoder
    predictor = Predictor(model, device="cpu")
    size = predictor.image_size
    grid = model.prompt_encoder.image_embedding_size
    features = np.random.default_rng(0).standard_normal((1, 256, *grid)).astype(np.float32)
    predictor.set_embedding(
        Embedding(features, (size, size), preprocess_shape((size, size), size), size, predictor.model_id)
    )
    click = lambda: predictor.predict(np.array([[500.0, 530.0]]), np.array([1]), multimask=True)
    click()
    ours, floor = _flops(click), _flops(_click_products(model))
    # vit_b/vit_t decoder: 1313 MFLOP per click, of which ~45 token-side (MLPs, heads, IoU)
    assert 1.2e9 < floor < 1.35e9
    assert 0.93 < floor / ours <= 1.0, (floor, ours)
