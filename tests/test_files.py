"""Whole-file translation: LibreTranslate's POST /translate_file and GET /download_file in seq2seq-web, the progress
the page polls, `seq2seq-client --file`, and the formats of seq2seq_client.documents (.txt, .html, .docx).

Contract and limit tests run fake gRPC servers (test_web's, with TranslateStream added) so that requests and
replies are known exactly; the round trips of each format, the CLI and the page's file picker (headless Chromium,
skipped without it) go through the real server with the shipped model.
"""
from __future__ import annotations

import asyncio
import io
import re

import aiohttp
import pytest

from seq2seq_api.translation.v1 import translator_pb2 as pb
from seq2seq_client import cli
from seq2seq_client.documents import CHARS_PER_REQUEST, Job, cut, open_document
from test_web import Code, FakeTranslator, gateway, get, in_loop, post
# fixtures: the shipped model behind a real gRPC server, and the gateway that serves the page in front of it
from test_web_page import gateway as page_gateway, grpc_server, open_page  # noqa: F401
from test_web_page import event_loop_thread, serve_fake

docx = pytest.importorskip("docx")

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
URL = re.compile(r"http://127\.0\.0\.1:\d+/download_file/([0-9a-f]{32})\.(.+)")


class StreamingFake(FakeTranslator):
    """test_web's fake with TranslateStream: "x" -> "en:x", each request's texts answered last first (as a running
    batch may finish them), counting the texts and characters in flight (`peak`: the most at once); with `gate` set,
    every stream after the first waits for it before answering."""

    def __init__(self, max_texts: int = 2, max_chars: int = 5000, **kwargs):
        super().__init__(**kwargs)
        self.max_texts, self.max_chars = max_texts, max_chars
        self.in_flight, self.peak, self.streams = [0, 0], [0, 0], 0
        self.gate: asyncio.Event | None = None

    def _count(self, request, sign: int) -> None:
        self.in_flight = [self.in_flight[0] + sign * len(request.texts),
                          self.in_flight[1] + sign * sum(map(len, request.texts))]
        self.peak = [max(p, n) for p, n in zip(self.peak, self.in_flight)]

    async def TranslateStream(self, request, context):
        await self._enter(request, context)
        self.streams += 1
        self._count(request, 1)
        try:
            if self.gate is not None and self.streams > 1:
                await self.gate.wait()
            for i in reversed(range(len(request.texts))):
                text = request.texts[i]
                yield pb.TranslateStreamResponse(index=i, result=pb.TextResult(text=f"en:{text}", sentences=[
                    pb.SentenceResult(source=text, hypotheses=[pb.Hypothesis(text=f"en:{text}")])]))
        finally:
            self._count(request, -1)

    async def GetModelInfo(self, request, context):
        await self._enter(request, context)
        return pb.ModelInfo(name=self.name, limits=pb.ServerLimits(max_texts=self.max_texts, max_chars=self.max_chars))


def upload(name: str | None, data: bytes = b"", fields=(("source", "fr"), ("target", "en")), content_type=None):
    form = aiohttp.FormData(list(fields))
    if name is not None:
        form.add_field("file", data, filename=name, content_type=content_type or "application/octet-stream")
    return form


async def download(rig, url: str) -> tuple[int, bytes, dict]:
    async with rig.client.get(url[url.index("/download_file/"):]) as r:
        return r.status, await r.read(), dict(r.headers)


def streams(fake: StreamingFake) -> list[pb.TranslateRequest]:
    return [r for r in fake.requests if isinstance(r, pb.TranslateRequest)]


# ---- the contract, with a fake server -------------------------------------------------------------------------------

@in_loop
async def test_a_txt_file_comes_back_translated_line_by_line_for_download():
    async with gateway(StreamingFake()) as rig:
        text = "Bonjour.\n\n  Merci beaucoup.  \r\nAu revoir.\n"
        status, body = await post(rig, "/translate_file", data=upload("Mes notes.txt", text.encode()))
        assert status == 200, body
        found = URL.fullmatch(body["translatedFileUrl"])
        assert found and found.group(2) == "Mes_notes_en.txt", body  # LibreTranslate's <uuid>.<secure name>_en.txt
        status, data, headers = await download(rig, body["translatedFileUrl"])
        assert (status, data.decode()) == (200, "en:Bonjour.\n\n  en:Merci beaucoup.  \r\nen:Au revoir.\n")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert headers["Content-Disposition"] == 'attachment; filename="Mes_notes_en.txt"'
        # TranslateStream requests of the server's max_texts (2), without attention: plain text needs none
        assert sorted(list(r.texts) for r in streams(rig.fakes[0])) == [["Au revoir."], ["Bonjour.", "Merci beaucoup."]]
        assert not any(r.return_attention for r in streams(rig.fakes[0]))


