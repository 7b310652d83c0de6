"""Every attention map of one translation: cross-attention, decoder and encoder self-attention, per layer and head,
with the pieces they refer to and a word alignment read off the cross-attention.

One teacher-forced pass of the model over (source, output) recomputes what decoding saw, all layers at once. This
file turns tensors into labelled maps; it knows nothing of files, HTML or gRPC (`client/attention_view.py` draws,
`to_dict` is the proto message `Attention` as a plain dict).

Shapes: L layers, H heads, S source pieces, T output pieces (both including </s>).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .model import Transformer

WORD_START = "\u2581"  # "▁", SentencePiece's mark of a piece that begins a word
EOS_PIECE = "</s>"


@dataclass(frozen=True)
class AttentionMaps:
    """Attention weights of one sentence pair, float32 on the CPU; every row sums to 1, masked cells are 0.

    Words are the pieces grouped at word starts ("▁"); "</s>" is a word of its own, so it keeps its row and column.
    `alignment[i]` is the source word that target word i attends to most, or -1 when that is the source "</s>"
    (where a trained model parks attention that has no source word to go to).
    """

    source_tokens: tuple[str, ...]  # S pieces, incl. "</s>": the keys of `cross`
    target_tokens: tuple[str, ...]  # T pieces, incl. "</s>" when the model emitted it: the queries
    cross: Tensor  # (L, H, T, S)
    decoder_self: Tensor  # (L, H, T, T), zero above the diagonal (the causal mask)
    encoder_self: Tensor  # (L_enc, H, S, S)
    source_words: tuple[str, ...]
    target_words: tuple[str, ...]
    alignment: tuple[int, ...]  # one per target word: an index into source_words, or -1

    @property
    def cross_average(self) -> Tensor:
        """The last layer's cross-attention averaged over heads (T, S): what decoding returns as `attention`."""
        return self.cross[-1].mean(0)

    def to_dict(self) -> dict[str, Any]:
        """The proto message `Attention` as a plain dict (json_format.MessageToDict's form, field names as in the
        proto), for `json_format.ParseDict` in the server and for `client.attention_view` offline."""
        layers = self.cross.size(0)
        return {
            "source_tokens": list(self.source_tokens), "target_tokens": list(self.target_tokens),
            "cross_average": _map_dict(self.cross_average, layers - 1, -1),
            "cross": _maps_dict(self.cross), "decoder_self": _maps_dict(self.decoder_self),
            "encoder_self": _maps_dict(self.encoder_self),
            "source_words": list(self.source_words), "target_words": list(self.target_words),
            "alignment": list(self.alignment),
        }


def _map_dict(weights: Tensor, layer: int, head: int) -> dict[str, Any]:
    rows, cols = weights.shape
    return {"layer": layer, "head": head, "rows": rows, "cols": cols, "weights": weights.reshape(-1).tolist()}


def _maps_dict(weights: Tensor) -> list[dict[str, Any]]:
    """(L, H, R, C) -> L·H maps, layer-major."""
    return [_map_dict(weights[l, h], l, h) for l in range(weights.size(0)) for h in range(weights.size(1))]


def maps_bytes(config, source_len: int, target_len: int) -> int:
    """Bytes of one translation's maps, float32 (the same in the proto message): cross (T × S) and decoder self
    (T × T) per decoder layer and head, encoder self (S × S) per encoder layer and head, and the cross average.
    config: the model's ModelConfig."""
    s, t = source_len, target_len
    return 4 * (config.n_heads * (config.n_dec_layers * (t * s + t * t) + config.n_layers * s * s) + t * s)


