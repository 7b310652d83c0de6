"""The one text-level object: text in, text out (split into sentences → tokenize → the decoding engine →
detokenize, and attention maps when asked).

Used by `seq2seq-translate`, `seq2seq-eval`, back-translation and the server, which is its only user of `submit`
and `start`. It owns the device, the precision, the input limits and the decoding engine (seq2seq.decoding.engine)
with its one running batch; option validation lives in DecodeConfig, once.
"""
from __future__ import annotations

import ctypes
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from seq2seq_api import glossary as terms

from .attention_maps import AttentionMaps, attention_maps, maps_bytes
from .checkpoint import load_model
from .config import PRECISIONS, ConfigError, DecodeConfig
from .decoding import Cancelled, Engine, Hypothesis, Sentence, TooLarge
from .decoding.constraints import max_output_length
from .decoding.lexical import Constraints
from .model import Transformer
from .sentences import Layout, join_sentences, split_sentences
from .tokenizer import EOS_ID, Tokenizer

__all__ = ["Translator", "Translation", "SentenceResult", "TextResult", "Job", "InputError", "Cancelled", "QueueFull",
           "ResourceBusy", "ShuttingDown", "TooLarge"]


class InputError(ValueError):
    """A text cannot be translated as given (empty, too long); the message says which and the limit."""


class QueueFull(Exception):
    """More requests are waiting than the Translator's max_queue allows."""


class ResourceBusy(QueueFull):
    """The request fits the server's limits alone, but not beside the requests in flight (their attention maps)."""


class ShuttingDown(Exception):
    """The Translator stopped taking work (the server is draining)."""


@dataclass(frozen=True)
class Translation:
    text: str
    score: float  # the hypothesis score (length-normalised log-probability, see seq2seq.decoding)
    tokens: tuple[str, ...]  # output pieces, including </s> when the model emitted it
    token_log_probs: tuple[float, ...]  # one per output piece
    source_tokens: tuple[str, ...]  # input pieces, including </s>
    attention: tuple[tuple[float, ...], ...] | None = None  # (output piece, source piece) weights, if asked
    alternatives: tuple["Translation", ...] = ()  # the 2nd … n-th best, when n_best > 1


@dataclass(frozen=True)
class SentenceResult:
    source: str  # the sentence as split from its text
    translation: Translation  # the best hypothesis, the others in its alternatives
    maps: tuple[AttentionMaps, ...] | None = None  # every attention map of each hypothesis, best first, if asked


@dataclass(frozen=True)
class TextResult:
    text: str  # the sentences' translations joined back into the text's lines
    sentences: tuple[SentenceResult, ...]


@dataclass(eq=False)
class Job:
    """One request's texts on their way through the engine. `results()` yields (text index, TextResult) as each
    text's last sentence is done, so a stream can send them; it raises the first error a sentence met. When the
    caller is done with them (all read, an error, or the generator closed), `on_close` runs: the request's attention
    maps stop counting against the server's limit."""

    texts: int
    events: queue.Queue = field(default_factory=queue.Queue)
    on_close: Callable[[], None] = lambda: None

    def results(self):
        try:
            for _ in range(self.texts):
                item = self.events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.on_close()


def fast_bf16_cpu() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 products run 2-3× fp32's."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def auto_precision(device: torch.device) -> str:
    """What `--precision auto` picks: the fastest precision whose translations do not depend on the load.

    CUDA: bf16 where supported, else fp32. CPU with bf16 matrix instructions (AVX512-BF16 / AMX): bf16, whose rows
    come out bit-identical in any batch (bench/invariance.py), so a text gets the same translation alone or among
    others; int8 is ~1.1× faster there but its activation scale is taken over the whole batch, so other requests
    can change a translation (docs/benchmarks.md). Other x86 CPUs: int8 (fbgemm), the fastest at the same BLEU where
    bf16 is slow, with that caveat. Other CPUs (ARM: qnnpack, not measured here): fp32.
    """
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if fast_bf16_cpu():
        return "bf16"
    if int8_engine() == "fbgemm":
        return "int8"
    return "fp32"


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


