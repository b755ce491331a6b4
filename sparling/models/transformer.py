"""Transformer encoder/decoder layers written so that greedy decoding can cache.

``torch.nn.TransformerDecoder`` recomputes every position for every new token and
recomputes the cross-attention keys/values from the memory on each call. These layers
expose the pieces instead: keys/values of the memory are projected once
(:meth:`DecoderLayer.precompute_memory`), and :meth:`DecoderLayer.step` appends one
position's self-attention keys/values to a cache. The full (teacher-forced) path and the
cached path use the same modules, so their eval-mode outputs agree to rounding.

All tensors are batch-first: (N, T, d_model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_encoding(
    positions: torch.Tensor, d_model: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The Transformer's sin/cos encoding of integer ``positions``: shape (*positions, d_model).

    Computed on the fly (it costs nothing next to the model) so there is no table size
    to outgrow.
    """
    half = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)
    freq = torch.exp(half * (-math.log(10000.0) / d_model))
    angles = positions.to(torch.float32).unsqueeze(-1) * freq
    out = torch.zeros(*positions.shape, d_model, device=positions.device)
    out[..., 0::2] = torch.sin(angles)
    out[..., 1::2] = torch.cos(angles)[..., : d_model // 2]
    return out.to(dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with separate q/k/v projections.

    Same parameters as ``nn.MultiheadAttention`` (and the same initialisation), but
    keys/values can be projected once and reused (see :meth:`project_kv`).
    """

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        # nn.MultiheadAttention draws its packed (3d, d) in-projection Xavier-uniform,
        # i.e. with bound sqrt(6 / (d + 3d)); the same draw for each of the three parts.
        bound = math.sqrt(6.0 / (4 * d_model))
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        return x.view(n, t, self.heads, d // self.heads).transpose(1, 2)

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``source`` (N, S, d), each (N, heads, S, d / heads)."""
        return self._split(self.k_proj(source)), self._split(self.v_proj(source))

    def attend(
        self,
        query: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool = False,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of ``query`` (N, T, d) over projected ``k``/``v``; ``causal`` needs T == S.

        ``bias``: added to the attention logits, broadcastable to (N, heads, T, S) (not
        together with ``causal``)."""
        q = self._split(self.q_proj(query))
        p = self.dropout if self.training else 0.0
        if bias is not None:
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, is_causal=causal)
        n, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(n, t, -1))

    def forward(
        self,
        query: torch.Tensor,
        source: torch.Tensor,
        causal: bool = False,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        k, v = self.project_kv(source)
        return self.attend(query, k, v, causal=causal, bias=bias)


class FeedForward(nn.Sequential):
    """Linear, ReLU, dropout, linear (as in ``nn.TransformerEncoderLayer``)."""

    def __init__(self, d_model: int, ff: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(d_model, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, d_model)
        )


class _Sublayers(nn.Module):
    """Residual wiring shared by both layer kinds: post-norm ``norm(x + f(x))`` (the paper,
    PyTorch's default) or pre-norm ``x + f(norm(x))`` (trains more easily when small and
    fast)."""

    def __init__(self, d_model: int, count: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(count))
        self.drop = nn.Dropout(dropout)

    def pre(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The input the i-th sublayer's function sees."""
        return self.norms[i](x) if self.norm_first else x

    def post(self, i: int, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        """Combine the residual stream with the i-th sublayer's output."""
        y = x + self.drop(fx)
        return y if self.norm_first else self.norms[i](y)


class EncoderLayer(nn.Module):
    """Self-attention (unmasked) then feed-forward."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, heads, dropout)
        self.ff = FeedForward(d_model, ff, dropout)
        self.sub = _Sublayers(d_model, 2, dropout, norm_first)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``bias``: added to the self-attention logits over the keys, (N, 1, 1, S)."""
        h = self.sub.pre(0, x)
        x = self.sub.post(0, x, self.self_attn(h, h, bias=bias))
        return self.sub.post(1, x, self.ff(self.sub.pre(1, x)))


@dataclass
class LayerCache:
    """What one decoder layer keeps between greedy steps (each (N, heads, len, d/heads)).

    ``qkv_weight``/``qkv_bias`` are the self-attention's q/k/v projections stacked into one
    (3d, d) matrix, so each step projects its new position with one matrix product instead
    of three. With ``capacity`` set, ``self_k``/``self_v`` are preallocated to that many
    positions and ``length`` of them are filled (no concatenation per step).
    """

    memory_k: torch.Tensor
    memory_v: torch.Tensor
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    memory_bias: torch.Tensor | None = None
    """Added to the cross-attention logits over the memory, (N, 1, 1, S)."""
    self_k: torch.Tensor | None = None
    self_v: torch.Tensor | None = None
    length: int = 0
    capacity: int | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one position's keys/values (N, heads, 1, dh); return all cached so far."""
        if self.capacity is not None and self.length < self.capacity:
            if self.self_k is None or self.self_v is None:
                shape = (*k.shape[:2], self.capacity, k.shape[3])
                self.self_k = k.new_empty(shape)
                self.self_v = v.new_empty(shape)
            self.self_k[:, :, self.length] = k[:, :, 0]
            self.self_v[:, :, self.length] = v[:, :, 0]
            self.length += 1
            return self.self_k[:, :, : self.length], self.self_v[:, :, : self.length]
        if self.self_k is not None and self.self_v is not None:
            k = torch.cat([self.self_k[:, :, : self.length], k], dim=2)
            v = torch.cat([self.self_v[:, :, : self.length], v], dim=2)
        self.self_k, self.self_v = k, v
        self.length = k.shape[2]
        self.capacity = None
        return k, v


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the memory, feed-forward."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, heads, dropout)
        self.ff = FeedForward(d_model, ff, dropout)
        self.sub = _Sublayers(d_model, 3, dropout, norm_first)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced path: all T positions at once, position t sees positions <= t.

        ``memory_bias``: added to the cross-attention logits over the memory, (N, 1, 1, S)."""
        h = self.sub.pre(0, x)
        x = self.sub.post(0, x, self.self_attn(h, h, causal=True))
        x = self.sub.post(1, x, self.cross_attn(self.sub.pre(1, x), memory, bias=memory_bias))
        return self.sub.post(2, x, self.ff(self.sub.pre(2, x)))

    def precompute_memory(
        self,
        memory: torch.Tensor,
        capacity: int | None = None,
        memory_bias: torch.Tensor | None = None,
    ) -> LayerCache:
        """Project the memory's keys/values once per decoded batch; stack the self-attention
        projections; preallocate ``capacity`` self-attention positions when given; keep
        ``memory_bias`` for the cross-attention."""
        # contiguous in the (N, heads, S, dh) layout every step's attention reads
        k, v = (t.contiguous() for t in self.cross_attn.project_kv(memory))
        sa = self.self_attn
        weight = torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight])
        bias = torch.cat([sa.q_proj.bias, sa.k_proj.bias, sa.v_proj.bias])
        return LayerCache(k, v, weight, bias, memory_bias=memory_bias, capacity=capacity)

    def step(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """One new position ``x`` (N, 1, d); appends its self-attention keys/values to ``cache``.

        Attending over all cached positions with no mask equals the causal mask of the
        full path, because the cache only holds positions up to this one.
        """
        h = self.sub.pre(0, x)
        sa = self.self_attn
        q, k, v = F.linear(h, cache.qkv_weight, cache.qkv_bias).chunk(3, dim=-1)
        k, v = cache.append(sa._split(k), sa._split(v))
        out = F.scaled_dot_product_attention(sa._split(q), k, v)
        x = self.sub.post(0, x, sa.out_proj(out.transpose(1, 2).reshape(x.shape)))
        h = self.sub.pre(1, x)
        x = self.sub.post(
            1,
            x,
            self.cross_attn.attend(h, cache.memory_k, cache.memory_v, bias=cache.memory_bias),
        )
        return self.sub.post(2, x, self.ff(self.sub.pre(2, x)))
