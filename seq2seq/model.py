"""The Transformer encoder-decoder of "Attention Is All You Need" (Vaswani et al., 2017, §3).

Id tensors in, logits / log-probabilities out: this file knows nothing of text, tokenizers, files or gRPC.
Two ways in: `forward` (teacher forcing, for training) and the incremental interface used by decoding:
`encode` once, `init_state`, then `decode_step` per output token; `Memory.reorder` / `DecoderState.reorder`
make the caches follow the surviving beams and take in the rows of sentences that join a running batch.

Shape legend: B batch, S source length, T target length, D d_model, H heads, d_k = D / H, V vocabulary,
L decoder layers, T_cap capacity of the key/value cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .attention import additive_mask
from .layers import DecoderLayer, Embedding, EncoderLayer


def bucket(n: int, size: int) -> int:
    """n rounded up to a multiple of size."""
    return -(-n // size) * size


# A decoding step's shapes are rounded up: a running batch changes its row count and its longest position at every
# step, and oneDNN compiles and keeps a kernel per matrix shape (the server grew to 1.3 GB with exact shapes).
# Padding rows are zeros after the real ones, and padding positions are masked; neither changes a real row's result
# in bf16 (bench/invariance.py), the precision that promises it.
ROW_BUCKET = 16  # rows: 4, 8, then multiples of 16 (a lone sentence's 4 beams are not padded to 16)
SPAN_BUCKET = 16  # self-attention keys


def padded_rows(n: int) -> int:
    return 4 if n <= 4 else 8 if n <= 8 else bucket(n, ROW_BUCKET)


def pad_rows(x: Tensor, n: int) -> Tensor:
    """x (B, ...) followed by zero rows up to n rows."""
    return x if x.size(0) == n else torch.cat([x, x.new_zeros(n - x.size(0), *x.shape[1:])])


@dataclass
class Memory:
    """What the decoder needs from the encoder, computed once per sentence: rows of several sentences can share a
    batch (a sentence that joins a running batch is padded to its longest source, or pads the others)."""

    src_pad_mask: Tensor  # (B', S) bool, True = padding
    cross_kv: list[tuple[Tensor, Tensor]]  # per decoder layer: keys, values (B', H, S, d_k), projected once
    rows: int = -1  # B, the real rows (default B'); those after them are zero keys that only pad the batch's shapes
    bias: Tensor | None = field(default=None, repr=False)  # key_bias, once made

    def __post_init__(self):
        if self.rows < 0:
            self.rows = self.src_pad_mask.size(0)

    @property
    def src_mask(self) -> Tensor:
        return ~self.src_pad_mask[:, None, None, :]  # (B', 1, 1, S), True = may attend

    def key_bias(self, heads: int) -> Tensor:
        """(B'·H, 1, S): 0 for a source token, −inf for padding, as a decoding step adds it (made once)."""
        if self.bias is None:
            self.bias = additive_mask(~self.src_pad_mask, heads, self.cross_kv[0][0].dtype)
        return self.bias

    @property
    def held_rows(self) -> int:
        """Rows of the buffers behind the keys and values: more than `src_pad_mask.size(0)` after a reorder in place
        that shrank the batch (fewer than twice as many: see `reorder`)."""
        k = self.cross_kv[0][0]
        return k.untyped_storage().nbytes() // max(k[0].numel() * k.element_size(), 1)

    def excess_positions(self, rows: int) -> int:
        """Source positions held beyond what a batch of `rows` rows at this width counts (`padded_rows(rows)` rows),
        for a memory budget: in-place reorders keep these until the batch grows past them or drains."""
        return max(0, self.held_rows - padded_rows(rows)) * self.src_pad_mask.size(1)

    def reorder(self, idx: Tensor, joined: "Memory | None" = None, width: int | None = None) -> "Memory":
        """Rows idx (N,) long of this memory (e.g. to follow beams), then the real rows of `joined`, if given, then
        zero rows up to `padded_rows` (they attend to zero keys: finite, and never read). The shorter sources are
        padded with masked zeros. width: the longest source of the kept rows, if known: the padding beyond it (left
        by longer sentences that have gone) is dropped. Each layer's old keys and values are let go as soon as they
        are copied (half the peak memory), or the result shares and overwrites them (`_reorder_in_place`), so do not
        use this memory afterwards."""
        kept, new = idx.numel(), 0 if joined is None else joined.rows
        w = self.src_pad_mask.size(1) if width is None else min(width, self.src_pad_mask.size(1))
        jw = 0 if joined is None else joined.src_pad_mask.size(1)  # the joining sources' width
        k = self.cross_kv[0][0]
        if (w == self.src_pad_mask.size(1) and jw <= w and padded_rows(kept + new) <= self.src_pad_mask.size(0)
                and 2 * padded_rows(kept + new) > self.held_rows and k.is_contiguous()):
            # in place: the rows fit, the buffers are not twice what they must be (a draining batch gives memory
            # back), and they are contiguous (step_attention's reshapes would copy them at every step otherwise)
            moved = idx.ne(torch.arange(kept, device=idx.device)).nonzero().squeeze(1)  # (M,) rows that change
            if 4 * moved.numel() <= kept:
                return self._reorder_in_place(idx, moved, joined)
        n, s = kept + new, max(w, jw)
        n_pad = padded_rows(n)
        mask = self.src_pad_mask.new_ones(n_pad, s)  # True = padding ...
        mask[n:] = False  # ... except in the padding rows, whose (zero) keys are all attended: no empty softmax
        torch.index_select(self.src_pad_mask[:, :w], 0, idx, out=mask[:kept, :w])
        if joined is not None:
            mask[kept:n, :jw] = joined.src_pad_mask[:new]

        def place(x: Tensor, joining: Tensor | None) -> Tensor:
            """Keys or values (B, H, S, d_k): rows idx of x, then the joining rows, then zero rows; zeros past each
            source's width."""
            out = x.new_empty(n_pad, x.size(1), s, x.size(3))  # (B', H, S, d_k)
            torch.index_select(x[:, :, :w], 0, idx, out=out[:kept, :, :w])
            out[:kept, :, w:].zero_()
            if joining is not None:
                out[kept:n, :, :jw] = joining[:new]
                out[kept:n, :, jw:].zero_()
            out[n:].zero_()
            return out

        kv = []
        for layer, (k, v) in enumerate(self.cross_kv):
            jk, jv = (None, None) if joined is None else joined.cross_kv[layer]
            kv.append((place(k, jk), place(v, jv)))
            self.cross_kv[layer] = None  # type: ignore[call-overload]
        return Memory(mask, kv, n)

    def _reorder_in_place(self, idx: Tensor, moved: Tensor, joined: "Memory | None") -> "Memory":
        """`reorder(idx, joined)` when few rows move and the rows fit: only the M moved rows and the joining ones are
        written, in the same buffers, which then end at `padded_rows`. This is the usual step boundary: sentences
        that left are replaced by the last ones (`decoding.hypothesis.survivors`), new ones take the free rows
        (the server at C = 32 copied the whole encoder memory at almost every step)."""
        kept, new = idx.numel(), 0 if joined is None else joined.rows
        n = kept + new
        n_pad, jw = padded_rows(n), 0 if joined is None else joined.src_pad_mask.size(1)
        src = idx.index_select(0, moved)  # (M,) where the moved rows come from
        joining = [] if joined is None else [joined.src_pad_mask, *(t for kv in joined.cross_kv for t in kv)]
        for i, x in enumerate([self.src_pad_mask, *(t for kv in self.cross_kv for t in kv)]):
            x.index_copy_(0, moved, x.index_select(0, src))  # reads every source before writing
            if joining:  # the mask is (B', S), keys and values (B', H, S, d_k)
                rows = x[kept:n] if i == 0 else x[kept:n].transpose(1, 2)  # (new, S, ...)
                rows[:, :jw] = joining[i][:new] if i == 0 else joining[i][:new].transpose(1, 2)
                rows[:, jw:] = i == 0  # past a joining source: padding (mask True, keys zero)
            x[n:n_pad] = 0  # padding rows: zero keys, and (mask False) all attended
        return Memory(self.src_pad_mask[:n_pad], [(k[:n_pad], v[:n_pad]) for k, v in self.cross_kv], n)


@dataclass
class DecoderState:
    """The decoder's self-attention key/value cache: an explicit object passed in and out of `decode_step`.

    Every row has its own position (rows that joined later are at earlier positions): row b holds its keys and
    values at positions < positions[b]. Positions < `filled` hold finite numbers in every row (written, zeros, or
    what a row held before a reorder), in the spare buffer too: a masked position weighs exactly 0, and 0 · NaN
    would still be NaN. The cache may have more rows than
    `positions` (B' ≥ B, see `padded_rows`): the rows after the real ones are zeros that pad the shapes."""

    cache: list[Tensor]  # per decoder layer: keys and values (2, B', H, T_cap, d_k)
    positions: Tensor  # (B,) long: the position each row writes next (the tokens it has read)
    filled: int = 0
    need_attention: bool = False
    attention: list[Tensor] | None = None  # after a step, if need_attention: per layer, cross-attn (B, H, S)
    spare: Tensor | None = None  # a buffer of one layer's shape that reorder() writes into (no allocation per step)
    room: int | None = None  # the most positions any row may need (caps the capacity); None = no cap

    @property
    def shape(self) -> list[int]:
        return list(self.cache[0].shape)

    def reorder(self, idx: Tensor, joined: "DecoderState | None" = None) -> "DecoderState":
        """Rows idx (N,) long, then the rows of `joined` (new rows, at position 0), if given, then padding rows up to
        `padded_rows`; joined and padding rows are zeros at the positions they read (position 0), finite beyond.
        Only the positions the kept rows use are copied. The layers take turns with one spare
        buffer: layer i is written into the spare, and its old buffer becomes the spare of layer i + 1, so the
        caches take L + 1 layers' memory, not 2L. This state's buffers then belong to the new state: do not use
        this state afterwards."""
        positions = self.positions.index_select(0, idx)
        if joined is not None:
            positions = torch.cat([positions, joined.positions])
        t = min(self.filled, int(positions.max()) if positions.numel() else 0)  # what the kept rows have written
        b_old = idx.numel()
        shape = self.shape
        shape[1] = padded_rows(positions.numel())
        if self.room is not None and shape[3] > bucket(max(self.room, t, 1), SPAN_BUCKET):
            shape[3] = bucket(max(self.room, t, 1), SPAN_BUCKET)  # longer sentences left: give the room back
        same = self.shape == shape
        spare = self.spare if self.spare is not None and list(self.spare.shape) == shape else None
        reused = spare is not None  # then every layer writes into a buffer of this state (its own shape)
        cache = []
        for layer in range(len(self.cache)):
            target = spare if spare is not None else self.cache[layer].new_empty(shape)
            # straight into the target (no temporary): half the time of `target[...] = x.index_select(...)` here
            torch.index_select(self.cache[layer][..., :t, :], 1, idx, out=target[:, :b_old, :, :t, :])
            target[:, b_old:, :, :max(t, 1)].zero_()  # joined rows (nothing written yet) and padding rows
            cache.append(target)
            spare = self.cache[layer] if same else None
            self.cache[layer] = None  # type: ignore[call-overload]
        # Reused buffers (this state's and its spare) hold finite numbers below `filled` already, so make_room need
        # not zero them again at every step (it did: 4% of int8 decoding); a new buffer is finite below t. The
        # price: a masked position may hold what a departed row wrote there, so a non-finite key (which would
        # already have ruined its own sentence) could reach the row that takes its place, through 0 · NaN.
        filled = self.filled if reused else t
        # attention is that of the last step, read before any reorder: the new state has none until it steps
        return DecoderState(cache, positions, filled, self.need_attention, None, spare, self.room)

    def make_room(self, end: int) -> None:
        """Capacity for positions < end, and finite numbers there in every row."""
        if end > self.shape[3]:
            for layer, old in enumerate(self.cache):
                self.cache[layer] = old.new_empty(*old.shape[:3], end, old.size(4))
                self.cache[layer][..., :self.filled, :] = old[..., :self.filled, :]
            self.spare = None
        if end > self.filled:
            for layer in self.cache + ([] if self.spare is None else [self.spare]):
                layer[..., self.filled:end, :].zero_()
            self.filled = end


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
        return logits.index_fill_(-1, self._pad_index, float("-inf"))  # in place: the product is a new tensor

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
        grows when decoding goes further. Positions at or after `filled` are never read, so the buffer is left
        uninitialised (zeroing it cost 5% of decoding)."""
        c, kv = self.config, memory.cross_kv[0][0]
        capacity = min(bucket(max(max_len, 1), SPAN_BUCKET), 32)
        cache = [kv.new_empty(2, kv.size(0), c.n_heads, capacity, c.d_k) for _ in range(c.n_dec_layers)]
        return DecoderState(cache, torch.zeros(memory.rows, dtype=torch.long, device=kv.device), 0, need_attention)

    def decode_step(self, prev_ids: Tensor, memory: Memory, state: DecoderState) -> Tensor:
        """Advance every row by one position: prev_ids (B,) long, each row's previous output token (bos at its
        position 0). Rows may be at different positions (state.positions); each attends to its own past only.
        `memory` and `state` may have padding rows after the B real ones (the same B' rows).

        Returns: log_probs (B, V) float32 for the next token; <pad> gets -inf (it is never an output).
        Updates `state` in place (its cache, positions and, if asked, attention).
        """
        positions = state.positions  # (B,)
        b, rows = prev_ids.size(0), state.shape[1]
        assert memory.src_pad_mask.size(0) == rows, "memory and state must have the same rows"
        first, last = int(positions.min()), int(positions.max())
        # The keys looked at: the positions < `span`, a multiple of SPAN_BUCKET (steady shapes, see ROW_BUCKET);
        # each row sees those up to its own position. Padding rows are at position 0, a key of zeros.
        span = bucket(last + 1, SPAN_BUCKET)
        state.make_room(span)
        past = torch.arange(span, device=positions.device) <= pad_rows(positions, rows)[:, None]  # (B', span)
        y = pad_rows(self.embed.at(prev_ids, positions), rows)  # (B', 1, D)
        self_bias, memory_bias = additive_mask(past, self.config.n_heads, y.dtype), memory.key_bias(self.config.n_heads)
        attn = []
        for i, layer in enumerate(self.decoder):
            y, cross_w = layer.step(y, state.cache[i], positions, last if first == last else None, self_bias,
                                    memory.cross_kv[i], memory_bias, state.need_attention)
            attn.append(cross_w)
        state.positions = positions + 1
        state.attention = [w[:b, :, 0] for w in attn] if state.need_attention else None  # L × (B, H, S)
        logits = self.project(self.decoder_norm(y[:b, 0]))  # (B, V), <pad> at −inf
        return logits.float().log_softmax(dim=-1)

    def cache_positions(self, rows: int, length: int, width: int) -> int:
        """Rows and positions of the caches as decode_step pads them (see ROW_BUCKET); sources are not padded here."""
        return padded_rows(rows) * (bucket(length, SPAN_BUCKET) + width)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
