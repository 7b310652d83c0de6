"""What a search returns (`Hypothesis`), the GNMT length penalty that scores it, and `History`, the record of what
each live row has produced so far, which every search selects along with its rows.

Knows nothing of the model beyond the tensors it is handed. Shapes: N live rows, t steps so far, S source length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Hypothesis:
    """One output sentence.

    Attributes:
        ids: output token ids, without the start symbol and without the final eos.
        score: sum(token_log_probs) / lp(|Y|), with the GNMT length penalty lp(|Y|) = ((5 + |Y|) / 6)^α and |Y| =
            len(token_log_probs), the eos included (the fairseq convention). α = 0 gives the plain sum of
            log-probs. The same formula in every search, so greedy, beam and sampling scores compare.
        token_log_probs: the log-probability of each output token as the search saw it (the model's log-prob after
            the constraints of `constraints.py`, before temperature / top-k / top-p), eos included: one more than ids.
        attention: (len(token_log_probs), S_real) float32: the last decoder layer's cross-attention averaged over
            heads, one row per output token (eos included), one column per real (non-padding) source token;
            None unless decoding was asked for it (`decode(..., return_attention=True)`).
    """

    ids: tuple[int, ...]
    score: float
    token_log_probs: tuple[float, ...]
    attention: Tensor | None = field(default=None, compare=False)


def length_penalty(length: int, alpha: float) -> float:
    """lp(Y) = ((5 + |Y|) / 6)^α   (Wu et al. 2016, GNMT §7, eq. 14; the paper's α = 0.6, §6.1)"""
    return ((5.0 + length) / 6.0) ** alpha


def last_layer_attention(state) -> Tensor | None:
    """The step's cross-attention of the last decoder layer averaged over heads, (N, S) float32, or None."""
    if state.attention is None:
        return None
    return state.attention[-1].float().mean(dim=1)  # (N, H, S) -> (N, S)


@dataclass
class History:
    """Tokens, log-probs and (optionally) attention of the N live rows, row i following decoder row i.

    Rows that joined later have fewer steps: every row is left-padded, so its tokens are its last `length` columns
    and the last columns of all rows are their latest tokens (what the no-repeat n-gram rule reads)."""

    tokens: Tensor  # (N, t) long, left-padded with pad_id
    log_probs: Tensor  # (N, t) float32, 0 in the padding
    attention: Tensor | None  # (N, t, S) float32, or None when attention is not kept
    pad_id: int

    @classmethod
    def empty(cls, n: int, device: torch.device, keep_attention: bool, pad_id: int) -> "History":
        """No step yet for n rows."""
        attention = torch.zeros(n, 0, 0, device=device) if keep_attention else None
        return cls(torch.zeros(n, 0, dtype=torch.long, device=device), torch.zeros(n, 0, device=device), attention,
                   pad_id)

    def extend(self, rows: Tensor | None, tokens: Tensor, log_probs: Tensor, attention: Tensor | None) -> "History":
        """Keep `rows` (N',) long (None = all, in order), then append one step.

        Args: tokens (N',) long, log_probs (N',) float32, attention (N', S') or None, all for the kept rows.
        """
        old_tokens, old_log_probs, old_attention = self.tokens, self.log_probs, self.attention
        if rows is not None:
            old_tokens, old_log_probs = old_tokens.index_select(0, rows), old_log_probs.index_select(0, rows)
            old_attention = None if old_attention is None else old_attention.index_select(0, rows)
        new_attention = None
        if old_attention is not None and attention is not None:
            s = max(old_attention.size(2), attention.size(1))  # sources that joined may be longer
            new_attention = torch.cat([_pad_last(old_attention, s), _pad_last(attention, s)[:, None]], dim=1)
        return History(torch.cat([old_tokens, tokens[:, None]], dim=1),  # (N', t + 1)
                       torch.cat([old_log_probs, log_probs[:, None].float()], dim=1), new_attention, self.pad_id)

    def last(self, t: int) -> "History":
        """Only the last t steps (views): a search that keeps getting new sentences never empties, and without this
        its columns would grow with every step of its life, not with its longest live row."""
        if self.tokens.size(1) <= t:
            return self
        return History(self.tokens[:, -t:], self.log_probs[:, -t:],
                       None if self.attention is None else self.attention[:, -t:], self.pad_id)

    def join(self, other: "History") -> "History":
        """These rows, then other's (rows that have just joined, usually with fewer steps)."""
        t = max(self.tokens.size(1), other.tokens.size(1))
        tokens = torch.cat([_pad_left(h.tokens, t, self.pad_id) for h in (self, other)])
        log_probs = torch.cat([_pad_left(h.log_probs, t, 0.0) for h in (self, other)])
        attention = None
        if self.attention is not None and other.attention is not None:
            s = max(self.attention.size(2), other.attention.size(2))
            attention = torch.cat([_pad_left(_pad_last(h.attention, s).transpose(1, 2), t, 0.0).transpose(1, 2)
                                   for h in (self, other)])
        return History(tokens, log_probs, attention, self.pad_id)

    def row_tokens(self, row: int, length: int) -> Tensor:
        """(length,) long: the tokens of `row`, which has taken `length` steps."""
        return self.tokens[row, self.tokens.size(1) - length:]

    def finish(self, row: int, length: int, total: float, eos_log_prob: float, eos_attention: Tensor | None,
               alpha: float, src_len: int) -> Hypothesis:
        """The hypothesis of `row`, `length` tokens so far, ending now with eos.

        Args:
            row: index into the current N rows. total: the row's summed log-prob including the eos.
            eos_log_prob: the eos token's log-prob. eos_attention: (S',) this step's attention of the row, or None.
            alpha: the length penalty α. src_len: the sentence's source tokens (the attention columns kept).
        """
        start = self.tokens.size(1) - length
        log_probs = tuple(self.log_probs[row, start:].tolist()) + (eos_log_prob,)
        attention = None
        if self.attention is not None and eos_attention is not None:
            past = _pad_last(self.attention[row, start:], eos_attention.size(0))  # (length, S')
            attention = torch.cat([past, eos_attention[None]])[:, :src_len]
        score = total / length_penalty(len(log_probs), alpha)
        return Hypothesis(tuple(self.tokens[row, start:].tolist()), score, log_probs, attention)


def _pad_left(x: Tensor, t: int, value) -> Tensor:
    """Left-pad dim 1 of x (N, t', ...) to t."""
    if x.size(1) == t:
        return x
    pad = x.new_full((x.size(0), t - x.size(1), *x.shape[2:]), value)
    return torch.cat([pad, x], dim=1)


def _pad_last(x: Tensor, s: int) -> Tensor:
    """Right-pad the last dim of x to s with zeros."""
    return x if x.size(-1) == s else torch.nn.functional.pad(x, (0, s - x.size(-1)))


def survivors(done: list[bool]) -> list[int]:
    """The indices of the items not done, in the order that moves the fewest: the place of a done item is taken by a
    survivor from the end (swap-remove), so the engine copies the encoder memory of the rows that move only, not
    of every row after a hole (Memory.reorder). E.g. [F, T, F, F] -> [0, 3, 2]."""
    n = len(done) - sum(done)
    order = list(range(n))  # a survivor before position n stays where it is
    holes = (i for i in range(n) if done[i])
    for item in range(n, len(done)):  # as many survivors at n or after as holes before n
        if not done[item]:
            order[next(holes)] = item
    return order


def best_first(hypotheses: list[Hypothesis], n_best: int) -> list[Hypothesis]:
    """The n_best highest-scoring hypotheses, best first (stable: equal scores keep their order)."""
    return sorted(hypotheses, key=lambda h: h.score, reverse=True)[:n_best]
