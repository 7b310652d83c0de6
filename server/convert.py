"""Pure functions between proto messages and seq2seq's dataclasses. Option checks live in DecodeConfig; the
server adds only its own limits (ServerConfig) and the rule that every number is finite."""
from __future__ import annotations

import math

from client.translation.v1 import translator_pb2 as pb
from seq2seq.config import ConfigError, DecodeConfig
from seq2seq.translator import Translation

from .config import ServerConfig

# DecodingOptions field -> DecodeConfig field (same names; proto3 `optional`: unset = the DecodeConfig default)
OPTION_FIELDS = ("beam_size", "length_penalty", "n_best", "max_len_a", "max_len_b", "min_len", "sample",
                 "temperature", "top_k", "top_p", "num_samples", "seed", "no_repeat_ngram_size",
                 "repetition_penalty")
MAX_LEN_A, MAX_LEN_B = 4.0, 1024  # output length limits: at most 4 · source tokens + 1024
MIN_TEMPERATURE = 1e-3  # below, log p / T overflows float32 into infinities


def decode_config(options: pb.DecodingOptions, limits: ServerConfig) -> DecodeConfig:
    """DecodingOptions -> DecodeConfig; ConfigError (INVALID_ARGUMENT) says what is wrong and the allowed range."""
    given = {name: getattr(options, name) for name in OPTION_FIELDS if options.HasField(name)}
    for name, value in given.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
    config = DecodeConfig(**given)  # its own range checks; attention maps are computed after decoding
    for name in ("beam_size", "num_samples", "n_best"):
        if getattr(config, name) > limits.max_beam_size:
            raise ConfigError(f"{name} must be <= {limits.max_beam_size} on this server, got {getattr(config, name)}")
    if config.max_len_a > MAX_LEN_A or config.max_len_b > MAX_LEN_B:
        raise ConfigError(f"max_len_a must be in [0, {MAX_LEN_A}] and max_len_b in [0, {MAX_LEN_B}], "
                          f"got {config.max_len_a} and {config.max_len_b}")
    if config.min_len > MAX_LEN_B:
        raise ConfigError(f"min_len must be in [0, {MAX_LEN_B}], got {config.min_len}")
    if config.sample and config.temperature < MIN_TEMPERATURE:
        raise ConfigError(f"temperature must be >= {MIN_TEMPERATURE}, got {config.temperature}")
    return config


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

