"""Randomised synthetic microscopy with instance labels (SynthSeg principle).

Every appearance parameter a microscope can change is drawn at random per
image, from ranges wider than any real dataset: object size (6-120 px native),
shape, count (1-400), clumping, brightness spread, texture, background,
illumination, blur (varying across the field, anisotropic), Poisson-Gaussian
noise, bit depth and dynamic range, saturation, JPEG artefacts, and the
modality (*style*).  A model trained on these sees a real image as one more
sample.

Styles
------
Training (:data:`TRAIN_STYLES`): ``fluorescence`` (nuclei bright on dark),
``cells`` (whole cells: cytoplasm, nucleus, membrane), ``inverted`` (dark on
bright, brightfield-like), ``phase`` (phase contrast with halos), ``he``
(H&E-like RGB), ``em`` (grey texture, dark membranes).

Validation only (:data:`VALIDATION_STYLES`): the training styles with another
seed stream, ``fluorescence_hard`` (a combination of extremes training never
draws together: dynamic range ~200 of uint16, very few photons, strong
vignetting, heavy blur, crowding) and the two held-out styles
:data:`HELD_OUT_STYLES` never used in training: ``ihc`` (DAB brown and
haematoxylin blue nuclei, RGB) and ``dic`` (differential interference
contrast relief).

Images come back in their native dtype (``uint8`` or ``uint16`` grey, or
``uint8`` RGB), to be normalised as at inference
(:func:`napari_sam.to_rgb_uint8`).  Labels are ``int32``, 0 background, each
object one connected region the image shows.  Pure numpy/scipy/scikit-image
(and Pillow for JPEG); deterministic for a given seed.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, find_boundaries

from napari_sam._synthetic_layout import LayoutParams, clean_labels, draw_layout

__all__ = [
    "TRAIN_STYLES",
    "HELD_OUT_STYLES",
    "VALIDATION_STYLES",
    "make_training_image",
    "make_validation_image",
]

TRAIN_STYLES = ("fluorescence", "cells", "inverted", "phase", "he", "em")
HELD_OUT_STYLES = ("ihc", "dic")
VALIDATION_STYLES = (*TRAIN_STYLES, "fluorescence_hard", *HELD_OUT_STYLES)
#: training style probabilities (fluorescence nuclei are the main use)
TRAIN_PROBS = (0.32, 0.14, 0.16, 0.12, 0.14, 0.12)
_RGB_STYLES = ("he", "ihc")
_EXTREMES = ("low_dr", "noisy", "vignette", "blur")
_TRAIN_STREAM, _VAL_STREAM = 11, 97


# ------------------------------------------------------------------ fields
def _field(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    """Smooth Gaussian-like noise of correlation length ~``scale`` px, zero mean, unit std."""
    h, w = shape
    scale = max(1.0, float(scale))
    small = rng.standard_normal((int(np.ceil(h / scale)) + 3, int(np.ceil(w / scale)) + 3)).astype(np.float32)
    small = ndi.gaussian_filter(small, 0.8)
    big = ndi.zoom(small, scale, order=1, prefilter=False)[:h, :w]
    if big.shape != (h, w):  # zoom rounding
        big = np.pad(big, ((0, h - big.shape[0]), (0, w - big.shape[1])), mode="edge")
    big = big - big.mean()
    return big / (big.std() + 1e-6)


def _spots(rng, shape, n: int, where: np.ndarray | None, sigma: float) -> np.ndarray:
    """``n`` small Gaussian spots (peak ~1) at random pixels (inside ``where`` if given)."""
    out = np.zeros(shape, np.float32)
    if n <= 0:
        return out
    if where is not None:
        idx = np.flatnonzero(where)
        if idx.size == 0:
            return out
        pick = rng.choice(idx, size=min(n, idx.size), replace=False)
        rr, cc = np.unravel_index(pick, shape)
    else:
        rr, cc = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    np.add.at(out, (rr, cc), rng.uniform(0.5, 1.0, rr.size).astype(np.float32))
    out = ndi.gaussian_filter(out, sigma)
    return out / (out.max() + 1e-6)


def _per_object(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Map object ``i`` to ``values[i - 1]`` (background 0)."""
    return np.r_[0.0, values].astype(np.float32)[labels]


# ------------------------------------------------------------------ parameters
def _extremes(rng, split: str, style: str) -> set[str]:
    if style == "fluorescence_hard":
        return set(_EXTREMES)
    flags = {e for e in _EXTREMES if rng.random() < 0.2}
    while len(flags) > 2:  # combinations of 3+ extremes are held out for validation
        flags.discard(sorted(flags)[int(rng.integers(len(flags)))])
    return flags


