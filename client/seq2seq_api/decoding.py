"""Decoding options: DecodeConfig, each option declared once with its default, help and range.

A frozen dataclass that knows nothing of torch or gRPC: the model library decodes with it (seq2seq.decoding), the
server converts the proto's DecodingOptions into it, and every command's flags are made from it (seq2seq_api.flags).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ConfigError
from .glossary import check as check_glossary

C = TypeVar("C")




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


def out_of_range(f: dataclasses.Field, value: float) -> bool:
    """Whether a number is outside the field's range (see `option`)."""
    m = f.metadata
    return ((m["ge"] is not None and value < m["ge"]) or (m["gt"] is not None and value <= m["gt"])
            or (m["le"] is not None and value > m["le"]))


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
    glossary: tuple[tuple[str, str], ...] = option((), "terms to use: (French, English) pairs; wherever a French "
                                    "term occurs in a sentence (whole words, any case), its English term appears in that sentence's "
                                    "translation, exactly as given (lexically constrained beam search; not with "
                                    "sample)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "glossary", check_glossary(self.glossary))  # GlossaryError says which term
        if self.glossary and self.sample:
            raise ConfigError("a glossary is enforced by beam search (greedy is beam 1); sampling cannot promise its "
                              "terms: drop sample or the glossary")
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
            if out_of_range(f, value):
                raise ConfigError(f"{f.name} must be {describe_range(f)}, got {value}")
        limit = self.num_samples if self.sample else self.beam_size
        if self.n_best > limit:
            what = "num_samples" if self.sample else "beam_size"
            raise ConfigError(f"n_best ({self.n_best}) must be <= {what} ({limit})")
