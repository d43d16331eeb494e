"""Upsample low-res mask logits only inside the window where a mask can be.

The predictor's :meth:`~napari_sam.predict.predictor.Predictor.upsample_logits`
resizes every candidate to the whole crop (two bilinear resizes: to the
encoder's square, cropped to the resized image, then to the crop size), and
the automatic generator then thresholds and counts every pixel.  A nucleus
covers a few hundred of a million pixels.

Bilinear interpolation is a convex combination of neighbouring inputs, so an
output pixel can exceed a threshold only next to an input that (nearly)
exceeds it.  :func:`windowed_scores` therefore finds each mask's window
around the low-res pixels above the lowest threshold it needs (with a margin
of two lines), and computes both resizes only there; pixels of the encoder
square outside the first window are all below that threshold, so they are
stood in for by a constant below it.  Each window is computed with PyTorch's own kernel, as two one-axis resizes over
full-length lines (a resize along the rows of the window's rows, then along
the columns of the window's columns): each output pixel then gets the very
same source indices, weights and arithmetic as in the whole-crop resize, so
the values are bit-identical.  :func:`separable_is_exact` checks that
property of the installed PyTorch once; where it does not hold the generator
uses the whole-crop path.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["separable_is_exact", "windowed_scores"]

def _interpolate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size, mode="bilinear", align_corners=False)


def _kernel(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate``'s bilinear kernel called directly (a window costs four tiny resizes)."""
    return torch._C._nn.upsample_bilinear2d(x, list(size), False, None)


def _pick_resize() -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    """The direct kernel call where it equals ``F.interpolate`` bit for bit, else ``F.interpolate``."""
    try:
        x = torch.randn(2, 1, 7, 13, generator=torch.Generator().manual_seed(0))
        if torch.equal(_kernel(x, (23, 29)), _interpolate(x, (23, 29))):
            return _kernel
    except (AttributeError, RuntimeError, TypeError):
        pass
    return _interpolate


_resize = _pick_resize()


@functools.lru_cache(maxsize=1)
def separable_is_exact() -> bool:
    """Whether this PyTorch's bilinear resize equals a row resize then a column resize, bit for bit,
    also on line subsets (checked once on random logits, odd sizes included)."""
    g = torch.Generator().manual_seed(0)
    for hin, win, hout, wout in ((64, 64, 256, 256), (256, 256, 687, 687), (171, 256, 500, 749), (256, 192, 1024, 768)):
        x = torch.randn(2, 1, hin, win, generator=g) * 8
        ref = _interpolate(x, (hout, wout))
        for r0, r1, c0, c1 in ((0, hout, 0, wout), (3, 40, 17, 61), (hout - 23, hout, wout - 9, wout)):
            got = _window(x[:, 0], (hout, wout), (r0, r1, c0, c1))
            if not torch.equal(got, ref[:, 0, r0:r1, c0:c1]):
                return False
    return True


def _source_range(lo: int, hi: int, n_in: int, n_out: int) -> tuple[int, int]:
    """Input lines [a, b) that the output lines [lo, hi) of an ``n_in -> n_out`` resize read (with margin)."""
    s = n_in / n_out
    a = max(0, math.floor((lo + 0.5) * s - 0.5) - 2)
    b = min(n_in, math.ceil((hi - 0.5) * s - 0.5) + 3)
    return a, b


def _window(u: torch.Tensor, out_hw: tuple[int, int], win: tuple[int, int, int, int]) -> torch.Tensor:
    """Rows ``win[0]:win[1]``, columns ``win[2]:win[3]`` of ``_resize(u[:, None], out_hw)[:, 0]``.

    ``u`` : (K, h, w).  Rows of ``u`` outside the window's sources are left
    out of the first resize (each output row reads two input rows), and the
    second resize runs over the full column length (zeros where no source
    row is needed) so its indices and weights are those of the full resize.
    """
    r0, r1, c0, c1 = win
    k, h, w = u.shape
    a, b = _source_range(r0, r1, h, out_hw[0])
    rows = _resize(u[:, None, a:b, :], (b - a, out_hw[1]))[:, 0, :, c0:c1]  # along the columns axis
    full = rows.new_zeros((k, 1, h, c1 - c0))
    full[:, 0, a:b] = rows
    return _resize(full, (out_hw[0], c1 - c0))[:, 0, r0:r1]  # along the rows axis


