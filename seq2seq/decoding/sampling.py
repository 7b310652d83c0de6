"""Sampling: temperature, top-k and top-p (nucleus, Holtzman et al. 2020), `num_samples` paths per sentence.

Every random number comes from an explicit seed or torch.Generator. With `DecodeConfig.seed`, each sentence has its
own generator, so the same seed and source give the same samples whatever else is in the batch. Draws are inverse-CDF
lookups of uniforms drawn when a sentence joins, vectorised over the batch. Shapes: N live rows, V vocabulary.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..config import DecodeConfig


def draw_uniforms(limit: int, config: DecodeConfig, generator: torch.Generator | None) -> Tensor:
    """(R, limit + 1) float32 in [0, 1): entry (r, t) drives sample r of one sentence at its step t; R = num_samples.

    With a seed, the sentence draws from a generator seeded with it, step-major (so that a sample's numbers do not
    depend on the limit either): nothing depends on the rest of the batch.
    """
    r = config.num_samples
    if config.seed is None:
        device = generator.device if generator is not None else None
        return torch.rand(r, limit + 1, generator=generator, device=device)
    return torch.rand(limit + 1, r, generator=torch.Generator().manual_seed(config.seed)).t()


class Sampler:
    """The `pick` of PathSearch for sampling: row i draws with uniforms[i, its step]; rows follow the search's."""

    def __init__(self, config: DecodeConfig, device: torch.device):
        self.config, self.device = config, device
        self.uniforms = torch.zeros(0, 1, device=device)  # (N, T)

    def join(self, blocks: list[Tensor]) -> None:
        """Append the rows of joining sentences: their draw_uniforms blocks."""
        t = max([self.uniforms.size(1)] + [b.size(1) for b in blocks])
        pad = lambda u: torch.nn.functional.pad(u.to(self.device), (0, t - u.size(1)))  # noqa: E731
        self.uniforms = torch.cat([pad(self.uniforms)] + [pad(b) for b in blocks])

    def keep(self, rows: Tensor | None) -> None:
        if rows is not None:
            self.uniforms = self.uniforms.index_select(0, rows)

    def __call__(self, log_probs: Tensor, steps: Tensor) -> Tensor:
        rows = torch.arange(log_probs.size(0), device=log_probs.device)
        return draw(log_probs, self.uniforms[rows, steps], self.config)


def next_token_distribution(log_probs: Tensor, config: DecodeConfig) -> tuple[Tensor, Tensor | None]:
    """The distribution the next token is drawn from.

    p_i ∝ exp(log_prob_i / temperature), restricted to the top_k most probable tokens, then to the nucleus: the
    fewest most probable tokens whose mass reaches top_p (the first token always stays).
    Args: log_probs (N, V) float32, after the constraints.
    Returns: (probs (N, V'), ids (N, V') long), most probable first, V' = min(top_k, V) or V; probs outside the
        nucleus are 0. Without top-k and top-p nothing is sorted: (probs (N, V), None), ids = columns.
    """
    logits = log_probs / config.temperature if config.temperature != 1.0 else log_probs
    if config.top_k:
        logits, ids = logits.topk(min(config.top_k, logits.size(-1)), dim=-1)  # (N, V')
    elif config.top_p < 1.0:
        logits, ids = logits.sort(dim=-1, descending=True)  # (N, V)
    else:
        return logits.softmax(dim=-1), None
    probs = logits.softmax(dim=-1)
    if config.top_p < 1.0:
        mass_before = probs.cumsum(dim=-1) - probs  # (N, V'), mass of the more probable tokens
        probs = probs.masked_fill(mass_before >= config.top_p, 0.0)
    return probs, ids


def draw(log_probs: Tensor, uniforms: Tensor, config: DecodeConfig) -> Tensor:
    """One token per row by inverse CDF: log_probs (N, V) float32, uniforms (N,) in [0, 1) -> ids (N,) long."""
    probs, ids = next_token_distribution(log_probs, config)
    cdf = probs.cumsum(dim=-1)  # (N, V'), unnormalised after top-p
    target = uniforms[:, None].to(cdf.dtype) * cdf[:, -1:]  # (N, 1)
    picked = torch.searchsorted(cdf, target, right=True)  # the first token whose cdf exceeds the target
    picked = torch.minimum(picked, cdf.argmax(dim=-1, keepdim=True))  # rounding: never past the last token with mass
    return (picked if ids is None else ids.gather(1, picked)).squeeze(1)