FIELDS = (("source", "fr"), ("target", "en"))


@pytest.mark.parametrize("body, message", [
    (lambda: upload(None), "Invalid request: missing file parameter"),
    (lambda: upload("", b"x"), "Invalid request: missing file parameter"),  # a browser's empty file input
    (lambda: upload("a.txt", b"x", fields=[("target", "en")]), "Invalid request: missing source parameter"),
    (lambda: upload("a.txt", b"x", fields=[("source", "fr")]), "Invalid request: missing target parameter"),
    (lambda: upload("a.pdf", b"%PDF"), "Invalid request: file format not supported"),
    (lambda: upload("a", b"x"), "Invalid request: file format not supported"),
    (lambda: upload("a.txt", b"x", fields=[("source", "de"), ("target", "en")]), "de is not supported"),
    (lambda: upload("a.txt", b"x", fields=[("source", "fr"), ("target", "es")]), "es is not supported"),
    (lambda: upload("a.txt", b"x", fields=[("source", "en"), ("target", "fr")]),
     "French (fr) is not available as a target language from English (en)"),
    (lambda: upload("a.txt", b"x", fields=[("source", "fr"), ("target", "fr")]),
     "French (fr) is not available as a target language from French (fr)"),
    (lambda: upload("a.txt", b"\xff\xfeB\x00"), "Invalid request: the .txt file is not UTF-8 text (byte 0)"),
    (lambda: upload("a.docx", b"PK not a zip"),
     "Invalid request: the .docx file cannot be read: File is not a zip file"),
    (lambda: upload("a.txt", b"x", fields=FIELDS + (("job_id", "short"),)),
     "Invalid request: job_id must be 8 to 64 letters, digits, '-' or '_'"),
], ids=["no-file", "empty-filename", "no-source", "no-target", "pdf", "no-extension", "unknown-source",
        "unknown-target", "en-fr", "fr-fr", "not-utf8", "not-a-docx", "bad-job-id"])
@in_loop
async def test_bad_uploads_get_libretranslates_400(body, message):
    async with gateway(StreamingFake()) as rig:
        assert await post(rig, "/translate_file", data=body()) == (400, {"error": message})
        assert streams(rig.fakes[0]) == []


@in_loop
async def test_what_is_not_a_multipart_upload_has_no_file_and_source_is_read_from_the_form_only():
    """LibreTranslate takes the file from request.files and source/target from request.form (not the query string);
    api_key from request.values, the query string first."""
    async with gateway(StreamingFake()) as rig:
        no_file = (400, {"error": "Invalid request: missing file parameter"})
        assert await post(rig, "/translate_file", json={"source": "fr", "target": "en"}) == no_file
        assert await post(rig, "/translate_file", data={"source": "fr", "target": "en"}) == no_file
        assert await post(rig, "/translate_file?source=fr&target=en", data=upload("a.txt", b"Un.", fields=())) == \
            (400, {"error": "Invalid request: missing source parameter"})
        status, _ = await post(rig, "/translate_file?api_key=K1", data=upload("a.txt", b"Un.",
                                                                               fields=FIELDS + (("api_key", "K2"),)))
        assert status == 200 and rig.fakes[0].keys[-1] == "K1"


@in_loop
async def test_a_file_over_max_file_bytes_is_a_400_and_a_lost_download_a_404():
    async with gateway(StreamingFake(), max_file_bytes=100) as rig:
        assert await post(rig, "/translate_file", data=upload("a.txt", b"x" * 101)) == \
            (400, {"error": "Invalid request: file too large (the limit is 100 bytes)"})
        status, body = await post(rig, "/translate_file", data=upload("a.txt", b"x" * 100))
        assert status == 200, body
        async with rig.client.get("/download_file/0123456789abcdef0123456789abcdef.a_en.txt") as r:
            assert (r.status, await r.json()) == (404, {"error": "Invalid request: no translated file "
                                                        "0123456789abcdef0123456789abcdef.a_en.txt: it expired or "
                                                        "never existed"})


