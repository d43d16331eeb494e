"""SAM's ViT image encoder (ViTDet-style backbone used by vit_b / vit_l / vit_h).

Patch embedding, absolute position embedding, transformer blocks with windowed
or global attention and decomposed relative positions, and a convolutional
neck.  Tokens are kept channels-last, ``(B, H, W, C)``, between blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.common import LayerNorm2d, MLPBlock

#: bytes of relative-position bias materialised at once by :class:`Attention`
_BIAS_BUDGET = 256 * 2**20


class _Scratch(threading.local):
    """Per-thread bias buffer shared by all attention calls of one encoder forward."""

    depth = 0
    buffer: torch.Tensor | None = None


_scratch = _Scratch()


@contextmanager
def bias_scratch() -> Iterator[None]:
    """Reuse one relative-position bias buffer inside this block (one thread).

    Each global-attention block of vit_b materialises 805 MB of bias in
    ``_BIAS_BUDGET`` pieces; freshly allocated, every piece comes from ``mmap``
    and is page-faulted in again (about 2.4 GB of page faults and 1 s per
    ``set_image``).  Inside this context the pieces of all blocks share one
    buffer, which is released when the outermost context exits.  Safe on one
    device stream: each SDPA call consumes its bias before the next is written.
    """
    _scratch.depth += 1
    try:
        yield
    finally:
        _scratch.depth -= 1
        if _scratch.depth == 0:
            _scratch.buffer = None


def _exporting() -> bool:
    """True while the model is traced or exported (ONNX, OpenVINO, ``torch.export``).

    Graph capture needs plain out-of-place operations: the in-place residuals,
    scratch buffers and row-blocked bias below are eager-mode memory savings
    with the same results.
    """
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _bias_buffer(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A contiguous ``shape`` tensor: a view of the scratch buffer inside :func:`bias_scratch`."""
    numel = 1
    for n in shape:
        numel *= n
    if _scratch.depth == 0:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    buf = _scratch.buffer
    if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
        buf = _scratch.buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``(B, 3, H, W)`` -> ``(B, H/p, W/p, C)``."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis.

    Parameters
    ----------
    q_size, k_size : int
        Number of query and key positions along the axis.
    rel_pos : torch.Tensor
        (L, C) float32 table; linearly resampled when ``L != 2 * max(q, k) - 1``.

    Returns
    -------
    torch.Tensor
        (q_size, k_size, C) float32.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


