"""LibreTranslate's HTTP API in front of our gRPC service, so that LibreTranslate's clients (editor and browser
plug-ins, bots, its own libraries) work unchanged: the endpoints, field names, bodies and status codes of its
libretranslate/app.py. We translate French to English only: any other pair gets LibreTranslate's own 400 body.
Files (.txt, .html, .docx) translate through seq2seq_client.documents, as `seq2seq-client --file` does. There are
no suggestions and no language detection (see `LibreTranslate.detect`).
"""
from __future__ import annotations

import asyncio
from pathlib import PurePath

import grpc
from aiohttp import web
from google.protobuf.json_format import MessageToDict

from seq2seq_api import glossary
from seq2seq_api.decoding import DecodeConfig
from seq2seq_api.glossary import Glossary
from seq2seq_api.translation.v1 import translator_pb2 as pb

from ..documents import CHARS_PER_REQUEST, CONTENT_TYPES, DocumentError, Job, formats, open_document, translate_in_tasks, translated_name
from .app import HTTP_STATUS, Replicas, public_message
from .files import Jobs, Progress, TranslatedFiles, Upload, UploadError, read_upload
from .html_format import HtmlTranslation

SOURCE, TARGET = "fr", "en"
NAMES = {"en": "English", "fr": "French"}
LANGUAGES = [{"code": "en", "name": "English", "targets": []}, {"code": "fr", "name": "French", "targets": ["en"]}]
DETECTED = {"confidence": 100.0, "language": SOURCE}  # see LibreTranslate.detect
MAX_ALTERNATIVES = 1 << 16  # alternatives are clamped to this before they become n_best (an int32 field)
FRONTEND_TIMEOUT_MS = 500  # LibreTranslate's default --frontend-timeout: how long its page waits after a keystroke


class BadRequest(Exception):
    """A request LibreTranslate answers with 400 {"error": message}."""


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def grpc_error(e: grpc.aio.AioRpcError) -> web.Response:
    """The gRPC error as LibreTranslate words it: 403 "Invalid API key", 429 "Slowdown: ...", else our message."""
    status = HTTP_STATUS.get(e.code(), 500)
    if status == 403:
        return error(403, "Invalid API key")
    return error(status, ("Slowdown: " if status == 429 else "") + public_message(e))


async def read_fields(request: web.Request) -> dict:
    """The request's fields as LibreTranslate's server reads them: a JSON body alone, or else the query string and a
    form (urlencoded or multipart) together, the query string first where both have a field (Flask's
    `request.values`), so that `POST /translate?q=...&source=fr&target=en` with an empty body works. q given once is a
    string, its line ends made "\n" as LibreTranslate does; q repeated (in one of the two) is a list."""
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("Invalid JSON format")
        if not isinstance(body, dict):
            raise BadRequest("Invalid JSON format")
        return body
    try:
        form = await request.post()
    except (ValueError, LookupError) as e:  # bytes that are not UTF-8 (UnicodeDecodeError), an unknown charset
        raise BadRequest(f"Invalid form data: {e}")
    fields = {}
    for source in (form, request.query):  # the query string last: its fields replace the form's
        fields.update({name: source.get(name) for name in source})
        qs = source.getall("q", [])
        if len(qs) > 1:
            fields["q"] = list(qs)
        elif qs and isinstance(qs[0], str):
            fields["q"] = "\n".join(qs[0].splitlines())
    return fields


def check_pair(source, target) -> None:
    """LibreTranslate's 400s for an unknown language, then for a pair it cannot translate."""
    if source != "auto" and source not in NAMES:
        raise BadRequest(f"{source} is not supported")
    if target not in NAMES:
        raise BadRequest(f"{target} is not supported")
    source = SOURCE if source == "auto" else source
    if (source, target) != (SOURCE, TARGET):
        raise BadRequest(f"{NAMES[target]} ({target}) is not available as a target language from "
                         f"{NAMES[source]} ({source})")


