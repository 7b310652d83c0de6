"""Greedy search, and the search it shares with sampling: every row extends one path a token at a time, choosing with
a `pick` function, until eos; a row that ends leaves the batch at once. Serves the sentences of one DecodeConfig in
the engine's running batch (engine.py); sentences join at any step.

Knows only tensors of log-probs and DecodeConfig. Shapes: N live rows, V vocabulary, S source length.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from ..config import DecodeConfig
from .constraints import constrain, rows_at_max
from .hypothesis import History, survivors
from .sampling import Sampler, draw_uniforms

if TYPE_CHECKING:
    from .engine import Sentence

# pick(log_probs (N, V) float32 after the constraints, steps (N,) long) -> next token ids (N,) long
Pick = Callable[[Tensor, Tensor], Tensor]


def argmax(log_probs: Tensor, steps: Tensor) -> Tensor:
    """Greedy search: the most probable next token."""
    return log_probs.argmax(dim=-1)  # (N,)


class PathSearch:
    """Independent paths, `copies` per sentence (1 for greedy, num_samples for sampling), one decoder row each.

    Row i belongs to sentence owners[i]; every row has its own step, since sentences join at any step."""

    def __init__(self, config: DecodeConfig, copies: int, sampler: Sampler | None, bos_id: int, eos_id: int,
                 pad_id: int, device: torch.device, keep_attention: bool):
        self.config, self.copies, self.sampler = config, copies, sampler
        self.pick: Pick = argmax if sampler is None else sampler
        self.bos_id, self.eos_id, self.device, self.keep_attention = bos_id, eos_id, device, keep_attention
        self.owners: list[Sentence] = []  # (N,) the sentence of each row
        self.steps = torch.zeros(0, dtype=torch.long, device=device)  # (N,) tokens generated so far
        self.limits = torch.zeros(0, dtype=torch.long, device=device)  # (N,) most output tokens before eos
        self.totals = torch.zeros(0, device=device)  # (N,) summed log-probs
        self.prev = torch.zeros(0, dtype=torch.long, device=device)  # (N,)
        self.history = History.empty(0, device, keep_attention, pad_id)

    @property
    def rows(self) -> int:
        return len(self.owners)

    def join(self, sentences: list[Sentence]) -> None:
        """Add sentences at the end: `copies` rows each, at step 0."""
        n, device = len(sentences) * self.copies, self.device
        if self.sampler is not None:
            self.sampler.join([draw_uniforms(s.limit, self.config, s.generator) for s in sentences])
        self.owners += [s for s in sentences for _ in range(self.copies)]
        for s in sentences:
            s.open_paths = self.copies
        self.steps = torch.cat([self.steps, torch.zeros(n, dtype=torch.long, device=device)])
        self.limits = torch.cat([self.limits, torch.tensor([s.limit for s in sentences], device=device)
                                 .repeat_interleave(self.copies)])
        self.totals = torch.cat([self.totals, torch.zeros(n, device=device)])
        self.prev = torch.cat([self.prev, torch.full((n,), self.bos_id, dtype=torch.long, device=device)])
        self.history = self.history.join(History.empty(n, device, self.keep_attention, self.history.pad_id))

    def step(self, log_probs: Tensor, attention: Tensor | None,
             check: bool) -> tuple[Tensor | None, Tensor | None, list[Sentence]]:
        """Choose one token for every live path; record and drop the paths that chose eos (and the rows of
        sentences marked `stopped`, if check). Returns (rows kept (N',) or None = all, the same for the memory,
        the sentences done)."""
        # 1. Score the next token of every path and choose one.
        at_max = rows_at_max(self.limits, self.steps)
        log_probs = constrain(log_probs, self.history.tokens, self.steps, self.config, self.eos_id, at_max)
        tokens = self.pick(log_probs, self.steps)  # (N,)
        token_log_probs = log_probs.gather(1, tokens[:, None]).squeeze(1)  # (N,)
        self.totals = self.totals + token_log_probs
        # 2. Paths that chose eos are done: record them and keep the others.
        ended = tokens.eq(self.eos_id)
        leaving = ended
        if check:
            stopped = [i for i, s in enumerate(self.owners) if s.stopped]
            if stopped:
                leaving = ended.clone()
                leaving[stopped] = True
        keep, done = None, []
        if bool(leaving.any()):
            done = self._finish(ended.nonzero().squeeze(1).tolist(), leaving, token_log_probs, attention)
            order = survivors(leaving.tolist())
            keep = torch.tensor(order, dtype=torch.long, device=self.device)  # (N',)
            self.owners = [self.owners[i] for i in order]
            self.steps, self.limits, self.totals = self.steps[keep], self.limits[keep], self.totals[keep]
            tokens, token_log_probs = tokens[keep], token_log_probs[keep]
            attention = None if attention is None else attention[keep]
            if self.sampler is not None:
                self.sampler.keep(keep)
        # 3. The others feed their token back in.
        self.history = self.history.extend(keep, tokens, token_log_probs, attention)
        self.prev = tokens
        self.steps = self.steps + 1
        if self.steps.numel():  # the columns the oldest live row needs, no more
            self.history = self.history.last(int(self.steps.max()))
        return keep, keep, done

    def _finish(self, rows: list[int], leaving: Tensor, token_log_probs: Tensor,
                attention: Tensor | None) -> list[Sentence]:
        """Record the ended paths; returns the sentences whose every path has now left."""
        totals, eos_log_probs, steps = self.totals.tolist(), token_log_probs.tolist(), self.steps.tolist()
        for row in rows:
            sentence = self.owners[row]
            if sentence.stopped:
                continue
            eos_attention = None if attention is None else attention[row]
            sentence.found.append(self.history.finish(row, steps[row], totals[row], eos_log_probs[row], eos_attention,
                                                      self.config.length_penalty, sentence.src_len))
        done = []
        for row in leaving.nonzero().squeeze(1).tolist():
            sentence = self.owners[row]
            sentence.open_paths -= 1
            if sentence.open_paths == 0:
                done.append(sentence)
        return done