def store_of(rig):
    """The gateway's TranslatedFiles (the object behind its /download_file route)."""
    return next(r.handler.__self__.files for r in rig.client.app.router.routes()
                if getattr(r.handler, "__name__", "") == "download_file")


@in_loop
async def test_translated_files_are_bounded_in_count_and_age_and_removed_at_shutdown():
    async with gateway(StreamingFake(), max_files=2) as rig:
        urls = []
        for i in range(3):
            status, body = await post(rig, "/translate_file", data=upload(f"{i}.txt", b"Un."))
            urls.append(body["translatedFileUrl"])
        assert [(await download(rig, u))[0] for u in urls] == [404, 200, 200]  # the oldest went
        root = store_of(rig).root
        assert sorted(p.name for p in root.iterdir()) == sorted(u.rsplit("/", 1)[1] for u in urls[1:])
    assert not root.exists()  # the folder goes with the gateway
    async with gateway(StreamingFake(), file_ttl_s=1) as rig:
        status, body = await post(rig, "/translate_file", data=upload("a.txt", b"Un."))
        assert (await download(rig, body["translatedFileUrl"]))[0] == 200
        await asyncio.sleep(1.1)
        assert (await download(rig, body["translatedFileUrl"]))[0] == 404
        assert list(store_of(rig).root.iterdir()) == []


@in_loop
async def test_a_server_error_is_libretranslates_status_and_the_progress_says_so():
    async with gateway(StreamingFake(error=(Code.UNAVAILABLE, "down"))) as rig:
        body = upload("a.txt", b"Un.", fields=FIELDS + (("job_id", "job-unavailable"),))
        assert await post(rig, "/translate_file", data=body) == \
            (503, {"error": "no translation server is available; retry later"})
        assert await get(rig, "/translate_file/progress/job-unavailable") == (200, {
            "state": "error", "done": 0, "total": 0, "error": "no translation server is available; retry later"})
        assert await get(rig, "/translate_file/progress/no-such-job") == \
            (404, {"error": "no file translation with this job_id (it finished long ago, or never started)"})


@in_loop
async def test_a_text_over_the_servers_max_chars_goes_in_pieces_and_comes_back_whole():
    async with gateway(StreamingFake(max_texts=8, max_chars=20)) as rig:
        text = "Un chien court. Un chat dort au soleil.\nFin.\n"
        status, body = await post(rig, "/translate_file", data=upload("a.txt", text.encode()))
        _, data, _ = await download(rig, body["translatedFileUrl"])
        assert data.decode() == "en:Un chien court. en:Un chat dort au en:soleil.\nen:Fin.\n"
        assert [list(r.texts) for r in streams(rig.fakes[0])] == \
            [["Un chien court.", "Un chat dort au", "soleil.", "Fin."]]
    assert cut("abcdefghij klm", 5) == ["abcde", "fghij", "klm"]  # no space in reach: cut anywhere


@in_loop
async def test_a_megabyte_of_text_streams_with_progress_and_bounded_requests_in_flight():
    """~1 MB, 2,000 paragraphs of ~500 characters: requests of at most CHARS_PER_REQUEST characters (and max_texts
    texts), at most two in flight, the progress polled while all but the first request are held back, and the whole
    file back in order. (How fast is for a benchmark, not for a test on a shared machine.)"""
    fake = StreamingFake(max_texts=64)
    fake.gate = asyncio.Event()
    lines = [f"Paragraphe {i} : " + "le chat dort sur le canapé, " * 17 + "fin." for i in range(2000)]
    text = "\n".join(lines) + "\n"
    assert 0.95e6 < len(text.encode()) < 1.1e6
    async with gateway(fake) as rig:
        body = upload("gros.txt", text.encode(), fields=FIELDS + (("job_id", "megabyte-job"),))
        posted = asyncio.ensure_future(post(rig, "/translate_file", data=body))
        seen = []
        for _ in range(500):  # the first request is answered (4 texts); the others wait for the gate
            await asyncio.sleep(0.01)
            status, progress = await get(rig, "/translate_file/progress/megabyte-job")
            if status == 200:
                seen.append(progress)
            if seen and seen[-1]["done"] == 4:
                break
        await asyncio.sleep(0.05)
        assert await get(rig, "/translate_file/progress/megabyte-job") == \
            (200, {"state": "translating", "done": 4, "total": 2000})  # no further while the gate is shut
        assert len(streams(fake)[0].texts) == 4
        fake.gate.set()
        status, body = await posted
        assert status == 200, body
        assert await get(rig, "/translate_file/progress/megabyte-job") == \
            (200, {"state": "done", "done": 2000, "total": 2000})
        _, data, _ = await download(rig, body["translatedFileUrl"])
        assert data.decode() == "".join(f"en:{line}\n" for line in lines)
        sizes = sorted((len(r.texts), sum(map(len, r.texts))) for r in streams(fake))
        assert sum(n for n, _ in sizes) == 2000 and max(c for _, c in sizes) <= CHARS_PER_REQUEST < 5 * 500
        assert fake.peak[0] <= 2 * 4 and fake.peak[1] <= 2 * CHARS_PER_REQUEST  # two requests in flight at most
    assert [p["done"] for p in seen] == sorted(p["done"] for p in seen)


