"""Scaled dot-product attention and multi-head attention (§3.2), with the per-layer key/value cache used by
incremental decoding. Knows nothing of tokens or text.

Shapes: B batch, S source length, T target length, D d_model, H heads, d_k = D / H.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def causal_mask(tq: int, tk: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) bool, True = may attend: the Tq queries are the last Tq of the Tk positions, and each sees itself and
    the positions before it (§3.2.3)."""
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(tk - tq)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0,
              causal: bool = False, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """Attention(Q, K, V) = softmax(Q·Kᵀ / √d_k)·V   (§3.2.1, eq. 1)

    Args:
        q: (B, H, Tq, d_k); k, v: (B, H, Tk, d_k).
        mask: bool, broadcastable to (B, H, Tq, Tk); True = may attend. None = all keys.
        causal: also forbid attending to later positions (decoder self-attention, §3.2.3), on top of `mask` when
            both are given; with Tq < Tk the queries are the last Tq positions.
        need_weights: return the attention weights (B, H, Tq, Tk); uses the explicit formula instead of the fused
            kernel, which gives the same output (the explicit formula also serves bf16 and fp16 on CPU: see below).
    Returns:
        (output (B, H, Tq, d_k), weights or None)
    """
    # On CPU in bf16/fp16 the explicit formula serves training and encoding: the fused kernel's bf16 backward is ~6×
    # slower at sentence lengths (torch 2.13, B=116, H=4, T=17, d_k=64: 19.7 ms vs 3.3 ms forward + backward), and
    # the explicit formula gives a row the same bits whatever padding its batch adds (the fused kernel does not:
    # bench/invariance.py), which is what makes a translation independent of the load. Decoding steps: step_attention.
    fused = not need_weights and (q.device.type != "cpu" or q.dtype == torch.float32)
    tq, tk = q.size(-2), k.size(-2)
    # The fused kernel's is_causal cannot be combined with attn_mask, and for Tq != Tk it aligns the queries with the
    # first keys instead of the last: it serves the plain square case; anywhere else causality joins the mask.
    kernel_causal = fused and causal and mask is None and tq == tk
    if causal and not kernel_causal:
        past = causal_mask(tq, tk, q.device)  # (Tq, Tk)
        mask = past if mask is None else mask & past  # (B, H, Tq, Tk) or broadcastable to it
    if fused:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=kernel_causal)
        return out, None
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    out = F.dropout(weights, dropout_p) @ v
    return out, (weights if need_weights else None)


def additive_mask(mask: Tensor, heads: int, dtype: torch.dtype) -> Tensor:
    """mask (B, Tk) bool, True = may attend -> (B·H, 1, Tk): 0 where a row may attend, −inf where not, the form
    `step_attention` adds to the scores; a decoding step makes it once for all its layers."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return bias[:, None, None, :].expand(-1, heads, 1, -1).reshape(-1, 1, mask.size(-1))


def step_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                   need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """Attention (eq. 1) for one query per row, as a decoding step asks it: softmax(Q·Kᵀ / √d_k + bias)·V.

    Args: q (B, H, 1, d_k); k, v (B, H, Tk, d_k); bias (B·H, 1, Tk) from `additive_mask`.
    Returns: (output (B, H, 1, d_k), weights (B, H, 1, Tk) or None).

    The scale and the mask join the product in one batched call (torch.baddbmm): 20% less time than the four ops of
    `attention` at B = 128, with the same bits in fp32 and bf16 (the scale 1/8 of d_k = 64 is exact). Explicit
    products on every device and precision, not the fused kernel: on CPU they give a row the same bits whatever
    padding its batch adds (bench/invariance.py; not measured on CUDA), the fused kernel was slower at one query
    per row, and with it int8 lost 0.44 BLEU against fp32 on 100 test sentences.
    """
    b, h, _, d = q.shape
    tk = k.size(-2)
    scores = torch.baddbmm(bias, q.reshape(b * h, 1, d), k.reshape(b * h, tk, d).transpose(1, 2),
                           alpha=d ** -0.5)  # (B·H, 1, Tk)
    weights = scores.softmax(dim=-1)
    out = torch.bmm(weights, v.reshape(b * h, tk, d)).view(b, h, 1, d)
    return out, (weights.view(b, h, 1, tk) if need_weights else None)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, …, head_h)·W^O, head_i = Attention(Q·W_i^Q, K·W_i^K, V·W_i^V)   (§3.2.2)

    The h per-head projections are stored as one D×D matrix each for Q, K and V (with biases, as in tensor2tensor
    and Marian). Self-attention computes Q, K, V with one fused (3D×D) product; cross-attention computes K, V
    from the encoder output once per sentence (`project_kv`) and reuses them at every decoding step.
    """

    def __init__(self, d_model: int, n_heads: int, attention_dropout: float, cross: bool):
        super().__init__()
        self.n_heads, self.d_k, self.cross = n_heads, d_model // n_heads, cross
        self.attention_dropout = attention_dropout
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)  # W^O

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_k).transpose(1, 2)  # (B, H, T, d_k)

    def merge_heads(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.n_heads * self.d_k)  # (B, T, D)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values from the encoder output (B, S, D) -> 2 × (B, H, S, d_k)."""
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention queries, keys, values (B, T, D) -> 3 × (B, H, T, d_k)."""
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def cross_step(self, x: Tensor, kv: tuple[Tensor, Tensor], bias: Tensor,
                   need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Cross-attention for one decoding step: x (B, 1, D), kv the encoder's keys and values (B, H, S, d_k),
        bias (B·H, 1, S) (`additive_mask`) -> (B, 1, D), weights (B, H, 1, S) or None."""
        out, weights = step_attention(self.split_heads(self.q_proj(x)), *kv, bias, need_weights)
        return self.out_proj(self.merge_heads(out)), weights

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False,
                kv: tuple[Tensor, Tensor] | None = None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Args:
            x: queries' input (B, T, D).
            mask: bool (B, 1, 1|T, S), True = may attend.
            kv: precomputed (keys, values), each (B, H, S, d_k); required for cross-attention.
        Returns: (output (B, T, D), weights (B, H, T, S) or None)
        """
        dropout_p = self.attention_dropout if self.training else 0.0
        if self.cross:
            assert kv is not None, "cross-attention needs the encoder's keys and values"
            q, (k, v) = self.split_heads(self.q_proj(x)), kv
        else:
            q, k, v = self.project_qkv(x)
        out, weights = attention(q, k, v, mask, dropout_p, causal, need_weights)
        return self.out_proj(self.merge_heads(out)), weights
