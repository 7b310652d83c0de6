"""Batched decoding: greedy search, beam search and sampling over any model with the incremental `StepModel`
interface, configured by a DecodeConfig, returning Hypotheses. Nothing here knows text, tokenizers or layers.

Shape legend: B batch, S source length, T target length, K beam size, V vocabulary; N live decoder rows.

Conventions shared by every search (details in `hypothesis.Hypothesis`):
- score = Σ log p / ((5 + |Y|) / 6)^α, |Y| counting the eos (GNMT penalty, fairseq's convention); α = 0: Σ log p.
- ids hold neither the start symbol nor the eos; token_log_probs has one more entry, the eos's.
- at most ⌊max_len_a · source tokens + max_len_b⌋ tokens, then eos is forced; eos is forbidden before min_len.
- beam search: a sentence is done when K hypotheses ended or at its maximum length (fairseq's rule, see beam.py).
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from ..config import DecodeConfig
from .beam import beam_search
from .greedy import greedy_search
from .hypothesis import Hypothesis, length_penalty
from .sampling import sample

__all__ = ["StepModel", "Memory", "DecoderState", "Hypothesis", "decode", "beam_search", "greedy_search", "sample",
           "length_penalty"]


class Memory(Protocol):
    """What decoding needs of the encoder output (e.g. seq2seq.model.Memory): rows that can be selected."""

    def reorder(self, idx: Tensor) -> "Memory":
        """A new Memory with rows idx (B',) long, B' may differ from B."""
        ...


class DecoderState(Protocol):
    """What decoding needs of the decoder caches (e.g. seq2seq.model.DecoderState)."""

    need_attention: bool
    attention: list[Tensor] | None  # after a step, if need_attention: per layer (B, H, S)

    def reorder(self, idx: Tensor) -> "DecoderState":
        """A new state with rows idx (B',) long: caches follow the surviving beams."""
        ...


class StepModel(Protocol):
    """The incremental interface of seq2seq.model.Transformer, the whole contract between model and decoding."""

    bos_id: int  # the decoder's start symbol
    eos_id: int
    pad_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, src_ids: Tensor, src_pad_mask: Tensor) -> Memory:
        """src_ids (B, S) long, src_pad_mask (B, S) bool True = padding."""
        ...

    def init_state(self, memory: Memory, max_len: int, need_attention: bool = False) -> DecoderState:
        """Empty caches for max_len steps."""
        ...

    def decode_step(self, prev_ids: Tensor, memory: Memory, state: DecoderState) -> Tensor:
        """prev_ids (B,) long -> log_probs (B, V) float32 of the next token; advances `state` in place."""
        ...


def decode(model: StepModel, src_ids: Tensor, src_pad_mask: Tensor, config: DecodeConfig,
           generator: torch.Generator | None = None, return_attention: bool = False) -> list[list[Hypothesis]]:
    """Translate a batch: sampling if `config.sample`, else greedy for beam_size 1, else beam search.

    The model should be in eval mode (dropout off); decoding runs under torch.inference_mode.
    Args:
        src_ids: (B, S) long. src_pad_mask: (B, S) bool, True = padding.
        generator: random source for sampling when `config.seed` is None.
        return_attention: keep each output token's cross-attention (Hypothesis.attention).
    Returns: B lists of up to n_best hypotheses, best first.
    """
    with torch.inference_mode():
        if config.sample:
            return sample(model, src_ids, src_pad_mask, config, generator, return_attention)
        if config.beam_size == 1:
            return greedy_search(model, src_ids, src_pad_mask, config, return_attention)
        return beam_search(model, src_ids, src_pad_mask, config, return_attention)
