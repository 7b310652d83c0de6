"""A per-request glossary: (French term, English term) pairs whose English term must appear in the translation of
every sentence whose French holds the French term. Reading (TSV files, JSON), checking and matching live here, with
no torch and no tokenizer; the search that enforces the terms is seq2seq.decoding.lexical.

Matching: whole words, case-insensitive, after NFKC (the normalisation our SentencePiece model applies, nmt_nfkc) and
with any run of spaces equal to one space. "carte mère" matches "La Carte  Mère est" but not "cartes mères".
"""
from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, Iterable, Mapping

from .errors import ConfigError

Glossary = tuple[tuple[str, str], ...]

MAX_TERMS = 256  # terms per glossary, whatever the server allows (its --max-glossary-terms is lower or equal)
MAX_TERM_CHARS = 100  # characters of one term, either side


class GlossaryError(ConfigError):
    """A glossary that cannot be used as given (a bad option: INVALID_ARGUMENT, 400); the message says which term."""


def normalize(text: str) -> str:
    """The form terms are compared in: NFKC, case-folded, spaces collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def check(pairs: Any) -> Glossary:
    """Any sequence of (French, English) pairs -> a Glossary, or GlossaryError naming the first bad term.

    Rejects: a pair that is not two strings, an empty term, a term over MAX_TERM_CHARS, more than MAX_TERMS pairs, and
    one French term (as matched: see `normalize`) given two different English terms. A pair given twice counts once.
    """
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise GlossaryError(f"a glossary is a list of [French, English] term pairs, got {type(pairs).__name__}")
    out: dict[str, tuple[str, str]] = {}
    for n, pair in enumerate(pairs):
        # a dict is iterable too, but over its keys: {"source": ..., "target": ...} would become ("source", "target")
        if isinstance(pair, (str, bytes, Mapping)) or not isinstance(pair, Iterable):
            raise GlossaryError(f"glossary entry {n} must be a [French, English] pair, got {pair!r}")
        pair = tuple(pair)
        if len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            raise GlossaryError(f"glossary entry {n} must be two strings [French, English], got {list(pair)!r}")
        fr, en = (" ".join(t.split()) for t in pair)  # surrounding and repeated spaces are not part of a term
        for side, term in (("French", fr), ("English", en)):
            if not term:
                raise GlossaryError(f"glossary entry {n} has an empty {side} term")
            if len(term) > MAX_TERM_CHARS:
                raise GlossaryError(f"glossary entry {n}: the {side} term has {len(term)} characters; the limit is "
                                    f"{MAX_TERM_CHARS}")
        key = normalize(fr)
        if key in out and out[key][1] != en:
            raise GlossaryError(f"glossary entry {n}: the French term {fr!r} has two English terms, "
                                f"{out[key][1]!r} and {en!r}")
        out.setdefault(key, (fr, en))
        if len(out) > MAX_TERMS:
            raise GlossaryError(f"the glossary has more than {MAX_TERMS} terms")
    return tuple(out.values())


def _pattern(term: str) -> re.Pattern:
    words = [re.escape(w) for w in normalize(term).split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)")


def matches(glossary: Glossary, sentence: str) -> list[tuple[str, str]]:
    """The pairs whose French term occurs in `sentence` (whole words, see the module docstring), in glossary order.
    An occurrence inside an occurrence of a longer term ("carte" in "carte mère") does not count, as a glossary user
    means it."""
    text = normalize(sentence)
    spans = {pair: [m.span() for m in _pattern(pair[0]).finditer(text)] for pair in glossary}
    every = [span for found in spans.values() for span in found]

    def inside_longer(a: int, b: int) -> bool:
        return any(a2 <= a and b <= b2 and b2 - a2 > b - a for a2, b2 in every)

    return [pair for pair in glossary if any(not inside_longer(a, b) for a, b in spans[pair])]


def parse_tsv(text: str, where: str = "glossary") -> Glossary:
    """A glossary file: one `French<TAB>English` pair per line; blank lines and lines starting with # are skipped."""
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise GlossaryError(f"{where}, line {n}: expected French<TAB>English, got {len(fields)} field(s)")
        pairs.append(fields)
    return check(pairs)


def parse_any(value: Any) -> Glossary:
    """What a web client may send as a glossary: a list of pairs, an object {French: English}, or a string holding
    either as JSON, or TSV lines (a form or query-string field)."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                value = json.loads(stripped)
            except ValueError as e:
                raise GlossaryError(f"glossary: not valid JSON ({e})") from None
        else:
            return parse_tsv(value)
    if isinstance(value, dict):
        value = list(value.items())
    return check(value)
