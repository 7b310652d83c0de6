"""The building blocks of §3: scaled embeddings, sinusoidal positions, the position-wise feed-forward network, and
the encoder and decoder layers (with their residual + LayerNorm sub-layer connections).

Shapes: B batch, S source length, T target length, D d_model, H heads, d_k = D / H.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadAttention, step_attention


def sinusoidal_positions(n_positions: int, d_model: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i / d_model)); PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))   (§3.5)

    Layout: the paper's frequencies, stored as the concatenation [sin | cos] (tensor2tensor's and Marian's layout):
    column i < D/2 holds sin(pos·ω_i) and column D/2 + i holds cos(pos·ω_i), with ω_i = 10000^(-2i / D). This is a
    fixed permutation of the paper's interleaved columns, so the model it defines is the same; it is what Marian,
    CTranslate2 and transformers' MarianMTModel compute, so our weights export to them unchanged.
    Returns: (n_positions, D) float32; positions start at 0.
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    omega = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (D/2,)
    angles = pos * omega  # (P, D/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()  # (P, D)


class Embedding(nn.Module):
    """Token embedding × √d_model plus fixed sinusoidal positions, then dropout (§3.4, §3.5, §5.4).

    The same matrix embeds source and target tokens and is the output projection (§3.4: "we share the same weight
    matrix between the two embedding layers and the pre-softmax linear transformation").
    """

    def __init__(self, vocab_size: int, d_model: int, pad_id: int, dropout: float, max_positions: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        # Deviation (the paper does not say): N(0, d_model^-0.5) so that embedding × √d_model has unit variance, as
        # in fairseq and tensor2tensor. The <pad> row is zero and stays zero (padding_idx stops the input gradient,
        # its −inf logit the output one): it is the decoder's start symbol (Marian).
        nn.init.normal_(self.tokens.weight, mean=0.0, std=d_model ** -0.5)
        with torch.no_grad():
            self.tokens.weight[pad_id].zero_()
        self.scale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("positions", sinusoidal_positions(max_positions, d_model), persistent=False)

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:
        """ids (B, T) -> (B, T, D), the first token at position `start`."""
        end = start + ids.size(1)
        if end > self.positions.size(0):  # longer than precomputed: extend the table (same values)
            self.positions = sinusoidal_positions(2 * end, self.positions.size(1)).to(self.positions.device)
        return self.dropout(self.tokens(ids) * self.scale + self.positions[start:end].to(self.tokens.weight.dtype))

    def at(self, ids: Tensor, positions: Tensor) -> Tensor:
        """One token per row at its own position: ids (B,), positions (B,) long -> (B, 1, D)."""
        if positions.numel() and int(positions.max()) >= self.positions.size(0):
            self.positions = sinusoidal_positions(2 * int(positions.max()) + 2, self.positions.size(1)).to(
                self.positions.device)
        pe = self.positions.index_select(0, positions).to(self.tokens.weight.dtype)
        return self.dropout(self.tokens(ids) * self.scale + pe)[:, None]


class FeedForward(nn.Module):
    """FFN(x) = max(0, x·W1 + b1)·W2 + b2   (§3.3, eq. 2)"""

    def __init__(self, d_model: int, d_ff: int, activation_dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.activation_dropout = nn.Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(F.relu(self.fc1(x), inplace=True)))  # fc1's output is new


class SublayerConnection(nn.Module):
    """LayerNorm(x + Dropout(Sublayer(x)))   (§3.1, §5.4), the paper's post-norm.

    Deviation (option `pre_norm`): x + Dropout(Sublayer(LayerNorm(x))), which trains deep stacks without warmup
    tuning; the stack then ends with one more LayerNorm.
    """

    def __init__(self, d_model: int, dropout: float, pre_norm: bool, eps: float):
        super().__init__()
        self.norm, self.dropout, self.pre_norm = nn.LayerNorm(d_model, eps=eps), nn.Dropout(dropout), pre_norm

    def forward(self, x: Tensor, sublayer) -> tuple[Tensor, Tensor | None]:
        """`sublayer(h) -> (output, attention weights or None)`; returns (new x, weights)."""
        if self.pre_norm:
            out, weights = sublayer(self.norm(x))
            return x + self.dropout(out), weights
        out, weights = sublayer(x)
        return self.norm(x + self.dropout(out)), weights


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward, each wrapped in a residual connection (§3.1)."""

    def __init__(self, cfg):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, cross=False)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation_dropout)
        self.sub_attn, self.sub_ffn = (SublayerConnection(cfg.d_model, cfg.dropout, cfg.pre_norm, cfg.layer_norm_eps)
                                       for _ in range(2))

    def forward(self, x: Tensor, src_mask: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, S, D), src_mask (B, 1, 1, S) True = real token -> (B, S, D), weights (B, H, S, S) or None"""
        x, weights = self.sub_attn(x, lambda h: self.self_attn(h, src_mask, need_weights=need_weights))
        x, _ = self.sub_ffn(x, lambda h: (self.ffn(h), None))
        return x, weights


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward (§3.1)."""

    def __init__(self, cfg):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, cross=False)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, cross=True)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation_dropout)
        self.sub_self, self.sub_cross, self.sub_ffn = (
            SublayerConnection(cfg.d_model, cfg.dropout, cfg.pre_norm, cfg.layer_norm_eps) for _ in range(3))

    def forward(self, y: Tensor, memory_kv: tuple[Tensor, Tensor], src_mask: Tensor,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Teacher forcing. y (B, T, D) -> (B, T, D), self-attn weights (B, H, T, T), cross weights (B, H, T, S)."""
        y, self_w = self.sub_self(y, lambda h: self.self_attn(h, causal=True, need_weights=need_weights))
        y, cross_w = self.sub_cross(y, lambda h: self.cross_attn(h, src_mask, kv=memory_kv, need_weights=need_weights))
        y, _ = self.sub_ffn(y, lambda h: (self.ffn(h), None))
        return y, self_w, cross_w

    def step(self, y: Tensor, cache: Tensor, positions: Tensor, at: int | None, self_bias: Tensor,
             memory_kv: tuple[Tensor, Tensor], memory_bias: Tensor,
             need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """One decoding step. y (B', 1, D): its first B rows are real, row b at position positions[b] (B,) long;
        the rest are zero rows that pad the shapes (Transformer.decode_step). `at`: the position of every real row
        when they are all at the same one, else None. `cache` (2, B', H, T_cap, d_k) holds this layer's keys and
        values of each row's earlier positions and receives the new ones. self_bias (B'·H, 1, span): 0 for a key
        of the row's own past, −inf otherwise; memory_bias (B'·H, 1, S) the same for the source (`additive_mask`).
        Returns (B', 1, D) and cross weights (B', H, 1, S)."""
        b = positions.numel()

        def self_attention(h: Tensor) -> tuple[Tensor, None]:
            q, k, v = self.self_attn.project_qkv(h)  # (B', H, 1, d_k) each
            if at is not None:
                cache[0, :b, :, at:at + 1] = k[:b]
                cache[1, :b, :, at:at + 1] = v[:b]
            else:
                rows = torch.arange(b, device=y.device)
                cache[0, rows, :, positions] = k[:b, :, 0]
                cache[1, rows, :, positions] = v[:b, :, 0]
            span = self_bias.size(-1)
            out, _ = step_attention(q, cache[0, :, :, :span], cache[1, :, :, :span], self_bias)
            return self.self_attn.out_proj(self.self_attn.merge_heads(out)), None

        y, _ = self.sub_self(y, self_attention)
        y, cross_w = self.sub_cross(y, lambda h: self.cross_attn.cross_step(h, memory_kv, memory_bias, need_weights))
        y, _ = self.sub_ffn(y, lambda h: (self.ffn(h), None))
        return y, cross_w