def _sizes(rng, style: str, split: str, shape, max_side: int):
    """Native shape, generated shape and the native->generated scale."""
    if shape is None:
        side = float(np.exp(rng.uniform(np.log(128), np.log(2048))))
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) if rng.random() < 0.3 else 1.0
        native = (max(128, int(side * min(1, aspect))), max(128, int(side / max(1, aspect))))
    else:
        native = (int(shape[0]), int(shape[1]))
    scale = min(1.0, max_side / max(native))
    gen = (max(16, int(round(native[0] * scale))), max(16, int(round(native[1] * scale))))
    return native, gen, scale


def _layout_params(rng, style: str, split: str, diameter: float, gen_shape) -> LayoutParams:
    area = gen_shape[0] * gen_shape[1]
    if split == "validation":
        coverage = rng.uniform(0.3, 0.5) if style == "fluorescence_hard" else rng.uniform(0.08, 0.45)
    else:
        coverage = float(np.exp(rng.uniform(np.log(0.02), np.log(0.55))))
    if style in ("cells", "em"):  # seeds of cells that grow until they touch
        coverage = rng.uniform(0.1, 0.3)
    n = int(np.clip(coverage * area / (np.pi * diameter**2 / 4), 1, 400))
    if split == "train" and rng.random() < 0.06:
        n = int(rng.integers(1, 4))
    return LayoutParams(
        n_objects=n,
        diameter=diameter,
        size_spread=rng.uniform(0.05, 0.35),
        elongation=rng.choice([1.2, 1.6, 2.5, 3.5], p=[0.35, 0.35, 0.2, 0.1]),
        lobes=rng.choice([0.03, 0.08, 0.18, 0.3], p=[0.35, 0.35, 0.2, 0.1]),
        clump=0.8 if style == "fluorescence_hard" else rng.choice([0.0, 0.4, 0.85], p=[0.45, 0.3, 0.25]),
        max_overlap=rng.uniform(0.0, 0.3),
        divide=rng.uniform(0, 0.15),
    )


# ------------------------------------------------------------------ styles (float signal)
def _nuclear_signal(rng, lay, diameter: float, max_spread: float = 10.0):
    """Per-object brightness x profile x chromatin texture (+ nucleoli / speckles).

    Brightness spreads over up to ``max_spread`` x within the image.
    """
    labels, rnorm = lay.labels, lay.rnorm
    n = int(labels.max())
    spread = float(np.exp(rng.uniform(0, np.log(max_spread))))
    bright = np.exp(rng.uniform(-np.log(spread), 0, n))
    if n:  # tiny bright (mitotic-like) objects
        bright[rng.random(n) < 0.04] *= rng.uniform(1.5, 3.0)
    dome = rng.uniform(-0.3, 0.6)
    profile = np.where(labels > 0, 1 - dome * rnorm**2, 0).astype(np.float32)
    tex_amp = rng.uniform(0, 0.45)
    texture = 1 + tex_amp * _field(rng, labels.shape, max(1.0, diameter / rng.uniform(3, 10)))
    sig = _per_object(labels, bright) * profile * np.clip(texture, 0.05, None)
    if rng.random() < 0.4:  # nucleoli (dark) or speckles (bright)
        spots = _spots(rng, labels.shape, int(n * rng.uniform(0.5, 3)), labels > 0, max(0.7, diameter / 12))
        sig = sig * (1 + rng.choice([-0.6, 0.8]) * spots)
    return np.clip(sig, 0, None)


def _debris(rng, shape, diameter: float) -> np.ndarray:
    if rng.random() < 0.5:
        return np.zeros(shape, np.float32)
    n = int(rng.integers(1, 30))
    return _spots(rng, shape, n, None, rng.uniform(0.5, 1.5)) * rng.uniform(0.1, 0.6)


def _style_fluorescence(rng, lay, diameter):
    sig = _nuclear_signal(rng, lay, diameter)
    bg = rng.uniform(0.0, 0.25) * (1 + 0.3 * _field(rng, sig.shape, rng.uniform(30, 300)))
    return sig / max(sig.max(), 1e-6) + np.clip(bg, 0, None) + _debris(rng, sig.shape, diameter)


def _cells(rng, lay, diameter):
    """Whole cells grown around nuclei: returns (cell labels, nuclei mask)."""
    cells = expand_labels(lay.labels, distance=diameter * rng.uniform(0.3, 1.0))
    cells = clean_labels(cells, min_area=6)
    return cells, lay.labels > 0


