"""Whole files for translation: a .txt, .html or .docx file becomes texts for the translator, and their translations
become the same file in English with its layout kept. seq2seq-web's /translate_file and `seq2seq-client --file`
both go through `Job`, so the two cannot drift. No gRPC and no torch here: the caller sends each request.

- .txt: each line is a text (as `seq2seq-client` reads stdin); blank lines and indentation stay as they are.
- .html: `web.html_format.HtmlTranslation`, as `format=html` on /translate: the tags come back around the words.
- .docx (python-docx, see docx_format.py): each paragraph, in the body, tables, text boxes, headers and footers,
  becomes HTML-like markup that HtmlTranslation translates like a page, then runs again.
"""
from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import PurePath
from typing import Any, Protocol

from .web.html_format import HtmlTranslation

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
CONTENT_TYPES = {".txt": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8", ".docx": DOCX_TYPE}
# A file's requests hold at most this many characters, and two are in flight: ~4,000 characters (some 60 sentences)
# keep a server's running batch full (128 rows: 32 sentences at beam 4), and each request ends well within a call's
# deadline, which it would not if it held more than the batch decodes at once (measured: 64 paragraphs of three
# sentences with attention took 36 s on the shipped model on 2 busy CPU cores).
CHARS_PER_REQUEST = 2000
REQUESTS_IN_FLIGHT = 2


class DocumentError(Exception):
    """A file we cannot translate: an unsupported extension, or content that is not what its extension says."""


class Document(Protocol):
    texts: list[str]  # non-blank texts for the translator
    attention: bool  # whether render() needs each result's attention (to place tags)

    def render(self, results: list[dict[str, Any]]) -> bytes:
        """The translated file, from one result per text (a TextResult as `result_dict` makes it)."""


def formats() -> list[str]:
    """The extensions we translate here, as LibreTranslate's /frontend/settings lists them: .docx needs python-docx."""
    return [ext for ext in CONTENT_TYPES if ext != ".docx" or importlib.util.find_spec("docx") is not None]


def extension(name: str) -> str:
    """The file's format: its extension, in lower case; DocumentError when we do not translate that format."""
    ext = PurePath(name).suffix.lower()
    if ext not in CONTENT_TYPES:
        raise DocumentError(f"file format not supported: {ext or 'no extension'} (supported: "
                            f"{', '.join(CONTENT_TYPES)})")
    return ext


def translated_name(name: str, target: str = "en") -> str:
    """LibreTranslate's name for the translation of a file: report.docx -> report_en.docx."""
    path = PurePath(name)
    return f"{path.stem}_{target}{path.suffix}"


def open_document(name: str, data: bytes) -> Document:
    """The document in `data`, read as the extension of `name` says."""
    ext = extension(name)
    if ext == ".txt":
        return PlainText(data)
    if ext == ".html":
        return HtmlPage(data)
    from .docx_format import WordDocument  # here: python-docx is an extra

    return WordDocument(data)


# ---- cutting a document into requests and putting the results back ------------------------------------------------

def cut(text: str, max_chars: int) -> list[str]:
    """text in pieces of at most max_chars characters (the servers' limit per text): cut after the last sentence end
    that fits, else at the last space, else anywhere."""
    pieces = []
    while len(text) > max_chars:
        window = text[:max_chars]
        ends = [m.end() for m in re.finditer(r"[.!?…][\"'»)\]]*\s", window)] or [m.end() for m in
                                                                              re.finditer(r"\s", window)]
        at = ends[-1] if ends and ends[-1] > 0 else max_chars
        pieces.append(text[:at])
        text = text[at:]
    pieces.append(text)
    return [p.strip() for p in pieces if p.strip()]


def result_dict(result, attention: bool) -> dict[str, Any]:
    """What a document renders from, out of a TextResult: the text, and with `attention` each sentence's best
    hypothesis with its words and alignment (html_format's input). The attention maps themselves are dropped at once,
    so a long document holds words, not matrices."""
    if not attention:
        return {"text": result.text}
    sentences = []
    for s in result.sentences:
        best = s.hypotheses[0] if s.hypotheses else None
        hypotheses = [] if best is None else [{"text": best.text, "attention": {
            "source_words": list(best.attention.source_words), "target_words": list(best.attention.target_words),
            "alignment": list(best.attention.alignment)}}]
        sentences.append({"source": s.source, "hypotheses": hypotheses})
    return {"text": result.text, "sentences": sentences}


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The results of the pieces of one text (see `cut`) as one result."""
    if len(parts) == 1:
        return parts[0]
    return {"text": " ".join(p["text"] for p in parts),
            "sentences": [s for p in parts for s in p.get("sentences", [])]}


class Job:
    """One document's translation: its texts cut into pieces of at most the servers' `max_chars` (and
    CHARS_PER_REQUEST) characters, the pieces into requests of at most `max_texts` texts and CHARS_PER_REQUEST
    characters, and the results gathered back in any order (`accept`), with progress (`done` of `total` pieces)."""

    def __init__(self, document: Document, max_texts: int, max_chars: int,
                 on_progress: Callable[[int, int], None] | None = None):
        self.document, self.attention = document, document.attention
        limit = min(max_chars, CHARS_PER_REQUEST)
        self._pieces = [(i, piece) for i, text in enumerate(document.texts) for piece in cut(text, limit)]
        self._starts = [0]  # where each request starts, in pieces
        texts = chars = 0
        for k, (_, piece) in enumerate(self._pieces):
            if texts and (texts == max_texts or chars + len(piece) > CHARS_PER_REQUEST):
                self._starts.append(k)
                texts = chars = 0
            texts, chars = texts + 1, chars + len(piece)
        self._results: list[dict[str, Any] | None] = [None] * len(self._pieces)
        self.total, self.done = len(self._pieces), 0
        self._lock = threading.Lock()  # accept() may run in several threads (the CLI's)
        self._on_progress = on_progress

    def requests(self) -> Iterator[tuple[int, list[str]]]:
        """(position of the first text, the texts) of each request, in document order."""
        for start, end in zip(self._starts, self._starts[1:] + [self.total]):
            if end > start:
                yield start, [piece for _, piece in self._pieces[start:end]]

    def accept(self, position: int, result) -> None:
        """The TextResult of the text at `position` (a request's start + the reply's index)."""
        kept = result_dict(result, self.attention)
        with self._lock:
            self.done += self._results[position] is None
            self._results[position] = kept
            done = self.done
        if self._on_progress is not None:
            self._on_progress(done, self.total)

    def render(self) -> bytes:
        """The translated file; every text must have its result."""
        if self.done < self.total:
            raise RuntimeError(f"{self.total - self.done} of {self.total} texts have no translation yet")
        grouped: list[list[dict[str, Any]]] = [[] for _ in self.document.texts]
        for (i, _), result in zip(self._pieces, self._results):
            grouped[i].append(result)
        return self.document.render([_merge(parts) for parts in grouped])


# A stream: TranslateStream of these texts (with the attention the job needs), yielding replies with .index, .result
SyncStream = Callable[[list[str]], Iterable[Any]]
AsyncStream = Callable[[list[str]], AsyncIterable[Any]]


def translate_in_threads(job: Job, stream: SyncStream, in_flight: int = REQUESTS_IN_FLIGHT) -> None:
    """Every request of the job through `stream`, `in_flight` at a time (threads); the first error stops the rest."""
    def send(start: int, texts: list[str]) -> None:
        for reply in stream(texts):
            job.accept(start + reply.index, reply.result)

    with ThreadPoolExecutor(in_flight) as pool:
        futures = [pool.submit(send, start, texts) for start, texts in job.requests()]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


async def translate_in_tasks(job: Job, stream: AsyncStream, in_flight: int = REQUESTS_IN_FLIGHT) -> None:
    """Every request of the job through `stream`, `in_flight` at a time (asyncio); the first error stops the rest."""
    import asyncio

    requests = job.requests()  # shared: each worker takes the next request when its own is done

    async def worker() -> None:
        for start, texts in requests:
            async for reply in stream(texts):
                job.accept(start + reply.index, reply.result)

    workers = [asyncio.ensure_future(worker()) for _ in range(in_flight)]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        raise


# ---- the formats ---------------------------------------------------------------------------------------------------

def _decode(data: bytes, what: str) -> tuple[str, bool]:
    """UTF-8 text and whether it started with a byte-order mark (kept in the translation)."""
    try:
        return data.decode("utf-8-sig"), data.startswith(b"\xef\xbb\xbf")
    except UnicodeDecodeError as e:
        raise DocumentError(f"the {what} file is not UTF-8 text (byte {e.start})") from None


class PlainText:
    """A .txt file: one text per line. Each line's indentation, trailing spaces and line end are kept."""

    attention = False

    def __init__(self, data: bytes):
        text, self._bom = _decode(data, ".txt")
        self._lines = [re.fullmatch(r"(\s*)(.*?)(\s*)", line, re.S).groups()
                       for line in text.splitlines(keepends=True)]
        self.texts = [body for _, body, _ in self._lines if body]

    def render(self, results: list[dict[str, Any]]) -> bytes:
        translations = iter(r["text"] for r in results)
        text = "".join(head + (next(translations) if body else "") + tail for head, body, tail in self._lines)
        return text.encode("utf-8-sig" if self._bom else "utf-8")


class HtmlPage:
    """An .html file, translated as /translate translates format=html."""

    attention = True

    def __init__(self, data: bytes):
        text, self._bom = _decode(data, ".html")
        self._page = HtmlTranslation(text)
        self.texts = self._page.texts

    def render(self, results: list[dict[str, Any]]) -> bytes:
        return self._page.render(results).encode("utf-8-sig" if self._bom else "utf-8")
