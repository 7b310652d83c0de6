"""Greedy search, and the loop it shares with sampling: every row extends one path a token at a time, choosing with a
`pick` function, until eos; a row that ends leaves the batch at once (its caches are dropped by `reorder`).

Knows only the StepModel protocol and DecodeConfig. Shapes: B batch, S source length, N live rows, V vocabulary.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from ..config import DecodeConfig
from .constraints import constrain, max_output_lengths, rows_at_max
from .hypothesis import History, Hypothesis, best_first, last_layer_attention

if TYPE_CHECKING:
    from . import StepModel

# pick(log_probs (N, V) float32, step, path ids (N,) long) -> next token ids (N,) long
Pick = Callable[[Tensor, int, Tensor], Tensor]


def greedy_search(model: StepModel, src_ids: Tensor, src_pad_mask: Tensor, config: DecodeConfig,
                  return_attention: bool = False) -> list[list[Hypothesis]]:
    """The most probable next token at every step. Returns one [Hypothesis] per sentence."""
    return search_paths(model, src_ids, src_pad_mask, config, 1, _argmax, return_attention)


def _argmax(log_probs: Tensor, step: int, paths: Tensor) -> Tensor:
    return log_probs.argmax(dim=-1)  # (N,)


def search_paths(model: StepModel, src_ids: Tensor, src_pad_mask: Tensor, config: DecodeConfig, copies: int,
                 pick: Pick, return_attention: bool = False) -> list[list[Hypothesis]]:
    """Decode `copies` independent paths per sentence, each choosing its next token with `pick`.

    Args:
        src_ids: (B, S) long. src_pad_mask: (B, S) bool, True = padding.
        copies: paths per sentence; path p (its id in `pick`) belongs to sentence p // copies.
        return_attention: keep each output token's cross-attention in the hypotheses.
    Returns: per sentence, its finished paths, best first, at most `config.n_best`.
    """
    paths = _Paths(model, src_ids, src_pad_mask, config, copies, return_attention)
    for step in range(paths.max_steps):
        paths.step(step, pick)
        if not paths.path_ids.numel():
            break
    return [best_first(found, config.n_best) for found in paths.finished]


class _Paths:
    """The live paths, one per decoder row: N rows, row i holding path `path_ids[i]`."""

    def __init__(self, model: StepModel, src_ids: Tensor, src_pad_mask: Tensor, config: DecodeConfig, copies: int,
                 return_attention: bool):
        b, device = src_ids.size(0), src_ids.device
        limits = max_output_lengths(src_pad_mask, config)  # B × max output tokens
        self.model, self.config, self.copies = model, config, copies
        self.memory = model.encode(src_ids, src_pad_mask)
        if copies > 1:
            self.memory = self.memory.reorder(torch.arange(b, device=device).repeat_interleave(copies))
        self.max_steps = max(limits) + 1  # the last step can only write eos
        self.state = model.init_state(self.memory, self.max_steps, return_attention)
        n = b * copies
        self.path_ids = torch.arange(n, device=device)  # (N,)
        self.limits = torch.tensor(limits, device=device).repeat_interleave(copies)  # (N,)
        self.smallest_limit = min(limits)
        self.prev = torch.full((n,), model.bos_id, dtype=torch.long, device=device)  # (N,)
        self.totals = torch.zeros(n, device=device)  # (N,) summed log-probs
        self.history = History.empty(n, device, src_ids.size(1) if return_attention else None)
        self.src_real = ~src_pad_mask  # (B, S)
        self.finished: list[list[Hypothesis]] = [[] for _ in range(b)]

    def step(self, step: int, pick: Pick) -> None:
        """Choose one token for every live path; record and drop the paths that chose eos."""
        # 1. Score the next token of every path and choose one.
        log_probs = self.model.decode_step(self.prev, self.memory, self.state)  # (N, V)
        at_max = rows_at_max(self.limits, step, self.smallest_limit)
        log_probs = constrain(log_probs, self.history.tokens, step, self.config, self.model.eos_id, at_max)
        tokens = pick(log_probs, step, self.path_ids)  # (N,)
        token_log_probs = log_probs.gather(1, tokens[:, None]).squeeze(1)  # (N,)
        self.totals = self.totals + token_log_probs
        attention = last_layer_attention(self.state)  # (N, S) or None
        # 2. Paths that chose eos are done: record them and keep the others.
        ended = tokens.eq(self.model.eos_id)
        keep = None
        if bool(ended.any()):
            self._finish(ended.nonzero().squeeze(1).tolist(), token_log_probs, attention)
            keep = (~ended).nonzero().squeeze(1)  # (N',)
            self._keep(keep)
            tokens, token_log_probs = tokens[keep], token_log_probs[keep]
            attention = None if attention is None else attention[keep]
        # 3. The others feed their token back in.
        self.history = self.history.extend(keep, tokens, token_log_probs, attention)
        self.prev = tokens

    def _finish(self, rows: list[int], token_log_probs: Tensor, attention: Tensor | None) -> None:
        totals, eos_log_probs = self.totals.tolist(), token_log_probs.tolist()
        for row in rows:
            sentence = int(self.path_ids[row]) // self.copies
            eos_attention = None if attention is None else attention[row]
            self.finished[sentence].append(self.history.finish(
                row, totals[row], eos_log_probs[row], eos_attention, self.config.length_penalty,
                self.src_real[sentence]))

    def _keep(self, rows: Tensor) -> None:
        """Drop every row not in `rows` (N',) long from the caches and bookkeeping."""
        self.memory, self.state = self.memory.reorder(rows), self.state.reorder(rows)
        self.path_ids, self.limits, self.totals = self.path_ids[rows], self.limits[rows], self.totals[rows]
        if rows.numel():
            self.smallest_limit = int(self.limits.min())
