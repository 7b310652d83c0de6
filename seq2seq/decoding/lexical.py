"""Lexically constrained beam search: every hypothesis a sentence returns holds each of its constraints (token
sequences, the glossary's English terms) somewhere in its output. Dynamic beam allocation (Post & Vilar 2018), in the
form fairseq ships (Hu et al. 2019, "Improved lexically constrained decoding"): at every step each beam proposes,
besides the best extensions of all beams, its own best token and the next token of every constraint it can advance;
candidates fall into banks by the number of constraint tokens met, and the K places of the beam go round the banks
from the fullest down, best candidate of each bank first. So hypotheses that placed a term late, early or not yet
compete side by side, and the model's own scores decide where a term fits.

The rest is BeamSearch's (beam.py): scores, length penalty, the finish rule, sentences joining and leaving the
running batch. Three additions make the terms a guarantee rather than a preference: eos is forbidden to a beam until
its constraints are met; a beam with no more steps left than constraint tokens still to write may only advance them;
and right after a constraint, no token that would glue onto its last word (`glued`, from the tokenizer: "increase"
must not become "increased"). Constraints are unordered; one left half-written restarts. Knows only token ids and
log-probs.

Shapes: A active sentences, K beam size, N = A · K rows, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..config import DecodeConfig
from .beam import BeamSearch, top_k
from .constraints import NEG_INF, constrain, rows_at_max

if TYPE_CHECKING:
    from .engine import Sentence

Constraints = tuple[tuple[int, ...], ...]  # each a non-empty token sequence that must appear in the output


@dataclass(frozen=True)
class Progress:
    """How far one beam is through its sentence's constraints: those met, and the one being written (its index and
    the tokens of it written so far), if any."""

    met: frozenset[int] = frozenset()
    current: tuple[int, int] | None = None
    ended: bool = False  # the last token ended a constraint: the next may not glue onto its last word

    def bank(self, constraints: Constraints) -> int:
        """Constraint tokens written: the bank of Post & Vilar's allocation."""
        return sum(len(constraints[j]) for j in self.met) + (self.current[1] if self.current else 0)

    def next_tokens(self, constraints: Constraints) -> set[int]:
        """The tokens that advance a constraint: the next one of the constraint being written, else the first of
        each constraint not met."""
        if self.current is not None:
            i, p = self.current
            return {constraints[i][p]}
        return {c[0] for j, c in enumerate(constraints) if j not in self.met}

    def advance(self, constraints: Constraints, token: int) -> "Progress":
        """The progress after writing `token` (any token: one the model wrote unprompted counts as well)."""
        if self.current is not None:
            i, p = self.current
            if token == constraints[i][p]:
                if p + 1 == len(constraints[i]):
                    return Progress(self.met | {i}, None, True)
                return Progress(self.met, (i, p + 1))
            # left half-written: its tokens so far no longer count; `token` may start a constraint anew
        for j, c in enumerate(constraints):
            if j not in self.met and c[0] == token:
                return Progress(self.met | {j}, None, True) if len(c) == 1 else Progress(self.met, (j, 1))
        return Progress(self.met, None)


@dataclass
class Candidate:
    beam: int  # which of the sentence's K beams it extends
    token: int
    total: float  # the beam's summed log-prob after the token
    progress: Progress
    bank: int


