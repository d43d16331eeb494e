"""Faster image encoders on the CPU: bfloat16 autocast and an OpenVINO-compiled encoder (both opt-in).

The image encoder is where a CPU user waits (every image, tile and slice is
encoded once); the prompt encoder and mask decoder stay in PyTorch float32.

``"torch"``
    The model as loaded (float32, or whatever device it is on). Exact.
``"bf16"``
    The encoder runs under :func:`torch.autocast` with bfloat16 and returns
    float32 features. Fast on CPUs with AMX or AVX-512 BF16 (about 2x for
    vit_b), slow on CPUs without them. Features differ from float32 by about
    1 % (relative), so masks near a threshold can change.
``"openvino"``
    The encoder compiled by OpenVINO (``pip install openvino``) for the CPU,
    float32. Features equal PyTorch's to about 1e-5; about 2x faster than
    PyTorch for TinyViT (``vit_t``), no faster for the ViT encoders. The
    compiled model is cached on disk (keyed by the weights) so later loads
    skip the conversion.

Example
-------
>>> import torch
>>> from napari_sam.model import build_model
>>> from napari_sam.model.engines import use_engine
>>> model = use_engine(build_model("builtin"), "bf16")
>>> with torch.inference_mode():
...     features = model.image_encoder(torch.zeros(1, 3, 256, 256))
>>> features.dtype, tuple(features.shape)
(torch.float32, (1, 64, 32, 32))
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_sam.model import download

__all__ = ["ENGINES", "use_engine"]

#: encoder engines :func:`use_engine` accepts
ENGINES = ("torch", "bf16", "openvino")


class _Bf16Encoder(nn.Module):
    """Runs an encoder under bfloat16 autocast; float32 in, float32 out."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.img_size = getattr(encoder, "img_size", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self.encoder(x)
        return out.float()


class _OpenVinoEncoder(nn.Module):
    """An encoder compiled by OpenVINO for the CPU (inference only)."""

    def __init__(self, compiled: Any, img_size: int) -> None:
        super().__init__()
        self._compiled = compiled
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("the OpenVINO encoder is for inference only; train with engine='torch'")
        result = self._compiled(x.detach().to("cpu", torch.float32).contiguous().numpy())
        return torch.from_numpy(result[0].copy()).to(x.device)


def _weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _openvino_encoder(encoder: nn.Module, *, cache_dir: Path | None, threads: int | None) -> _OpenVinoEncoder:
    try:
        import openvino as ov
    except ImportError as exc:  # optional dependency
        raise ImportError(
            "engine='openvino' needs OpenVINO: pip install openvino (or napari-sam's [openvino] extra)"
        ) from exc
    size = int(getattr(encoder, "img_size", 1024))
    cache = Path(cache_dir) if cache_dir is not None else download.cache_dir() / "openvino"
    xml = cache / f"encoder-{_weights_digest(encoder)}-{size}-ov{ov.__version__.split('-')[0]}.xml"
    core = ov.Core()
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        ov_model = core.read_model(xml)
    else:
        example = torch.zeros(1, 3, size, size)
        with torch.no_grad():
            ov_model = ov.convert_model(encoder.eval().to("cpu"), example_input=example)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
        ov.save_model(ov_model, tmp, compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    else:
        config["INFERENCE_NUM_THREADS"] = int(torch.get_num_threads())
    return _OpenVinoEncoder(core.compile_model(ov_model, "CPU", config), size)


def use_engine(
    model: nn.Module,
    engine: str = "torch",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> nn.Module:
    """Swap ``model.image_encoder`` for a faster engine; returns ``model`` (changed in place).

    Parameters
    ----------
    model : Sam
        A loaded model (:func:`napari_sam.load_model`).
    engine : {"torch", "bf16", "openvino"}
        See the module documentation. ``"openvino"`` needs the model on the CPU.
    cache_dir : path, optional
        Where compiled OpenVINO encoders are kept (default: ``openvino/`` in the
        checkpoint cache, :func:`napari_sam.model.download.cache_dir`).
    threads : int, optional
        OpenVINO inference threads (default: torch's thread count).

    Raises
    ------
    ValueError
        An unknown engine, or ``"openvino"`` for a model on a GPU.
    ImportError
        ``"openvino"`` without OpenVINO installed.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    encoder = model.image_encoder
    if isinstance(encoder, (_Bf16Encoder, _OpenVinoEncoder)):
        raise ValueError("this model's encoder already runs on an engine; load the model again to change it")
    if engine == "bf16":
        model.image_encoder = _Bf16Encoder(encoder)
    elif engine == "openvino":
        device = next(encoder.parameters()).device
        if device.type != "cpu":
            raise ValueError(f"engine='openvino' runs on the CPU; the model is on {device}. Load it with device='cpu'.")
        model.image_encoder = _openvino_encoder(encoder, cache_dir=cache_dir, threads=threads)
    return model
