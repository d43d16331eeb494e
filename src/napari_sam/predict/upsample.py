"""Binary masks from low-resolution SAM logits without upsampling every pixel.

SAM's postprocessing upsamples the ``(m, m)`` low-resolution logits bilinearly
to the encoder input size (1024 for the official models), crops the padding
and resizes to the original image size, then thresholds.  For the mask only
the sign of ``logit - threshold`` matters, and a bilinear value is a convex
combination of nearby low-resolution values: where all of them lie on one side
of the threshold, so does the output.  Both resizes are separable and linear,
so every output pixel is a fixed combination of the low-resolution pixels in
the 3 x 3 neighbourhood of one "centre" pixel (checked when the plan is built).

:func:`threshold_upsampled` therefore decides whole blocks at low resolution
(3 x 3 min / max) and computes the exact interpolated value only for output
pixels near the threshold crossing: the same masks as
``upsample(logits) > threshold`` (a pixel can differ only where the logit is
within float rounding of the threshold) and no full-size float image is
written.  Measured for three blob-shaped masks on 2 threads: 8 ms instead of
10 ms at 1024 x 1024, 17-20 ms instead of 39-62 ms at 1500 x 2000 (where the
dense path runs two full-size interpolations); docs/python-api.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["UpsamplePlan", "make_plan", "threshold_polyphase", "threshold_upsampled"]


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-D bilinear taps of ``F.interpolate(size=n_out, align_corners=False)`` (float64).

    Returns ``i0, i1, w0, w1``: output ``o`` is ``w0[o] * x[i0[o]] + w1[o] * x[i1[o]]``.
    """
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    return i0, i1, 1.0 - w1, w1


@dataclass(frozen=True)
class _AxisPlan:
    """One axis: output index -> centre low-res index, and weights of centre - 1, centre, centre + 1."""

    center: torch.Tensor  # (N,) int64
    weights: torch.Tensor  # (N, 3) float32
    outputs_of: torch.Tensor  # (m, R) int64: outputs whose centre is each low-res index, -1 padded
    repeat: int  # r > 0 when centre == output // r for every output (a plain repeat)
    phases: np.ndarray | None = None  # (r, 3) weights of output r*k + j on k-1, k, k+1 (see _phases)


