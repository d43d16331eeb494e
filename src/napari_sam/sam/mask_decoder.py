"""SAM's mask decoder: image embedding + prompt tokens -> mask logits and IoU scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.sam.common import MLP, LayerNorm2d, activate
from napari_sam.sam.transformer import TwoWayTransformer


@dataclass(frozen=True)
class DecoderImageCache:
    """Prompt-independent decoder state of one image (see :meth:`MaskDecoder.prepare_image`).

    Attributes
    ----------
    prepared : dict
        :meth:`TwoWayTransformer.prepare_image` output: channels-last image
        tokens ``(b, h*w, C)``, their positional encoding and the first block's
        image-side projections.
    batch : int
        ``b``: 1 (shared by every prompt set) or the number of prompt sets.
    size : (int, int)
        ``(h, w)`` of the embedding grid.
    """

    prepared: dict
    batch: int
    size: tuple[int, int]


class MaskDecoder(nn.Module):
    """Predict low-resolution masks and their quality.

    Parameters
    ----------
    transformer_dim : int
        Token width (256).
    transformer : TwoWayTransformer
        The two-way transformer.
    num_multimask_outputs : int, optional
        Masks returned in multimask mode, by default 3.
    iou_head_depth, iou_head_hidden_dim : int, optional
        Geometry of the IoU-prediction MLP, by default 3 and 256.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor | None,
        image_pe: torch.Tensor | None,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor | None,
        multimask_output: bool,
        *,
        image_cache: DecoderImageCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks (the official signature, plus an optional per-image cache).

        Parameters
        ----------
        image_embeddings : torch.Tensor
            ``(1, C, h, w)`` (shared by all prompts) or ``(B, C, h, w)`` float32.
        image_pe : torch.Tensor
            ``(1, C, h, w)`` dense positional encoding.
        sparse_prompt_embeddings : torch.Tensor
            ``(B, N, C)``.
        dense_prompt_embeddings : torch.Tensor
            ``(B, C, h, w)`` or ``(1, C, h, w)``.
        multimask_output : bool
            Return the ``num_multimask_outputs`` masks (True) or the single one.
        image_cache : DecoderImageCache, optional
            :meth:`prepare_image` of ``(image_embeddings, image_pe,
            dense_prompt_embeddings)``; when given, those three are not used
            (pass None) and the image-only work is not repeated.  Same results.

        Returns
        -------
        masks : torch.Tensor
            ``(B, M, 4h, 4w)`` float32 logits, ``M`` = 3 or 1.
        iou_pred : torch.Tensor
            ``(B, M)`` float32 predicted IoU.
        """
        if image_cache is None:
            self._check_batch(image_embeddings, sparse_prompt_embeddings)
            image_cache = self.prepare_image(image_embeddings, image_pe, dense_prompt_embeddings)
        # only the returned masks are upscaled (the others are dropped anyway)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return self._predict_prepared(image_cache, sparse_prompt_embeddings, sl)

    @staticmethod
    def _check_batch(image_embeddings: torch.Tensor, sparse_prompt_embeddings: torch.Tensor) -> None:
        bs = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] not in (1, bs):
            raise ValueError(
                f"image_embeddings has batch {image_embeddings.shape[0]} but there are {bs} "
                "prompt sets; pass one embedding or one per prompt set."
            )

    def prepare_image(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> DecoderImageCache:
        """Compute the prompt-independent part of the decoder once per image.

        With no mask prompt the dense prompt embedding is the same for every
        click, so the image tokens, their positional encoding and the first
        transformer block's image projections can be reused by every
        decoding call until the image changes: pass it as
        ``forward(..., image_cache=cache)``.

        Parameters
        ----------
        image_embeddings : torch.Tensor
            ``(1, C, h, w)`` or ``(B, C, h, w)`` float32.
        image_pe : torch.Tensor
            ``(1, C, h, w)`` dense positional encoding (``get_dense_pe()``).
        dense_prompt_embeddings : torch.Tensor
            ``(1, C, h, w)`` (e.g. the "no mask" embedding) or ``(B, C, h, w)``.

        Returns
        -------
        DecoderImageCache
        """
        dense = dense_prompt_embeddings
        if dense.shape[0] > 1 and dense.stride(0) == 0:
            dense = dense[:1]  # the same "no mask" embedding for every prompt set
        # batch 1 here when one image and no mask inputs: the transformer then
        # shares the image-only work across all prompt sets instead of copying
        src = image_embeddings + dense
        h, w = src.shape[2:]
        prepared = self.transformer.prepare_image(src, image_pe)
        return DecoderImageCache(prepared=prepared, batch=src.shape[0], size=(int(h), int(w)))

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks ``(B, M+1, 4h, 4w)`` and IoUs ``(B, M+1)``."""
        self._check_batch(image_embeddings, sparse_prompt_embeddings)
        cache = self.prepare_image(image_embeddings, image_pe, dense_prompt_embeddings)
        return self._predict_prepared(cache, sparse_prompt_embeddings, slice(None))

    def _predict_prepared(
        self, cache: DecoderImageCache, sparse_prompt_embeddings: torch.Tensor, outputs: slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks ``(B, M', 4h, 4w)`` and IoUs ``(B, M')`` of the mask tokens ``outputs``."""
        bs = sparse_prompt_embeddings.shape[0]
        if cache.batch not in (1, bs):
            raise ValueError(
                f"the prepared image has batch {cache.batch} but there are {bs} prompt sets; "
                "prepare one image or one per prompt set."
            )
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(bs, -1, -1), sparse_prompt_embeddings], dim=1
        )
        h, w = cache.size
        hs, keys = self.transformer.forward_prepared(cache.prepared, tokens)
        if keys.shape[0] != bs:  # depth-0 transformer: nothing made the keys per prompt
            keys = keys.expand(bs, -1, -1)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        wanted = range(self.num_mask_tokens)[outputs]
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in wanted], dim=1
        )  # (B, M', C/8)
        masks = self._upscale_and_project(keys, hyper_in, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)[:, outputs]
        return masks, iou_pred

    def _upscale_and_project(
        self, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int
    ) -> torch.Tensor:
        """``output_upscaling`` then the dot product with ``hyper_in``, channels-last.

        Each 2x2 stride-2 transposed convolution is one matrix product per input
        pixel.  The rows of the first one's output are reordered to
        ``(B, i, a, j, b)`` (pixel ``(2i + a, 2j + b)``, moving blocks of
        ``2 * C/4`` values), and the second one is split by its kernel row
        ``c``: the mask logits of output row ``4i + 2a + c`` then come out of
        the products already in raster order, so no per-pixel permutation of
        the logits is needed.

        Parameters
        ----------
        keys : torch.Tensor
            ``(B, h*w, C)`` image tokens from the transformer.
        hyper_in : torch.Tensor
            ``(B, M, C/8)`` per-mask weights.

        Returns
        -------
        torch.Tensor
            ``(B, M, 4h, 4w)`` float32 mask logits.
        """
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        b, _, c = keys.shape
        c1, c2 = conv1.out_channels, conv2.out_channels
        m = hyper_in.shape[1]
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)  # columns (a, b, channel)
        y = torch.addmm(conv1.bias.repeat(4), keys.reshape(b * h * w, c), w1)
        y = y.view(b, h, w, 2, 2 * c1).transpose(2, 3).reshape(-1, c1)  # rows (B, i, a, j, b)
        y = activate(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps), act1)
        w2 = conv2.weight.permute(0, 2, 3, 1)  # (c1, kernel row, kernel col, c2)
        bias2 = conv2.bias.repeat(2)
        rows = []
        for k in range(2):  # kernel row: output row 4i + 2a + k
            z = activate(torch.addmm(bias2, y, w2[:, k].reshape(c1, 2 * c2)), act2)
            z = z.view(b, -1, c2)  # rows (i, a, j, b, kernel col): raster order of row 4i + 2a + k
            if b == 1:
                plane = torch.mm(hyper_in[0], z[0].t())[None]
            else:
                plane = torch.bmm(hyper_in, z.transpose(1, 2))
            rows.append(plane.view(b, m, h, 2, 4 * w))
        return torch.stack(rows, dim=4).view(b, m, 4 * h, 4 * w)