# ---- the glossary ---------------------------------------------------------------------------------------------------

def terms_of(request: pb.TranslateRequest) -> list[tuple[str, str]]:
    return [(t.source, t.target) for t in request.options.glossary]


@in_loop
async def test_a_glossary_field_goes_with_every_request_of_the_file():
    """/translate's forms of a glossary in a form field (TSV lines, a JSON list or object) reach each TranslateStream
    request of the file; without the field, no term."""
    async with gateway(StreamingFake(max_texts=1)) as rig:
        text = "La carte mère.\nUn écran.\n".encode()
        for value in ("carte mère\tmotherboard", '[["carte mère", "motherboard"]]', '{"carte mère": "motherboard"}',
                      None):
            before = len(streams(rig.fakes[0]))
            fields = FIELDS + ((("glossary", value),) if value is not None else ())
            status, body = await post(rig, "/translate_file", data=upload("a.txt", text, fields=fields))
            assert status == 200, body
            sent = streams(rig.fakes[0])[before:]
            assert sorted(list(r.texts) for r in sent) == [["La carte mère."], ["Un écran."]]
            assert [terms_of(r) for r in sent] == [[("carte mère", "motherboard")] if value else []] * 2, value


@pytest.mark.parametrize("value, message", [
    ("carte mère\t", "glossary entry 0 has an empty English term"),
    ("carte mère", "glossary, line 1: expected French<TAB>English, got 1 field(s)"),
    ('[["carte", "card"], ["Carte", "map"]]', "glossary entry 1: the French term 'Carte' has two English terms, "
                                              "'card' and 'map'"),
    # the JSON API's shape is not a pair: a clear 400, not the glossary ("source", "target")
    ('[{"source": "carte", "target": "card"}]', "glossary entry 0 must be a [French, English] pair, got "
                                                "{'source': 'carte', 'target': 'card'}"),
    ("x\t" + "y" * 101, "glossary entry 0: the English term has 101 characters; the limit is 100"),
], ids=["empty-term", "one-column", "two-english", "object-pair", "too-long"])
@in_loop
async def test_a_bad_glossary_on_a_file_is_a_400_with_its_reason(value, message):
    async with gateway(StreamingFake()) as rig:
        body = upload("a.txt", b"Un.", fields=FIELDS + (("glossary", value), ("job_id", "bad-glossary")))
        assert await post(rig, "/translate_file", data=body) == (400, {"error": f"Invalid request: {message}"})
        assert streams(rig.fakes[0]) == []
        assert (await get(rig, "/translate_file/progress/bad-glossary"))[0] == 404  # no job was started


class OneTermServer(StreamingFake):
    """A server started with --max-glossary-terms 1: its words for a longer glossary."""

    async def TranslateStream(self, request, context):
        if len(request.options.glossary) > 1:
            await context.abort(Code.INVALID_ARGUMENT, f"the glossary has {len(request.options.glossary)} terms; "
                                                       "this server takes at most 1 (--max-glossary-terms)")
        async for reply in super().TranslateStream(request, context):
            yield reply