def _style_cells(rng, lay, diameter):
    cells, nuclei = _cells(rng, lay, diameter)
    n = int(cells.max())
    cyto = _per_object(cells, np.exp(rng.uniform(-np.log(4), 0, n)))
    tex = 1 + rng.uniform(0, 0.4) * _field(rng, cells.shape, max(1.0, diameter / 4))
    sig = rng.uniform(0.2, 0.6) * cyto * np.clip(tex, 0.05, None)
    if rng.random() < 0.6:
        sig = sig + rng.uniform(0.2, 1.0) * nuclei * (cells > 0)
    if rng.random() < 0.6:
        sig = sig + rng.uniform(0.2, 1.0) * find_boundaries(cells, mode="inner")
    bg = rng.uniform(0.0, 0.2)
    return sig / max(sig.max(), 1e-6) + bg + _debris(rng, sig.shape, diameter), cells


def _style_inverted(rng, lay, diameter):
    sig = _nuclear_signal(rng, lay, diameter, 3.0)
    sig = sig / max(sig.max(), 1e-6)
    absorb = rng.uniform(0.2, 0.85)
    bg = 1 + 0.1 * _field(rng, sig.shape, rng.uniform(30, 300))
    return bg * (1 - absorb * sig) - _debris(rng, sig.shape, diameter) * 0.5


def _style_phase(rng, lay, diameter):
    sig = _nuclear_signal(rng, lay, diameter, 3.0)
    m = sig / max(sig.max(), 1e-6) * 0.5 + 0.5 * (lay.labels > 0)
    halo = ndi.gaussian_filter(m, rng.uniform(1.0, 1.0 + diameter / 5)) - m
    k = rng.uniform(0.05, 0.35) * (1 if rng.random() < 0.75 else -1)
    return 0.5 - k * m + rng.uniform(0.3, 1.0) * halo + 0.05 * _field(rng, m.shape, rng.uniform(20, 200))


def _style_em(rng, lay, diameter):
    cells, _ = _cells(rng, lay, diameter * rng.uniform(0.5, 2.0))
    if rng.random() < 0.5:  # part of the field without cells (resin / lumen)
        cells[_field(rng, cells.shape, max(cells.shape) / 3) < rng.uniform(-1.0, 0.0)] = 0
    thick = max(1, int(round(rng.uniform(1, 3))))
    mem = ndi.binary_dilation(find_boundaries(cells, mode="thick"), iterations=thick - 1) if thick > 1 \
        else find_boundaries(cells, mode="thick")
    cells = clean_labels(np.where(mem, 0, cells), min_area=6)
    n = int(cells.max())
    grain = _field(rng, cells.shape, rng.uniform(1, 3))
    sig = 0.6 + _per_object(cells, rng.normal(0, 0.08, n)) + rng.uniform(0.03, 0.12) * grain
    organelles = _spots(rng, cells.shape, int(n * rng.uniform(0, 3)), cells > 0, max(1.0, diameter / 8))
    sig = sig - rng.uniform(0.2, 0.5) * mem - 0.3 * organelles
    return sig, cells


def _style_dic(rng, lay, diameter):
    sig = _nuclear_signal(rng, lay, diameter, 3.0)
    height = ndi.gaussian_filter(sig / max(sig.max(), 1e-6) + 0.5 * (lay.labels > 0), 1.0)
    gy, gx = np.gradient(height)
    theta = rng.uniform(0, 2 * np.pi)
    relief = np.cos(theta) * gx + np.sin(theta) * gy
    relief = relief / (np.abs(relief).max() + 1e-6)
    return 0.5 + rng.uniform(0.2, 0.4) * relief + 0.03 * _field(rng, sig.shape, 50)


def _stain(rng, vec, jitter: float) -> np.ndarray:
    v = np.asarray(vec, np.float32) + rng.normal(0, jitter, 3).astype(np.float32)
    v = np.clip(v, 0.02, None)
    return v / np.linalg.norm(v)