def parse_glossary(fields: dict) -> Glossary:
    """Our one parameter beyond LibreTranslate's: `glossary`, term pairs the translation must use (the proto's
    DecodingOptions.glossary). A JSON body gives a list of [French, English] pairs or an object {French: English};
    a form or query string gives the same as a JSON string, or TSV lines. Clients that do not send it see nothing
    change."""
    value = fields.get("glossary")
    if value is None or value == "":
        return ()
    try:
        return glossary.parse_any(value)
    except glossary.GlossaryError as e:
        raise BadRequest(f"Invalid request: {e}")


def parse_translate(fields: dict) -> tuple[list[str], bool, str, int]:
    """(texts, whether q was a list, format, alternatives) from /translate's fields; checks in LibreTranslate's order."""
    for name in ("q", "source", "target"):
        if not fields.get(name):
            raise BadRequest(f"Invalid request: missing {name} parameter")
    q = fields["q"]
    texts = q if isinstance(q, list) else [q]
    if not all(isinstance(t, str) for t in texts):
        raise BadRequest("Invalid request: q must be a string or a list of strings")
    for t in texts:
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, e.g. "\ud800" from a string cut inside an emoji
            raise BadRequest("Invalid request: q is not valid Unicode text")
    try:
        alternatives = max(0, int(fields.get("alternatives") or 0))
    except (TypeError, ValueError, OverflowError):  # OverflowError: 1e400 is inf in JSON
        raise BadRequest("Invalid request: alternatives parameter is not a number")
    alternatives = min(alternatives, MAX_ALTERNATIVES)  # more: the servers' own 400 (n_best over their limit)
    check_pair(str(fields["source"]), str(fields["target"]))
    text_format = fields.get("format") or "text"
    if text_format not in ("text", "html"):
        raise BadRequest(f"{text_format} format is not supported")
    return texts, isinstance(q, list), text_format, alternatives


def decoding_options(alternatives: int, terms: Glossary = ()) -> pb.DecodingOptions:
    """LibreTranslate's alternatives are the n-best list after the best: alternatives + 1 hypotheses, which the beam
    must hold (the default width stays when it is wider). None asked: the server's defaults. `terms`: the glossary."""
    options = pb.DecodingOptions(glossary=[pb.GlossaryTerm(source=fr, target=en) for fr, en in terms])
    if alternatives:
        n_best = alternatives + 1
        options.n_best, options.beam_size = n_best, max(n_best, DecodeConfig().beam_size)
    return options


def alternatives_of(result: pb.TextResult, n: int) -> list[str]:
    """Up to n alternative translations of one text: the i-th puts each sentence's i-th hypothesis (its best when it
    has fewer) in place of its best one, so the text keeps its lines and spacing; like LibreTranslate's, each is
    unique and differs from the translation itself."""
    out: list[str] = []
    for i in range(1, n + 1):
        pos, parts = 0, []
        for sentence in result.sentences:
            hypotheses = sentence.hypotheses
            if not hypotheses:
                continue
            best, other = hypotheses[0].text, hypotheses[i if i < len(hypotheses) else 0].text
            at = result.text.find(best, pos)
            if at < 0:
                break
            parts += [result.text[pos:at], other]
            pos = at + len(best)
        text = "".join(parts) + result.text[pos:]
        if text != result.text and text not in out:
            out.append(text)
    return out


