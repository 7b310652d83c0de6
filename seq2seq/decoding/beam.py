"""Batched beam search with the GNMT length penalty, as the paper decodes (§6.1: beam 4, α = 0.6).

The finish rule is fairseq's: an eos candidate ranked among the K best of its step ends a hypothesis; a sentence is
done once it holds K ended hypotheses, or at its maximum length (where eos is forced). A done sentence leaves the
batch at once, so it costs no more compute. Knows only the StepModel protocol and DecodeConfig.

Shapes: B batch, S source length, A active sentences, K beam size, N = A · K live rows, V vocabulary.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..config import DecodeConfig
from .constraints import constrain, max_output_lengths, rows_at_max
from .hypothesis import History, Hypothesis, best_first, last_layer_attention

if TYPE_CHECKING:
    from . import StepModel


def beam_search(model: StepModel, src_ids: Tensor, src_pad_mask: Tensor, config: DecodeConfig,
                return_attention: bool = False) -> list[list[Hypothesis]]:
    """Args: src_ids (B, S) long; src_pad_mask (B, S) bool, True = padding; return_attention: keep each output
    token's cross-attention in the hypotheses.

    Returns: per sentence, its n_best hypotheses, best first by length-normalised score.
    """
    beams = _Beams(model, src_ids, src_pad_mask, config, return_attention)
    for step in range(beams.max_steps):
        beams.step(step)
        if not beams.sentences:
            break
    return [best_first(found, config.n_best) for found in beams.finished]


class _Beams:
    """The live beams of the sentences still searched: row a · K + k is beam k of active sentence a."""

    def __init__(self, model: StepModel, src_ids: Tensor, src_pad_mask: Tensor, config: DecodeConfig,
                 return_attention: bool):
        b, k, device = src_ids.size(0), config.beam_size, src_ids.device
        limits = max_output_lengths(src_pad_mask, config)  # B × max output tokens
        self.model, self.config, self.k = model, config, k
        self.memory = model.encode(src_ids, src_pad_mask).reorder(torch.arange(b, device=device).repeat_interleave(k))
        self.max_steps = max(limits) + 1  # the last step can only write eos
        self.state = model.init_state(self.memory, self.max_steps, return_attention)
        self.sentences = list(range(b))  # A × the original index of each active sentence
        self.limits = torch.tensor(limits, device=device)  # (A,)
        self.smallest_limit = min(limits)
        # Only the first beam is live at the start: K identical copies would fill the beam with duplicates.
        self.totals = torch.tensor([0.0] + [float("-inf")] * (k - 1), device=device).repeat(b)  # (N,) sum log-probs
        self.prev = torch.full((b * k,), model.bos_id, dtype=torch.long, device=device)  # (N,)
        self.history = History.empty(b * k, device, src_ids.size(1) if return_attention else None)
        self.src_real = ~src_pad_mask  # (B, S)
        self.finished: list[list[Hypothesis]] = [[] for _ in range(b)]
        self.offsets = torch.arange(b, device=device)[:, None] * k  # (A, 1) first row of each sentence

    def step(self, step: int) -> None:
        """Extend every live beam by one token, end the hypotheses that chose eos, drop the sentences done."""
        a, k = len(self.sentences), self.k
        # 1. Score every one-token extension of every live beam: total = Σ log p(y_i | y_<i, x).
        log_probs = self.model.decode_step(self.prev, self.memory, self.state)  # (N, V)
        log_probs = constrain(log_probs, self.history.tokens, step, self.config, self.model.eos_id, self._at_max(step))
        v = log_probs.size(1)
        totals = (self.totals[:, None] + log_probs).view(a, k * v)  # (A, K·V)
        # 2. Keep the 2K best: at most K of them end (one eos per beam), so K can always continue.
        top_totals, top_idx = totals.topk(2 * k, dim=1)  # (A, 2K), best first
        top_log_probs = log_probs.view(a, k * v).gather(1, top_idx)  # (A, 2K)
        top_beams, top_tokens = top_idx.div(v, rounding_mode="floor"), top_idx.remainder(v)
        ended = top_tokens.eq(self.model.eos_id)  # (A, 2K)
        attention = last_layer_attention(self.state)  # (N, S) or None
        # 3. An eos among the K best ends a hypothesis; one further down is ignored (fairseq).
        ending = ended[:, :k] & top_totals[:, :k].isfinite()  # (A, K)
        any_ended = bool(ending.any())
        if any_ended:
            self._finish(ending, top_totals, top_log_probs, top_beams, attention)
        # 4. The K best that did not end continue.
        live_totals, picked = top_totals.masked_fill(ended, float("-inf")).topk(k, dim=1)  # (A, K)
        rows = self.offsets + top_beams.gather(1, picked)  # (A, K) rows of the current batch
        tokens, token_log_probs = top_tokens.gather(1, picked), top_log_probs.gather(1, picked)  # (A, K)
        # 5. Sentences that are done leave the batch.
        keep = self._drop_done(step) if any_ended or step >= self.smallest_limit else None  # (A',) or None
        if keep is not None:
            rows, tokens, token_log_probs = rows[keep], tokens[keep], token_log_probs[keep]
            live_totals = live_totals[keep]
        self._advance(rows.view(-1), tokens.view(-1), token_log_probs.view(-1), live_totals.view(-1), attention, keep)

    def _at_max(self, step: int) -> Tensor | None:
        at_max = rows_at_max(self.limits, step, self.smallest_limit)  # (A,) or None
        return None if at_max is None else at_max.repeat_interleave(self.k)  # (N,)

    def _finish(self, ending: Tensor, top_totals: Tensor, top_log_probs: Tensor, top_beams: Tensor,
                attention: Tensor | None) -> None:
        """Record the ended hypotheses, ending (A, K) bool over the K best candidates, while a sentence has < K."""
        totals, log_probs, beams = top_totals.tolist(), top_log_probs.tolist(), top_beams.tolist()
        for a, j in ending.nonzero().tolist():
            sentence = self.sentences[a]
            if len(self.finished[sentence]) == self.k:
                continue
            row = a * self.k + beams[a][j]
            eos_attention = None if attention is None else attention[row]
            self.finished[sentence].append(self.history.finish(
                row, totals[a][j], log_probs[a][j], eos_attention, self.config.length_penalty,
                self.src_real[sentence]))

    def _drop_done(self, step: int) -> Tensor | None:
        """Forget the done sentences; returns the active positions kept (A',) long, or None if all stay."""
        limits = self.limits.tolist()
        done = [len(self.finished[s]) == self.k or step >= limit for s, limit in zip(self.sentences, limits)]
        if not any(done):
            return None
        keep = torch.tensor([i for i, d in enumerate(done) if not d], dtype=torch.long, device=self.limits.device)
        self.sentences = [s for s, d in zip(self.sentences, done) if not d]
        self.limits = self.limits[keep]
        self.offsets = self.offsets[:len(self.sentences)]
        if self.sentences:
            self.smallest_limit = int(self.limits.min())
        return keep

    def _advance(self, rows: Tensor, tokens: Tensor, token_log_probs: Tensor, totals: Tensor,
                 attention: Tensor | None, keep: Tensor | None) -> None:
        """Make row i of the next step continue old row rows[i] (N',) with tokens[i]: caches follow the beams."""
        if keep is not None:  # whole sentences left: the encoder memory shrinks too
            arange_k = torch.arange(self.k, device=keep.device)
            self.memory = self.memory.reorder((keep[:, None] * self.k + arange_k).view(-1))
        self.state = self.state.reorder(rows)
        self.history = self.history.extend(rows, tokens, token_log_probs,
                                           None if attention is None else attention.index_select(0, rows))
        self.prev, self.totals = tokens, totals
