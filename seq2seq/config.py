"""Frozen dataclass configs: ModelConfig (the network), DataConfig, TrainConfig; DecodeConfig lives with the API
(seq2seq_api.decoding, torch-free, shared with the client) and is re-exported here.

Each one round-trips through a plain dict (`to_dict` / `from_dict`) so it can live inside a checkpoint and in a
YAML/JSON file. Validation happens once, in `__post_init__`, with messages a user can act on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seq2seq_api.decoding import ConfigError, DecodeConfig, _DictMixin, describe_range, field_kind  # noqa: F401

# Inference precisions (seq2seq.translator.Translator): auto picks per device; fp16 needs CUDA, int8 runs on CPU.
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


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
    share of its pairs, 0 drops it. synthetic: the source side is machine output (back-translation). target: another
    aligned prefix whose target-language file is the target side, for a synthetic source kept apart from the real
    text it translates (data/synthetic/ holds only our French; the English captions stay in ../shared/data)."""

    path: str
    weight: float = 1.0
    synthetic: bool = False
    target: str | None = None

    @classmethod
    def from_entry(cls, entry: Any, where: str) -> "Corpus":
        """A config entry (a string, a mapping, or a Corpus) -> Corpus; `where` names it in error messages."""
        if isinstance(entry, Corpus):
            return entry
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a corpus name or a mapping {{path, weight, synthetic, target}}, "
                              f"got {type(entry).__name__}")
        unknown = sorted(set(entry) - {"path", "weight", "synthetic", "target"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: path, weight, synthetic, target")
        path, weight, synthetic = entry.get("path"), entry.get("weight", 1.0), entry.get("synthetic", False)
        target = entry.get("target")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}: a corpus mapping needs a 'path' (a non-empty string)")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise ConfigError(f"{where}: weight must be a number >= 0 (0 drops the corpus), got {weight!r}")
        if not isinstance(synthetic, bool):
            raise ConfigError(f"{where}: synthetic must be true or false, got {synthetic!r}")
        if target is not None and (not isinstance(target, str) or not target):
            raise ConfigError(f"{where}: target must be a corpus prefix (a non-empty string), got {target!r}")
        return cls(path, float(weight), synthetic, target)

    def to_entry(self) -> str | dict[str, Any]:
        """The config form: the bare name when weight is 1 and it is not synthetic (as configs were before weights)."""
        if self.weight == 1.0 and not self.synthetic and self.target is None:
            return self.path
        entry = {"path": self.path, "weight": self.weight, "synthetic": self.synthetic}
        return entry if self.target is None else {**entry, "target": self.target}


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
    # What SentencePiece learns from: "mix" = the training mix as it is read (weights, synthetic pairs included);
    # "real" = each corpus not marked synthetic, once and whole. Oversampled captions push rare everyday words out
    # of the vocabulary: with Multi30k three times over, "Bonjour" is cut into four pieces; once, it stays whole.
    spm_data: str = "mix"
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
        if self.spm_data not in ("mix", "real"):
            raise ConfigError(f"spm_data must be 'mix' or 'real', got {self.spm_data!r}")

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
    # Continued training (fairseq's --restore-file with --reset-dataloader): a new run starts from this checkpoint's
    # weights, tokenizer, optimizer, schedule, step and clock (so max_minutes counts both runs), on its own data.
    init_from: str | None = None
    # fairseq's --reset-optimizer (with --reset-lr-scheduler): only the weights and tokenizer of init_from are kept,
    # which may then also be an averaged checkpoint or an exported model directory. Adam starts afresh, the step
    # counter at init_step (default: the step init_from records), and eq. 3's rate from there is reached through a
    # linear warmup of rewarmup_steps (a fresh Adam's first updates are large). The clock starts at 0.
    reset_optimizer: bool = False
    init_step: int = 0
    rewarmup_steps: int = 200

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.accum_steps < 1 or self.max_steps < 0 or self.warmup_steps < 1:
            raise ConfigError("accum_steps and warmup_steps must be >= 1 and max_steps >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.init_step < 0 or self.rewarmup_steps < 1:
            raise ConfigError("init_step must be >= 0 and rewarmup_steps >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
