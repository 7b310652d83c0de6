"""Sampling: temperature, top-k and top-p (nucleus, Holtzman et al. 2020), `num_samples` paths per sentence.

Every random number comes from an explicit seed or torch.Generator. With `DecodeConfig.seed`, each sentence has its
own generator, so the same seed and source give the same samples whatever else is in the batch. Draws are inverse-CDF
lookups of pre-drawn uniforms, vectorised over the batch. Shapes: B batch, N live rows, V vocabulary.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..config import DecodeConfig
from .constraints import max_output_lengths
from .greedy import search_paths
from .hypothesis import Hypothesis

if TYPE_CHECKING:
    from . import StepModel


def sample(model: StepModel, src_ids: Tensor, src_pad_mask: Tensor, config: DecodeConfig,
           generator: torch.Generator | None = None, return_attention: bool = False) -> list[list[Hypothesis]]:
    """Draw `config.num_samples` translations per sentence.

    Args:
        src_ids: (B, S) long. src_pad_mask: (B, S) bool, True = padding.
        generator: the random source when `config.seed` is None (None = torch's global generator).
    Returns: per sentence, the n_best samples of highest score, best first.
    """
    limits = max_output_lengths(src_pad_mask, config)
    uniforms = draw_uniforms(limits, config, generator).to(src_ids.device)  # (B · num_samples, T)

    def pick(log_probs: Tensor, step: int, paths: Tensor) -> Tensor:
        return draw(log_probs, uniforms[paths, step], config)

    return search_paths(model, src_ids, src_pad_mask, config, config.num_samples, pick, return_attention)


def draw_uniforms(limits: list[int], config: DecodeConfig, generator: torch.Generator | None) -> Tensor:
    """(B · R, T) float32 in [0, 1): entry (b · R + r, t) drives sample r of sentence b at step t; R = num_samples.

    With a seed, sentence b draws its own (T_b, R) block from a generator seeded with it, T_b = its limit + 1
    (step-major, so that a sample's numbers do not depend on T_b either): nothing depends on the rest of the batch.
    """
    r, steps = config.num_samples, max(limits) + 1
    if config.seed is None:
        device = generator.device if generator is not None else None
        return torch.rand(len(limits) * r, steps, generator=generator, device=device)
    uniforms = torch.zeros(len(limits) * r, steps)
    for b, limit in enumerate(limits):
        sentence_generator = torch.Generator().manual_seed(config.seed)
        uniforms[b * r:(b + 1) * r, :limit + 1] = torch.rand(limit + 1, r, generator=sentence_generator).t()
    return uniforms


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
