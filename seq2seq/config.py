"""Frozen dataclass configs: ModelConfig (the network), DataConfig, TrainConfig, DecodeConfig.

Each one round-trips through a plain dict (`to_dict` / `from_dict`) so it can live inside a checkpoint and in a
YAML/JSON file. Validation happens once, in `__post_init__`, with messages a user can act on.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

C = TypeVar("C")

# Inference precisions (seq2seq.translator.Translator): auto picks per device; fp16 needs CUDA, int8 runs on CPU.
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


class ConfigError(ValueError):
    """A config value or key is wrong; the message says which and what is allowed."""


def _from_dict(cls: type[C], d: dict[str, Any]) -> C:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kwargs)


class _DictMixin:
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}  # type: ignore

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return _from_dict(cls, d)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class ModelConfig(_DictMixin):
    """The Transformer of "Attention Is All You Need" (§3). Names follow the paper.

    The vocabulary is joint (source and target) and its last id is `<pad>`, which is also the decoder's start
    symbol (the Marian convention, so that the model exports one-to-one to Marian/CTranslate2).
    """

    vocab_size: int
    d_model: int = 512
    n_heads: int = 8  # h
    n_layers: int = 6  # N, encoder
    n_decoder_layers: int | None = None  # N, decoder; None = same as the encoder
    d_ff: int = 2048
    dropout: float = 0.1  # P_drop: on sub-layer outputs and on embeddings + positions (§5.4)
    attention_dropout: float = 0.0  # Deviation (optional, off by default): dropout on attention weights
    activation_dropout: float = 0.0  # Deviation (optional, off by default): dropout after the FFN's ReLU
    pre_norm: bool = False  # Deviation (optional): LayerNorm before each sub-layer instead of after
    max_positions: int = 1024  # rows of the sinusoidal table that are precomputed; longer inputs extend it
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.vocab_size < 3:
            raise ConfigError(f"vocab_size must be >= 3 (</s>, <unk>, <pad>), got {self.vocab_size}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.d_model % 2:
            raise ConfigError(f"d_model must be even for sinusoidal positions, got {self.d_model}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.n_layers < 1 or (self.n_decoder_layers is not None and self.n_decoder_layers < 1):
            raise ConfigError("n_layers and n_decoder_layers must be >= 1")

    @property
    def d_k(self) -> int:
        return self.d_model // self.n_heads  # d_k = d_v = d_model / h

    @property
    def n_dec_layers(self) -> int:
        return self.n_layers if self.n_decoder_layers is None else self.n_decoder_layers

    @property
    def pad_id(self) -> int:
        return self.vocab_size - 1

    # Presets. base() and big() are Table 3 of the paper; the others are sized for a 2-core CPU.
    @classmethod
    def base(cls, vocab_size: int) -> "ModelConfig":
        return cls(vocab_size, d_model=512, n_heads=8, n_layers=6, d_ff=2048, dropout=0.1)

    @classmethod
    def big(cls, vocab_size: int) -> "ModelConfig":
        return cls(vocab_size, d_model=1024, n_heads=16, n_layers=6, d_ff=4096, dropout=0.3)

    @classmethod
    def small(cls, vocab_size: int) -> "ModelConfig":
        return cls(vocab_size, d_model=256, n_heads=4, n_layers=3, d_ff=1024, dropout=0.1)

    @classmethod
    def tiny(cls, vocab_size: int) -> "ModelConfig":
        return cls(vocab_size, d_model=32, n_heads=2, n_layers=2, d_ff=64, dropout=0.0)


@dataclass(frozen=True)
class Corpus:
    """One entry of `DataConfig.train`: a corpus name (see DataConfig), how much of it to use, and whether it is
    back-translated. weight: the integer part repeats the corpus, the fraction adds a seeded random subset of that
    share of its pairs, 0 drops it. synthetic: the source side is machine output (back-translation)."""

    path: str
    weight: float = 1.0
    synthetic: bool = False

    @classmethod
    def from_entry(cls, entry: Any, where: str) -> "Corpus":
        """A config entry (a string, a mapping, or a Corpus) -> Corpus; `where` names it in error messages."""
        if isinstance(entry, Corpus):
            return entry
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a corpus name or a mapping {{path, weight, synthetic}}, "
                              f"got {type(entry).__name__}")
        unknown = sorted(set(entry) - {"path", "weight", "synthetic"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: path, weight, synthetic")
        path, weight, synthetic = entry.get("path"), entry.get("weight", 1.0), entry.get("synthetic", False)
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}: a corpus mapping needs a 'path' (a non-empty string)")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise ConfigError(f"{where}: weight must be a number >= 0 (0 drops the corpus), got {weight!r}")
        if not isinstance(synthetic, bool):
            raise ConfigError(f"{where}: synthetic must be true or false, got {synthetic!r}")
        return cls(path, float(weight), synthetic)

    def to_entry(self) -> str | dict[str, Any]:
        """The config form: the bare name when weight is 1 and it is not synthetic (as configs were before weights)."""
        if self.weight == 1.0 and not self.synthetic:
            return self.path
        return {"path": self.path, "weight": self.weight, "synthetic": self.synthetic}


@dataclass(frozen=True)
class DataConfig(_DictMixin):
    """Where the parallel text comes from and how it is cut into batches.

    A corpus is named by a string: a path prefix `dir/train` (reads `train.fr[.gz]` + `train.en[.gz]`), a `.tsv`
    file (source<TAB>target), a `.jsonl` file (`{"translation": {"fr": ..., "en": ...}}` or `{"fr":..,"en":..}`),
    or a Hugging Face hub dataset `hf:NAME[:CONFIG][:SPLIT]` with a `translation` field (e.g. `hf:wmt14:fr-en:train`).
    Each `train` entry is such a string or a mapping `{path: NAME, weight: 2, synthetic: true}` (see Corpus); entries
    are concatenated in order. Strings and mappings are stored as Corpus objects.
    """

    train: tuple[Corpus, ...] = ()
    dev: str | None = None
    src_lang: str = "fr"
    tgt_lang: str = "en"
    vocab_size: int = 8000  # SentencePiece pieces; the model adds <pad>, so ModelConfig.vocab_size = this + 1
    spm_model_type: str = "unigram"
    spm_max_sentences: int = 400_000  # sentences sampled to train SentencePiece
    max_tokens: int = 4096  # per batch: padded source tokens + padded target tokens
    max_len: int = 128  # drop training pairs with more subword tokens than this on either side
    dev_bleu_sentences: int = 500  # dev BLEU on the first N dev pairs (0 = all)
    cache_dir: str | None = None  # tokenized datasets cache; None = OUT/cache
    # Tagged back-translation (Caswell et al. 2019): a reserved tag id starts every synthetic source, so the model
    # can tell back-translated input from real input; the tokenizer is trained with that id (seq2seq.tokenizer).
    bt_tag: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.train, (str, dict)):
            raise ConfigError("data.train must be a list of corpora, e.g. [dir/name, {path: dir/bt, synthetic: true}]")
        train = tuple(Corpus.from_entry(c, f"data.train[{i}]") for i, c in enumerate(self.train))
        object.__setattr__(self, "train", train)  # frozen: normalised once, here
        if self.max_tokens < self.max_len + 1:
            raise ConfigError(f"max_tokens ({self.max_tokens}) must exceed max_len ({self.max_len})")
        if self.vocab_size < 16:
            raise ConfigError(f"data vocab_size must be >= 16, got {self.vocab_size}")
        if self.spm_model_type not in ("unigram", "bpe"):
            raise ConfigError(f"spm_model_type must be 'unigram' or 'bpe', got {self.spm_model_type!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "train": [c.to_entry() for c in self.train]}


@dataclass(frozen=True)
class TrainConfig(_DictMixin):
    """The training recipe of §5: Adam(0.9, 0.98, 1e-9), warmup then inverse square root, label smoothing 0.1."""

    max_steps: int = 100_000
    lr_scale: float = 1.0  # multiplies eq. 3's lrate; 1.0 = the paper
    warmup_steps: int = 4000
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1  # ε_ls
    clip_norm: float = 0.0  # Deviation (optional): gradient clipping by global norm; 0 = off, as in the paper
    accum_steps: int = 1  # micro-batches per optimizer step
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 on CUDA only)
    compile: bool = False  # torch.compile the model
    seed: int = 1
    log_every: int = 50
    eval_every: int = 1000  # dev loss + dev BLEU; 0 = only at the end
    save_every: int = 1000
    keep_checkpoints: int = 5  # step checkpoints kept on disk (the best one is kept separately)
    average_last: int = 0  # at the end, average the last k step checkpoints into averaged.pt (0 = off)
    patience: int = 0  # early stopping after this many evals without a better dev BLEU (0 = off)
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall-clock time; 0 = no limit
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.accum_steps < 1 or self.max_steps < 0 or self.warmup_steps < 1:
            raise ConfigError("accum_steps and warmup_steps must be >= 1 and max_steps >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")


def option(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None) -> Any:
    """A DecodeConfig field that is a decoding option: its default, its help and its range, declared once.

    Every command's flags (seq2seq-translate, seq2seq-eval, seq2seq-client), the proto conversion and the checks in
    `DecodeConfig.__post_init__` are made from this metadata. Bounds are inclusive (ge, le) or exclusive (gt)."""
    return field(default=default, metadata={"help": help, "ge": ge, "gt": gt, "le": le})


def field_kind(f: dataclasses.Field) -> Any:
    """A config field's value type from its annotation: bool, int, float, str, or "list" for tuples."""
    t = str(f.type)
    if "tuple" in t:
        return "list"
    for name, typ in (("bool", bool), ("int", int), ("float", float)):
        if t.startswith(name):
            return typ
    return str