class LibreTranslate:
    """The handlers of LibreTranslate's endpoints, calling the gRPC servers through `replicas`."""

    def __init__(self, replicas: Replicas, files: TranslatedFiles, max_file_bytes: int):
        self.replicas, self.files, self.max_file_bytes = replicas, files, max_file_bytes
        self.jobs = Jobs(max_jobs=files.max_files, max_age_s=files.max_age_s)

    async def translate(self, request: web.Request) -> web.Response:
        """POST /translate: q (a string or a list), source ("fr" or "auto"), target ("en"), format (text | html),
        alternatives, api_key (sent on as metadata x-api-key). -> translatedText (a list when q is), alternatives
        when asked (none for html, as in LibreTranslate), detectedLanguage when source is auto."""
        try:
            fields = await read_fields(request)
            texts, batch, text_format, alternatives = parse_translate(fields)
            terms = parse_glossary(fields)
        except BadRequest as e:
            return error(400, str(e))
        key = fields.get("api_key") if isinstance(fields.get("api_key"), str) else None
        try:
            if text_format == "html":
                translated, others = await self.translate_html(texts, key, terms), [[] for _ in texts]
            else:
                results = await self.translate_text(texts, decoding_options(alternatives, terms), key)
                translated, others = [r.text for r in results], [alternatives_of(r, alternatives) for r in results]
        except grpc.aio.AioRpcError as e:
            return grpc_error(e)
        body = {"translatedText": translated if batch else translated[0]}
        if fields["source"] == "auto":
            body["detectedLanguage"] = [dict(DETECTED) for _ in texts] if batch else dict(DETECTED)
        if alternatives:
            body["alternatives"] = others if batch else others[0]
        return web.json_response(body)

    async def translate_text(self, texts: list[str], options: pb.DecodingOptions, key: str | None) -> list:
        """One TextResult per text. A blank text comes back "" (as in LibreTranslate, where our servers would refuse
        the whole request); the others go in requests of at most the servers' max_texts, all at once."""
        wanted = [i for i, t in enumerate(texts) if t.strip()]
        size = await self.replicas.max_texts(key) if len(wanted) > 1 else 1
        replies = await asyncio.gather(*(
            self.replicas.translate(pb.TranslateRequest(texts=[texts[i] for i in wanted[j:j + size]], options=options),
                                    key)
            for j in range(0, len(wanted), size)))
        results = [pb.TextResult() for _ in texts]
        for i, result in zip(wanted, (r for reply in replies for r in reply.results)):
            results[i] = result
        return results

    async def translate_html(self, documents: list[str], key: str | None, terms: Glossary = ()) -> list[str]:
        """Each document's text segments translated, with attention (which places the inline tags), and put back.
        Segments go in requests of at most the servers' max_texts and CHARS_PER_REQUEST characters (as files do: the
        attention maps of a request are bounded, --max-attention-mb), all at once: the servers batch them."""
        pages = [HtmlTranslation(d) for d in documents]
        texts = [t for page in pages for t in page.texts]
        size = await self.replicas.max_texts(key) if texts else 1
        starts, chars = [0], 0
        for k, text in enumerate(texts):
            if k > starts[-1] and (k - starts[-1] == size or chars + len(text) > CHARS_PER_REQUEST):
                starts.append(k)
                chars = 0
            chars += len(text)
        replies = await asyncio.gather(*(
            self.replicas.translate(pb.TranslateRequest(texts=texts[a:b], return_attention=True,
                                                        options=decoding_options(0, terms)), key)
            for a, b in zip(starts, starts[1:] + [len(texts)]) if a < b))
        results = [MessageToDict(r, preserving_proto_field_name=True) for reply in replies for r in reply.results]
        out, i = [], 0
        for page in pages:
            out.append(page.render(results[i:i + len(page.texts)]))
            i += len(page.texts)
        return out

    async def detect(self, request: web.Request) -> web.Response:
        """POST /detect: LibreTranslate's list of {"confidence", "language"}. We do no detection: this service reads
        every text as French, its one source language, so the answer is always French with confidence 100 (on
        LibreTranslate's 0-100 scale): how sure we are that the text will be translated as French, not a
        measure of the text. A client that needs real detection must ask a detector."""
        try:
            fields = await read_fields(request)
        except BadRequest as e:
            return error(400, str(e))
        if not fields.get("q"):
            return error(400, "Invalid request: missing q parameter")
        return web.json_response([dict(DETECTED)])

    async def languages(self, request: web.Request) -> web.Response:
        return web.json_response(LANGUAGES)

    async def settings(self, request: web.Request) -> web.Response:
        """GET /frontend/settings with LibreTranslate's keys. charLimit is the servers' max_chars (-1 when they do not
        say); a key is required when the servers refuse the gateway's own key (or its lack of one)."""
        char_limit, key_required = -1, False
        try:
            char_limit = (await self.replicas.model_info()).limits.max_chars or -1
        except grpc.aio.AioRpcError as e:
            key_required = e.code() == grpc.StatusCode.UNAUTHENTICATED
        return web.json_response({
            "charLimit": char_limit, "frontendTimeout": FRONTEND_TIMEOUT_MS, "apiKeys": key_required,
            "keyRequired": key_required, "suggestions": False, "filesTranslation": True,
            "supportedFilesFormat": formats(),
            "language": {"source": {"code": SOURCE, "name": NAMES[SOURCE]},
                         "target": {"code": TARGET, "name": NAMES[TARGET]}}})

    # ---- files ----------------------------------------------------------------------------------------------------

    async def translate_file(self, request: web.Request) -> web.Response:
        """POST /translate_file, multipart: file (.txt, .html, .docx), source, target, api_key; and ours, job_id
        (optional, chosen by the client: GET /translate_file/progress/{job_id} says how far it is) and glossary (as
        /translate's, see `parse_glossary`: every request of the file carries its terms). -> 200
        {"translatedFileUrl": ".../download_file/<name>"} once the file is translated. LibreTranslate's checks in its
        order, with its 400 bodies; a file over --max-file-bytes is a 400 too, an unreadable one also."""
        try:
            upload = await read_upload(request, self.max_file_bytes)
            source, target = upload.fields.get("source"), upload.fields.get("target")
            for name, value in (("file", upload.filename), ("source", source), ("target", target)):
                if not value:
                    raise BadRequest(f"Invalid request: missing {name} parameter")
            if PurePath(upload.filename).suffix.lower() not in formats():
                raise BadRequest("Invalid request: file format not supported")
            check_pair(source, target)
            terms = parse_glossary(upload.fields)
            job_id = upload.fields.get("job_id")
            progress = self.jobs.start(job_id) if job_id else Progress()
        except (BadRequest, UploadError) as e:
            return error(400, str(e))
        # LibreTranslate reads source and target from the form only, and api_key from the query string or the form
        key = request.query.get("api_key") or upload.fields.get("api_key") or None
        try:
            name = await self.translate_upload(upload, key, progress, terms)
        except DocumentError as e:
            progress.state, progress.error = "error", str(e)
            return error(400, f"Invalid request: {e}")
        except grpc.aio.AioRpcError as e:
            progress.state, progress.error = "error", public_message(e)
            return grpc_error(e)
        return web.json_response({"translatedFileUrl": f"{request.scheme}://{request.host}/download_file/{name}"})

    async def translate_upload(self, upload: Upload, key: str | None, progress: Progress, terms: Glossary = ()) -> str:
        """The file's texts through TranslateStream requests of at most the servers' max_texts (two at a time, so
        that the servers' running batch decodes them together: see documents.Job), each with the glossary `terms`,
        and the translated file saved: its name."""
        document = await asyncio.to_thread(open_document, upload.filename, upload.data)  # a .docx takes a while
        limits = (await self.replicas.model_info(key)).limits

        def advance(done: int, total: int) -> None:
            progress.done = done

        job = Job(document, limits.max_texts or 64, limits.max_chars or 5000, on_progress=advance)
        progress.state, progress.total = "translating", job.total
        options = decoding_options(0, terms)
        await translate_in_tasks(job, lambda texts: self.replicas.translate_stream(
            pb.TranslateRequest(texts=texts, return_attention=job.attention, options=options), key))
        progress.state = "writing"
        name = await self.files.save(translated_name(upload.filename, TARGET), await asyncio.to_thread(job.render))
        progress.state = "done"
        return name

    async def download_file(self, request: web.Request) -> web.StreamResponse:
        """GET /download_file/{filename}: a translated file, as an attachment named as LibreTranslate names it (what
        follows the first dot: report_en.docx). 404 once it expired (LibreTranslate answers 500 there)."""
        name = request.match_info["filename"]
        path = self.files.path(name)
        if path is None:
            return error(404, f"Invalid request: no translated file {name}: it expired or never existed")
        download = name.split(".", 1)[1]
        content_type = CONTENT_TYPES.get(PurePath(download).suffix.lower(), "application/octet-stream")
        return web.FileResponse(path, headers={"Content-Type": content_type,
                                               "Content-Disposition": f'attachment; filename="{download}"'})

    async def file_progress(self, request: web.Request) -> web.Response:
        """GET /translate_file/progress/{job_id}: {"state", "done", "total"} (texts), and "error" when it failed."""
        progress = self.jobs.get(request.match_info["job_id"])
        if progress is None:
            return error(404, "no file translation with this job_id (it finished long ago, or never started)")
        return web.json_response(progress.as_dict())