@in_loop
async def test_a_glossary_the_server_refuses_is_a_400_with_the_servers_reason():
    async with gateway(OneTermServer()) as rig:
        body = upload("a.txt", b"Un.", fields=FIELDS + (("glossary", '{"un": "one", "deux": "two"}'),))
        assert await post(rig, "/translate_file", data=body) == \
            (400, {"error": "the glossary has 2 terms; this server takes at most 1 (--max-glossary-terms)"})
        body = upload("a.txt", b"Un.", fields=FIELDS + (("glossary", '{"un": "one"}'),))
        assert (await post(rig, "/translate_file", data=body))[0] == 200


def test_the_cli_sends_its_glossary_with_every_request_of_a_file(tmp_path, capsys):
    """--glossary FILE.tsv (a generated decoding flag) reaches each request of --file, with --out and without."""
    fake = StreamingFake(max_texts=1)
    (tmp_path / "terms.tsv").write_text("# French\tEnglish\ncarte mère\tmotherboard\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("La carte mère.\nUn écran.\n", encoding="utf-8")
    with event_loop_thread() as run, serve_fake(run, fake) as target:
        flags = ["--server", target, "--file", str(tmp_path / "a.txt"), "--glossary", str(tmp_path / "terms.tsv")]
        assert cli.main(flags + ["--out", str(tmp_path / "b.txt")]) == 0  # the whole-file path: TranslateStream
        assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "en:La carte mère.\nen:Un écran.\n"
        assert cli.main(flags) == 0  # a .txt without --out: one Translate per 64 lines, printed
        assert capsys.readouterr().out == "en:La carte mère.\nen:Un écran.\n"
    sent = streams(fake)
    assert [list(r.texts) for r in sent[:2]] in ([["La carte mère."], ["Un écran."]],
                                                 [["Un écran."], ["La carte mère."]])
    assert [list(r.texts) for r in sent[2:]] == [["La carte mère.", "Un écran."]]
    assert [terms_of(r) for r in sent] == [[("carte mère", "motherboard")]] * 3


# ---- the formats through the real server ----------------------------------------------------------------------------

# The English is the shipped model's, in fp32 (grpc_server): a new model can change it, as tests/test_shipped_model.py
# pins its own sentences; check a changed line by hand before pinning it.
HTML = "<html><body><h1>Un chien court.</h1><p>Des gens réparent le <b>toit</b> d'une maison.</p></body></html>"
HTML_EN = ("<html><body><h1>A dog runs.</h1><p>People are fixing <b>the roof</b> of a house.</p>"
           "</body></html>")


def french_docx() -> bytes:
    """A heading, a bulleted paragraph with a bold and an italic run, a table, a header."""
    d = docx.Document()
    d.add_heading("Un chien court.", level=1)
    p = d.add_paragraph("Des gens réparent le ", style="List Bullet")
    p.add_run("toit").bold = True
    p.add_run(" d'une maison.")
    p.add_run(" Un homme fait du vélo.").italic = True
    d.add_table(rows=1, cols=2).cell(0, 0).text = "Deux chiens jouent dans la neige."
    d.sections[0].header.paragraphs[0].text = "Un homme fait du vélo."
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


def check_english_docx(data: bytes) -> None:
    d = docx.Document(io.BytesIO(data))
    heading, bullet = d.paragraphs[0], d.paragraphs[1]
    assert (heading.style.name, heading.text) == ("Heading 1", "A dog runs.")
    assert bullet.style.name == "List Bullet"
    assert bullet.text == "People are fixing the roof of a house. A man is riding a bicycle."
    assert [r.text for r in bullet.runs if r.bold] == ["the roof"]
    assert [r.text for r in bullet.runs if r.italic] == ["A man is riding a bicycle."]
    assert d.tables[0].cell(0, 0).text == "Two dogs play in the snow."
    assert d.sections[0].header.paragraphs[0].text == "A man is riding a bicycle."


@in_loop
async def test_txt_html_and_docx_round_trip_through_the_real_server(grpc_server):
    async with gateway(server=[f"127.0.0.1:{grpc_server.port}"]) as rig:
        cases = [("notes.txt", "Un chien court.\n\nDes gens réparent le toit d'une maison.\n".encode(), "text/plain"),
                 ("page.html", HTML.encode(), "text/html"), ("lettre.docx", french_docx(), DOCX_TYPE)]
        got = {}
        for name, data, content_type in cases:
            status, body = await post(rig, "/translate_file", data=upload(name, data))
            assert status == 200, body
            status, got[name], headers = await download(rig, body["translatedFileUrl"])
            assert status == 200 and headers["Content-Type"].startswith(content_type)
        assert got["notes.txt"].decode() == "A dog runs.\n\nPeople are fixing the roof of a house.\n"
        assert got["page.html"].decode() == HTML_EN
        check_english_docx(got["lettre.docx"])


def test_the_cli_translates_a_whole_file(grpc_server, tmp_path, capsys):
    server = ["--server", f"127.0.0.1:{grpc_server.port}"]
    (tmp_path / "lettre.docx").write_bytes(french_docx())
    assert cli.main(server + ["--file", str(tmp_path / "lettre.docx")]) == 0
    check_english_docx((tmp_path / "lettre_en.docx").read_bytes())  # LibreTranslate's name, beside the input
    assert capsys.readouterr().err == f"seq2seq-client: wrote {tmp_path / 'lettre_en.docx'}\n"
    (tmp_path / "page.html").write_text(HTML, encoding="utf-8")
    assert cli.main(server + ["--file", str(tmp_path / "page.html"), "--out", str(tmp_path / "en.html")]) == 0
    assert (tmp_path / "en.html").read_text(encoding="utf-8") == HTML_EN
    (tmp_path / "a.txt").write_text("Un chien court.\n", encoding="utf-8")
    assert cli.main(server + ["--file", str(tmp_path / "a.txt"), "--out", str(tmp_path / "b.txt")]) == 0
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "A dog runs.\n"
    capsys.readouterr()
    assert cli.main(server + ["--file", str(tmp_path / "a.pdf"), "--out", str(tmp_path / "b.pdf")]) == 1
    assert capsys.readouterr().err.startswith("seq2seq-client: [Errno 2] No such file or directory")
    (tmp_path / "a.pdf").write_bytes(b"%PDF")
    assert cli.main(server + ["--file", str(tmp_path / "a.pdf"), "--out", str(tmp_path / "b.pdf")]) == 1
    assert capsys.readouterr().err == \
        "seq2seq-client: file format not supported: .pdf (supported: .txt, .html, .docx)\n"


def test_a_job_reports_progress_per_text_in_any_order():
    """Job's progress callback, which the CLI's bar follows: once per text, in any order of arrival."""
    document = open_document("a.txt", "Un.\nDeux.\nTrois.\n".encode())
    seen = []
    job = Job(document, max_texts=2, max_chars=100, on_progress=lambda done, total: seen.append((done, total)))
    assert list(job.requests()) == [(0, ["Un.", "Deux."]), (2, ["Trois."])]
    for position in (2, 0, 1):
        job.accept(position, pb.TextResult(text=f"t{position}"))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert job.render() == b"t0\nt1\nt2\n"


# ---- the page's file picker, in headless Chromium -------------------------------------------------------------------

@pytest.mark.slow
def test_the_page_uploads_a_file_shows_progress_and_links_the_translation(browser, page_gateway, tmp_path):
    import urllib.request

    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, page_gateway)
    assert browser.find_element("id", "file-form").is_displayed()
    assert browser.find_element("id", "file").get_attribute("accept") == ".txt,.html,.docx"
    (tmp_path / "page.html").write_text(HTML, encoding="utf-8")
    browser.find_element("id", "file").send_keys(str(tmp_path / "page.html"))
    browser.find_element("id", "translate-file").click()
    body = browser.find_element("tag name", "body")
    WebDriverWait(browser, 120).until(lambda b: body.get_attribute("data-file-state") in ("done", "error"))
    status = browser.find_element("id", "file-status").text
    assert body.get_attribute("data-file-state") == "done", status
    assert status == "page.html is translated."
    link = browser.find_element("id", "file-download")
    assert (link.text, link.get_attribute("download")) == ("Download page_en.html", "page_en.html")
    progress = browser.find_element("id", "file-progress")
    assert (progress.get_attribute("value"), progress.get_attribute("max")) == ("1", "1")
    with urllib.request.urlopen(link.get_attribute("href")) as r:  # the page's relative link, resolved
        assert r.read().decode() == HTML_EN
    browser.find_element("id", "file").clear()
    browser.find_element("id", "translate-file").click()  # no file chosen: a message, no request
    assert browser.find_element("id", "file-status").text == "Choose a .txt, .html or .docx file first."