def describe_range(f: dataclasses.Field) -> str:
    """A field's allowed range as the error messages and --help say it: "in [0, 10]", ">= 1", "in (0, 1]"."""
    m = f.metadata
    low = None if m["ge"] is None and m["gt"] is None else ("[", m["ge"]) if m["ge"] is not None else ("(", m["gt"])
    if low is not None and m["le"] is not None:
        return f"in {low[0]}{low[1]}, {m['le']}]"
    if low is not None:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    return f"<= {m['le']}" if m["le"] is not None else ""


@dataclass(frozen=True)
class DecodeConfig(_DictMixin):
    """How to search for a translation: every decoding option, declared once (see `option`). Defaults follow the
    paper §6.1: beam 4, length penalty α = 0.6, and an output of at most (source length + 50) tokens. The proto's
    DecodingOptions has exactly these fields (tests/test_options.py checks it).
    """

    beam_size: int = option(4, "beam size K; 1 = greedy search", ge=1)
    length_penalty: float = option(0.6, "α of the GNMT length penalty ((5 + |Y|) / 6)^α; 0 = none (beyond 10 the "
                                        "penalty overflows)", ge=0, le=10)
    n_best: int = option(1, "hypotheses returned per sentence, at most beam_size (num_samples when sampling)", ge=1)
    max_len_a: float = option(1.0, "max output tokens = a · source tokens + b: the a", ge=0, le=4.0)
    max_len_b: int = option(50, "max output tokens = a · source tokens + b: the b", ge=0, le=1024)
    min_len: int = option(0, "output tokens before the end of sentence is allowed", ge=0, le=1024)
    sample: bool = option(False, "sample instead of beam search")
    temperature: float = option(1.0, "sampling temperature (below 0.001, log p / T overflows float32)", ge=1e-3)
    top_k: int = option(0, "sample among the k most probable tokens; 0 = off", ge=0)
    top_p: float = option(1.0, "nucleus sampling: sample in the smallest set of tokens of this probability mass; "
                               "1 = off", gt=0, le=1)
    num_samples: int = option(1, "samples drawn per sentence", ge=1)
    seed: int | None = option(None, "sampling seed: the same seed and text give the same output; unset = random",
                              ge=0, le=2 ** 64 - 1)
    no_repeat_ngram_size: int = option(0, "forbid repeating n-grams of this size; 0 = off", ge=0)
    repetition_penalty: float = option(1.0, "CTRL-style penalty on tokens already produced (divides positive "
                                            "logits); 1 = off", gt=0, le=100)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), field_kind(f)
            if value is None and "None" in str(f.type):
                continue
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            if kind is float and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
            m = f.metadata
            if ((m["ge"] is not None and value < m["ge"]) or (m["gt"] is not None and value <= m["gt"])
                    or (m["le"] is not None and value > m["le"])):
                raise ConfigError(f"{f.name} must be {describe_range(f)}, got {value}")
        limit = self.num_samples if self.sample else self.beam_size
        if self.n_best > limit:
            what = "num_samples" if self.sample else "beam_size"
            raise ConfigError(f"n_best ({self.n_best}) must be <= {what} ({limit})")
