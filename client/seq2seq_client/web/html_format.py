"""LibreTranslate's `format=html`: the texts of an HTML document go to the translator, and its tags come back around
the translated words they belonged to. Standard library only; this file knows nothing of gRPC or the model.

The algorithm, in five steps:
1. Tokenize. html.parser reports every tag, text, entity and comment; an event's raw source is the slice up to the
   next event, so whatever is not translated (tags, attributes, comments, whitespace) is copied byte for byte.
2. Segment. Block-level tags (BLOCK, <br> included) end a segment, and so do newlines inside <pre>. Elsewhere
   whitespace is collapsed as a browser does, so a paragraph wrapped over several lines is one text (LibreTranslate
   #288). Inline tags inside a segment become a tree of nodes over character ranges of its text, nested as in the
   source (LibreTranslate #806). Code (KEEP) and elements marked translate="no" or class "notranslate" are atoms:
   kept verbatim, like void tags and comments, at a position between characters.
3. Translate: `texts` holds one text per segment that has more than whitespace; the server splits it into sentences.
4. Project. Sentences and words are located in the segment text and in the translation, and the alignment (target
   word -> source word) gives each source word the target words aligned to it. A node wraps the target words of the
   source words it covers, from the first to the last (less end punctuation it did not hold in the source). A node
   with none, and an atom, go next to the translation of the nearest aligned source word (after the one before it,
   or before the one after it), so no tag is ever dropped.
5. Render. Each node's children are clipped into its range and pushed apart until they don't overlap, then the tree
   is written with each element's own start and end tags, so the output nests exactly as the input does. An inline
   element that spans a segment boundary (<b>a<br>b</b>, <a><div>..</div></a>) writes its start tag in the first
   segment and its end tag in the last.
"""
from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

# Tags a sentence never runs across; any other tag is inline and travels with its words.
BLOCK = frozenset("""address article aside base blockquote body br button caption center col colgroup dd details
    dialog dir div dl dt fieldset figcaption figure footer form frame frameset h1 h2 h3 h4 h5 h6 head header hgroup hr
    html iframe legend li link main menu meta nav ol optgroup option p pre section select summary table tbody td tfoot
    th thead title tr ul""".split())
VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())  # no end tag
KEEP = frozenset("script style code kbd samp textarea template svg math".split())  # code or markup, not prose
SPACE = " \t\n\r\f"  # the whitespace a browser collapses (it keeps &nbsp;)
WORD_START, EOS = "\u2581", "</s>"  # SentencePiece's word mark and end of sentence, as in seq2seq/attention_maps.py


@dataclass
class _Event:
    kind: str  # "start", "end", "void" (no end tag follows), "text", "other" (comment, doctype, a kept element)
    tag: str
    raw: str  # exactly as in the source
    text: str = ""  # for "text": the characters it stands for (an entity decoded)
    keep: bool = False  # for "start"/"void": not to be translated