# The worker hands the heap's free pages back to the kernel (glibc's malloc_trim) after IDLE_RELEASE_S seconds without
# work, and every BUSY_RELEASE_S seconds of work. glibc keeps what a batch's caches and logits freed inside its heap,
# where tensors of other sizes do not fit in the holes: the caches are reallocated whenever the batch's rows or
# longest output grow, to sizes that bad input (long sources, 16 beams, min_len near 1,024) makes vary widely. The
# fuzz phase of bench/fuzz_memory.py without attention maps took a server to 654-662 MB resident; with a fixed 2 MB
# mmap threshold (freed blocks go straight back) 505 MB, but 13-20% less throughput; with a trim every busy second
# 578 MB, for ~1% (bench/server_ab.py; docs/benchmarks.md, issue 25). A trim takes ~7 ms when little is free.
IDLE_RELEASE_S = 1.0
BUSY_RELEASE_S = 1.0
try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc; absent on macOS and musl
except (OSError, AttributeError):
    _malloc_trim = None


def release_heap() -> bool:
    """glibc's malloc_trim(0): return the free memory of every malloc arena to the kernel. False where there is none
    (another C library; under jemalloc the call reaches glibc's unused heap and changes nothing)."""
    return bool(_malloc_trim is not None and _malloc_trim(0))