def _style_rgb(rng, lay, diameter, style: str):
    """Optical densities of stains -> RGB in [0, 1] (Beer-Lambert)."""
    nuc = _nuclear_signal(rng, lay, diameter)
    nuc = np.where(lay.labels > 0, 0.35 + 0.65 * nuc / max(nuc.max(), 1e-6), 0).astype(np.float32)
    h_vec = _stain(rng, (0.65, 0.70, 0.29), 0.05)
    od = rng.uniform(0.4, 1.4) * nuc[..., None] * h_vec
    if style == "he":
        e_vec = _stain(rng, (0.07, 0.99, 0.11), 0.06)
        cyto = expand_labels(lay.labels, distance=diameter * rng.uniform(0.2, 1.0)) > 0
        fibres = np.abs(_field(rng, nuc.shape, rng.uniform(2, 8)))
        e_map = rng.uniform(0.1, 0.4) + 0.15 * fibres + rng.uniform(0, 0.3) * cyto
        od = od + rng.uniform(0.3, 1.0) * e_map[..., None] * e_vec
    else:  # ihc: DAB-positive nuclei brown, the rest haematoxylin blue, pale background
        dab_vec = _stain(rng, (0.27, 0.57, 0.78), 0.04)
        n = int(lay.labels.max())
        positive = _per_object(lay.labels, (rng.random(n) < rng.uniform(0.2, 0.8)).astype(np.float32))
        od = od * (1 - positive[..., None]) + rng.uniform(0.5, 1.3) * (nuc * positive)[..., None] * dab_vec
        od = od + 0.05 * np.abs(_field(rng, nuc.shape, 20))[..., None] * h_vec
    return od


# ------------------------------------------------------------------ optics and sensor
def _blur(rng, img: np.ndarray, diameter: float, scale: float, extremes: set[str]) -> np.ndarray:
    """Optical blur: sigma in native pixels (0.3-2, extreme 2-5), at most a fraction of the object size."""
    native = rng.uniform(2.0, 5.0) if "blur" in extremes else rng.uniform(0.3, 2.0)
    cap = (0.25 if "blur" in extremes else 0.15) * diameter / scale
    sigma = max(0.3, min(native, cap) * scale)
    aniso = rng.uniform(0.5, 2.0) if rng.random() < 0.2 else 1.0
    sig = (sigma * aniso, sigma / aniso) + ((0,) if img.ndim == 3 else ())
    a = ndi.gaussian_filter(img, sig)
    if rng.random() < 0.4:  # defocus varying across the field
        b = ndi.gaussian_filter(img, tuple(s * rng.uniform(1.5, 3.0) for s in sig))
        wgt = 1 / (1 + np.exp(-2 * _field(rng, img.shape[:2], max(img.shape[:2]) / 2)))
        a = a * (1 - wgt if img.ndim == 2 else 1 - wgt[..., None]) + b * (wgt if img.ndim == 2 else wgt[..., None])
    return a


def _shading(rng, shape, extremes: set[str]) -> np.ndarray:
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((rr - rng.uniform(0.3, 0.7) * h) ** 2 + (cc - rng.uniform(0.3, 0.7) * w) ** 2) / (0.25 * (h * h + w * w))
    v = rng.uniform(0.6, 0.8) if "vignette" in extremes else rng.uniform(0, 0.4)
    g = rng.uniform(-0.3, 0.3, 2)
    return np.clip((1 - v * r2) * (1 + g[0] * (rr / h - 0.5) + g[1] * (cc / w - 0.5)), 0.05, None)


def _jpeg(rng, img: np.ndarray) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(20, 75)))
    return np.array(Image.open(io.BytesIO(buf.getvalue())))


def _sensor(rng, sig: np.ndarray, extremes: set[str]) -> np.ndarray:
    """Poisson-Gaussian noise, bit depth, dynamic range, saturation, JPEG."""
    sig = np.clip(sig - min(0.0, float(sig.min())), 0, None)
    sig = sig / max(float(sig.max()), 1e-6)
    photons = np.exp(rng.uniform(np.log(8), np.log(25))) if "noisy" in extremes else \
        np.exp(rng.uniform(np.log(25), np.log(3000)))
    counts = rng.poisson(sig * photons).astype(np.float32)
    counts += rng.normal(0, rng.uniform(0, 0.03) * photons + rng.uniform(0, 2), sig.shape).astype(np.float32)
    counts = np.clip(counts, 0, None) / photons
    low_dr = "low_dr" in extremes
    if low_dr or rng.random() < 0.5:
        top = rng.uniform(150, 260) if low_dr else np.exp(rng.uniform(np.log(500), np.log(60000)))
        offset = rng.uniform(0, 20) if low_dr else rng.uniform(0, 0.05) * top
        dtype, maxval = np.uint16, 65535
    else:
        top, offset, dtype, maxval = rng.uniform(120, 255), rng.uniform(0, 15), np.uint8, 255
    gain = rng.uniform(1.2, 2.5) if rng.random() < 0.15 else 1.0  # saturation: the brightest pixels clip
    out = np.clip(np.rint(offset + gain * counts * (top - offset)), 0, min(maxval, top)).astype(dtype)
    if dtype == np.uint8 and rng.random() < 0.15:
        out = _jpeg(rng, out)
    return out


