"""Batched decoding: greedy search, beam search and sampling over any model with the incremental `StepModel`
interface, configured by a DecodeConfig, returning Hypotheses. Nothing here knows text, tokenizers or layers.

Shape legend: B batch, S source length, T target length, K beam size, V vocabulary; N live decoder rows.

Conventions shared by every search (details in `hypothesis.Hypothesis`):
- score = Σ log p / ((5 + |Y|) / 6)^α, |Y| counting the eos (GNMT penalty, fairseq's convention); α = 0: Σ log p.
- ids hold neither the start symbol nor the eos; token_log_probs has one more entry, the eos's.
- at most ⌊max_len_a · source tokens + max_len_b⌋ tokens, then eos is forced; eos is forbidden before min_len.
- beam search: a sentence is done when K hypotheses ended or at its maximum length (fairseq's rule, see beam.py).

The Engine (engine.py) runs every search: sentences join a running batch at any step and leave when done; `decode`
is the engine with a batch known in advance.
"""
from __future__ import annotations

from functools import partial
from typing import Protocol

import torch
from torch import Tensor

from ..config import DecodeConfig
from .engine import Cancelled, Engine, Sentence, TooLarge
from .hypothesis import Hypothesis, length_penalty
from .lexical import Constraints

__all__ = ["StepModel", "Memory", "DecoderState", "Hypothesis", "Engine", "Sentence", "Cancelled", "TooLarge",
           "decode", "beam_search", "length_penalty"]


class Memory(Protocol):
    """What decoding needs of the encoder output (e.g. seq2seq.model.Memory): rows that can be selected."""

    def reorder(self, idx: Tensor, joined: "Memory | None" = None, width: int | None = None) -> "Memory":
        """A new Memory with rows idx (B',) long, then the rows of `joined` (sentences joining the batch); width:
        the longest source among the kept rows (padding past it may go)."""
        ...


class DecoderState(Protocol):
    """What decoding needs of the decoder caches (e.g. seq2seq.model.DecoderState); every row has its own
    position, so rows of sentences that joined at different steps share a batch."""

    need_attention: bool
    attention: list[Tensor] | None  # after a step, if need_attention: per layer (B, H, S)
    room: int | None  # the most positions a row may need: caps the caches' growth

    def reorder(self, idx: Tensor, joined: "DecoderState | None" = None) -> "DecoderState":
        """A new state with rows idx (B',) long (caches follow the surviving beams), then the rows of `joined`."""
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
        """Empty caches for the rows of `memory`, at position 0."""
        ...

    def decode_step(self, prev_ids: Tensor, memory: Memory, state: DecoderState) -> Tensor:
        """prev_ids (B,) long -> log_probs (B, V) float32 of the next token; advances `state` in place."""
        ...

    def cache_positions(self, rows: int, length: int, width: int) -> int:
        """The most cache positions (rows × positions, self-attention and source) that a batch of `rows` rows with
        outputs of up to `length` positions and sources of up to `width` tokens holds, the model's padding
        included: what the engine's memory budget counts."""
        ...


def decode(model: StepModel, src_ids: Tensor, src_pad_mask: Tensor, config: DecodeConfig,
           generator: torch.Generator | None = None, return_attention: bool = False,
           search: str = "", constraints: list[Constraints] | None = None) -> list[list[Hypothesis]]:
    """Translate a batch through an Engine of its own: sampling if `config.sample`, else greedy for beam_size 1,
    else beam search (`search` forces one of "beam", "greedy", "sample").

    The model should be in eval mode (dropout off); decoding runs under torch.inference_mode.
    Args:
        src_ids: (B, S) long. src_pad_mask: (B, S) bool, True = padding (after each sentence's tokens).
        generator: random source for sampling when `config.seed` is None.
        return_attention: keep each output token's cross-attention (Hypothesis.attention).
        constraints: per sentence, token sequences that every hypothesis must hold (lexical.py); None or () = none.
    Returns: B lists of up to n_best hypotheses, best first.
    """
    results: list = [None] * src_ids.size(0)
    lengths = (~src_pad_mask).sum(dim=1).tolist()
    engine = Engine(model, src_ids.device)
    constraints = constraints or [()] * len(lengths)
    engine.submit([Sentence(src_ids[i, :n].tolist(), config, partial(results.__setitem__, i), return_attention,
                            generator, search=search, constraints=tuple(map(tuple, constraints[i])))
                   for i, n in enumerate(lengths)])
    engine.run()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def beam_search(model: StepModel, src_ids: Tensor, src_pad_mask: Tensor, config: DecodeConfig,
                return_attention: bool = False) -> list[list[Hypothesis]]:
    """Beam search whatever the beam size (beam_size 1 is then greedy search, which tests check)."""
    return decode(model, src_ids, src_pad_mask, config, return_attention=return_attention, search="beam")