class Translator:
    """Args:
        model, tokenizer: a trained pair (see `from_checkpoint`).
        device: auto | cpu | cuda[:n].
        precision: auto | fp32 | bf16 | fp16 | int8; fp16 on CUDA only, int8 on CPU only; auto: `auto_precision`.
            `self.precision` is the one chosen. The default is fp32 (exact); the commands default to auto.
        max_input_tokens: longer sentences are rejected.
        max_batch_rows: decoder rows (beams, samples) in the running batch at most.
        max_cache_mb: the budget of the batch's key/value caches (both buffers): sentences wait for room, and one
            that could exceed it alone is rejected (TooLarge).
        share: False turns cross-request batching off (one request's sentences at a time, for comparison).
        max_queue: requests waiting to join the batch (`submit`) at most; more get QueueFull.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, device: str = "auto", precision: str = "fp32",
                 max_input_tokens: int = 512, max_batch_rows: int = 128, max_cache_mb: float = 256,
                 share: bool = True, max_queue: int = 1 << 30):
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
        config = model.config
        if precision == "int8":
            model = quantize_int8(model)
        else:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            model = model.to(self.device, dtype).eval()
        self.tokenizer, self.precision, self.max_input_tokens = tokenizer, precision, max_input_tokens
        # One cache position of one row: a key and a value per decoder layer, in the activations' dtype (fp32 for
        # int8), plus one layer's spare buffer (the beams' reorder writes into it, one layer at a time).
        value_bytes = 2 if precision in ("bf16", "fp16") else 4
        position_bytes = 2 * (config.n_dec_layers + 1) * config.d_model * value_bytes
        glued = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        glued[tokenizer.glued_ids()] = True  # after a glossary term, none of these: its last word stays whole
        self.engine = Engine(model, self.device, max_batch_rows, int(max_cache_mb * 2 ** 20 / position_bytes),
                             share, glued)
        self.position_bytes = position_bytes
        self.max_attention_mb: float | None = None  # see configure
        self.maps_lock = threading.Lock()
        self.maps_held = 0  # bytes of attention maps that the requests in flight hold, all together
        self.max_queue, self.closed, self.users = max_queue, False, 0
        self.observer: Callable[[int, int, int, int], None] | None = None
        self.cond = threading.Condition()  # guards the fields above; the worker waits on it
        self.stepping = threading.Lock()  # one thread steps the engine at a time
        self.worker: threading.Thread | None = None

    @property
    def model(self):
        """The model the engine decodes with (in the chosen precision)."""
        return self.engine.model

    @model.setter
    def model(self, model) -> None:  # tests wrap it (e.g. to slow each step down)
        self.engine.model = model

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> "Translator":
        model, tokenizer = load_model(path)
        return cls(model, tokenizer, **kwargs)

    def configure(self, max_batch_rows: int | None = None, max_cache_mb: float | None = None,
                  share: bool | None = None, max_queue: int | None = None,
                  observer: Callable[[int, int, int, int], None] | None = None,
                  max_attention_mb: float | None = None) -> "Translator":
        """Change the limits of the constructor (None = keep); observer(rows, requests, delivered, waiting) is
        called after every step of the worker (the server's metrics). max_attention_mb: the attention maps (`submit`,
        `maps_bytes`, float32) that all requests in flight may hold together: a request whose own maps pass it fails
        with an InputError, one that would pass it with those of others with ResourceBusy (retry); no limit by
        default."""
        if max_batch_rows is not None:
            self.engine.max_rows = max_batch_rows
        if max_cache_mb is not None:
            self.engine.max_positions = int(max_cache_mb * 2 ** 20 / self.position_bytes)
        if share is not None:
            self.engine.share = share
        if max_queue is not None:
            self.max_queue = max_queue
        if max_attention_mb is not None:
            self.max_attention_mb = max_attention_mb
        self.observer = observer or self.observer
        return self

    # ---- offline: texts in, translations out, in this thread -------------------------------------------------------

    def translate(self, texts: list[str], config: DecodeConfig = DecodeConfig(),
                  return_attention: bool = False) -> list[Translation]:
        """One translation per text, each text one sentence (no splitting).

        return_attention: fill Translation.attention with each output piece's cross-attention (the average over
        the last layer's heads, as decoding saw it)."""
        src = self.encode(texts)
        constraints = [self.constraints(text, ids, config, n) for n, (text, ids) in enumerate(zip(texts, src))]
        results: list = [None] * len(src)

        def deliver(i: int, hyps):
            results[i] = hyps if isinstance(hyps, BaseException) else self.detokenize(src[i], hyps)

        order = sorted(range(len(src)), key=lambda i: len(src[i]))  # neighbours of similar length share steps
        config_plain = config.replace(glossary=())  # terms travel as each sentence's constraints
        self.engine.submit([Sentence(src[i], config_plain, lambda h, i=i: deliver(i, h), return_attention,
                                     constraints=constraints[i]) for i in order])
        self._drive(lambda: all(r is not None for r in results))
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def _drive(self, finished: Callable[[], bool]) -> None:
        """Wait until `finished()`: the worker steps the engine if there is one, else this thread does."""
        while not finished():
            if self.worker is not None:
                with self.cond:
                    self.cond.notify_all()
                    self.cond.wait(0.01)
                continue
            with self.stepping:
                self.engine.step()

    # ---- the server: requests submitted from many threads, one worker stepping the engine ---------------------------

    def start(self) -> "Translator":
        """Start the worker thread that steps the engine whenever there is work (the server's mode). Several
        servers may share one Translator: each calls start() and stop(), and the last stop() ends the worker."""
        with self.cond:
            self.users += 1
            if self.worker is not None:
                return self
            self.closed = False
            self.worker = threading.Thread(target=self._work, name="engine", daemon=True)
        self.worker.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Take no more requests; the worker finishes those in flight, then ends."""
        with self.cond:
            self.users -= 1
            if self.users > 0 or self.worker is None:
                return
            self.closed = True
            self.cond.notify_all()
            worker = self.worker
        worker.join(timeout)
        self.worker = None

    def _work(self) -> None:
        stepped = False  # work done since the heap was last released
        released = time.monotonic()
        while True:
            idle = quiet = False
            with self.cond:
                if self.closed and not self.engine.busy():
                    return
                if not self.engine.busy():
                    idle = True
                    woken = self.cond.wait(IDLE_RELEASE_S if stepped else None)
                    quiet = not woken and stepped and not self.engine.busy() and not self.closed
            if quiet:  # a second without work: give back what the last batches left free (outside the lock)
                release_heap()
                stepped, released = False, time.monotonic()
            if idle:
                continue
            stepped = True
            with self.stepping:
                delivered = self.engine.step()  # never raises: a failed step fails its sentences (engine.step)
            if time.monotonic() - released >= BUSY_RELEASE_S:  # and every busy second, between two steps
                release_heap()
                released = time.monotonic()
            if self.observer is not None:
                e = self.engine
                self.observer(e.n_rows, e.n_owners, delivered, len(e.waiting))

    def submit(self, texts: list[str], config: DecodeConfig, split: bool = True, attention_maps: bool = False,
               should_stop: Callable[[], bool] | None = None, return_attention: bool = False) -> Job:
        """Queue a request: each text split into sentences (`split`: by the Moses splitter, else by line), every
        sentence decoded in the running batch. Raises InputError (empty text, too long a sentence), TooLarge,
        QueueFull or ShuttingDown before anything is queued.

        attention_maps: every attention map of every hypothesis (SentenceResult.maps), computed in the worker once
            the sentence is decoded. should_stop: asked at every step; True drops the request's sentences.
        """
        parts, layouts, owner = [], [], []  # all sentences; per text its layout; per sentence its text
        for n, text in enumerate(texts):
            _check_nonempty(text, n)
            text_parts, layout = split_sentences(text, split)
            parts += text_parts
            layouts.append(layout)
            owner += [n] * len(text_parts)
        src = [self._encode_one(parts[k], owner[k], split) for k in range(len(parts))]
        constraints = [self.constraints(parts[k], src[k], config, owner[k]) for k in range(len(parts))]
        job = Job(len(texts))
        collect = _Collector(self, job, parts, src, layouts, owner, attention_maps, should_stop)
        job.on_close = collect.release
        shortest_first = sorted(range(len(parts)), key=lambda k: len(src[k]))  # the first texts come back sooner
        config_plain = config.replace(glossary=())  # terms travel as each sentence's constraints
        sentences = [Sentence(src[k], config_plain, collect.deliver(k), return_attention, should_stop=should_stop,
                              owner=job, constraints=constraints[k]) for k in shortest_first]
        with self.cond:
            if self.closed:
                raise ShuttingDown("the server is shutting down")
            with self.engine.lock:
                queued = len({id(s.owner) for s in self.engine.waiting})
            if queued >= self.max_queue:
                raise QueueFull(f"{queued} requests are waiting to be decoded, the limit is {self.max_queue}; "
                                "retry later")
            self.engine.submit(sentences)  # TooLarge: nothing queued
            self.cond.notify_all()
        return job

    # ---- text <-> ids -----------------------------------------------------------------------------------------------

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Texts -> source ids with </s>; rejects empty and over-long texts."""
        return [self._encode_one(_check_nonempty(text, n), n, False) for n, text in enumerate(texts)]

    def _encode_one(self, text: str, n: int, split: bool) -> list[int]:
        ids = self.tokenizer.encode(text) + [EOS_ID]
        if len(ids) > self.max_input_tokens:
            what = f"has a sentence of {len(ids)} tokens ({text[:40]!r}...)" if split else f"has {len(ids)} tokens"
            raise InputError(f"text {n} {what}; the limit is {self.max_input_tokens}"
                             + (" per sentence" if split else ""))
        return ids

    def constraints(self, sentence: str, src: list[int], config: DecodeConfig, n: int) -> Constraints:
        """The English terms of the glossary whose French term occurs in `sentence` (of text n), as the token
        sequences its output must hold. InputError if a term cannot be written exactly by the vocabulary, or if the
        terms cannot all fit in the output's length limit."""
        if not config.glossary:
            return ()
        out = []
        for fr, en in terms.matches(config.glossary, sentence):
            ids = self.tokenizer.encode(en)
            if self.tokenizer.decode(ids) != en:
                raise InputError(f"the English term {en!r} cannot be written exactly by this model's vocabulary (it "
                                 f"would come out as {self.tokenizer.decode(ids)!r})")
            out.append(tuple(ids))
        need, limit = sum(map(len, out)), max_output_length(len(src), config)
        if need > limit:
            raise InputError(f"text {n}: the glossary's terms in {sentence[:40]!r} need {need} tokens, more than the "
                             f"{limit} its translation may have (max_len_a · source tokens + max_len_b)")
        return tuple(out)

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
        recomputed by one teacher-forced pass over its source and output pieces. Called in the engine's thread
        for requests (see `submit`); directly, it must not run while another thread steps the engine."""
        src_ids = self.tokenizer.piece_ids(translation.source_tokens)
        out_ids = self.tokenizer.piece_ids(translation.tokens)
        return attention_maps(self.model, src_ids, out_ids, translation.source_tokens, translation.tokens)


def _check_nonempty(text: str, n: int) -> str:
    """text, unless it is empty or only spaces: then an InputError naming text n."""
    if not text.strip():
        raise InputError(f"text {n} is empty; give at least one non-space character")
    return text


class _Collector:
    """Gathers one Job's sentences as the engine delivers them (in the engine's thread) and hands each text to the
    job once its last sentence is in."""

    def __init__(self, translator: Translator, job: Job, parts: list[str], src: list[list[int]],
                 layouts: list[Layout], owner: list[int], maps: bool, should_stop):
        self.translator, self.job, self.parts, self.src, self.layouts = translator, job, parts, src, layouts
        self.owner, self.maps, self.should_stop = owner, maps, should_stop
        self.pending = [sum(layout.lines) for layout in layouts]  # sentences still to come, per text
        self.found: dict[int, SentenceResult] = {}  # delivered sentences of the texts not yet handed over
        self.failed, self.done = False, 0
        self.maps_bytes, self.closed = 0, False  # this request's share of translator.maps_held; closed: given back

    def deliver(self, k: int) -> Callable:
        return lambda hyps: self._deliver(k, hyps)

    def _deliver(self, k: int, hyps) -> None:
        try:
            if self.failed:
                return
            if isinstance(hyps, BaseException):
                raise hyps
            if self.should_stop is not None and self.should_stop():
                raise Cancelled("the request was cancelled or its deadline passed")
            t = self.translator.detokenize(self.src[k], hyps)
            maps = None
            if self.maps:
                self._take(sum(maps_bytes(self.translator.model.config, len(h.source_tokens), len(h.tokens))
                               for h in (t, *t.alternatives)))
                maps = tuple(self.translator.attention_maps(h) for h in (t, *t.alternatives))
            self.found[k] = SentenceResult(self.parts[k], t, maps)
            n = self.owner[k]
            self.pending[n] -= 1
            if self.pending[n] == 0:
                mine = tuple(self.found.pop(j) for j in range(len(self.parts)) if self.owner[j] == n)
                self.done += len(mine)
                text = join_sentences([s.translation.text for s in mine], self.layouts[n])
                self.job.events.put((n, TextResult(text, mine)))
        except Exception as e:  # the job's first error ends it; its other sentences are dropped
            self.failed = True
            self.release()  # what it held is dropped with it
            self.job.events.put(e)

    def _take(self, n: int) -> None:
        """Count n more bytes of maps against the server's limit, which holds for all requests in flight together
        (16 concurrent requests with 32 MB each took a fuzzed server 75 MB higher, docs/benchmarks.md)."""
        t, limit = self.translator, self.translator.max_attention_mb
        with t.maps_lock:
            if self.closed:
                raise Cancelled("the request is over")
            if limit is not None and self.maps_bytes + n > limit * 2 ** 20:
                raise InputError(f"return_attention: this request's attention maps passed {limit:g} MB at sentence "
                                 f"{self.done + len(self.found) + 1} of {len(self.parts)} (float32, every layer and "
                                 f"head of every hypothesis): send fewer or shorter sentences, or lower n_best")
            if limit is not None and t.maps_held + n > limit * 2 ** 20:
                raise ResourceBusy(f"return_attention: the attention maps of the requests in flight fill the "
                                   f"server's {limit:g} MB; retry in a moment")
            t.maps_held += n
            self.maps_bytes += n

    def release(self) -> None:
        """Give this request's share of the maps' budget back, once (the caller is done with the maps)."""
        with self.translator.maps_lock:
            self.translator.maps_held -= self.maps_bytes
            self.maps_bytes, self.closed = 0, True