def _axis_plan(m: int, image_size: int, crop: int, n_out: int) -> _AxisPlan | None:
    """Compose ``m -> image_size`` (cropped to ``crop``) and ``crop -> n_out`` on one axis."""
    a0, a1, u0, u1 = _linear_taps(m, image_size)
    if crop == n_out:  # the second resize is the identity (and skipped by the predictor)
        idx = np.stack([a0[:n_out], a1[:n_out]], axis=1)
        wts = np.stack([u0[:n_out], u1[:n_out]], axis=1)
    else:
        b0, b1, v0, v1 = _linear_taps(crop, n_out)
        idx = np.stack([a0[b0], a1[b0], a0[b1], a1[b1]], axis=1)
        wts = np.stack([v0 * u0[b0], v0 * u1[b0], v1 * u0[b1], v1 * u1[b1]], axis=1)
    used = np.where(wts > 0, idx, idx[:, :1])
    lo, hi = used.min(axis=1), used.max(axis=1)
    if np.any(hi - lo > 2):
        return None  # not a 3-neighbourhood (never for SAM's sizes): dense fallback
    # all used taps within centre - 1 .. centre + 1; among the valid centres the
    # one nearest-neighbour resizing would pick (a plain repeat for 4x upsampling)
    nearest = np.minimum((np.arange(n_out) * m) // n_out, m - 1)
    center = np.clip(nearest, hi - 1, lo + 1)
    slot = idx - center[:, None] + 1
    inside = (slot >= 0) & (slot <= 2)  # taps outside have weight 0
    local = np.zeros((n_out, 3))
    np.add.at(local, (np.repeat(np.arange(n_out), idx.shape[1]), np.clip(slot, 0, 2).ravel()),
              np.where(inside, wts, 0.0).ravel())
    counts = np.bincount(center, minlength=m)
    outputs_of = np.full((m, max(1, int(counts.max()))), -1, dtype=np.int64)
    order = np.argsort(center, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n_out) - starts[center[order]]
    outputs_of[center[order], rank] = order
    r = n_out // m
    repeat = r if r in (1, 2, 4, 8) and n_out == r * m and np.array_equal(center, np.arange(n_out) // r) else 0
    return _AxisPlan(
        center=torch.from_numpy(center),
        weights=torch.from_numpy(local.astype(np.float32)),
        outputs_of=torch.from_numpy(outputs_of),
        repeat=repeat,
        phases=_phases(idx, wts, m),
    )


def _phases(idx: np.ndarray, wts: np.ndarray, m: int) -> np.ndarray | None:
    """Per-phase weights when the axis is a plain ``r``-fold upsampling (possibly cropped).

    That is the case when the output size is a multiple of the low-res size
    along the way, e.g. a 1024 x 1024 or 768 x 1024 image for the official
    models (second resize the identity) or 2048 x 2048 (8-fold): output
    ``r*k + j`` is ``w[j] . (x[k-1], x[k], x[k+1])`` with the same ``w[j]`` for
    every ``k`` once the edges are replicated (SAM's clamped source
    coordinates).  ``idx``/``wts`` are the exact taps of every output; checked
    against them, None if they differ anywhere (e.g. a downscaling resize).
    """
    n_out = idx.shape[0]
    exact = np.zeros((n_out, m))
    np.add.at(exact, (np.repeat(np.arange(n_out), idx.shape[1]), idx.ravel()), wts.ravel())
    for r in (1, 2, 4, 8, 16, 32):
        k = np.arange(n_out) // r
        if k[-1] >= m or n_out < 3 * r or m < 3:
            continue
        inner = min(n_out // r - 2, m - 2)  # a block of outputs with no clamping
        taps = np.clip(k[:, None] + np.arange(-1, 2), 0, m - 1)
        phases = exact[np.arange(r * inner, r * inner + r)[:, None], inner + np.arange(-1, 2)]
        approx = np.zeros((n_out, m))
        np.add.at(approx, (np.repeat(np.arange(n_out), 3), taps.ravel()), phases[np.arange(n_out) % r].ravel())
        if np.allclose(exact, approx, rtol=0, atol=1e-9):
            return phases.astype(np.float32)
    return None


@dataclass(frozen=True)
class UpsamplePlan:
    """Precomputed geometry of SAM's postprocessing for one image (see :func:`make_plan`)."""

    low_res: int
    rows: _AxisPlan
    cols: _AxisPlan

    def to(self, device: torch.device) -> UpsamplePlan:
        def move(a: _AxisPlan) -> _AxisPlan:
            return _AxisPlan(a.center.to(device), a.weights.to(device), a.outputs_of.to(device), a.repeat, a.phases)

        return UpsamplePlan(self.low_res, move(self.rows), move(self.cols))

    @property
    def polyphase(self) -> bool:
        """Both axes are crops of plain upsamplings: :func:`threshold_polyphase` applies."""
        return self.rows.phases is not None and self.cols.phases is not None

    @property
    def factor(self) -> int:
        """The larger upsampling factor of the two axes (0 unless :attr:`polyphase`)."""
        return max(len(self.rows.phases), len(self.cols.phases)) if self.polyphase else 0


#: up to this factor :func:`threshold_polyphase` beats the sparse path even for one
#: round mask (4x: 4.6 vs 7.6 ms for three masks); at 8x the sparse path is faster
#: for blob-shaped masks (13 vs 26 ms) and the polyphase path is the fallback
POLYPHASE_MAX_FACTOR = 4


def make_plan(
    low_res: int, image_size: int, input_size: tuple[int, int], original_size: tuple[int, int]
) -> UpsamplePlan | None:
    """Plan for logits ``(K, low_res, low_res)`` of an image resized to ``input_size``.

    Returns None when some output pixel depends on low-resolution pixels
    farther apart than a 3 x 3 neighbourhood (then use the dense path).
    """
    rows = _axis_plan(low_res, image_size, input_size[0], original_size[0])
    cols = _axis_plan(low_res, image_size, input_size[1], original_size[1])
    if rows is None or cols is None:
        return None
    return UpsamplePlan(low_res, rows, cols)


#: above this fraction of output pixels near the threshold, the sparse path is slower than the dense one
DENSE_FRACTION = 0.25


def threshold_upsampled(
    low_res_logits: torch.Tensor, plan: UpsamplePlan, threshold: float
) -> torch.Tensor | None:
    """``upsample(low_res_logits) > threshold`` as ``(K, H, W)`` bool, computed sparsely.

    Returns None when more than :data:`DENSE_FRACTION` of the output pixels
    would need the exact value (noise-like logits, e.g. a random-weight
    model): the dense path is then faster.

    Parameters
    ----------
    low_res_logits : torch.Tensor
        ``(K, m, m)`` float32 with ``m = plan.low_res``.
    plan : UpsamplePlan
    threshold : float

    Returns
    -------
    torch.Tensor or None
        ``(K, H, W)`` bool on the logits' device; None: use the dense path.
    """
    low = low_res_logits.float()
    k, m = low.shape[0], plan.low_res
    if low.shape[1:] != (m, m):
        raise ValueError(f"low-res logits must be (K, {m}, {m}), got {tuple(low.shape)}.")
    rows, cols = plan.rows, plan.cols
    if k == 0:
        return torch.zeros((0, rows.center.numel(), cols.center.numel()), dtype=torch.bool, device=low.device)
    # rounding of a convex combination of float32 values: far below this margin
    scale = float(low.abs().amax()) + abs(threshold) + 1e-30
    margin = 1e-5 * scale
    hi, lo = _max3x3(low), -_max3x3(-low)
    sure = lo > threshold + margin  # every tap above: the output is above
    unsure = (hi >= threshold - margin) & ~sure  # else every tap is below: the output is not above
    # output pixels to compute exactly: those centred on an unsure low-res pixel
    per_pixel = (rows.outputs_of >= 0).sum(1, dtype=torch.float32)[:, None] * (
        (cols.outputs_of >= 0).sum(1, dtype=torch.float32)[None, :])
    unsure &= per_pixel > 0
    n_out = rows.center.numel() * cols.center.numel()
    if float((unsure * per_pixel).sum()) > DENSE_FRACTION * k * n_out:
        return None
    kk, ii, jj = unsure.nonzero(as_tuple=True)
    mask = _expand(sure, rows, cols)
    if kk.numel() == 0:
        return mask
    # the 3 x 3 low-res patch around each unsure centre (edge values replicated;
    # taps outside the image have weight 0)
    p = m + 2
    padded = F.pad(low[:, None], (1, 1, 1, 1), mode="replicate").reshape(-1)
    offsets = (torch.arange(3, device=low.device)[:, None] * p + torch.arange(3, device=low.device)).reshape(-1)
    base = kk * (p * p) + ii * p + jj
    patch = padded.take(base[:, None] + offsets).view(-1, 3, 3)
    out_r = rows.outputs_of[ii]  # (n, R) output rows centred there, -1 padded
    out_c = cols.outputs_of[jj]  # (n, C)
    wr = rows.weights[out_r.clamp(min=0)]  # (n, R, 3)
    wc = cols.weights[out_c.clamp(min=0)]  # (n, C, 3)
    values = torch.bmm(torch.bmm(wr, patch), wc.transpose(1, 2))  # (n, R, C)
    height, width = mask.shape[1:]
    flat = (kk[:, None, None] * height + out_r[:, :, None]) * width + out_c[:, None, :]
    valid = (out_r >= 0)[:, :, None] & (out_c >= 0)[:, None, :]
    mask.view(-1)[flat[valid]] = (values > threshold)[valid]
    return mask


def threshold_polyphase(low_res_logits: torch.Tensor, plan: UpsamplePlan, threshold: float) -> torch.Tensor:
    """``upsample(low_res_logits) > threshold`` for a :attr:`UpsamplePlan.polyphase` plan, densely.

    Every output pixel is computed, as in the official postprocessing, but
    with the upsampling split into its ``r`` phases per axis: each phase is
    one weighted sum of shifted views of the (edge-replicated) low-res logits,
    written straight into its strided place in the output.  The columns are
    upsampled first on the small grid, then the rows (whole output rows per
    write); on the CPU the threshold runs in NumPy (about twice as fast as
    torch's comparison here).  For three 256 -> 1024 masks on 2 threads:
    about 4 ms instead of 10-12 ms for ``F.interpolate`` and the threshold,
    for noise-like and blob-like logits alike.  Equal to the dense result
    except where a logit is within float rounding of the threshold.

    Parameters
    ----------
    low_res_logits : torch.Tensor
        ``(K, m, m)`` float32 with ``m = plan.low_res``.
    plan : UpsamplePlan
        With ``plan.polyphase`` true.
    threshold : float

    Returns
    -------
    torch.Tensor
        ``(K, H, W)`` bool on the logits' device.
    """
    low = low_res_logits.float()
    k, m = low.shape[0], plan.low_res
    if low.shape[1:] != (m, m):
        raise ValueError(f"low-res logits must be (K, {m}, {m}), got {tuple(low.shape)}.")
    if not plan.polyphase:
        raise ValueError("this plan is not a plain upsampling on both axes; use threshold_upsampled.")
    rows, cols = plan.rows, plan.cols
    height, width = rows.center.numel(), cols.center.numel()
    if k == 0:
        return torch.zeros((0, height, width), dtype=torch.bool, device=low.device)
    padded = F.pad(low[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]  # (K, m+2, m+2)
    rc, nc = len(cols.phases), -(-width // len(cols.phases))
    wide = low.new_empty((k, m + 2, nc, rc))
    for j, w in enumerate(cols.phases):
        _combine([padded[:, :, t : t + nc] for t in range(3)], w, wide[..., j])
    wide = wide.view(k, m + 2, nc * rc)[:, :, :width]
    rr, nr = len(rows.phases), -(-height // len(rows.phases))
    full = low.new_empty((k, nr, rr, width))
    for j, w in enumerate(rows.phases):
        _combine([wide[:, t : t + nr] for t in range(3)], w, full[:, :, j])
    full = full.view(k, nr * rr, width)[:, :height]
    if full.device.type == "cpu":
        return torch.from_numpy(np.greater(full.numpy(), np.float32(threshold)))
    return full > threshold


def _combine(taps: list[torch.Tensor], weights: np.ndarray, out: torch.Tensor) -> None:
    """``out = sum(w * t)`` over the taps with non-zero weight, in as few passes as possible."""
    used = [(t, float(w)) for t, w in zip(taps, weights) if w != 0]
    if len(used) == 1:
        out.copy_(used[0][0]).mul_(used[0][1])
    elif len(used) == 2:  # a convex pair: one lerp
        (a, wa), (b, wb) = used
        torch.lerp(a, b, wb / (wa + wb), out=out)
    else:
        torch.mul(used[0][0], used[0][1], out=out)
        for t, w in used[1:]:
            out.add_(t, alpha=w)


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """Maximum over each 3 x 3 neighbourhood of ``(K, m, m)`` (edges replicated)."""
    p = F.pad(x[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    r = torch.maximum(torch.maximum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
    return torch.maximum(torch.maximum(r[:, :, :-2], r[:, :, 1:-1]), r[:, :, 2:])


_REPEAT_DTYPE = {2: (torch.int16, 0x0101), 4: (torch.int32, 0x01010101), 8: (torch.int64, 0x0101010101010101)}


def _expand(low_mask: torch.Tensor, rows: _AxisPlan, cols: _AxisPlan) -> torch.Tensor:
    """``low_mask[:, rows.center][:, :, cols.center]`` for ``(K, m, m)`` bool, fast for plain repeats."""
    k, m = low_mask.shape[:2]
    if cols.repeat in _REPEAT_DTYPE:  # repeat each byte r times with one integer multiply
        dtype, ones = _REPEAT_DTYPE[cols.repeat]
        wide = (low_mask.to(dtype) * ones).view(torch.uint8).view(torch.bool).view(k, m, -1)
    elif cols.repeat == 1:
        wide = low_mask
    else:
        wide = low_mask.index_select(2, cols.center)
    if rows.repeat:
        r = rows.repeat
        return wide[:, :, None].expand(k, m, r, wide.shape[2]).reshape(k, m * r, -1).clone()
    return wide.index_select(1, rows.center)