class _Tokenizer(HTMLParser):
    """Records (offset, kind, tag, keep, data) per event; `getpos()` is where the event being handled starts."""

    def __init__(self, source: str):
        super().__init__(convert_charrefs=False)  # entities arrive on their own, so their spelling can be kept
        self.found: list[tuple[int, str, str, bool, str | None]] = []
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.feed(source)
        self.close()

    def _add(self, kind: str, tag: str = "", keep: bool = False, data: str | None = None, shift: int = 0) -> None:
        line, column = self.getpos()
        self.found.append((self._line_starts[line - 1] + column + shift, kind, tag, keep, data))

    def handle_starttag(self, tag, attrs):
        self._add("void" if tag in VOID else "start", tag, _kept(tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):  # <b/>: one event, not HTMLParser's default start + end
        self._add("void", tag, _kept(tag, dict(attrs)))

    def handle_endtag(self, tag):
        self._add("end", tag)

    def handle_data(self, data):  # an event per run of whitespace or not, for segment edges and <pre> lines
        for run in re.finditer(r"\s+|\S+", data):
            self._add("text", data=run.group(), shift=run.start())

    def handle_entityref(self, name):
        self._add("text")  # decoded from its raw text in _tokenize

    def handle_comment(self, data):
        self._add("other")

    handle_charref = handle_entityref
    handle_decl = handle_pi = unknown_decl = handle_comment


def _kept(tag: str, attrs: dict[str, str | None]) -> bool:
    return (tag in KEEP or (attrs.get("translate") or "").lower() == "no"
            or "notranslate" in (attrs.get("class") or "").split())


def _tokenize(source: str) -> list[_Event]:
    found = _Tokenizer(source).found
    if not found or found[0][0] > 0:  # text HTMLParser skipped (such as "</>") stays with the event before it
        found.insert(0, (0, "other", "", False, None))
    ends = [f[0] for f in found[1:]] + [len(source)]
    events = []
    for (start, kind, tag, keep, data), end in zip(found, ends):
        raw = source[start:end]
        text = (html.unescape(raw) if data is None else data) if kind == "text" else ""
        events.append(_Event(kind, tag, raw, text, keep))
    return events


@dataclass(eq=False)  # compared by identity: nodes are dictionary keys in _want
class _Node:
    """An inline element over the segment text's characters [src_a, src_b), or with `atom` a verbatim piece."""

    tag: str = ""
    start: str = ""  # raw start tag; "" for the root and for an element opened in an earlier segment
    end: str = ""  # raw end tag; "" for the root and for an element that does not close in this segment
    src_a: int = 0
    src_b: int = 0
    continued: bool = False  # opened in an earlier segment
    atom: bool = False
    space_before: bool = False  # an atom had whitespace before / after it in the source
    space_after: bool = False
    children: list[_Node] = field(default_factory=list)


class _Writer:
    """The text sent to the translator: each run of whitespace becomes one space, none at either end."""

    def __init__(self):
        self.chars: list[str] = []
        self.pending = False  # whitespace seen since the last character written
        self.waiting: list[_Node] = []  # atoms since the last character written

    def add(self, text: str) -> None:
        for ch in text:
            if ch in SPACE:
                self.pending = True
                for atom in self.waiting:
                    atom.space_after = True
                continue
            if self.pending and self.chars:
                self.chars.append(" ")
            self.pending = False
            self.waiting.clear()
            self.chars.append(ch)


@dataclass
class _Segment:
    head: str  # whitespace before the first text, kept as written (newlines, indentation); tail: after the last
    root: _Node
    text: str
    tail: str


def _edges(items: list[_Event]) -> tuple[str, list[_Event], str]:
    """Split off the blank texts before the first and after the last other event of a segment."""
    solid = [i for i, ev in enumerate(items) if ev.kind != "text" or ev.text.strip()]
    a, b = (solid[0], solid[-1] + 1) if solid else (len(items), len(items))
    return "".join(ev.raw for ev in items[:a]), items[a:b], "".join(ev.raw for ev in items[b:])


def _segment(items: list[_Event], open_tags: list[str]) -> tuple[str | _Segment, list[str]]:
    """One segment's events -> the segment (or its raw text when it is blank), and the tags still open after it."""
    head, body, tail = _edges(items)
    root, writer = _Node(), _Writer()
    path = [root]  # the open elements, outermost first
    for tag in open_tags:
        path.append(_Node(tag, continued=True))
        path[-2].children.append(path[-1])
    for ev in body:
        pos = len(writer.chars)
        if ev.kind == "text":
            writer.add(ev.text)
        elif ev.kind == "start":
            path.append(_Node(ev.tag, ev.raw, src_a=pos))
            path[-2].children.append(path[-1])
        elif ev.kind == "end" and any(node.tag == ev.tag for node in path[1:]):
            i = max(k for k in range(1, len(path)) if path[k].tag == ev.tag)
            for node in path[i:]:  # elements left open inside it (misnested input) end here without a tag
                node.src_b = pos
            path[i].end = ev.raw
            del path[i:]
        else:  # void tag, comment, kept element, end tag of nothing open
            atom = _Node(start=ev.raw, src_a=pos, src_b=pos, atom=True, space_before=writer.pending)
            writer.waiting.append(atom)
            path[-1].children.append(atom)
    for node in path[1:]:
        node.src_b = len(writer.chars)
    text = "".join(writer.chars)
    still_open = [node.tag for node in path[1:]]
    if not text.strip():
        return "".join(ev.raw for ev in items), still_open
    return _Segment(head, root, text, tail), still_open


class _Splitter:
    """Cuts the events into raw parts and segments: block tags and <pre> newlines close the current segment."""

    def __init__(self):
        self.parts: list[str | _Segment] = []
        self.items: list[_Event] = []  # the current segment's events
        self.open_tags: list[str] = []  # inline elements open where the current segment began
        self.pre = 0  # <pre> depth: there a newline ends a segment too
        self.kept: list[_Event] = []  # the events of the kept element being read
        self.kept_depth = 0

    def run(self, events: list[_Event]) -> list[str | _Segment]:
        for ev in events:
            self.step(ev)
        if self.kept:  # a kept element that never closes runs to the end
            self.place("".join(ev.raw for ev in self.kept), self.kept[0].tag in BLOCK)
        self.flush()
        return self.parts

    def step(self, ev: _Event) -> None:
        if self.kept:
            self.kept.append(ev)
            if ev.tag == self.kept[0].tag and ev.kind in ("start", "end"):
                self.kept_depth += 1 if ev.kind == "start" else -1
            if self.kept_depth == 0:
                self.place("".join(e.raw for e in self.kept), self.kept[0].tag in BLOCK)
                self.kept = []
        elif ev.keep and ev.kind == "start":
            self.kept, self.kept_depth = [ev], 1
        elif ev.keep:
            self.place(ev.raw, ev.tag in BLOCK)
        elif ev.tag in BLOCK and ev.kind != "text":
            self.place(ev.raw, block=True)
            if ev.tag == "pre":
                self.pre = max(0, self.pre + (1 if ev.kind == "start" else -1))
        elif ev.kind == "text" and self.pre and "\n" in ev.text and not ev.text.strip():
            self.place(ev.raw, block=True)
        else:
            self.items.append(ev)

    def place(self, raw: str, block: bool) -> None:
        """Verbatim source: between segments when it is block-level, else as an atom inside the current one."""
        if block:
            self.flush()
            self.parts.append(raw)
        else:
            self.items.append(_Event("other", "", raw))

    def flush(self) -> None:
        if self.items:
            part, self.open_tags = _segment(self.items, self.open_tags)
            self.parts.append(part)
            self.items = []


@dataclass(frozen=True)
class _Word:
    """A source word with aligned target words: its characters in the segment text, theirs in the translation."""

    src_a: int
    src_b: int
    tgt_a: int  # from the start of the first target word aligned to it
    tgt_b: int  # to the end of the last


def _locate(text: str, words: list[str]) -> list[tuple[int, int] | None]:
    """Each word's character span in text; None for </s> and a word not found.

    SentencePiece words are the text's whitespace-separated tokens after NFKC normalisation, so when the counts agree
    they are matched by position (NFKC may have changed characters: "…" -> "..."); otherwise each word is searched
    for after the previous one.
    """
    tokens = [m.span() for m in re.finditer(r"\S+", text)]
    real = [i for i, w in enumerate(words) if w != EOS]
    spans: list[tuple[int, int] | None] = [None] * len(words)
    if len(real) == len(tokens):
        for i, span in zip(real, tokens):
            spans[i] = span
        return spans
    at = 0
    for i in real:
        word = words[i].removeprefix(WORD_START)
        found = text.find(word, at) if word else -1
        if found >= 0:
            spans[i], at = (found, found + len(word)), found + len(word)
    return spans


def _find(text: str, part: str, start: int) -> tuple[int, str]:
    """Where part is in text from start, and its characters there; the sentence splitter may have changed spaces."""
    found = re.compile(r"\s+".join(map(re.escape, part.split()))).search(text, start) if part.strip() else None
    return (found.start(), found.group()) if found else (-1, part)


def _project(source: str, result: dict[str, Any]) -> tuple[str, list[_Word]]:
    """The translation of a segment and its aligned source words, sorted by position in the source."""
    target = result.get("text", "")
    links: dict[tuple[int, int], list[tuple[int, int]]] = {}  # source word span -> its target word spans
    s_at = t_at = 0
    for sentence in result.get("sentences", []):
        best = (sentence.get("hypotheses") or [{}])[0]
        s_text, t_text = sentence.get("source", ""), best.get("text", "")
        (s_off, s_text), (t_off, t_text) = _find(source, s_text, s_at), _find(target, t_text, t_at)
        if s_off < 0 or t_off < 0:
            continue
        s_at, t_at = s_off + len(s_text), t_off + len(t_text)
        attention = best.get("attention", {})
        s_spans = _locate(s_text, attention.get("source_words", []))
        t_spans = _locate(t_text, attention.get("target_words", []))
        for j, i in enumerate(attention.get("alignment", [])):
            if j < len(t_spans) and 0 <= i < len(s_spans) and t_spans[j] and s_spans[i]:
                key = (s_off + s_spans[i][0], s_off + s_spans[i][1])
                links.setdefault(key, []).append((t_off + t_spans[j][0], t_off + t_spans[j][1]))
    words = [_Word(a, b, min(t[0] for t in spans), max(t[1] for t in spans)) for (a, b), spans in sorted(links.items())]
    return target, words


def _want(node: _Node, words: list[_Word], source: str, target: str, wanted: dict[_Node, tuple[int, int]]) -> None:
    """The target range each descendant of node would like, before nesting is enforced."""
    for child in node.children:
        hits = [w for w in words if w.src_a < child.src_b and w.src_b > child.src_a] if not child.atom else []
        if hits:
            wanted[child] = _trim(child, hits, source, target)
        else:  # after the nearest aligned word before it, or before the one after it: the closer in the source
            before = [w for w in words if w.src_a < child.src_a]
            after = [w for w in words if w.src_a >= child.src_b]
            if before and (not after or child.src_a - before[-1].src_b <= after[0].src_a - child.src_b):
                at = before[-1].tgt_b
            else:
                at = after[0].tgt_a if after else 0 if child.src_a == 0 else len(target)
            wanted[child] = (at, at)
        _want(child, words, source, target, wanted)


def _trim(node: _Node, hits: list[_Word], source: str, target: str) -> tuple[int, int]:
    """The target words of the hits, less the punctuation at an end where the element's source text has none:
    target words carry their punctuation ("site."), but in "<a>notre site</a>." the period stays out of the link."""
    a, b = min(w.tgt_a for w in hits), max(w.tgt_b for w in hits)
    inside = source[node.src_a:node.src_b].strip()
    if inside and not _punctuation(inside[-1]):
        while b > a + 1 and _punctuation(target[b - 1]):
            b -= 1
    if inside and not _punctuation(inside[0]):
        while a < b - 1 and _punctuation(target[a]):
            a += 1
    return a, b


def _punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(ch).startswith("P") for ch in text)


