"""Building blocks shared by the SAM modules: channel LayerNorm and MLPs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` tensor.

    Parameters
    ----------
    num_channels : int
        Number of channels ``C``.
    eps : float, optional
        Added to the variance, by default ``1e-6`` (as in SAM).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (B, C, H, W) float32 per pixel over C."""
        mean = x.mean(1, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(1, keepdim=True)
        x = centred * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def activate(x: torch.Tensor, act: nn.Module) -> torch.Tensor:
    """``act(x)``, in place on ``x`` for GELU/ReLU when no gradient is needed.

    For the caller's own intermediates only: saves allocating (and
    page-faulting) a second buffer of the same, often large, size.
    """
    if not x.requires_grad:
        if type(act) is nn.GELU:
            return torch._C._nn.gelu_(x, approximate=act.approximate)
        if type(act) is nn.ReLU:
            return torch.relu_(x)
    return act(x)


class MLPBlock(nn.Module):
    """Two linear layers with an activation between (transformer feed-forward).

    Parameters
    ----------
    embedding_dim : int
        Input and output width.
    mlp_dim : int
        Hidden width.
    act : type of nn.Module, optional
        Activation class, by default ``nn.GELU``.
    """

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., embedding_dim)`` to ``(..., embedding_dim)``.

        Without autograd a GELU/ReLU runs in place on the hidden activations
        (for vit_b a 50 MB buffer less per block).
        """
        return self.lin2(activate(self.lin1(x), self.act))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (SAM's decoder heads).

    Parameters
    ----------
    input_dim, hidden_dim, output_dim : int
        Widths of the input, the hidden layers and the output.
    num_layers : int
        Number of linear layers (>= 1).
    sigmoid_output : bool, optional
        Apply a sigmoid to the output, by default False.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        widths_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        widths_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(widths_in, widths_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., input_dim)`` to ``(..., output_dim)``."""
        last = self.num_layers - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return x
