"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention with optional down-projection of the internal width.

    Parameters
    ----------
    embedding_dim : int
        Width of inputs and output.
    num_heads : int
        Number of heads (divides ``embedding_dim // downsample_rate``).
    downsample_rate : int, optional
        Internal width is ``embedding_dim // downsample_rate``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide the attention width {self.internal_dim}."
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def project(self, x: torch.Tensor, which: str) -> torch.Tensor:
        """Project ``x`` (B, N, C) with ``q_proj``/``k_proj``/``v_proj`` into heads (B, H, N, C'/H)."""
        return self._heads(getattr(self, f"{which}_proj")(x))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of already projected heads (B, H, N, d) -> (B, Nq, C) float32.

        Heads with batch 1 are broadcast against the others (one image shared
        by many prompt sets) without copying.
        """
        b = max(q.shape[0], k.shape[0], v.shape[0])
        if q.shape[0] != b:
            q = q.expand(b, -1, -1, -1)
        if k.shape[0] != b:
            k = k.expand(b, -1, -1, -1)
        if v.shape[0] != b:
            v = v.expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)
        n = out.shape[2]
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None = None,
        record: list | None = None,
    ) -> torch.Tensor:
        """``q`` (B, Nq, C), ``k``/``v`` (B, Nk, C) -> (B, Nq, C) float32, plus ``residual`` if given.

        Inputs with batch 1 are projected once and broadcast against the others
        (one image shared by many prompt sets).  With few queries (prompt
        tokens attending to image tokens) :meth:`_few_queries` is used, with few
        keys (image tokens attending to prompt tokens) :meth:`_few_keys`: the
        same function, computed in the input space of the many tokens.
        ``record`` (a list) receives the low-rank form of the update where
        :meth:`_few_keys` computes it (see :meth:`_mix_values`).
        """
        if self.num_heads * q.shape[1] < self.internal_dim and k.shape[1] > self.internal_dim:
            out = self._few_queries(q, k, v)
            return out if residual is None else residual + out
        if self.num_heads * k.shape[1] < self.internal_dim and q.shape[1] > self.internal_dim:
            return self._few_keys(q, k, v, residual, record)
        out = self.attend(self.project(q, "q"), self.project(k, "k"), self.project(v, "v"))
        return out if residual is None else residual + out

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention without projecting the ``Nk`` keys and values (``Nq * heads`` small).

        With ``q_h`` the projected queries of head ``h`` and ``W_k,h``, ``b_k,h``
        its key projection, ``q_h . (W_k,h k + b_k,h) = (W_k,h^T q_h) . k + const``
        (the constant, ``q_h . b_k,h``, cancels in the softmax), and as the
        attention weights sum to 1, ``A (k W_v,h^T + b_v,h) = (A v) W_v,h^T + b_v,h``.
        So the ``(Nk, C) x (C, C')`` projections become products with
        ``Nq * heads`` rows: about half the work for 7 prompt tokens and 4096
        image tokens.  Equal to :meth:`attend` up to float rounding.
        """
        heads, d = self.num_heads, self.internal_dim // self.num_heads
        qh = self.project(q, "q")  # (B, H, Nq, d)
        b, _, nq, _ = qh.shape
        c = k.shape[-1]
        wk = self.k_proj.weight.view(heads, d, c)
        q_in = torch.matmul(qh * d**-0.5, wk).reshape(b, heads * nq, c)  # (B, H*Nq, C)
        if b == 1 and k.shape[0] == 1 and v.shape[0] == 1:  # 2-D products: faster than bmm of batch 1
            attn = torch.softmax(torch.mm(q_in[0], k[0].t()), dim=-1)  # (H*Nq, Nk)
            ctx = torch.mm(attn, v[0]).view(1, heads, nq, c)
        else:
            attn = torch.softmax(torch.matmul(q_in, k.transpose(1, 2)), dim=-1)  # (B, H*Nq, Nk)
            ctx = torch.matmul(attn, v).view(b, heads, nq, c)
        wv = self.v_proj.weight.view(heads, d, c)
        out = torch.matmul(ctx, wv.transpose(1, 2)) + self.v_proj.bias.view(heads, 1, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, self.internal_dim))

    def projected_queries(
        self,
        q_heads: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None = None,
        record: list | None = None,
    ) -> torch.Tensor:
        """Attention of already projected query heads ``(B, H, Nq, d)`` to few keys ``(B, Nk, C)``.

        For image tokens attending to prompt tokens when the image side is
        prompt-independent (first transformer block): the query projection is
        cached per image, the scores cost ``Nq * Nk * C'`` and the output is
        :meth:`_mix_values`.  Equal to :meth:`attend` up to float rounding.
        """
        heads, d = self.num_heads, self.internal_dim // self.num_heads
        kh = self.project(k, "k") * d**-0.5  # (B, H, Nk, d)
        vh = self.project(v, "v")
        b, _, nk, _ = kh.shape
        nq = q_heads.shape[2]
        b = max(b, q_heads.shape[0])
        # scores laid out (B, H, Nk, Nq): softmax over the middle axis (see _few_keys)
        scores = torch.matmul(kh, q_heads.transpose(-1, -2))
        attn = torch.softmax(scores, dim=2).expand(b, heads, nk, nq).reshape(b, heads * nk, nq)
        return self._mix_values(attn, vh, residual, record)

    def _mix_values(
        self, attn: torch.Tensor, vh: torch.Tensor, residual: torch.Tensor | None, record: list | None = None
    ) -> torch.Tensor:
        """Output ``sum_h A_h (v_h W_o,h^T) + b_o`` (+ ``residual``) for few keys.

        ``attn`` ``(B, H*Nk, Nq)``: each head's weights over its ``Nk`` keys sum
        to 1; ``vh`` ``(B or 1, H, Nk, d)`` value heads.  The output projection
        is applied to the ``H*Nk`` values, not to the ``Nq`` outputs; as every
        head's weights sum to 1, ``b_o / heads`` added to each value row adds
        ``b_o``, and the residual is the ``input`` of the batched product.

        With a ``residual``, the output is ``residual + attn^T @ values``, a
        rank-``H*Nk`` update of the residual; ``record`` (a list), if given,
        receives ``(attn, values)`` (see :class:`KeysRecord`).
        """
        heads, d = self.num_heads, self.internal_dim // self.num_heads
        nk = vh.shape[2]
        wo = self.out_proj.weight.view(-1, heads, d).transpose(0, 1)  # (H, C_out, d)
        value_out = torch.matmul(vh, wo.transpose(1, 2)).reshape(vh.shape[0], heads * nk, -1)
        value_out = value_out.expand(attn.shape[0], -1, -1)
        if residual is None:
            return torch.baddbmm(self.out_proj.bias.view(1, 1, -1), attn.transpose(1, 2), value_out)
        values = value_out + self.out_proj.bias / heads
        if record is not None:
            record.append((attn, values))
        if attn.shape[0] == 1 and residual.shape[0] == 1:  # 2-D product: faster than bmm of batch 1
            return torch.addmm(residual[0], attn[0].t(), values[0]).unsqueeze(0)
        return torch.baddbmm(residual, attn.transpose(1, 2), values)

    def _few_keys(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None = None,
        record: list | None = None,
    ) -> torch.Tensor:
        """Attention without projecting the ``Nq`` queries (``Nk * heads`` small).

        ``(W_q,h x + b_q,h) . k_h = x . (W_q,h^T k_h) + b_q,h . k_h`` and the
        output projection distributes over heads,
        ``out = sum_h A_h (v_h W_o,h^T) + b_o``, so the two ``(Nq, C) x (C, C')``
        products become products with ``Nk * heads`` columns.  Equal to
        :meth:`attend` up to float rounding (output: :meth:`_mix_values`).
        """
        heads, d = self.num_heads, self.internal_dim // self.num_heads
        kh = self.project(k, "k") * d**-0.5  # (B, H, Nk, d)
        vh = self.project(v, "v")
        b, _, nk, _ = kh.shape
        nq, c = q.shape[1:]
        wq = self.q_proj.weight.view(heads, d, c)
        q_to_k = torch.matmul(kh, wq).reshape(b, heads * nk, c)
        bias = torch.matmul(kh, self.q_proj.bias.view(heads, d, 1)).reshape(b, heads * nk, 1)
        # scores laid out (B, H*Nk, Nq): the softmax then runs over a middle
        # axis with Nq contiguous values per step (fast), not over Nk = 7 last
        if q.shape[0] == 1:  # one image (for all prompt sets): one 2-D product
            scores = torch.addmm(bias.reshape(-1, 1), q_to_k.reshape(-1, c), q[0].t())
        else:
            scores = torch.baddbmm(bias, q_to_k, q.transpose(1, 2))
        attn = torch.softmax(scores.view(b, heads, nk, nq), dim=2).view(b, heads * nk, nq)
        return self._mix_values(attn, vh, residual, record)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image, MLP on tokens, image->token attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def project_image(self, keys: torch.Tensor, key_pe: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The projections of the image tokens that do not depend on the prompt.

        They are the key and value heads of the token->image attention
        (projections of ``keys + key_pe`` and ``keys``) and the query heads of
        the image->token attention (projection of ``keys + key_pe``), valid as
        long as ``keys`` is the block's input, i.e. in the first block of the
        transformer.

        Parameters
        ----------
        keys, key_pe : torch.Tensor
            ``(B, h*w, C)`` float32 image tokens and their positional encoding.

        Returns
        -------
        tuple of torch.Tensor
            ``(k, v)`` heads of the token->image attention and the query heads
            of the image->token attention, each ``(B, heads, h*w, d)``.
        """
        k = keys + key_pe
        return (
            self.cross_attn_token_to_image.project(k, "k"),
            self.cross_attn_token_to_image.project(keys, "v"),
            self.cross_attn_image_to_token.project(k, "q"),
        )

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        *,
        image_heads: tuple[torch.Tensor, ...] | None = None,
        record: list | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update ``queries`` (B, Nq, C) and ``keys`` (B, Nk, C).

        ``image_heads``, the result of :meth:`project_image` for these ``keys``
        and ``key_pe``, skips recomputing the prompt-independent projections.
        ``record`` (a list), if given, receives this block's image-token update
        in low-rank form: ``(attn, values, mean, rstd)`` with the new keys equal
        to ``layer_norm(keys + attn^T @ values)`` and ``mean``/``rstd`` the
        statistics of that layer norm, or None where the attention took a path
        that does not produce it.
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if image_heads is None:
            q = queries + query_pe
            k = keys + key_pe
            queries = self.norm2(queries + t2i(q, k, keys))
            queries = self.norm3(queries + self.mlp(queries))
            q = queries + query_pe
            low_rank = [] if record is not None else None
            keys = self._norm_keys(i2t(k, q, queries, residual=keys, record=low_rank), low_rank, record)
            return queries, keys

        k_heads, v_heads, q_heads = image_heads
        q = t2i.project(queries + query_pe, "q")
        queries = self.norm2(queries + t2i.attend(q, k_heads, v_heads))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        low_rank = [] if record is not None else None
        updated = i2t.projected_queries(q_heads, q, queries, residual=keys, record=low_rank)
        return queries, self._norm_keys(updated, low_rank, record)

    def _norm_keys(self, keys: torch.Tensor, low_rank: list | None, record: list | None) -> torch.Tensor:
        """``norm4(keys)``; with a ``record``, append the update's low-rank form and the norm's statistics."""
        if record is None:
            return self.norm4(keys)
        norm = self.norm4
        out, mean, rstd = torch.native_layer_norm(keys, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        record.append((*low_rank[0], mean, rstd) if low_rank else None)
        return out


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` and a final token->image attention.

    Parameters
    ----------
    depth : int
        Number of blocks.
    embedding_dim : int
        Token width (256).
    num_heads : int
        Attention heads (8).
    mlp_dim : int
        Hidden width of the token MLP (2048).
    attention_downsample_rate : int, optional
        Width reduction of the cross attentions, by default 2.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim, num_heads, mlp_dim, attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def prepare_image(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> dict:
        """Everything of the transformer that depends only on the image.

        Parameters
        ----------
        image_embedding, image_pe : torch.Tensor
            ``(B, C, h, w)`` or ``(1, C, h, w)`` float32 (the image embedding
            with the dense prompt embedding already added, and its positional
            encoding).

        Returns
        -------
        dict
            ``keys`` and ``key_pe`` ``(B, h*w, C)`` channels-last tokens and
            ``first`` (the first block's :meth:`TwoWayAttentionBlock.project_image`,
            None for a depth-0 transformer); pass it to :meth:`forward_prepared`.
        """
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        first = self.layers[0].project_image(keys, key_pe) if len(self.layers) else None
        return {"keys": keys, "key_pe": key_pe, "first": first}

    def forward_prepared(
        self,
        prepared: dict,
        point_embedding: torch.Tensor,
        record: list | None = None,
        final_tokens: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with the image part from :meth:`prepare_image` (reusable across prompts).

        ``record`` (a list), if given, receives one entry per block (see
        :meth:`TwoWayAttentionBlock.forward`): the returned keys in low-rank
        form relative to ``prepared["keys"]``.  ``final_tokens``, if given,
        are the indices of the tokens whose output is wanted: the final
        attention (each token attends on its own) runs for those only and the
        returned queries are ``(B, len(final_tokens), C)``, equal to those
        rows of the full result.
        """
        keys, key_pe = prepared["keys"], prepared["key_pe"]
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            heads = prepared["first"] if i == 0 else None
            queries, keys = layer(queries, keys, point_embedding, key_pe, image_heads=heads, record=record)
        query_pe = point_embedding
        if final_tokens is not None:
            queries, query_pe = queries[:, final_tokens], query_pe[:, final_tokens]
        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer.

        Parameters
        ----------
        image_embedding, image_pe : torch.Tensor
            ``(B, C, h, w)`` or ``(1, C, h, w)`` float32; batch 1 is shared by
            all prompt sets (computed once, not copied).
        point_embedding : torch.Tensor
            ``(B, N, C)`` prompt tokens.

        Returns
        -------
        queries : torch.Tensor
            ``(B, N, C)`` processed tokens.
        keys : torch.Tensor
            ``(B, h * w, C)`` processed image tokens.
        """
        return self.forward_prepared(self.prepare_image(image_embedding, image_pe), point_embedding)
