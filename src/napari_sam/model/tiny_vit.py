"""MobileSAM's TinyViT image encoder (the ``vit_t`` variant).

A convolutional stem and MBConv stage followed by three stages of windowed
attention blocks with learned per-offset attention biases, then SAM's neck.
Layer names follow MobileSAM's ``tiny_vit_sam.py`` so that ``mobile_sam.pt``
loads strictly.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.common import LayerNorm2d


class Conv2dBN(nn.Sequential):
    """Convolution without bias followed by BatchNorm (children ``c`` and ``bn``)."""

    def __init__(
        self, in_chans: int, out_chans: int, ks: int = 1, stride: int = 1, pad: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution then BatchNorm; in eval mode the (frozen) norm is folded into the kernel."""
        if self.training:
            return super().forward(x)
        conv, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale[:, None, None, None]
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class PatchEmbed(nn.Module):
    """Stem: two stride-2 3x3 convolutions, ``(B, 3, S, S)`` -> ``(B, C, S/4, S/4)``."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block on ``(B, C, H, W)``."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2dBN(chans, hidden, ks=1)
        self.conv2 = Conv2dBN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, chans, ks=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        y = self.conv3(y)
        return F.gelu(y + x)


class PatchMerging(nn.Module):
    """Downsampling between stages: ``(B, L, C)`` or ``(B, C, H, W)`` -> ``(B, L', C')``."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.conv1 = Conv2dBN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks then a patch merging."""

    def __init__(
        self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


def _offset_index(window_size: int) -> torch.Tensor:
    """``(N, N)`` int64 id of the offset ``(|dr|, |dc|)`` between window positions, ``N = ws**2``."""
    points = list(itertools.product(range(window_size), range(window_size)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = [
        offsets.setdefault((abs(p1[0] - p2[0]), abs(p1[1] - p2[1])), len(offsets))
        for p1 in points
        for p2 in points
    ]
    n = len(points)
    return torch.tensor(idxs, dtype=torch.long).view(n, n)


class TinyAttention(nn.Module):
    """Window self-attention with a learned bias per (|dr|, |dc|) offset.

    Input/output ``(B', N, C)`` with ``N = window_size ** 2``.  The qkv
    projection is laid out per head as ``[q_h, k_h, v_h]``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.window_size = window_size
        idxs = _offset_index(window_size)
        # every (|dr|, |dc|) in [0, ws)^2 occurs: ws**2 offsets
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size**2))
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the non-persistent offset index (after ``to_empty``)."""
        self.attention_bias_idxs = _offset_index(self.window_size).to(self.attention_biases.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3, self.key_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (B', heads, N, kd)
        # (1, heads, N, N): a 4-D mask keeps SDPA on its fused kernel (3-D falls back to math)
        bias = self.attention_biases[:, self.attention_bias_idxs].unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TinyMlp(nn.Module):
    """LayerNorm then a two-layer GELU MLP (names ``norm``, ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, depthwise local conv and MLP on ``(B, H*W, C)`` tokens."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = TinyAttention(dim, num_heads, window_size)
        self.mlp = TinyMlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        ws = self.window_size
        if h == ws and w == ws:
            attn = self.attn(x)
        else:
            grid = x.view(b, h, w, c)
            pad_b = (ws - h % ws) % ws
            pad_r = (ws - w % ws) % ws
            if pad_b or pad_r:
                # zero tokens take part in attention, as in MobileSAM
                grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
            hp, wp = h + pad_b, w + pad_r
            nh, nw = hp // ws, wp // ws
            windows = grid.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            windows = self.attn(windows)
            grid = windows.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
            attn = grid[:, :h, :w].reshape(b, n, c)
        x = x + attn
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """An attention stage: TinyViT blocks then an optional patch merging."""

    def __init__(self, blocks: Sequence[TinyViTBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """MobileSAM encoder: ``(B, 3, S, S)`` -> ``(B, out_chans, S/16, S/16)``.

    Parameters
    ----------
    img_size : int
        Input side ``S`` (1024).
    embed_dims, depths, num_heads, window_sizes : sequence of int
        Per-stage width, number of blocks, heads and window side (4 stages).
    mlp_ratio, mbconv_expand_ratio : float
        MLP and MBConv expansion.
    local_conv_size : int
        Kernel of the depthwise conv inside attention blocks.
    num_classes : int
        Width of the (unused) classification head kept for checkpoint compatibility.
    out_chans : int
        Channels of the neck output (256).
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        num_classes: int = 1000,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        n_stages = len(depths)
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        res = img_size // 4
        self.layers = nn.ModuleList()
        for i in range(n_stages):
            # stages halve the resolution except the last merge (stride 1), so the
            # output grid is img_size / 16 as SAM's decoder expects
            scale = 2 ** (i - 1 if i == n_stages - 1 else i)
            resolution = (res // scale, res // scale)
            downsample = None
            if i < n_stages - 1:
                stride = 1 if i == n_stages - 2 else 2
                downsample = PatchMerging(resolution, embed_dims[i], embed_dims[i + 1], stride)
            if i == 0:
                layer: nn.Module = ConvLayer(embed_dims[0], depths[0], mbconv_expand_ratio, downsample)
            else:
                blocks = [
                    TinyViTBlock(
                        embed_dims[i], resolution, num_heads[i], window_sizes[i],
                        mlp_ratio, local_conv_size,
                    )
                    for _ in range(depths[i])
                ]
                layer = BasicLayer(blocks, downsample)
            self.layers.append(layer)
        self.out_resolution = (res // 2 ** (n_stages - 2), res // 2 ** (n_stages - 2))
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a normalised, padded batch ``(B, 3, S, S)`` float32."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        h, w = self.out_resolution
        return self.neck(x.view(b, h, w, c).permute(0, 3, 1, 2))