def _arrange(node: _Node, a: int, b: int, wanted: dict[_Node, tuple[int, int]]) -> list[tuple[_Node, int, int]]:
    """node's children with ranges clipped into [a, b], in target order, each pushed right past the one before."""
    clipped = []
    for child in node.children:
        ca, cb = wanted[child]
        ca = a if child.continued else min(max(ca, a), b)
        cb = b if not child.atom and not child.end else min(max(cb, ca), b)  # an element closing later runs on
        clipped.append((ca, cb, child))
    clipped.sort(key=lambda c: c[:2])  # stable: ties keep the source order
    placed, pos = [], a
    for ca, cb, child in clipped:
        ca = max(ca, pos)
        placed.append((child, ca, max(cb, ca)))
        pos = max(cb, ca)
    return placed


def _write(node: _Node, a: int, b: int, target: str, wanted: dict[_Node, tuple[int, int]],
           escape: Callable[[str], str], out: list[str]) -> None:
    out.append(node.start)
    pos = a
    for child, ca, cb in _arrange(node, a, b, wanted):
        out.append(escape(target[pos:ca]))
        if child.atom:  # it keeps the whitespace it had on either side, where the translation has none
            out.append(" " if child.space_before and ca > 0 and not target[ca - 1].isspace() else "")
            out.append(child.start)
            out.append(" " if child.space_after and ca < len(target) and not target[ca].isspace() else "")
        else:
            _write(child, ca, cb, target, wanted, escape, out)
        pos = cb
    out.append(escape(target[pos:b]))
    out.append(node.end)


