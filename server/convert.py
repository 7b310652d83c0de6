"""Pure functions between proto messages and seq2seq's dataclasses. Option checks live in DecodeConfig; the
server adds only its own limits (ServerConfig)."""
from __future__ import annotations

import dataclasses

from seq2seq_api.translation.v1 import translator_pb2 as pb
from seq2seq.config import ConfigError, DecodeConfig
from seq2seq.attention_maps import AttentionMaps
from seq2seq.translator import TextResult, Translation

from .config import ServerConfig

OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(DecodeConfig))  # DecodingOptions has exactly these
SCALAR_FIELDS = tuple(name for name in OPTION_FIELDS if name != "glossary")  # proto3 optional: HasField


def decode_config(options: pb.DecodingOptions, limits: ServerConfig) -> DecodeConfig:
    """DecodingOptions -> DecodeConfig (proto3 `optional`: unset = the DecodeConfig default). DecodeConfig checks
    every value (finite, in range) and says what is allowed; the server adds only its own --max-beam-size."""
    if len(options.glossary) > limits.max_glossary_terms:
        raise ConfigError(f"the glossary has {len(options.glossary)} terms; this server takes at most "
                          f"{limits.max_glossary_terms} (--max-glossary-terms)")
    config = DecodeConfig(**{name: getattr(options, name) for name in SCALAR_FIELDS if options.HasField(name)},
                          glossary=tuple((t.source, t.target) for t in options.glossary))
    for name in ("beam_size", "num_samples", "n_best"):
        if getattr(config, name) > limits.max_beam_size:
            raise ConfigError(f"{name} must be <= {limits.max_beam_size} on this server, got {getattr(config, name)}")
    return config


def decoding_options(config: DecodeConfig) -> pb.DecodingOptions:
    """The mirror of `decode_config`: every field of `config` set."""
    d = config.to_dict()
    glossary = [pb.GlossaryTerm(source=fr, target=en) for fr, en in d.pop("glossary")]
    return pb.DecodingOptions(**{k: v for k, v in d.items() if v is not None}, glossary=glossary)


def check_texts(texts, limits: ServerConfig) -> None:
    if not texts:
        raise ConfigError("texts is empty; send 1 to {} texts".format(limits.max_texts))
    if len(texts) > limits.max_texts:
        raise ConfigError(f"{len(texts)} texts in one request; the limit is {limits.max_texts}")
    for n, text in enumerate(texts):
        if not text.strip():
            raise ConfigError(f"text {n} is empty; give at least one non-space character")
        if len(text) > limits.max_chars:
            raise ConfigError(f"text {n} has {len(text)} characters; the limit is {limits.max_chars}")


def hypothesis(t: Translation, return_scores: bool, attention: pb.Attention | None) -> pb.Hypothesis:
    h = pb.Hypothesis(text=t.text, score=t.score)
    if return_scores:
        h.tokens.extend(t.tokens)
        h.token_log_probs.extend(t.token_log_probs)
    if attention is not None:
        h.attention.CopyFrom(attention)
    return h



def attention(maps: AttentionMaps) -> pb.Attention:
    """The message `Attention` of one hypothesis, `maps.to_dict()`'s content built a map at a time: a map's floats
    are a Python list (32 bytes each) only while they go into the message (4 bytes each). The whole `to_dict` at
    once held them all so, 8× the message: attention maps for a few long sentences took the server up 176 MB
    (issue 25)."""
    layers = maps.cross.size(0)
    message = pb.Attention(source_tokens=maps.source_tokens, target_tokens=maps.target_tokens,
                           source_words=maps.source_words, target_words=maps.target_words, alignment=maps.alignment)
    _fill(message.cross_average, maps.cross_average, layers - 1, -1)
    for field, weights in ((message.cross, maps.cross), (message.decoder_self, maps.decoder_self),
                           (message.encoder_self, maps.encoder_self)):
        for layer in range(weights.size(0)):
            for head in range(weights.size(1)):
                _fill(field.add(), weights[layer, head], layer, head)
    return message


def _fill(out: pb.AttentionMap, weights, layer: int, head: int) -> None:
    out.layer, out.head, (out.rows, out.cols) = layer, head, weights.shape
    out.weights.extend(weights.reshape(-1).tolist())


def text_result(result: TextResult, return_scores: bool) -> pb.TextResult:
    """A text's translation, with every sentence's hypotheses (and their attention maps, if they were computed)."""
    sentences = []
    for s in result.sentences:
        maps = s.maps or (None,) * (1 + len(s.translation.alternatives))
        sentences.append(pb.SentenceResult(source=s.source, hypotheses=[
            hypothesis(t, return_scores, None if m is None else attention(m))
            for t, m in zip((s.translation, *s.translation.alternatives), maps)]))
    return pb.TextResult(text=result.text, sentences=sentences)