class ConstrainedBeamSearch(BeamSearch):
    """BeamSearch whose sentences each carry constraints (Sentence.constraints), decoded with dynamic beam allocation.

    Beam k of sentence a is row a · K + k, as in BeamSearch; self.progress[a][k] is that beam's Progress."""

    def __init__(self, config: DecodeConfig, bos_id: int, eos_id: int, pad_id: int, device: torch.device,
                 keep_attention: bool, glued: Tensor | None = None):
        """As BeamSearch; glued: (V,) bool, the tokens that continue the word before them (pieces without a
        word-start mark), or None if the vocabulary has none."""
        super().__init__(config, bos_id, eos_id, pad_id, device, keep_attention)
        self.glued = None if glued is None or not bool(glued.any()) else glued.nonzero().squeeze(1)  # (G,) ids
        self.progress: list[list[Progress]] = []  # (A, K)

    def join(self, sentences: list[Sentence]) -> None:
        super().join(sentences)
        self.progress += [[Progress()] * self.k for _ in sentences]

    def step(self, log_probs: Tensor, attention: Tensor | None,
             check: bool) -> tuple[Tensor | None, Tensor | None, list[Sentence]]:
        """As BeamSearch.step (its Args and Returns), the K beams of each sentence chosen by dynamic beam allocation."""
        a, k, eos = len(self.sentences), self.k, self.eos_id
        # 1. The step's rules (beam.py), then eos only for beams whose constraints are all met.
        at_max = rows_at_max(self.limits, self.steps)  # (A,) or None
        log_probs = constrain(log_probs, self.history.tokens, self.steps.repeat_interleave(k), self.config, eos,
                              None if at_max is None else at_max.repeat_interleave(k))
        unmet = [p.bank(s.constraints) < _length(s.constraints)
                 for s, beams in zip(self.sentences, self.progress) for p in beams]
        log_probs[torch.tensor(unmet, device=log_probs.device), eos] = NEG_INF
        after_term = [p.ended for beams in self.progress for p in beams]
        if self.glued is not None and any(after_term):
            rows = torch.tensor(after_term, device=log_probs.device).nonzero()  # (n, 1)
            log_probs[rows, self.glued] = NEG_INF
        totals = self.totals[:, None] + log_probs  # (N, V)
        v = totals.size(1)
        # 2. The candidates: the 2K best extensions of all beams, and each beam's own (`_proposals`).
        top_totals, top_idx = top_k(totals.view(a, k * v), 2 * k)  # (A, 2K)
        best_tokens = log_probs.argmax(dim=1).tolist()  # (N,)
        steps, limits = self.steps.tolist(), self.limits.tolist()
        proposals = [[(beam, token) for beam in range(k) for token in self._proposals(s, a_, beam, best_tokens)]
                     for a_, s in enumerate(self.sentences)]
        flat = [(a_ * k + beam, token) for a_, props in enumerate(proposals) for beam, token in props]
        proposed_totals = totals[[r for r, _ in flat], [t for _, t in flat]].tolist() if flat else []
        # 3. Per sentence: allocate the K places over the banks; eos candidates among the first K end hypotheses.
        picked, ended = [], []
        top_totals, top_idx = top_totals.tolist(), top_idx.tolist()
        offset = 0
        for a_, s in enumerate(self.sentences):
            found = {(i // v, i % v): t for i, t in zip(top_idx[a_], top_totals[a_])}
            for (beam, token), total in zip(proposals[a_], proposed_totals[offset:offset + len(proposals[a_])]):
                found[(beam, token)] = total
            offset += len(proposals[a_])
            order = self._allocate(s, a_, found, limits[a_] - steps[a_])
            ended += [(a_, c) for c in order[:k] if c.token == eos]
            live = [c for c in order if c.token != eos][:k]
            picked.append(live + [None] * (k - len(live)))  # too few live candidates: dead beams (−inf)
        return self._advance(picked, ended, log_probs, attention, at_max, check)

    def _proposals(self, s: Sentence, a: int, beam: int, best_tokens: list[int]) -> list[int]:
        """A beam's own candidates: its best token, the tokens that advance its constraints, and eos once they are
        all met (so that a beam that has written its terms can end even where another token is likelier)."""
        progress = self.progress[a][beam]
        tokens = {best_tokens[a * self.k + beam], *progress.next_tokens(s.constraints)}
        if progress.bank(s.constraints) == _length(s.constraints):
            tokens.add(self.eos_id)
        return sorted(tokens)

    def _allocate(self, s: Sentence, a: int, found: dict[tuple[int, int], float], left: int) -> list[Candidate]:
        """The candidates (beam, token) -> total of sentence a, in the order they take the beam's places: round the
        banks from the highest down, the best of each bank, then the second best of each, and so on (fairseq's
        "stripes"). A beam with no more steps `left` than constraint tokens to write proposes only those tokens."""
        cons, need_all = s.constraints, _length(s.constraints)
        by_bank: dict[int, list[Candidate]] = {}
        for (beam, token), total in found.items():
            if total == NEG_INF or total != total:
                continue
            progress = self.progress[a][beam]
            if token != self.eos_id and left <= need_all - progress.bank(cons) \
                    and token not in progress.next_tokens(cons):
                continue  # no room left for this token
            after = progress if token == self.eos_id else progress.advance(cons, token)
            bank = after.bank(cons)
            by_bank.setdefault(bank, []).append(Candidate(beam, token, total, after, bank))
        banks = [sorted(c, key=lambda c: -c.total) for _, c in sorted(by_bank.items(), reverse=True)]
        return [bank[rank] for rank in range(max(map(len, banks), default=0)) for bank in banks if rank < len(bank)]

    def _advance(self, picked: list[list[Candidate | None]], ended: list[tuple[int, Candidate]], log_probs: Tensor,
                 attention: Tensor | None, at_max: Tensor | None,
                 check: bool) -> tuple[Tensor, Tensor | None, list[Sentence]]:
        """Record the ended hypotheses, move every beam to its picked candidate, drop the sentences done."""
        k, device = self.k, self.device
        steps = self.steps.tolist()
        for a, c in ended:
            s = self.sentences[a]
            if len(s.found) < k:
                row = a * k + c.beam
                s.found.append(self.history.finish(row, steps[a], c.total, float(log_probs[row, self.eos_id]),
                                                   None if attention is None else attention[row],
                                                   self.config.length_penalty, s.src_len))
        if at_max is not None:
            self._finish_empty(at_max, log_probs, attention)
        rows = [a * k + (c.beam if c else 0) for a, beams in enumerate(picked) for c in beams]
        tokens = [c.token if c else self.eos_id for beams in picked for c in beams]
        totals = [c.total if c else NEG_INF for beams in picked for c in beams]
        self.progress = [[c.progress if c else Progress() for c in beams] for beams in picked]
        rows_t = torch.tensor(rows, dtype=torch.long, device=device).view(-1, k)  # (A, K)
        tokens_t = torch.tensor(tokens, dtype=torch.long, device=device).view(-1, k)
        totals_t = torch.tensor(totals, device=device).view(-1, k)
        token_log_probs = log_probs[rows_t.view(-1), tokens_t.view(-1)].view(-1, k)
        done, keep = [], None
        if ended or at_max is not None or check:
            done, keep = self._drop_done()
        memory_rows = None
        if keep is not None:
            rows_t, tokens_t, totals_t, token_log_probs = rows_t[keep], tokens_t[keep], totals_t[keep], token_log_probs[keep]
            memory_rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)
            self.progress = [self.progress[i] for i in keep.tolist()]
        rows_flat = rows_t.view(-1)
        self.history = self.history.extend(rows_flat, tokens_t.view(-1), token_log_probs.view(-1),
                                           None if attention is None else attention.index_select(0, rows_flat))
        self.prev, self.totals = tokens_t.view(-1), totals_t.view(-1)
        self.steps = self.steps + 1
        if self.steps.numel():
            self.history = self.history.last(int(self.steps.max()))
        return rows_flat, memory_rows, done


def _length(constraints: Constraints) -> int:
    return sum(map(len, constraints))
