"""The .docx format of seq2seq_client.documents (python-docx, lxml): every paragraph of a Word document, in the body,
tables, text boxes, headers and footers, becomes HTML-like markup that web.html_format.HtmlTranslation translates like
a page, so that formatting travels with the words the model aligns, as tags do on /translate's format=html; the
translated markup is then read back into runs. Footnotes, comments and the document's properties stay as they are.
"""
from __future__ import annotations

import copy
import html
import io
import zipfile
from html.parser import HTMLParser
from typing import Any

from .documents import DocumentError
from .web.html_format import HtmlTranslation

MAX_UNZIPPED_BYTES = 256 * 2 ** 20  # a .docx that unpacks to more is refused (a zip bomb)


class WordDocument:
    """A .docx file: every paragraph of the body (tables and text boxes included), headers and footers."""

    attention = True

    def __init__(self, data: bytes):
        docx = _python_docx()
        from docx.opc.constants import CONTENT_TYPE as CT

        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                if sum(i.file_size for i in z.infolist()) > MAX_UNZIPPED_BYTES:
                    raise DocumentError(f"the .docx file unpacks to more than {MAX_UNZIPPED_BYTES} bytes")
            self._doc = docx.Document(io.BytesIO(data))
        except DocumentError:
            raise
        except Exception as e:  # a zip that is not a Word document fails in many ways (KeyError, ValueError, lxml's)
            raise DocumentError(f"the .docx file cannot be read: {e}") from None
        parts = {CT.WML_DOCUMENT_MAIN, CT.WML_HEADER, CT.WML_FOOTER}
        elements = [p.element for p in self._doc.part.package.iter_parts() if p.content_type in parts]
        self._paragraphs = [_Paragraph(p) for element in elements for p in element.iter(_W + "p")]
        self._pages = [HtmlTranslation(p.markup) for p in self._paragraphs]
        self.texts = [t for page in self._pages for t in page.texts]

    def render(self, results: list[dict[str, Any]]) -> bytes:
        at = 0
        for paragraph, page in zip(self._paragraphs, self._pages):
            n = len(page.texts)
            if n:  # a paragraph with nothing to translate stays exactly as it was
                paragraph.rebuild(page.render(results[at:at + n]))
                at += n
        out = io.BytesIO()
        self._doc.save(out)
        return out.getvalue()


def _python_docx():
    try:
        import docx
    except ImportError:
        raise DocumentError("reading .docx files needs python-docx: pip install python-docx (or the client's "
                            "[docx] extra)") from None
    return docx


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_BREAKS = {_W + "br", _W + "cr"}  # a line break ends a segment, as <br> does in HTML
_TABS = {_W + "tab", _W + "ptab"}  # a tab separates words: the translator sees a space there
# Inline elements that hold runs: a link, a tracked insertion, a smart tag, custom XML, a content control, a field
_CONTAINERS = {_W + name for name in "hyperlink ins smartTag customXml sdt sdtContent fldSimple".split()}


def _properties(element) -> bool:
    """Whether the element is properties (w:rPr, w:sdtPr, w:smartTagPr, ...) rather than content."""
    return isinstance(element.tag, str) and element.tag.endswith("Pr")


