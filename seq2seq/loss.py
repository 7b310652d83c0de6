"""Label-smoothed cross-entropy (§5.4, "Label Smoothing": ε_ls = 0.1).

The smoothed target puts 1 − ε on the gold token and spreads ε evenly over every other token except <pad>, which
is never a target (it is the padding and the decoder's start symbol).
"""
from __future__ import annotations

import torch
from torch import Tensor


def smoothed_targets(target: Tensor, vocab_size: int, epsilon: float, pad_id: int) -> Tensor:
    """The explicit smoothed distribution q (N, V) for gold ids `target` (N,): what the loss below is the
    cross-entropy with. Used by tests and for reading; the loss never materialises it."""
    q = torch.full((target.numel(), vocab_size), epsilon / (vocab_size - 2))
    q[:, pad_id] = 0.0
    q.scatter_(1, target.view(-1, 1), 1.0 - epsilon)
    return q


def label_smoothed_loss(logits: Tensor, target: Tensor, epsilon: float, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy H(q, p) summed over the non-pad target tokens.

    Args:
        logits: (N, V) any float dtype (computed in float32). target: (N,) long, `pad_id` where there is no token.
    Returns: (loss sum, nll sum, number of target tokens), each a 0-d tensor; divide by the count for per-token values.

    With eps_i = ε / (V − 2) on each non-gold, non-pad token:
    H(q, p) = −(1 − ε)·log p_gold − eps_i·Σ_{v ∉ {gold, pad}} log p_v = (1 − ε − eps_i)·nll + eps_i·smooth,
    where nll = −log p_gold and smooth = −Σ_{v ≠ pad} log p_v.
    """
    log_probs = logits.float().log_softmax(dim=-1)  # (N, V)
    keep = target.ne(pad_id)  # (N,)
    nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (N,)
    smooth = -(log_probs.sum(dim=-1) - log_probs[:, pad_id])  # (N,)
    eps_i = epsilon / (logits.size(-1) - 2)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    zero = torch.zeros((), device=logits.device)
    return torch.where(keep, loss, zero).sum(), torch.where(keep, nll, zero).sum(), keep.sum()