def _out_range(lo: int, hi: int, n_in: int, n_out: int) -> tuple[int, int]:
    """Output lines that read any of the input lines [lo, hi) (with margin)."""
    s = n_out / n_in
    a = max(0, math.floor((lo - 0.5) * s - 0.5) - 2)
    b = min(n_out, math.ceil((hi + 0.5) * s + 0.5) + 2)
    return a, b


def windowed_scores(
    low: torch.Tensor,
    *,
    image_size: int,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    mask_threshold: float,
    offset: float,
) -> list[tuple[np.ndarray, tuple[int, int], np.float32]]:
    """Per mask: the thresholded mask inside its window, the window's origin, and the stability score.

    Equal, pixel for pixel, to thresholding the predictor's
    ``upsample_logits(low)`` at ``mask_threshold`` (pixels outside the window
    are all False) and to :func:`~napari_sam.automatic.regions.stability_score`
    on it.

    Parameters
    ----------
    low : (K, m, m) float32 tensor on CPU
        Low-res logits.
    image_size, input_size, original_size
        As the predictor's (encoder square, resized image, crop).
    mask_threshold, offset : float

    Returns
    -------
    list of (mask (h, w) bool ndarray, (row0, col0), stability float32)
    """
    hi_t, lo_t = mask_threshold + offset, mask_threshold - offset
    lowest = min(hi_t, lo_t, mask_threshold)
    m_h, m_w = low.shape[-2:]
    ih, iw = input_size
    H, W = original_size
    low = low.float()
    # a resize output exceeds c only next to an input above c, up to float rounding: keep a margin
    slack = 1e-3 + 1e-5 * float(low.abs().max()) if low.numel() else 1e-3
    above = (low > lowest - slack).numpy()
    rows_any, cols_any = above.any(axis=2), above.any(axis=1)
    fill = lowest - 1.0  # stands for encoder-square pixels outside a window (all are below ``lowest``)
    u = low.new_full((1, ih, iw), fill)  # reused: each window is written, read, then reset to ``fill``
    out: list = []
    for k in range(len(low)):
        rr, cc = np.flatnonzero(rows_any[k]), np.flatnonzero(cols_any[k])
        ur0, ur1 = _out_range(int(rr[0]), int(rr[-1]) + 1, m_h, image_size) if len(rr) else (0, 0)
        uc0, uc1 = _out_range(int(cc[0]), int(cc[-1]) + 1, m_w, image_size) if len(cc) else (0, 0)
        ur1, uc1 = min(ur1, ih), min(uc1, iw)
        if ur1 <= ur0 or uc1 <= uc0:  # nothing above the lowest threshold in the resized image
            out.append((np.zeros((0, 0), dtype=bool), (0, 0), np.float32(0.0)))
            continue
        inner = _window(low[k : k + 1], (image_size, image_size), (ur0, ur1, uc0, uc1))
        if (ih, iw) == (H, W):  # upsample_logits skips the second resize
            r0, c0, logits = ur0, uc0, inner[0].numpy()
        else:
            u[:, ur0:ur1, uc0:uc1] = inner
            r0, r1 = _out_range(ur0, ur1, ih, H)
            c0, c1 = _out_range(uc0, uc1, iw, W)
            logits = _window(u, (H, W), (r0, r1, c0, c1))[0].numpy()
            u[:, ur0:ur1, uc0:uc1] = fill
        out.append(_scored(logits, (r0, c0), mask_threshold, hi_t, lo_t))
    return out


def _scored(logits: np.ndarray, origin: tuple[int, int], t: float, hi_t: float, lo_t: float
            ) -> tuple[np.ndarray, tuple[int, int], np.float32]:
    inter = np.count_nonzero(logits > hi_t)
    union = np.count_nonzero(logits > lo_t)
    stab = np.float32(inter / union) if union else np.float32(0.0)
    return logits > t, origin, stab
