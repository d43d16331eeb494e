"""The :class:`Sam` model: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.catalog import DEFAULT_PIXEL_MEAN, DEFAULT_PIXEL_STD
from napari_sam.model.mask_decoder import MaskDecoder
from napari_sam.model.prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Segment Anything: predicts object masks from an image and prompts.

    Parameters
    ----------
    image_encoder : nn.Module
        Maps a normalised, padded ``(B, 3, S, S)`` batch to ``(B, 256, S/16, S/16)``;
        must have an ``img_size`` attribute (``S``).
    prompt_encoder : PromptEncoder
        Embeds points, boxes and mask inputs.
    mask_decoder : MaskDecoder
        Predicts mask logits and IoU scores.
    pixel_mean, pixel_std : sequence of float, optional
        Per-channel RGB normalisation (ImageNet statistics on 0..255 values).
    config : dict, optional
        The configuration the model was built from (kept for provenance and caches).

    Attributes
    ----------
    mask_threshold : float
        Logit threshold for binary masks (0.0).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        *,
        pixel_mean: Sequence[float] = DEFAULT_PIXEL_MEAN,
        pixel_std: Sequence[float] = DEFAULT_PIXEL_STD,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self._pixel_stats = ([float(v) for v in pixel_mean], [float(v) for v in pixel_std])
        self.register_buffer("pixel_mean", torch.tensor(self._pixel_stats[0]).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(self._pixel_stats[1]).view(-1, 1, 1), False)
        self.config: dict[str, Any] = dict(config) if config is not None else {}

    def reset_buffers(self) -> None:
        """Recompute the non-persistent ``pixel_mean``/``pixel_std`` (after ``to_empty``)."""
        device = self.prompt_encoder.no_mask_embed.weight.device
        self.pixel_mean = torch.tensor(self._pixel_stats[0], device=device).view(-1, 1, 1)
        self.pixel_std = torch.tensor(self._pixel_stats[1], device=device).view(-1, 1, 1)

    @property
    def image_size(self) -> int:
        """Side of the square encoder input (1024 for the official models)."""
        return int(self.image_encoder.img_size)

    @property
    def device(self) -> torch.device:
        """Device holding the model's buffers."""
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise and pad bottom/right to ``image_size``.

        Parameters
        ----------
        x : torch.Tensor
            ``(3, H, W)`` or ``(B, 3, H, W)`` float RGB in 0..255 with
            ``max(H, W) <= image_size`` (already resized).

        Returns
        -------
        torch.Tensor
            ``(..., 3, image_size, image_size)`` float32, a new tensor.
        """
        h, w = x.shape[-2:]
        size = self.image_size
        if h > size or w > size:
            raise ValueError(
                f"Image of shape {tuple(x.shape)} is larger than the model input {size}; "
                "resize it so that its longest side is at most that (the Predictor does this)."
            )
        x = (x.to(torch.float32) - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, size - w, 0, size - h))

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """Low-res logits -> logits at the original image size.

        Parameters
        ----------
        masks : torch.Tensor
            ``(B, C, 256, 256)`` float32 logits from the mask decoder.
        input_size : tuple of int
            ``(h, w)`` of the resized image before padding.
        original_size : tuple of int
            ``(H, W)`` of the original image.

        Returns
        -------
        torch.Tensor
            ``(B, C, H, W)`` float32 logits (threshold at :attr:`mask_threshold`).
        """
        size = self.image_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