def attention_maps(model: Transformer, src_ids: list[int], out_ids: list[int], source_tokens: tuple[str, ...],
                   target_tokens: tuple[str, ...]) -> AttentionMaps:
    """Recompute every attention map of one translation with one teacher-forced forward pass.

    Args:
        model: in eval mode (dropout would change the weights), any device and dtype.
        src_ids: the S source ids, </s> included. out_ids: the T output ids, </s> included when it was emitted.
        source_tokens, target_tokens: the pieces of those ids (the same lengths), as labels.
    The pass runs in the model's dtype. Weights are then converted to float32 and each row divided by its sum, so
    rows sum to 1 in float32 also for a bf16/fp16 model (whose weights keep that dtype's ~3 significant digits).
    """
    if model.training:
        raise ValueError("attention_maps needs the model in eval mode (dropout changes the weights)")
    if len(src_ids) != len(source_tokens) or len(out_ids) != len(target_tokens) or not src_ids or not out_ids:
        raise ValueError(f"need one token per id and at least one of each: {len(src_ids)} source ids, "
                         f"{len(source_tokens)} source tokens, {len(out_ids)} output ids, {len(target_tokens)} tokens")
    device = model.embed.tokens.weight.device
    src = torch.tensor([src_ids], dtype=torch.long, device=device)  # (1, S)
    tgt_in = torch.tensor([[model.bos_id, *out_ids[:-1]]], dtype=torch.long, device=device)  # (1, T): shifted right
    with torch.inference_mode():
        model(src, tgt_in, need_weights=True)
        cross, dec, enc = (_stack(w) for w in (model.cross_attention, model.decoder_attention, model.encoder_attention))
    source_words, source_of = group_words(source_tokens)
    target_words, target_of = group_words(target_tokens)
    eos_word = len(source_words) - 1 if source_tokens[-1] == EOS_PIECE else None
    alignment = align_words(cross[-1].mean(0), source_of, target_of, eos_word)  # on cross_average
    return AttentionMaps(tuple(source_tokens), tuple(target_tokens), cross, dec, enc, source_words, target_words,
                         alignment)


def _stack(per_layer: list[Tensor]) -> Tensor:
    """L × (1, H, R, C) in the model's dtype -> (L, H, R, C) float32 CPU, each row renormalised to sum to 1."""
    w = torch.stack([x[0] for x in per_layer]).float().cpu()
    return w / w.sum(-1, keepdim=True)


def group_words(pieces: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Pieces -> (words, the word index of each piece). A word starts at a piece beginning with "▁" (and at the
    first piece); "</s>" is a word of its own. Word text is its pieces joined, without the leading "▁"."""
    words: list[str] = []
    word_of: list[int] = []
    for i, piece in enumerate(pieces):
        if i == 0 or piece.startswith(WORD_START) or piece == EOS_PIECE or pieces[i - 1] == EOS_PIECE:
            words.append(piece)
        else:
            words[-1] += piece
        word_of.append(len(words) - 1)
    return tuple(w.removeprefix(WORD_START) for w in words), tuple(word_of)


def align_words(cross: Tensor, source_word_of: tuple[int, ...], target_word_of: tuple[int, ...],
                source_eos_word: int | None) -> tuple[int, ...]:
    """For each target word, the source word with the most attention, or -1 if that is `source_eos_word`.

    Args:
        cross: (T, S) float32, rows = target pieces, columns = source pieces.
        source_word_of, target_word_of: the word index of each piece (see `group_words`).
    A word's score = the cross-attention summed over the source word's pieces, averaged over the target word's.
    """
    src_words, tgt_words = torch.tensor(source_word_of), torch.tensor(target_word_of)
    n_src, n_tgt = int(src_words.max()) + 1, int(tgt_words.max()) + 1
    per_source_word = cross.new_zeros(cross.size(0), n_src).index_add_(1, src_words, cross)  # (T, n_src): sums
    scores = cross.new_zeros(n_tgt, n_src).index_add_(0, tgt_words, per_source_word)  # (n_tgt, n_src): sums
    scores /= torch.bincount(tgt_words, minlength=n_tgt)[:, None]  # averages over the target word's pieces
    return tuple(-1 if b == source_eos_word else b for b in scores.argmax(1).tolist())