class Attention(nn.Module):
    """Multi-head self-attention on a ``(B, H, W, C)`` grid with decomposed relative positions.

    The relative-position term ``q . R_h[qh, kh] + q . R_w[qw, kw]`` is passed to
    :func:`torch.nn.functional.scaled_dot_product_attention` as an additive bias.

    Parameters
    ----------
    dim : int
        Channels ``C``.
    num_heads : int
        Number of heads (divides ``dim``).
    qkv_bias : bool
        Bias in the qkv projection.
    use_rel_pos : bool
        Add decomposed relative positions.
    input_size : tuple of int or None
        Grid size ``(H, W)`` the relative tables are sized for.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is needed for relative position embeddings.")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def _rel_pos_terms(
        self, q: torch.Tensor, h: int, w: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q . R_h`` (B', heads, h, w, h) and ``q . R_w`` (B', heads, h, w, w) for ``q`` (B', heads, h*w, hd)."""
        r_h = get_rel_pos(h, h, self.rel_pos_h)  # (h, h, hd)
        r_w = get_rel_pos(w, w, self.rel_pos_w)  # (w, w, hd)
        q_grid = q.reshape(q.shape[0], self.num_heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, r_h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, r_w)
        return rel_h, rel_w

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """SDPA over an ``h x w`` grid with the decomposed relative-position bias.

        The ``(N, N)`` bias is built for blocks of query rows at a time (at most
        ``_BIAS_BUDGET`` bytes), which bounds memory for global attention
        (805 MB for vit_b, 1.07 GB for vit_h in one piece) at no cost in speed.
        """
        if not self.use_rel_pos:
            return F.scaled_dot_product_attention(q, k, v)
        b, heads, n, _ = q.shape
        rel_h, rel_w = self._rel_pos_terms(q, h, w)
        rows = max(1, _BIAS_BUDGET // (b * heads * w * n * 4))
        if rows >= h or _exporting():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=_bias(rel_h, rel_w))
        out = torch.empty_like(q)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            out[:, :, r0 * w : r1 * w] = F.scaled_dot_product_attention(
                q[:, :, r0 * w : r1 * w], k, v, attn_mask=_bias(rel_h[:, :, r0:r1], rel_w[:, :, r0:r1])
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global attention: ``(B, H, W, C)`` -> ``(B, H, W, C)`` float32."""
        b, h, w, c = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd)
        out = self._attend(q, k, v, h, w)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))

    def _qkv_bias(self, like: torch.Tensor) -> torch.Tensor:
        """The qkv projection's bias (zeros without one); a dynamically quantised Linear returns it from a method."""
        bias = self.qkv.bias
        if callable(bias):
            bias = bias()
        return like.new_zeros(like.shape[-1]) if bias is None else bias.to(like.dtype)

    def forward_windows(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """Attention inside non-overlapping windows: ``(B, H, W, C)`` -> ``(B, H, W, C)``.

        Computes what SAM computes (zero-pad the normalised tokens to a multiple of
        the window, attend per window, crop) without projecting the padding: a
        zero token's q/k/v is the qkv bias, so the projected grid is padded with
        that bias instead, and the output projection runs on kept tokens only.
        """
        b, h, w, c = x.shape
        ws = window_size
        nh, nw = -(-h // ws), -(-w // ws)
        hp, wp = nh * ws, nw * ws
        qkv = self.qkv(x)  # (B, H, W, 3C)
        if (hp != h or wp != w) and _exporting():
            pad_value = self._qkv_bias(qkv)
            qkv = torch.cat([qkv, pad_value.expand(b, h, wp - w, 3 * c)], dim=2)
            qkv = torch.cat([qkv, pad_value.expand(b, hp - h, wp, 3 * c)], dim=1)
        elif hp != h or wp != w:
            padded = qkv.new_empty((b, hp, wp, 3 * c))
            pad_value = self._qkv_bias(qkv)
            padded[:, h:] = pad_value
            padded[:, :h, w:] = pad_value
            padded[:, :h, :w] = qkv
            qkv = padded
        hd = c // self.num_heads
        # (B, nh, ws, nw, ws, 3, heads, hd) -> (3, B*nh*nw, heads, ws*ws, hd)
        qkv = qkv.view(b, nh, ws, nw, ws, 3, self.num_heads, hd).permute(5, 0, 1, 3, 6, 2, 4, 7)
        q, k, v = qkv.reshape(3, b * nh * nw, self.num_heads, ws * ws, hd).unbind(0)
        out = self._attend(q, k, v, ws, ws)
        # (B, nh, nw, heads, ws, ws, hd) -> (B, nh, ws, nw, ws, heads, hd) -> (B, Hp, Wp, C)
        out = out.view(b, nh, nw, self.num_heads, ws, ws, hd).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(b, hp, wp, c)
        if hp != h or wp != w:
            out = out[:, :h, :w]
        return self.proj(out)


def _bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """Relative-position bias ``(B, heads, rows * w, kh * kw)`` from its two terms.

    ``rel_h`` ``(B, heads, rows, w, kh)`` and ``rel_w`` ``(B, heads, rows, w, kw)``
    (einsum outputs, generally not contiguous).  Without autograd the sum is
    written straight into a contiguous buffer: a plain broadcast sum would
    follow the inputs' strides and then be copied once more by the reshape
    (about 1 s of a vit_b ``set_image``).
    """
    b, heads, rows, w, kh = rel_h.shape
    kw = rel_w.shape[-1]
    if _exporting() or (torch.is_grad_enabled() and (rel_h.requires_grad or rel_w.requires_grad)):
        return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, heads, rows * w, kh * kw)
    out = _bias_buffer((b, heads, rows, w, kh, kw), rel_h)
    torch.add(rel_h.unsqueeze(-1), rel_w.unsqueeze(-2), out=out)
    return out.view(b, heads, rows * w, kh * kw)


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``(B, H, W, C)`` into zero-padded windows ``(B * nW, ws, ws, C)``.

    Returns the windows and the padded size ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: back to ``(B, H, W, C)`` without padding."""
    hp, wp = pad_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    b = windows.shape[0] // (nh * nw)
    x = windows.view(b, nh, nw, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``.

        ``inplace=True`` (no autograd; the encoder's own intermediates) adds the
        residuals into ``x`` instead of allocating two more token grids.
        """
        y = self.norm1(x)
        if self.window_size > 0:
            y = self.attn.forward_windows(y, self.window_size)
        else:
            y = self.attn(y)
        if inplace:
            x += y
            return x.add_(self.mlp(self.norm2(x)))
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's ViT encoder: ``(B, 3, img_size, img_size)`` -> ``(B, out_chans, img/p, img/p)``.

    Parameters
    ----------
    img_size, patch_size, embed_dim, depth, num_heads : int
        ViT geometry.
    mlp_ratio : float
        Hidden width of the feed-forward relative to ``embed_dim``.
    out_chans : int
        Channels of the neck output (256 for SAM).
    window_size : int
        Side of the attention windows (0: global everywhere).
    global_attn_indexes : sequence of int
        Blocks that use global attention.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] | list[int] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a normalised, padded batch ``(B, 3, S, S)`` float32."""
        # pos_embed first: the sum takes its channels-last layout.  With the permuted
        # conv output first, the token grid would be stored channel-major, and every
        # residual add and LayerNorm of every block would run on transposed memory
        # (about 1.5 s of a vit_b set_image).
        x = torch.add(self.pos_embed, self.patch_embed(x))
        # x is ours from here on: its residuals can be added in place (not while exporting a graph)
        inplace = not (torch.is_grad_enabled() and x.requires_grad) and not _exporting()
        with bias_scratch():
            for blk in self.blocks:
                x = blk(x, inplace=inplace)
        return self.neck(x.permute(0, 3, 1, 2))
