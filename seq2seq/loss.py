"""Label-smoothed cross-entropy (§5.4, "Label Smoothing": ε_ls = 0.1).

The smoothed target q puts 1 − ε on the gold token and spreads ε evenly over every other token except <pad>, which
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


def _at_least_float32(x: Tensor) -> Tensor:
    return x.float() if x.element_size() < 4 else x


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Per-token H(q, softmax(x)) from logits x, with eps_i = ε / (V − 2) on each non-gold, non-pad token:

    H = −(1 − ε)·log p_gold − eps_i·Σ_{v ∉ {gold, pad}} log p_v = (1 − ε − eps_i)·nll + eps_i·smooth,
    nll = lse − x_gold, smooth = −Σ_{v ≠ pad} log p_v = (V − 1)·lse − Σ_{v ≠ pad} x_v, lse = log Σ_v exp x_v.

    Its gradient is simply softmax(x) − q (because Σ q = 1), which backward writes in one pass instead of
    autograd's chain through a saved (N, V) float32 log-softmax: less memory and time on the largest tensor.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float, pad_id: int) -> tuple[Tensor, Tensor]:
        x = _at_least_float32(logits)  # (N, V)
        v = x.size(-1)
        lse = torch.logsumexp(x, dim=-1)  # (N,)
        nll = lse - x.gather(1, target[:, None]).squeeze(1)  # (N,)
        # Σ_{v ≠ pad} x_v, summed around the pad column, whose logit the model sets to −inf
        smooth = (v - 1) * lse - x[:, :pad_id].sum(dim=-1) - x[:, pad_id + 1:].sum(dim=-1)  # (N,)
        eps_i = epsilon / (v - 2)
        ctx.save_for_backward(logits, target, lse)
        ctx.epsilon, ctx.pad_id = epsilon, pad_id
        ctx.mark_non_differentiable(nll)
        return (1.0 - epsilon - eps_i) * nll + eps_i * smooth, nll

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        logits, target, lse = ctx.saved_tensors
        v = logits.size(-1)
        grad = (_at_least_float32(logits) - lse[:, None]).exp_()  # p = softmax(x), (N, V)
        grad.sub_(ctx.epsilon / (v - 2))  # − q off the gold token ...
        grad[:, ctx.pad_id] += ctx.epsilon / (v - 2)  # ... except <pad>, where q = 0
        gold = -(1.0 - ctx.epsilon - ctx.epsilon / (v - 2))  # − (q_gold − eps_i): the gold token's q is 1 − ε
        grad.scatter_add_(1, target[:, None], torch.full_like(lse[:, None], gold))
        return (grad * grad_loss[:, None]).to(logits.dtype), None, None, None


def label_smoothed_loss(logits: Tensor, target: Tensor, epsilon: float, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy with the smoothed target, summed over the non-pad target tokens.

    Args:
        logits: (N, V) any float dtype (computed in float32). target: (N,) long, `pad_id` where there is no token.
    Returns: (loss sum, nll sum, number of target tokens), each a 0-d tensor; divide by the count for per-token
        values. Only the loss is differentiable.
    """
    loss, nll = _SmoothedCrossEntropy.apply(logits, target, epsilon, pad_id)
    keep = target.ne(pad_id)  # (N,)
    zero = torch.zeros((), device=logits.device)
    return torch.where(keep, loss, zero).sum(), torch.where(keep, nll, zero).sum(), keep.sum()
