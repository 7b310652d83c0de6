"""The Transformer encoder-decoder of "Attention Is All You Need" (Vaswani et al., 2017, §3).

Id tensors in, logits / log-probabilities out: this file knows nothing of text, tokenizers, files or gRPC.
Two ways in: `forward` (teacher forcing, for training) and the incremental interface used by decoding:
`encode` once, `init_state`, then `decode_step` per output token; `Memory.reorder` / `DecoderState.reorder`
make the caches follow the surviving beams and take in the rows of sentences that join a running batch.

Shape legend: B batch, S source length, T target length, D d_model, H heads, d_k = D / H, V vocabulary,
L decoder layers, T_cap capacity of the key/value cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import pad_rows
from .config import ModelConfig
from .layers import DecoderLayer, Embedding, EncoderLayer


@dataclass
class Memory:
    """What the decoder needs from the encoder, computed once per sentence: rows of several sentences can share a
    batch (a sentence that joins a running batch is padded to its longest source, or pads the others)."""

    src_pad_mask: Tensor  # (B, S) bool, True = padding
    cross_kv: list[tuple[Tensor, Tensor]]  # per decoder layer: keys, values (B, H, S, d_k), projected once

    @property
    def src_mask(self) -> Tensor:
        return ~self.src_pad_mask[:, None, None, :]  # (B, 1, 1, S), True = may attend

    def reorder(self, idx: Tensor, joined: "Memory | None" = None, width: int | None = None) -> "Memory":
        """Rows idx (B',) long of this memory (e.g. to follow beams), then every row of `joined`, if given; the
        shorter sources are padded with zeros (finite, and masked). width: the longest source of the kept rows,
        if known: the padding beyond it (left by longer sentences that have gone) is dropped."""
        s = self.src_pad_mask.size(1) if width is None else min(width, self.src_pad_mask.size(1))
        mask = self.src_pad_mask[:, :s].index_select(0, idx)
        kv = [(k[:, :, :s].index_select(0, idx), v[:, :, :s].index_select(0, idx)) for k, v in self.cross_kv]
        if joined is None:
            return Memory(mask, kv)
        s = max(mask.size(1), joined.src_pad_mask.size(1))
        pad_mask = lambda m: F.pad(m, (0, s - m.size(1)), value=True)  # noqa: E731
        pad_kv = lambda x: F.pad(x, (0, 0, 0, s - x.size(2)))  # noqa: E731
        return Memory(torch.cat([pad_mask(mask), pad_mask(joined.src_pad_mask)]),
                      [(torch.cat([pad_kv(k), pad_kv(jk)]), torch.cat([pad_kv(v), pad_kv(jv)]))
                       for (k, v), (jk, jv) in zip(kv, joined.cross_kv)])


@dataclass
class DecoderState:
    """The decoder's self-attention key/value cache: an explicit object passed in and out of `decode_step`.

    Every row has its own position (rows that joined later are at earlier positions): row b holds its keys and
    values at positions < positions[b]. Positions < `filled` hold finite numbers in every row (written, or zeros):
    a masked position weighs exactly 0, and 0 · NaN would still be NaN."""

    cache: Tensor  # (L, 2, B, H, T_cap, d_k)
    positions: Tensor  # (B,) long: the position each row writes next (the tokens it has read)
    filled: int = 0
    need_attention: bool = False
    attention: list[Tensor] | None = None  # after a step, if need_attention: per layer, cross-attn (B, H, S)
    spare: Tensor | None = None  # a second buffer that reorder() writes into, so beams do not allocate every step
    room: int | None = None  # the most positions any row may need (caps the capacity); None = no cap

    def reorder(self, idx: Tensor, joined: "DecoderState | None" = None) -> "DecoderState":
        """Rows idx (B',) long, then the rows of `joined` (new rows, at position 0), if given. Only the positions
        the kept rows use are copied, into the spare buffer; this state's buffers then belong to the new state, so
        do not use this state afterwards."""
        positions = self.positions.index_select(0, idx)
        t = min(self.filled, int(positions.max()) if positions.numel() else 0)  # what the kept rows have written
        b_old = idx.numel()
        shape = list(self.cache.shape)
        shape[2] = b_old + (0 if joined is None else joined.cache.size(2))
        if self.room is not None and shape[4] > max(self.room, t, 1):  # longer sentences left: give the room back
            shape[4] = max(self.room, t, 1)
        target = self.spare if self.spare is not None and list(self.spare.shape) == shape else self.cache.new_empty(shape)
        # straight into the target (no temporary): half the time of `target[...] = x.index_select(...)` here
        torch.index_select(self.cache[..., :t, :], 2, idx, out=target[:, :, :b_old, :, :t, :])
        if joined is not None:
            target[:, :, b_old:, :, :t].zero_()
            positions = torch.cat([positions, joined.positions])
        spare = self.cache if list(self.cache.shape) == shape else None
        # attention is that of the last step, read before any reorder: the new state has none until it steps
        return DecoderState(target, positions, t, self.need_attention, None, spare, self.room)

    def make_room(self, end: int) -> None:
        """Capacity for positions < end (doubling, up to `room`), and finite numbers there in every row."""
        if end > self.cache.size(4):
            capacity = max(end, 2 * self.cache.size(4))
            if self.room is not None:
                capacity = max(end, min(capacity, self.room))
            grown = self.cache.new_empty(*self.cache.shape[:4], capacity, self.cache.size(5))
            grown[..., :self.filled, :] = self.cache[..., :self.filled, :]
            self.cache, self.spare = grown, None
        if end > self.filled:
            self.cache[..., self.filled:end, :].zero_()
            self.filled = end


ROW_BUCKET = 16  # decode_step pads its rows to a multiple of this (see there)


class Transformer(nn.Module):
    """Encoder-decoder with a joint vocabulary: one embedding matrix for source, target and output (§3.4)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.pad_id = c.pad_id  # <pad>: padding, and the decoder's start symbol (its embedding row is zero)
        self.bos_id = c.pad_id
        self.eos_id = 0  # </s>; the tokenizer fixes the same ids (seq2seq.tokenizer)
        self.embed = Embedding(c.vocab_size, c.d_model, c.pad_id, c.dropout, c.max_positions)
        self.register_buffer("_pad_index", torch.tensor([c.pad_id]), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_dec_layers))
        self.encoder_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.pre_norm else nn.Identity()
        # Set only for int8 inference (seq2seq.translator.quantize_int8): a module computing y · Eᵀ with the same
        # matrix, in a form a quantizer can turn into an int8 product. None: the product below, in the model's dtype.
        self.output_projection: nn.Module | None = None
        self._init_linear()

    def _init_linear(self) -> None:
        # Deviation (the paper does not say): Xavier-uniform weights and zero biases, as tensor2tensor and fairseq.
        for name, p in self.named_parameters():
            if p.dim() == 2 and not name.startswith("embed."):
                nn.init.xavier_uniform_(p)
            elif name.endswith(".bias") and "norm" not in name:
                nn.init.zeros_(p)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    # ---- shared pieces -------------------------------------------------------------------------------------------

    def project(self, y: Tensor) -> Tensor:
        """Pre-softmax linear transformation with the shared embedding matrix: (…, D) -> logits (…, V).

        <pad> is never an output, so its logit is −inf, in training as in decoding. This also keeps its row of the
        shared matrix at zero (no gradient reaches it), which is what Marian and CTranslate2 assume of the
        decoder's start symbol."""
        logits = y @ self.embed.tokens.weight.t() if self.output_projection is None else self.output_projection(y)
        return logits.index_fill(-1, self._pad_index, float("-inf"))

    def encode(self, src_ids: Tensor, src_pad_mask: Tensor | None = None, need_weights: bool = False) -> Memory:
        """src_ids (B, S) long, src_pad_mask (B, S) bool True = padding (default: ids == pad) -> Memory.

        With need_weights, `self.encoder_attention` then holds each layer's self-attention (B, H, S, S)."""
        if src_pad_mask is None:
            src_pad_mask = src_ids.eq(self.pad_id)
        src_mask = ~src_pad_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self.embed(src_ids)  # (B, S, D)
        weights = []
        for layer in self.encoder:
            x, w = layer(x, src_mask, need_weights)
            weights.append(w)
        if need_weights:
            self.encoder_attention = weights  # L × (B, H, S, S)
        x = self.encoder_norm(x)
        cross_kv = [layer.cross_attn.project_kv(x) for layer in self.decoder]  # L × 2 × (B, H, S, d_k)
        return Memory(src_pad_mask, cross_kv)

    # ---- teacher forcing ------------------------------------------------------------------------------------------

    def forward(self, src_ids: Tensor, tgt_in_ids: Tensor, src_pad_mask: Tensor | None = None,
                need_weights: bool = False, tgt_keep_mask: Tensor | None = None) -> Tensor:
        """Logits for every target position under teacher forcing.

        Args:
            src_ids: (B, S) long. tgt_in_ids: (B, T) long, the target shifted right (starting with bos = <pad>).
            src_pad_mask: (B, S) bool, True = padding; default `src_ids == pad`.
            tgt_keep_mask: (B, T) bool; if given, logits only where True, flattened to (N, V): training skips the
                output layer at padded positions (the largest matrix product of a small model).
        Returns: logits (B, T, V), or (N, V) with tgt_keep_mask. Padded target positions produce garbage that the
            loss ignores; real positions only see real tokens (the causal mask keeps them from the padding after them).
            With need_weights, `self.decoder_attention` and `self.cross_attention` then hold the weights per layer.
        """
        memory = self.encode(src_ids, src_pad_mask, need_weights)
        y = self.embed(tgt_in_ids)  # (B, T, D)
        weights = []
        for layer, kv in zip(self.decoder, memory.cross_kv):
            y, self_w, cross_w = layer(y, kv, memory.src_mask, need_weights)
            weights.append((self_w, cross_w))
        if need_weights:  # L × (B, H, T, T) and L × (B, H, T, S)
            self.decoder_attention = [w[0] for w in weights]
            self.cross_attention = [w[1] for w in weights]
        y = self.decoder_norm(y)  # (B, T, D)
        if tgt_keep_mask is not None:
            y = y[tgt_keep_mask]  # (N, D)
        return self.project(y)  # (B, T, V) or (N, V)

    # ---- incremental decoding -------------------------------------------------------------------------------------

    def init_state(self, memory: Memory, max_len: int = 64, need_attention: bool = False) -> DecoderState:
        """Empty caches for the rows of `memory`, at position 0, with room for min(max_len, 32) steps; the room
        doubles when decoding goes further. Positions at or after `filled` are never read, so the buffer is left
        uninitialised (zeroing it cost 5% of decoding)."""
        b = memory.src_pad_mask.size(0)
        c, kv = self.config, memory.cross_kv[0][0]
        cache = kv.new_empty(c.n_dec_layers, 2, b, c.n_heads, max(1, min(max_len, 32)), c.d_k)
        return DecoderState(cache, torch.zeros(b, dtype=torch.long, device=kv.device), 0, need_attention)

    def decode_step(self, prev_ids: Tensor, memory: Memory, state: DecoderState) -> Tensor:
        """Advance every row by one position: prev_ids (B,) long, each row's previous output token (bos at its
        position 0). Rows may be at different positions (state.positions); each attends to its own past only.

        Returns: log_probs (B, V) float32 for the next token; <pad> gets -inf (it is never an output).
        Updates `state` in place (its cache, positions and, if asked, attention).
        """
        positions = state.positions  # (B,)
        first, last = int(positions.min()), int(positions.max())
        state.make_room(last + 1)
        # Keys past a row's own position are masked; when every row is at the same position there are none.
        past = None if first == last else (torch.arange(last + 1, device=positions.device) <= positions[:, None])
        # The matrix products run on B' = B rounded up to a multiple of ROW_BUCKET rows (zero rows after the real
        # ones): a running batch changes size at every step, and oneDNN compiles and keeps a kernel with its own
        # packed copy of the weights for every shape (the server's memory grew to 1.3 GB). A row's result does not
        # depend on the rows after it in bf16 (bench/invariance.py), nor in fp32 at these sizes.
        b = prev_ids.size(0)
        y = pad_rows(self.embed.at(prev_ids, positions), -(-b // ROW_BUCKET) * ROW_BUCKET)  # (B', 1, D)
        attn = []
        for i, layer in enumerate(self.decoder):
            y, cross_w = layer.step(y, state.cache[i], positions, last, past, memory.cross_kv[i], memory.src_mask,
                                    state.need_attention)
            attn.append(cross_w)
        state.positions = positions + 1
        state.attention = [w[:, :, 0] for w in attn] if state.need_attention else None  # L × (B, H, S)
        logits = self.project(self.decoder_norm(y[:, 0]))[:b]  # (B, V), <pad> at −inf
        return logits.float().log_softmax(dim=-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