def _rgb_sensor(rng, od: np.ndarray) -> np.ndarray:
    rgb = np.exp(-od) * rng.uniform(0.85, 1.0)
    rgb = rgb + rng.normal(0, rng.uniform(0.005, 0.04), rgb.shape)
    out = np.clip(np.rint(255 * rgb), 0, 255).astype(np.uint8)
    return _jpeg(rng, out) if rng.random() < 0.3 else out


# ------------------------------------------------------------------ public
def _make(style: str, rng: np.random.Generator, split: str, shape, max_side: int):
    extremes = _extremes(rng, split, style)
    native, gen_shape, scale = _sizes(rng, style, split, shape, max_side)
    if split == "validation":  # held-out range: the sizes users meet most
        lo, hi = (5.0, 25.0) if style in ("cells", "em") else (8.0, 60.0)
    else:
        lo, hi = (3.0, 50.0) if style in ("cells", "em") else (6.0, 120.0)
    d_native = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    d_native = min(d_native, min(native) / 3)
    diameter = max(2.5, d_native * scale)
    min_objects = 3 if split == "validation" else 1
    for _ in range(20):  # redraw empty layouts (deterministic: same rng)
        lay = draw_layout(rng, gen_shape, _layout_params(rng, style, split, diameter, gen_shape),
                          min_area=max(4, int(0.15 * diameter**2)))
        if lay.labels.max() >= min_objects:
            break
    labels = lay.labels
    if style in _RGB_STYLES:
        od = _blur(rng, _style_rgb(rng, lay, diameter, style), diameter, scale, extremes)
        image = _rgb_sensor(rng, od)
    else:
        if style == "cells":
            sig, labels = _style_cells(rng, lay, diameter)
        elif style == "em":
            sig, labels = _style_em(rng, lay, diameter)
        else:
            sig = {"fluorescence": _style_fluorescence, "fluorescence_hard": _style_fluorescence,
                   "inverted": _style_inverted, "phase": _style_phase, "dic": _style_dic}[style](rng, lay, diameter)
        sig = _blur(rng, sig.astype(np.float32), diameter, scale, extremes)
        shade = _shading(rng, sig.shape, extremes)
        if style in ("fluorescence", "fluorescence_hard", "cells"):
            sig = sig * shade
        else:  # transmitted light: illumination multiplies the whole field
            sig = (sig - min(0.0, float(sig.min()))) * shade
        image = _sensor(rng, sig, extremes)
    info = {"style": style, "native_shape": native, "scale": scale, "diameter_native": d_native,
            "extremes": sorted(extremes), "dtype": str(image.dtype)}
    return image, labels.astype(np.int32), info


def make_training_image(
    seed: int, *, style: str | None = None, max_side: int = 640
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One random training image (never a held-out style or combination).

    Parameters
    ----------
    seed : int
        Everything is drawn from ``seed`` (deterministic).
    style : str, optional
        One of :data:`TRAIN_STYLES`; default: drawn with :data:`TRAIN_PROBS`.
    max_side : int
        The native size is drawn in 128-2048 px; images larger than
        ``max_side`` are generated at ``max_side`` with every length scaled
        (as a downscaled native image), which keeps generation fast.

    Returns
    -------
    image : (H, W) uint8/uint16 or (H, W, 3) uint8 ndarray
    labels : (H, W) int32 ndarray
    info : dict
        ``style``, ``native_shape``, ``scale``, ``diameter_native``, ``extremes``, ``dtype``.
    """
    rng = np.random.default_rng([_TRAIN_STREAM, int(seed)])
    if style is None:
        style = str(rng.choice(TRAIN_STYLES, p=TRAIN_PROBS))
    if style not in TRAIN_STYLES:
        raise ValueError(f"training style must be one of {TRAIN_STYLES}, got {style!r}")
    return _make(style, rng, "train", None, max_side)


def make_validation_image(
    style: str, seed: int, *, shape: tuple[int, int] | None = None, max_side: int = 4096
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One validation image of ``style`` (seed stream disjoint from training).

    Parameters
    ----------
    style : str
        One of :data:`VALIDATION_STYLES`.
    seed : int
    shape : (int, int), optional
        Native image shape; default: drawn in 128-2048 px.
    max_side : int
        As in :func:`make_training_image` (default: generate at native size).

    Returns
    -------
    image, labels, info
        As :func:`make_training_image`.
    """
    if style not in VALIDATION_STYLES:
        raise ValueError(f"validation style must be one of {VALIDATION_STYLES}, got {style!r}")
    rng = np.random.default_rng([_VAL_STREAM, VALIDATION_STYLES.index(style), int(seed)])
    return _make(style, rng, "validation", shape, max_side)
