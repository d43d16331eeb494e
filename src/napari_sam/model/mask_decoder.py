"""SAM's mask decoder: image embedding + prompt tokens -> mask logits and IoU scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.common import MLP, LayerNorm2d, activate
from napari_sam.model.transformer import TwoWayTransformer

#: Largest rank of :meth:`MaskDecoder._first_upscaling_low_rank`, as a fraction
#: of the token width, for which it replaces the direct product (vit_b, 2
#: threads: rank 116 of 256, one click or one box, 2.7 ms against 4.3-6 ms).
LOW_RANK_LIMIT = 0.6

#: Prompt sets decoded together against a shared image are split into groups
#: whose per-prompt image tokens (``h * w * C`` float32 each) fill about this
#: many bytes per torch thread, so that the decoder's many passes over them
#: stay in the cores' caches (the built-in model: 8 prompts per thread; vit_b:
#: 1 prompt up to 2 threads).  Each prompt set's result does not depend on the
#: others, so the split changes nothing but speed (and float rounding, where
#: the matrix library picks another kernel).
PROMPT_GROUP_BYTES = 2 * 2**20


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
    upscale_image : torch.Tensor or None
        ``(h*w, 4 * C/4)``: the image tokens times the first upscaling
        convolution folded with the transformer's key norms (see
        :meth:`MaskDecoder._first_upscaling_low_rank`); computed for a shared
        image (``b`` 1) when no gradient is recorded, else None.
    """

    prepared: dict
    batch: int
    size: tuple[int, int]
    upscale_image: torch.Tensor | None = None


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
        min_iou: float | None = None,
    ) -> tuple[torch.Tensor, ...]:
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
        min_iou : float, optional
            Upscale masks only for the prompt sets with at least one returned
            predicted IoU ``> min_iou`` (the IoU needs the transformer only;
            the upscaling is the larger half of the work per prompt).  The
            masks of those prompt sets are the same as without ``min_iou``.

        Returns
        -------
        masks : torch.Tensor
            ``(B, M, 4h, 4w)`` float32 logits, ``M`` = 3 or 1; with ``min_iou``
            ``(K, M, 4h, 4w)``, the kept prompt sets only.
        iou_pred : torch.Tensor
            ``(B, M)`` float32 predicted IoU (every prompt set).
        kept : torch.Tensor
            Only with ``min_iou``: ``(K,)`` int64 indices of the prompt sets of ``masks``.
        """
        if image_cache is None:
            self._check_batch(image_embeddings, sparse_prompt_embeddings)
            image_cache = self.prepare_image(image_embeddings, image_pe, dense_prompt_embeddings)
        # only the returned masks are upscaled (the others are dropped anyway)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou_pred, kept = self._predict_grouped(image_cache, sparse_prompt_embeddings, sl, min_iou)
        return (masks, iou_pred) if min_iou is None else (masks, iou_pred, kept)

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
        upscale_image = None
        if src.shape[0] == 1 and len(self.transformer.layers) and not torch.is_grad_enabled():
            upscale_image = torch.mm(prepared["keys"][0], self._folded_upscaling()[0])
        return DecoderImageCache(
            prepared=prepared, batch=src.shape[0], size=(int(h), int(w)), upscale_image=upscale_image
        )

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
        return self._predict_grouped(cache, sparse_prompt_embeddings, slice(None), None)[:2]

    def _predict_grouped(
        self, cache: DecoderImageCache, sparse_prompt_embeddings: torch.Tensor, outputs: slice,
        min_iou: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`_predict_prepared` over groups of prompt sets (see :data:`PROMPT_GROUP_BYTES`)."""
        bs = sparse_prompt_embeddings.shape[0]
        if cache.batch not in (1, bs):
            raise ValueError(
                f"the prepared image has batch {cache.batch} but there are {bs} prompt sets; "
                "prepare one image or one per prompt set."
            )
        h, w = cache.size
        group = max(1, PROMPT_GROUP_BYTES * torch.get_num_threads() // (4 * h * w * self.transformer_dim))
        if cache.batch != 1 or bs <= group:
            return self._predict_prepared(cache, sparse_prompt_embeddings, outputs, min_iou)
        m = len(range(self.num_mask_tokens)[outputs])
        masks = sparse_prompt_embeddings.new_empty(bs, m, 4 * h, 4 * w)  # filled group by group, no copy
        ious, kept, n = [], [], 0
        for i in range(0, bs, group):
            part = self._predict_prepared(cache, sparse_prompt_embeddings[i : i + group], outputs, min_iou,
                                          out=masks[n:])
            n += part[0].shape[0]
            ious.append(part[1])
            if min_iou is not None:
                kept.append(part[2] + i)
        return masks[:n], torch.cat(ious), torch.cat(kept) if min_iou is not None else None

    def _predict_prepared(
        self, cache: DecoderImageCache, sparse_prompt_embeddings: torch.Tensor, outputs: slice,
        min_iou: float | None = None,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Masks ``(B, M', 4h, 4w)``, IoUs ``(B, M')`` of the mask tokens ``outputs`` (batch checked).

        With ``min_iou``, masks only for the prompt sets with an IoU above it,
        and their indices (else None).  ``out``, if given, receives the masks
        in its first rows (it must have enough).
        """
        bs = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(bs, -1, -1), sparse_prompt_embeddings], dim=1
        )
        h, w = cache.size
        record = [] if cache.upscale_image is not None else None
        wanted = range(self.num_mask_tokens)[outputs]
        # the transformer's last step (each token on its own) only for the IoU token and wanted mask tokens
        hs, keys = self.transformer.forward_prepared(cache.prepared, tokens, record, [0, *(1 + i for i in wanted)])
        if keys.shape[0] != bs:  # depth-0 transformer: nothing made the keys per prompt
            keys = keys.expand(bs, -1, -1)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, outputs]
        kept = None
        if min_iou is not None:
            kept = torch.nonzero((iou_pred > min_iou).any(dim=1)).view(-1)
            if len(kept) < bs:
                hs, keys, record = hs[kept], keys[kept], _select(record, kept, bs)
                bs = len(kept)
            if bs == 0:
                return keys.new_empty(0, iou_pred.shape[1], 4 * h, 4 * w), iou_pred, kept
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](hs[:, 1 + j, :]) for j, i in enumerate(wanted)], dim=1
        )  # (B, M', C/8)
        first = self._first_upscaling_low_rank(cache, record, bs)
        masks = self._upscale_and_project(keys, hyper_in, h, w, first, out=None if out is None else out[:bs])
        return masks, iou_pred, kept

    def _folded_upscaling(self) -> list[torch.Tensor]:
        """``M_i = diag(g_i) ... diag(g_last) W`` for every block ``i``, then ``W`` itself.

        ``W`` ``(C, 4 * C/4)`` is the first upscaling convolution as a matrix
        (columns: kernel row, kernel column, channel) and ``g_i`` the weight of
        block ``i``'s key norm (``norm4``).
        """
        conv1 = self.output_upscaling[0]
        mats = [conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1)]
        for layer in reversed(self.transformer.layers):
            mats.append(layer.norm4.weight[:, None] * mats[-1])
        return mats[::-1]

    def _first_upscaling_low_rank(
        self, cache: DecoderImageCache, record: list | None, batch: int
    ) -> torch.Tensor | None:
        """The first upscaling product ``keys @ W + bias`` without the ``C x C`` product per prompt.

        Every transformer block updates the image tokens by a layer norm of a
        low-rank change: ``keys_i = r_i (keys_{i-1} + A_i V_i - mu_i) g_i + b_i``
        (per token: ``r_i`` the norm's inverse deviation, ``mu_i`` its mean;
        ``A_i`` the ``(N, heads * prompt tokens)`` attention weights, ``V_i``
        their values; ``keys_{-1}`` the image tokens).  Unrolled, with
        ``s_i = r_i r_{i+1} ... r_last`` and ``M_i`` from :meth:`_folded_upscaling`::

            keys_last @ W = s_0 (image @ M_0)
                            + sum_i s_i (A_i (V_i M_i) - mu_i (1^T M_i)) + s_{i+1} (b_i M_{i+1})

        ``image @ M_0`` is the cached ``upscale_image``; the rest is one product
        of rank ``sum_i (heads * tokens + 2) + 1`` (e.g. 116 for one click
        against the ``C`` = 256 of the direct product).  Equal to the direct
        product up to float rounding.  None when the cache or the record does
        not allow it, or when the rank exceeds ``LOW_RANK_LIMIT`` times ``C``
        (more prompt tokens, or few channels as in the built-in model): the
        caller then multiplies the keys.

        Returns
        -------
        torch.Tensor or None
            ``(batch * N, 4 * C/4)`` float32, rows in token order.
        """
        if cache.upscale_image is None or not record or any(r is None for r in record):
            return None
        layers = self.transformer.layers
        rank = sum(r[0].shape[1] + 2 for r in record)
        if rank > LOW_RANK_LIMIT * self.transformer_dim:  # no faster than the direct product
            return None
        mats = self._folded_upscaling()
        n = cache.upscale_image.shape[0]
        rows, cols = [], []  # (B, k, N) coefficients and (B, k, 4 C/4) their rows
        const = self.output_upscaling[0].bias.repeat(4) + layers[-1].norm4.bias @ mats[-1]
        later = None  # s_{i+1}, (B, N, 1); None for the last block (1)
        for i in range(len(layers) - 1, -1, -1):
            attn, values, mean, rstd = record[i]
            scale = rstd if later is None else rstd * later
            scale_t = scale.transpose(1, 2)
            rows += [attn * scale_t, -mean.transpose(1, 2) * scale_t]
            cols += [torch.matmul(values, mats[i]), mats[i].sum(0).view(1, 1, -1)]
            if later is not None:
                rows.append(later.transpose(1, 2))
                cols.append((layers[i].norm4.bias @ mats[i + 1]).view(1, 1, -1))
            later = scale
        rows.append(torch.ones(1, 1, n, dtype=const.dtype, device=const.device))
        cols.append(const.view(1, 1, -1))
        coeffs = torch.cat([r.expand(batch, -1, n) for r in rows], dim=1)
        products = torch.cat([c.expand(batch, -1, c.shape[-1]) for c in cols], dim=1)
        if batch == 1:
            out = torch.mm(coeffs[0].t(), products[0]).unsqueeze(0)
        else:
            out = torch.bmm(coeffs.transpose(1, 2), products)
        out.addcmul_(cache.upscale_image, later)
        return out.view(batch * n, -1)

    def _upscale_and_project(
        self, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int, first: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``output_upscaling`` then the dot product with ``hyper_in``, channels-last.

        Each 2x2 stride-2 transposed convolution is one matrix product per input
        pixel.  The features stay in the order the products leave them (rows
        ``(B, i, j, a, b)`` after the first, pixel ``(2i + a, 2j + b)``; the
        layer norm and GELU are per row, so they need no reordering); the
        second product is split by its kernel row ``k`` and only its mask
        logits, 32x smaller than the features, are written to their raster
        places (row ``4i + 2a + k``, column ``4j + 2b + l`` for kernel column
        ``l``).

        Parameters
        ----------
        keys : torch.Tensor
            ``(B, h*w, C)`` image tokens from the transformer.
        hyper_in : torch.Tensor
            ``(B, M, C/8)`` per-mask weights.
        first : torch.Tensor, optional
            ``(B*h*w, 4 * C/4)``: the first product already computed
            (:meth:`_first_upscaling_low_rank`).
        out : torch.Tensor, optional
            ``(B, M, 4h, 4w)`` contiguous float32 tensor that receives the result.

        Returns
        -------
        torch.Tensor
            ``(B, M, 4h, 4w)`` float32 mask logits.
        """
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        b, _, c = keys.shape
        c1, c2 = conv1.out_channels, conv2.out_channels
        m = hyper_in.shape[1]
        if first is None:
            w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)  # columns (a, b, channel)
            first = torch.addmm(conv1.bias.repeat(4), keys.reshape(b * h * w, c), w1)
        y = first.view(-1, c1)  # rows (B, i, j, a, b)
        y = activate(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps), act1)
        w2 = conv2.weight.permute(0, 2, 3, 1)  # (c1, kernel row, kernel col, c2)
        bias2 = conv2.bias.repeat(2)
        # (i, a, k, j, b, l): raster order
        out = keys.new_empty(b, m, h, 2, 2, w, 2, 2) if out is None else out.view(b, m, h, 2, 2, w, 2, 2)
        for k in range(2):  # kernel row
            z = activate(torch.addmm(bias2, y, w2[:, k].reshape(c1, 2 * c2)), act2)
            z = z.view(b, -1, c2)  # rows (i, j, a, b, l)
            if b == 1:
                plane = torch.mm(hyper_in[0], z[0].t())[None]
            else:
                plane = torch.bmm(hyper_in, z.transpose(1, 2))
            out[:, :, :, :, k] = plane.view(b, m, h, w, 2, 2, 2).permute(0, 1, 2, 4, 3, 5, 6)
        return out.view(b, m, 4 * h, 4 * w)


def _select(record: list | None, index: torch.Tensor, batch: int) -> list | None:
    """The entries of a transformer ``record`` (tensors with a leading batch axis) for ``index``."""
    if not record:
        return record
    return [None if r is None else tuple(t[index] if t.shape[0] == batch else t for t in r) for r in record]
