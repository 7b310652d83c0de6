"""The one text-level object: text in, text out (tokenize → batch by tokens → decode → detokenize).

Used by `seq2seq-translate`, `seq2seq-eval` and the server. It owns the device, the input limits, batching and a
lock in front of the model; option validation lives in DecodeConfig and here, once.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .attention_maps import AttentionMaps, attention_maps
from .checkpoint import load_model
from .config import PRECISIONS, ConfigError, DecodeConfig
from .decoding import Hypothesis, decode
from .model import Transformer
from .tokenizer import EOS_ID, Tokenizer


class InputError(ValueError):
    """A text cannot be translated as given (empty, too long); the message says which and the limit."""


class Cancelled(Exception):
    """Decoding stopped early because `should_stop` said so (a cancelled request or a passed deadline)."""


class _Stoppable:
    """A StepModel that asks `should_stop()` before every decoding step: how a request stops mid-search."""

    def __init__(self, model: Transformer, should_stop: Callable[[], bool]):
        self.model, self.should_stop = model, should_stop

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def decode_step(self, prev_ids, memory, state):
        if self.should_stop():
            raise Cancelled("decoding stopped: the request was cancelled or its deadline passed")
        return self.model.decode_step(prev_ids, memory, state)


@dataclass(frozen=True)
class Translation:
    text: str
    score: float  # the hypothesis score (length-normalised log-probability, see seq2seq.decoding)
    tokens: tuple[str, ...]  # output pieces, including </s> when the model emitted it
    token_log_probs: tuple[float, ...]  # one per output piece
    source_tokens: tuple[str, ...]  # input pieces, including </s>
    attention: tuple[tuple[float, ...], ...] | None = None  # (output piece, source piece) weights, if asked
    alternatives: tuple["Translation", ...] = ()  # the 2nd … n-th best, when n_best > 1


def fast_bf16_cpu() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 products run 2-3× fp32's."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def auto_precision(device: torch.device) -> str:
    """What `--precision auto` picks: the fastest precision at equal quality on this device (docs/benchmarks.md).

    CUDA: bf16 where supported, else fp32. x86 CPU (fbgemm): int8, measured the fastest of the three at the same
    BLEU, faster than bf16 even on a CPU with bf16 matrix instructions (test_2016_flickr, beam 4: BLEU 48.67 int8,
    48.72 bf16, 48.68 fp32). Other CPUs (ARM: qnnpack, not measured here): bf16 where bf16 products are fast,
    else fp32.
    """
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if int8_engine() == "fbgemm":
        return "int8"
    return "bf16" if fast_bf16_cpu() else "fp32"


def int8_engine() -> str | None:
    """The quantized-kernel backend for int8 on this CPU, or None if torch has none: fbgemm on x86 (it measured
    faster than torch's "x86" and "onednn" engines here, docs/benchmarks.md), qnnpack on ARM."""
    engines = torch.backends.quantized.supported_engines
    for name in ("fbgemm", "x86", "onednn", "qnnpack"):
        if name in engines:
            return name
    return None


def quantize_int8(model: Transformer) -> Transformer:
    """Dynamic int8 quantization (torch.ao.quantization, a maintained part of torch with fbgemm/qnnpack kernels):
    every nn.Linear gets int8 weights (one scale per output channel) and quantizes its input per call at run time;
    products accumulate in int32. The pre-softmax projection, y · Eᵀ with the shared embedding E (§3.4), is the
    largest product of a decoding step (D × V per row), so it is quantized too, from a copy of E: measured 1.35×
    faster for 0.16 BLEU on 300 sentences (docs/benchmarks.md). The embedding lookup itself stays fp32. CPU only.
    """
    import warnings

    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engine = int8_engine()
    if engine is None:
        raise ConfigError("precision int8 needs a quantized backend (fbgemm, oneDNN or qnnpack); this torch has none")
    torch.backends.quantized.engine = engine
    model = model.float().eval()  # in place, as Translator's .to(device, dtype) does for the other precisions
    projection = nn.Linear(model.config.d_model, model.vocab_size, bias=False)
    projection.weight = model.embed.tokens.weight  # the same matrix; quantize_dynamic makes its own int8 copy
    model.output_projection = projection
    with warnings.catch_warnings():  # torch announces the move of this API to torchao; it works as documented
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    model.output_projection = None  # the caller's model keeps its own projection (quantize_dynamic copied it)
    return quantized


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but CUDA is not available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None


class Translator:
    """Args:
        model, tokenizer: a trained pair (see `from_checkpoint`).
        device: auto | cpu | cuda[:n].
        precision: auto | fp32 | bf16 | fp16 | int8; fp16 on CUDA only, int8 on CPU only; auto: `auto_precision`.
            `self.precision` is the one chosen.
        max_input_tokens: longer texts are rejected. max_batch_tokens: source tokens per decoding batch.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, device: str = "auto", precision: str = "fp32",
                 max_input_tokens: int = 512, max_batch_tokens: int = 4096):
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = resolve_device(device)
        if precision == "auto":
            precision = auto_precision(self.device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("precision fp16 needs CUDA; use bf16, int8 or fp32 on CPU")
        if precision == "int8" and self.device.type != "cpu":
            raise ConfigError("precision int8 runs on CPU only; use bf16 or fp16 on CUDA")
        self.num_parameters = model.num_parameters()  # before int8 turns weights into packed buffers
        if precision == "int8":
            self.model = quantize_int8(model)
        else:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            self.model = model.to(self.device, dtype).eval()
        self.tokenizer, self.precision = tokenizer, precision
        self.max_input_tokens, self.max_batch_tokens = max_input_tokens, max_batch_tokens
        self.lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> "Translator":
        model, tokenizer = load_model(path)
        return cls(model, tokenizer, **kwargs)

    # ---- the pipeline: encode → batch → decode → detokenize ------------------------------------------------------

    def translate(self, texts: list[str], config: DecodeConfig = DecodeConfig(),
                  return_attention: bool = False) -> list[Translation]:
        """return_attention: fill Translation.attention with each output piece's cross-attention (the average over
        the last layer's heads, as decoding saw it)."""
        src = self.encode(texts)
        results: list[list[Hypothesis] | None] = [None] * len(src)
        for idx in self.batches(src):
            for i, hyps in zip(idx, self.decode_batch([src[i] for i in idx], config,
                                                      return_attention=return_attention)):
                results[i] = hyps
        return [self.detokenize(src[i], hyps) for i, hyps in enumerate(results)]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Texts -> source ids with </s>; rejects empty and over-long texts."""
        out = []
        for n, text in enumerate(texts):
            if not text.strip():
                raise InputError(f"text {n} is empty; give at least one non-space character")
            ids = self.tokenizer.encode(text) + [EOS_ID]
            if len(ids) > self.max_input_tokens:
                raise InputError(f"text {n} has {len(ids)} tokens; the limit is {self.max_input_tokens}")
            out.append(ids)
        return out

    def batches(self, src: list[list[int]]) -> list[list[int]]:
        """Indices grouped by similar length, at most max_batch_tokens padded source tokens per group."""
        order = sorted(range(len(src)), key=lambda i: len(src[i]))
        groups, current, longest = [], [], 0
        for i in order:
            longest_new = max(longest, len(src[i]))
            if current and longest_new * (len(current) + 1) > self.max_batch_tokens:
                groups.append(current)
                current, longest_new = [], len(src[i])
            current.append(i)
            longest = longest_new
        return groups + ([current] if current else [])

    def decode_batch(self, src: list[list[int]], config: DecodeConfig, should_stop: Callable[[], bool] | None = None,
                     return_attention: bool = False) -> list[list[Hypothesis]]:
        """Source ids (with </s>) -> n-best hypotheses each. `should_stop` is asked before every step; True raises
        Cancelled."""
        pad = self.tokenizer.pad_id
        src_ids = torch.full((len(src), max(map(len, src))), pad, dtype=torch.long)
        for i, ids in enumerate(src):
            src_ids[i, :len(ids)] = torch.tensor(ids)
        src_ids = src_ids.to(self.device)
        model = self.model if should_stop is None else _Stoppable(self.model, should_stop)
        with self.lock, torch.inference_mode():
            return decode(model, src_ids, src_ids.eq(pad), config, return_attention=return_attention)

    def detokenize(self, src: list[int], hyps: list[Hypothesis]) -> Translation:
        source_tokens = tuple(self.tokenizer.pieces(src))
        out = []
        for h in hyps:
            ids = list(h.ids) + ([EOS_ID] if len(h.token_log_probs) > len(h.ids) else [])
            attention = None if h.attention is None else tuple(tuple(row) for row in h.attention.float().tolist())
            out.append(Translation(self.tokenizer.decode(h.ids), float(h.score), tuple(self.tokenizer.pieces(ids)),
                                   tuple(float(x) for x in h.token_log_probs), source_tokens, attention))
        best = out[0]
        return Translation(best.text, best.score, best.tokens, best.token_log_probs, best.source_tokens,
                           best.attention, tuple(out[1:]))

    def attention_maps(self, translation: Translation) -> AttentionMaps:
        """Every attention map of one translation (its best hypothesis; pass an alternative for another one),
        recomputed by one teacher-forced pass over its source and output pieces."""
        src_ids = self.tokenizer.piece_ids(translation.source_tokens)
        out_ids = self.tokenizer.piece_ids(translation.tokens)
        with self.lock:
            return attention_maps(self.model, src_ids, out_ids, translation.source_tokens, translation.tokens)
