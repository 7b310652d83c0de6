"""Long texts are translated sentence by sentence and joined back, keeping the line structure.

The model was trained on single sentences, so a paragraph in one piece would run past what it learned. Sentences
come from the Moses splitter (`sentence-splitter`: French non-breaking prefixes such as "M." and "Dr.", the rule
set MT pipelines use); lines are kept as lines, blank ones included.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Layout:
    """Where each sentence of a text sits: lines[i] = the number of sentences on line i (0 for a blank line)."""

    lines: tuple[int, ...]
    newline: str = "\n"  # the text's line end, "\n" or "\r\n": the translation keeps it


@lru_cache(maxsize=1)
def _splitter():
    from sentence_splitter import SentenceSplitter  # imported on first use: the server's start stays fast

    return SentenceSplitter(language="fr")


def split_sentences(text: str, sentences: bool = True) -> tuple[list[str], Layout]:
    """text -> (its non-empty sentences in order, the layout to join their translations back)."""
    out, counts = [], []
    newline = "\r\n" if "\r\n" in text else "\n"
    for line in text.split("\n"):
        parts = [p for p in (_splitter().split(line) if sentences else [line.strip()]) if p.strip()]
        out.extend(parts)
        counts.append(len(parts))
    if not out and text.strip():  # nothing the splitter kept: the text as one sentence
        return [text.strip()], Layout((1,), newline)
    return out, Layout(tuple(counts), newline)


def join_sentences(translations: list[str], layout: Layout) -> str:
    """The inverse of `split_sentences`: sentences of a line joined by a space, lines by the text's own line end."""
    lines, i = [], 0
    for n in layout.lines:
        lines.append(" ".join(translations[i:i + n]))
        i += n
    return layout.newline.join(lines)