def _escaper(events: list[_Event]) -> Callable[[str], str]:
    """Translated text is escaped as HTML, with the document's own spelling of an entity where it has one."""
    table: dict[str, str] = {}
    for ev in events:
        entity = ev.kind == "text" and ev.raw.startswith("&") and ev.raw.endswith(";")
        if entity and len(ev.text) == 1 and not ev.text.isascii():  # &eacute;, &nbsp;; not &#97; (a disguise)
            table.setdefault(ev.text, ev.raw)
    for ch, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        table.setdefault(ch, entity)
    mapping = str.maketrans(table)
    return lambda text: text.translate(mapping)


class HtmlTranslation:
    """An HTML document: `texts` to translate, one per segment, then `render(results)`, the translated document."""

    def __init__(self, html: str):
        events = _tokenize(html)
        self._parts = _Splitter().run(events)
        self._escape = _escaper(events)
        self.texts: list[str] = [p.text for p in self._parts if isinstance(p, _Segment)]

    def render(self, results: list[dict[str, Any]]) -> str:
        """results[i]: the TextResult of texts[i] as json_format.MessageToDict(..., preserving_proto_field_name=True),
        with attention for the alignment (without it, every tag goes to an edge of its segment's translation)."""
        if len(results) != len(self.texts):
            raise ValueError(f"need one result per text: {len(self.texts)} texts, {len(results)} results")
        out: list[str] = []
        segment_results = iter(results)
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            target, words = _project(part.text, next(segment_results))
            wanted: dict[_Node, tuple[int, int]] = {}
            _want(part.root, words, part.text, target, wanted)
            out.append(part.head)
            _write(part.root, 0, len(target), target, wanted, self._escape, out)
            out.append(part.tail)
        return "".join(out)
