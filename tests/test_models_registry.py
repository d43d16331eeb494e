"""Registry, device choice, pooch download and strict checkpoint loading (models.py)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from napari_sam.model import build_model
from napari_sam.model import registry as models
from napari_sam.model.registry import (
    CheckpointError,
    ModelCard,
    available_models,
    cache_dir,
    fetch_checkpoint,
    load_model,
    resolve_device,
)


def small_config(embed_dim: int = 32, depth: int = 2) -> dict:
    """A tiny but complete SAM (ViT encoder) for fast tests."""
    return {
        "image_encoder": {
            "type": "vit", "embed_dim": embed_dim, "depth": depth, "num_heads": 2,
            "global_attn_indexes": [depth - 1], "window_size": 4, "patch_size": 16,
            "img_size": 128, "mlp_ratio": 2.0, "out_chans": 32,
        },
        "prompt_embed_dim": 32,
        "image_size": 128,
        "mask_in_chans": 8,
        "decoder": {
            "depth": 1, "mlp_dim": 64, "num_heads": 2, "num_multimask_outputs": 3,
            "iou_head_depth": 2, "iou_head_hidden_dim": 32,
        },
        "pixel_mean": [123.675, 116.28, 103.53],
        "pixel_std": [58.395, 57.12, 57.375],
    }


def random_model(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():  # non-trivial values everywhere (zero-initialised tables too)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _encode(model, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    x = torch.rand(3, model.image_size, model.image_size) * 255
    with torch.inference_mode():
        return model.image_encoder(model.preprocess(x)[None])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------- registry


def test_available_models_lists_the_official_variants():
    names = available_models()
    assert {"vit_b", "vit_l", "vit_h", "vit_t"} <= set(names)
    shipped = models.DATA_DIR / "builtin_model.card.json"
    assert ("builtin" in names) == (shipped.is_file() and (models.DATA_DIR / "builtin_model.pt").is_file())


def test_unknown_name_is_a_value_error_listing_choices():
    with pytest.raises(ValueError, match="vit_b"):
        load_model("vit_x", checkpoint="whatever.pth")
    with pytest.raises(ValueError, match="Unknown model"):
        build_model("vit_x")


def test_official_cards_carry_url_and_sha256_and_no_recommendations():
    for name in ("vit_b", "vit_l", "vit_h", "vit_t"):
        card = models.get_card(name)
        assert card.weights_url.startswith("https://") and card.weights_url.endswith((".pth", ".pt"))
        assert len(card.sha256) == 64 and int(card.sha256, 16) >= 0
        assert card.amg == {} and card.prompt_pipeline == {}  # SAM's defaults, plain prompting


def test_get_config_returns_a_copy():
    cfg = models.get_config("vit_b")
    cfg["image_encoder"]["depth"] = 1
    assert models.get_config("vit_b")["image_encoder"]["depth"] == 12


# ----------------------------------------------------------------------- device


def test_resolve_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "_mps_available", lambda: False)
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setattr(models, "_mps_available", lambda: True)
    assert resolve_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_rejects_unavailable_or_bad_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu please")


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NAPARI_SAM_CACHE")
    assert "napari-sam" in str(cache_dir())


# -------------------------------------------------------------- strict loading


def test_round_trip_save_load(tmp_path):
    config = small_config()
    model = random_model(config)
    path = tmp_path / "small.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(config, checkpoint=path, device="cpu")
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.testing.assert_close(_encode(loaded), _encode(model), rtol=0, atol=0)
    # a fresh model of the same config computes something else: the weights matter
    assert not torch.allclose(_encode(build_model(config)), _encode(model))


def test_round_trip_tiny_vit_recomputes_non_persistent_buffers(tmp_path):
    """load_model allocates without initialisation; the offset index and pixel stats are rebuilt."""
    config = models.get_config("vit_t")
    config["image_encoder"]["img_size"] = config["image_size"] = 256
    model = random_model(config)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(config, checkpoint=path)
    attn = loaded.image_encoder.layers[1].blocks[0].attn
    ref_attn = model.image_encoder.layers[1].blocks[0].attn
    assert torch.equal(attn.attention_bias_idxs, ref_attn.attention_bias_idxs)
    assert torch.equal(loaded.pixel_std, model.pixel_std)
    torch.testing.assert_close(_encode(loaded), _encode(model), rtol=0, atol=0)


def test_wrapped_and_half_precision_checkpoints_load(tmp_path):
    config = small_config()
    model = random_model(config)
    path = tmp_path / "wrapped.pt"
    torch.save({"model": {k: v.half() for k, v in model.state_dict().items()}, "epoch": 3}, path)
    loaded = load_model(config, checkpoint=path)
    ref = model.state_dict()["mask_decoder.iou_token.weight"]
    got = loaded.state_dict()["mask_decoder.iou_token.weight"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref.half().float())
    config_json = tmp_path / "config.json"
    config_json.write_text(json.dumps(config))
    torch.save({"state_dict": model.state_dict()}, path)
    load_model(config_json, checkpoint=path)


def test_config_needs_a_checkpoint():
    with pytest.raises(ValueError, match="checkpoint"):
        load_model(small_config())


def test_wrong_variant_is_named(tmp_path, monkeypatch):
    a, b = small_config(embed_dim=32), small_config(embed_dim=48)
    monkeypatch.setitem(models.REGISTRY, "small_a", ModelCard(name="small_a", config=a))
    monkeypatch.setitem(models.REGISTRY, "small_b", ModelCard(name="small_b", config=b))
    path = tmp_path / "a.pth"
    torch.save(random_model(a).state_dict(), path)
    with pytest.raises(CheckpointError, match="'small_a' checkpoint"):
        load_model("small_b", checkpoint=path)
    with pytest.raises(CheckpointError, match="'small_a' checkpoint"):
        load_model(b, checkpoint=path)
    load_model("small_a", checkpoint=path)  # the right name works


def test_mobile_sam_checkpoint_loaded_as_vit_b_names_vit_t(tmp_path):
    path = tmp_path / "mobile_sam.pt"
    torch.save(build_model("vit_t").state_dict(), path)
    with pytest.raises(CheckpointError, match="'vit_t' checkpoint"):
        load_model("vit_b", checkpoint=path)


def test_missing_and_extra_keys_are_reported(tmp_path):
    config = small_config()
    state = random_model(config).state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="1 missing.*1 unexpected"):
        load_model(config, checkpoint=path)


def test_truncated_file(tmp_path):
    config = small_config()
    path = tmp_path / "full.pth"
    torch.save(random_model(config).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(config, checkpoint=path)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(small_config(), checkpoint=path)
    path2 = tmp_path / "not_tensors.pth"
    torch.save({"a": 1, "b": "text"}, path2)
    with pytest.raises(CheckpointError, match="state dict"):
        load_model(small_config(), checkpoint=path2)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(small_config(), checkpoint=tmp_path / "nope.pth")


# ---------------------------------------------------------------------- builtin


def test_builtin_absent_gives_actionable_error(tmp_path, monkeypatch):
    """Without the shipped card the name is unknown; with the card but not its weights, the
    error names the missing file; both suggest an official checkpoint."""
    from napari_sam.model import catalog

    copy = dict(models.REGISTRY)  # registrations undone after the test
    monkeypatch.setattr(models, "REGISTRY", copy)
    monkeypatch.setattr(catalog, "REGISTRY", copy)  # the catalogue the registry re-exports
    card = models.REGISTRY.pop("builtin", None)
    assert "builtin" not in available_models()
    with pytest.raises(ValueError, match="Unknown model 'builtin'.*vit_b"):
        load_model()
    with pytest.raises(ValueError, match="Unknown model"):
        build_model("builtin")
    if card is None:
        return
    moved = ModelCard.from_json(card.to_json())  # no file location: weights looked up nowhere
    (tmp_path / "builtin_model.card.json").write_text(moved.to_json())
    models.register_model(tmp_path / "builtin_model.card.json")  # its .pt is not beside it
    assert "builtin" not in available_models()
    with pytest.raises(CheckpointError, match="missing from this install.*vit_b"):
        load_model("builtin")


def test_a_card_file_is_registered_loaded_and_hash_checked(tmp_path, monkeypatch):
    """A card file with its weights beside it loads like a shipped model; the card's sha256 is
    checked on every load, and the loaded model carries its card."""
    config = small_config()
    model = random_model(config)
    weights = tmp_path / "mine.pt"
    torch.save(model.state_dict(), weights)
    card = ModelCard(name="mine", config=config, sha256=_sha256(weights), weights="mine.pt",
                     amg={"pred_iou_thresh": 0.5})
    card_file = tmp_path / "mine.card.json"
    card.to_json(card_file)
    from napari_sam.model import catalog

    copy = dict(models.REGISTRY)  # registrations undone after the test
    monkeypatch.setattr(models, "REGISTRY", copy)
    monkeypatch.setattr(catalog, "REGISTRY", copy)  # the catalogue the registry re-exports
    loaded = load_model(card_file)  # by path, unregistered
    torch.testing.assert_close(_encode(loaded), _encode(model), rtol=0, atol=0)
    assert loaded.card == card and loaded.card.path == card_file.resolve()
    models.register_model(card_file)
    assert "mine" in available_models() and models.model_card("mine").amg == {"pred_iou_thresh": 0.5}
    torch.testing.assert_close(_encode(load_model("mine")), _encode(model), rtol=0, atol=0)
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(card_file)
    (tmp_path / "mine.card.json").write_text(card.to_json().replace(card.sha256, "0" * 64))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "mine.card.json")


def test_a_config_loaded_with_a_checkpoint_gets_an_empty_card(tmp_path):
    config = small_config()
    path = tmp_path / "w.pth"
    torch.save(random_model(config).state_dict(), path)
    card = load_model(config, checkpoint=path).card
    assert card.config == config and card.amg == {} and card.prompt_pipeline == {}


# ------------------------------------------------------------- pooch download


class _Server:
    """http.server on 127.0.0.1 serving one folder, counting GET requests."""

    def __init__(self, folder: Path) -> None:
        hits = self.hits = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                hits.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    folder = tmp_path / "served"
    folder.mkdir()
    srv = _Server(folder)
    srv.folder = folder
    yield srv
    srv.close()


def test_fetch_checkpoint_downloads_once_and_checks_hash(server, tmp_path, monkeypatch):
    config = small_config()
    model = random_model(config)
    torch.save(model.state_dict(), server.folder / "small.pth")
    digest = _sha256(server.folder / "small.pth")
    card = ModelCard(name="small_web", config=config, weights=server.url + "small.pth", sha256=digest)
    monkeypatch.setitem(models.REGISTRY, "small_web", card)
    cache = tmp_path / "cache"
    path = fetch_checkpoint("small_web", cache_dir=cache)
    assert path == cache / "small.pth" and _sha256(path) == digest
    assert fetch_checkpoint("small_web", cache_dir=cache) == path
    assert len(server.hits) == 1  # cached: no second download
    # load_model by name downloads into $NAPARI_SAM_CACHE and loads strictly
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "env_cache"))
    loaded = load_model("small_web")
    assert (tmp_path / "env_cache" / "small.pth").is_file()
    torch.testing.assert_close(_encode(loaded), _encode(model), rtol=0, atol=0)


def test_fetch_checkpoint_hash_mismatch(server, tmp_path, monkeypatch):
    (server.folder / "w.pth").write_bytes(b"not the file you are looking for")
    card = ModelCard(name="bad_web", config=small_config(), weights=server.url + "w.pth", sha256="a" * 64)
    monkeypatch.setitem(models.REGISTRY, "bad_web", card)
    with pytest.raises(CheckpointError, match="expected hash"):
        fetch_checkpoint("bad_web", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "w.pth").exists()


def test_fetch_checkpoint_unreachable_server_explains_offline_use(server, tmp_path, monkeypatch):
    card = ModelCard(name="gone", config=small_config(), weights=server.url + "missing.pth")
    monkeypatch.setitem(models.REGISTRY, "gone", card)
    with pytest.raises(OSError, match="checkpoint=<local path>"):
        fetch_checkpoint("gone", cache_dir=tmp_path / "cache")
