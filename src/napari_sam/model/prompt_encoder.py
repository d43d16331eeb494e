"""SAM's prompt encoder: points, boxes and low-res masks -> sparse and dense embeddings.

Coordinates here are SAM's ``(x, y)`` in the padded model-input frame
(``image_size`` pixels square); conversion from ``(row, col)`` happens in the
predictor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_sam.model.common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of 2-D coordinates with a fixed random Gaussian matrix.

    Parameters
    ----------
    num_pos_feats : int
        Number of frequencies; the encoding has ``2 * num_pos_feats`` channels.
    scale : float, optional
        Standard deviation of the random frequencies, by default 1.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode ``(..., 2)`` coordinates normalised to [0, 1] -> ``(..., 2F)``."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = (2 * math.pi) * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of pixel centres of an ``(h, w)`` grid -> ``(2F, h, w)``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords_xy: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode ``(B, N, 2)`` pixel ``(x, y)`` in a ``(H, W)`` frame -> ``(B, N, 2F)``."""
        size_xy = torch.tensor(
            [float(image_size[1]), float(image_size[0])], device=coords_xy.device
        )
        return self._pe_encoding(coords_xy.float() / size_xy)


class PromptEncoder(nn.Module):
    """Embed prompts for SAM's mask decoder.

    Parameters
    ----------
    embed_dim : int
        Prompt embedding width (256).
    image_embedding_size : tuple of int
        ``(h, w)`` of the image embedding (64, 64).
    input_image_size : tuple of int
        ``(H, W)`` of the padded model input (1024, 1024).
    mask_in_chans : int
        Hidden channels of the mask downscaler (16).
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, ``(1, embed_dim, h, w)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points_xy: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points_xy = points_xy.float() + 0.5  # centre of the pixel
        if pad:
            b = points_xy.shape[0]
            points_xy = torch.cat([points_xy, points_xy.new_zeros((b, 1, 2))], dim=1)
            labels = torch.cat([labels, labels.new_full((b, 1), -1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points_xy, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, self.not_a_point_embed.weight, emb)
        emb = emb + (lab == 0) * self.point_embeddings[0].weight
        emb = emb + (lab == 1) * self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        corners = (boxes_xyxy.float() + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_emb = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return emb + corner_emb

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Parameters
        ----------
        points : tuple of torch.Tensor or None
            ``(coords_xy (B, N, 2) float, labels (B, N) int)`` in the model-input
            frame; labels 1 foreground, 0 background, -1 padding.
        boxes : torch.Tensor or None
            ``(B, 4)`` float ``(x0, y0, x1, y1)`` in the model-input frame.
        masks : torch.Tensor or None
            ``(B, 1, 4h, 4w)`` float low-res mask logits.

        Returns
        -------
        sparse : torch.Tensor
            ``(B, N', embed_dim)`` float32.
        dense : torch.Tensor
            ``(B, embed_dim, h, w)`` float32.
        """
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        weight = self.no_mask_embed.weight
        parts = [weight.new_empty((bs, 0, self.embed_dim))]
        if points is not None:
            parts.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        sparse = torch.cat(parts, dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