class _Paragraph:
    """A w:p element as markup for HtmlTranslation, and back. Runs are grouped by formatting (their w:rPr); the
    formatting with the most characters is the paragraph's main one and its text goes bare, every other one in
    <span k=...>. A hyperlink (or another element of _CONTAINERS) is <a k=...> around its runs; anything else (a
    tab, a picture, a field code, a bookmark) is an atom, <img k=...> (or <br k=...> for a break), put back as it was
    where the markup says."""

    def __init__(self, p):
        self.p = p
        self.formats: list = []  # w:rPr elements (or None), by span k
        self.atoms: list = []  # (whether it was in a run, that run's w:rPr or None, element), by atom k
        self.containers: list = []  # w:hyperlink (or other _CONTAINERS) elements, by <a> k
        pieces: list[tuple] = []  # ("text", rPr key, text) | ("atom", k) | ("open", k) | ("close",)
        keys: dict[bytes, int] = {}
        self._walk(p, pieces, keys)
        chars: dict[int, int] = {}
        for piece in pieces:
            if piece[0] == "text":
                chars[piece[1]] = chars.get(piece[1], 0) + len(piece[2])
        main = max(chars, key=chars.get) if chars else -1
        self.main = self.formats[main] if chars else None
        self.markup = self._write(pieces, main)

    def _walk(self, parent, pieces: list[tuple], keys: dict[bytes, int]) -> None:
        from lxml import etree

        for child in parent:
            if _properties(child):  # the paragraph's or a container's: they stay where they are
                continue
            if child.tag in _CONTAINERS:
                pieces.append(("open", len(self.containers)))
                self.containers.append(child)
                self._walk(child, pieces, keys)
                pieces.append(("close",))
            elif child.tag == _W + "r":
                rpr = child.find(_W + "rPr")
                key = etree.tostring(rpr) if rpr is not None else b""
                if key not in keys:
                    keys[key] = len(self.formats)
                    self.formats.append(rpr)
                for item in child:
                    if item.tag == _W + "t":
                        pieces.append(("text", keys[key], item.text or ""))
                    elif item.tag != _W + "rPr":
                        pieces.append(("atom", len(self.atoms)))
                        self.atoms.append((True, rpr, item))
            else:
                pieces.append(("atom", len(self.atoms)))
                self.atoms.append((False, None, child))

    def _write(self, pieces: list[tuple], main: int) -> str:
        out, span = [], None  # span: the k of the open <span>
        for piece in pieces:
            kind = piece[0]
            want = piece[1] if kind == "text" and piece[1] != main else None
            if span is not None and (want != span or kind != "text"):
                out.append("</span>")
                span = None
            if kind == "text":
                if want is not None and span is None:
                    out.append(f'<span k="{want}">')
                    span = want
                out.append(html.escape(piece[2], quote=False))
            elif kind == "atom":
                element = self.atoms[piece[1]][2]
                tag = "br" if element.tag in _BREAKS else "img"
                out.append(f'<{tag} k="{piece[1]}">' + (" " if element.tag in _TABS else ""))
            elif kind == "open":
                out.append(f'<a k="{piece[1]}">')
            else:
                out.append("</a>")
        if span is not None:
            out.append("</span>")
        return "".join(out)

    def rebuild(self, markup: str) -> None:
        """Replaces the paragraph's content (not its properties) by the runs, atoms and links of `markup`."""
        for child in list(self.p):
            if not _properties(child):
                self.p.remove(child)
        reader = _MarkupReader(self)
        reader.feed(markup)
        reader.close()
        for k in sorted(set(range(len(self.atoms))) - reader.placed):  # never lose a picture or a bookmark
            reader.add_atom(k)


class _MarkupReader(HTMLParser):
    """Reads translated paragraph markup back into w:r / w:hyperlink elements appended to the paragraph."""

    def __init__(self, paragraph: _Paragraph):
        super().__init__(convert_charrefs=True)
        self.para, self.spans, self.placed = paragraph, [], set()
        self.containers = [paragraph.p]  # where runs go: the paragraph, or the innermost <a>'s element

    def handle_starttag(self, tag, attrs):
        k = int(dict(attrs).get("k") or 0)
        if tag == "span":
            self.spans.append(self.para.formats[k])
        elif tag == "a":  # a copy of the container with its properties, without its content
            container = copy.deepcopy(self.para.containers[k])
            for child in list(container):
                if not _properties(child):
                    container.remove(child)
            self.containers[-1].append(container)
            self.containers.append(container)
        elif k not in self.placed:  # img, br: an atom
            self.add_atom(k)

    def handle_endtag(self, tag):
        if tag == "span" and self.spans:
            self.spans.pop()
        elif tag == "a" and len(self.containers) > 1:
            self.containers.pop()

    def handle_data(self, data):
        from docx.oxml.parser import OxmlElement

        if not data:
            return
        run = self._run(self.spans[-1] if self.spans else self.para.main)
        t = OxmlElement("w:t")
        t.text = data
        t.set("{http://www.w3.org/XML/1998/namespace}space", "preserve")
        run.append(t)

    def add_atom(self, k: int) -> None:
        in_run, rpr, element = self.para.atoms[k]
        self.placed.add(k)
        if in_run:  # a tab, picture, break or field character: in a run of its own, with its formatting
            self._run(rpr).append(element)
        else:  # a paragraph-level element (a bookmark, a deletion, a comment mark) as it was
            self.containers[-1].append(element)

    def _run(self, rpr):
        from docx.oxml.parser import OxmlElement

        run = OxmlElement("w:r")
        if rpr is not None:
            run.append(copy.deepcopy(rpr))
        self.containers[-1].append(run)
        return run
