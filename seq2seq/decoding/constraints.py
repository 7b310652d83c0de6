"""Rules applied to each step's log-probabilities before a search picks tokens, shared by greedy, beam search and
sampling: repetition penalty, no repeated n-gram, minimum and maximum output length.

They mask or rescale the log-probs in place and never renormalise (as fairseq and transformers do), so a hypothesis'
score is the sum of exactly what the search saw. Shapes: N live rows, t tokens generated so far, V vocabulary.
"""
from __future__ import annotations

from torch import Tensor

from ..config import DecodeConfig

NEG_INF = float("-inf")


def max_output_length(src_len: int, config: DecodeConfig) -> int:
    """The most output tokens before eos is forced: ⌊a · source tokens + b⌋ (paper §6.1: a=1, b=50); the eos comes
    on top, as in fairseq. src_len counts the source's real tokens (its </s> included)."""
    return int(config.max_len_a * src_len + config.max_len_b)


def constrain(log_probs: Tensor, history: Tensor, steps: Tensor, config: DecodeConfig, eos_id: int,
              at_max: Tensor | None) -> Tensor:
    """Apply every configured rule to one step's log-probs, in place.

    Args:
        log_probs: (N, V) float32, modified in place and returned.
        history: (N, t) long, the tokens each row generated so far, left-padded with <pad> (see History): <pad>'s
            log-prob is −inf, so it is neither penalised further nor matched by a real n-gram.
        steps: (N,) long, the number of tokens each row generated so far.
        eos_id: the end-of-sentence id.
        at_max: (N,) bool, rows that reached their maximum length (only eos is left to them), or None if none did.
    """
    t = history.size(1)
    if config.repetition_penalty != 1.0 and t > 0:
        penalize_repetition(log_probs, history, config.repetition_penalty)
    if config.no_repeat_ngram_size and t >= config.no_repeat_ngram_size:
        block_repeated_ngrams(log_probs, history, config.no_repeat_ngram_size)
    if at_max is not None:  # before min_len's ban: at the maximum length the maximum wins, eos keeps its log-prob
        force_eos(log_probs, at_max, eos_id)
    if config.min_len:
        early = steps < config.min_len  # (N,)
        if at_max is not None:
            early &= ~at_max
        log_probs[:, eos_id].masked_fill_(early, NEG_INF)
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


def rows_at_max(limits: Tensor, steps: Tensor) -> Tensor | None:
    """(N,) bool, the rows whose limit (N,) long is reached at their step (N,) long; None if no row's is."""
    at_max = limits.le(steps)
    return at_max if bool(at_max.any()) else None
