"""Rules applied to each step's log-probabilities before a search picks tokens, shared by greedy, beam search and
sampling: repetition penalty, no repeated n-gram, minimum and maximum output length.

They mask or rescale the log-probs in place and never renormalise (as fairseq and transformers do), so a hypothesis'
score is the sum of exactly what the search saw. Shapes: N live rows, t tokens generated so far, V vocabulary.
"""
from __future__ import annotations

from torch import Tensor

from ..config import DecodeConfig

NEG_INF = float("-inf")


def max_output_lengths(src_pad_mask: Tensor, config: DecodeConfig) -> list[int]:
    """Per sentence, the most output tokens before eos is forced: ⌊a · source tokens + b⌋ (paper §6.1: a=1, b=50).

    Args: src_pad_mask (B, S) bool, True = padding. Returns: B ints. The eos comes on top, as in fairseq.
    """
    src_lens = (~src_pad_mask).sum(dim=1).tolist()
    return [int(config.max_len_a * n + config.max_len_b) for n in src_lens]


def constrain(log_probs: Tensor, history: Tensor, step: int, config: DecodeConfig, eos_id: int,
              at_max: Tensor | None) -> Tensor:
    """Apply every configured rule to one step's log-probs, in place.

    Args:
        log_probs: (N, V) float32, modified in place and returned.
        history: (N, t) long, the tokens each row generated so far (t = step).
        step: t, the number of tokens generated so far.
        eos_id: the end-of-sentence id.
        at_max: (N,) bool, rows that reached their maximum length (only eos is left to them), or None if none did.
    """
    if config.repetition_penalty != 1.0 and step > 0:
        penalize_repetition(log_probs, history, config.repetition_penalty)
    if config.no_repeat_ngram_size and step >= config.no_repeat_ngram_size:
        block_repeated_ngrams(log_probs, history, config.no_repeat_ngram_size)
    if at_max is not None:  # before min_len's ban: at the maximum length the maximum wins, eos keeps its log-prob
        force_eos(log_probs, at_max, eos_id)
    if step < config.min_len:
        free = slice(None) if at_max is None else ~at_max
        log_probs[free, eos_id] = NEG_INF
    return log_probs


def penalize_repetition(log_probs: Tensor, history: Tensor, penalty: float) -> None:
    """CTRL's repetition penalty (Keskar et al. 2019, eq. 3) on every token already generated, in place.

    Deviation: applied to log-probs rather than logits (as transformers' beam search does). Log-probs are <= 0, so
    CTRL's "divide positive scores by θ, multiply negative ones" is a multiplication by θ: θ > 1 discourages.
    """
    seen = log_probs.gather(1, history)  # (N, t); a token seen twice is written twice with the same value
    log_probs.scatter_(1, history, seen * penalty)


def block_repeated_ngrams(log_probs: Tensor, history: Tensor, n: int) -> None:
    """Forbid every token that would complete an n-gram already present in the row's history, in place.

    Args: history (N, t) long with t >= n.
    """
    ngrams = history.unfold(1, n, 1)  # (N, t - n + 1, n)
    tail = history[:, history.size(1) - (n - 1):]  # (N, n - 1), the last n - 1 tokens
    match = (ngrams[:, :, :-1] == tail[:, None]).all(dim=-1)  # (N, t - n + 1): n-grams that start like the tail
    rows, starts = match.nonzero(as_tuple=True)
    log_probs[rows, ngrams[rows, starts, -1]] = NEG_INF


def force_eos(log_probs: Tensor, rows: Tensor, eos_id: int) -> None:
    """Leave only eos to `rows` (N,) bool, in place; eos keeps the model's log-prob (fairseq does the same)."""
    eos_log_probs = log_probs[:, eos_id].clone()
    log_probs.masked_fill_(rows[:, None], NEG_INF)
    log_probs[:, eos_id] = eos_log_probs


def rows_at_max(limits: Tensor, step: int, smallest_limit: int) -> Tensor | None:
    """(N,) bool, the rows whose limit (N,) long is reached at this step; None (no work) before the smallest limit."""
    return limits.le(step) if step >= smallest_limit else None
