"""The gateway's side of file translation (LibreTranslate's /translate_file): the upload read with a size limit, the
translated files kept for download in a temporary folder of their own, bounded in count and age, and the progress of
each translation for the page to poll. The formats are seq2seq_client.documents'; this file knows no format.
"""
from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import time
import unicodedata
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePath
from urllib.parse import unquote

from aiohttp import BodyPartReader, web

JOB_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_FIELD_BYTES = 64 * 1024  # a form field other than the file (source, target, api_key, job_id)
# but a glossary may be 256 pairs of 100-character terms (seq2seq_api.glossary), 4 UTF-8 bytes each, JSON-quoted
FIELD_BYTES = {"glossary": 512 * 1024}


class UploadError(Exception):
    """An upload LibreTranslate answers with 400 {"error": message}."""


@dataclass
class Upload:
    filename: str = ""
    data: bytes = b""
    fields: dict[str, str] | None = None  # the form's other fields, the first of each name


async def _read(part: BodyPartReader, limit: int, too_large: str) -> bytes:
    """The part's bytes, read in chunks; UploadError(too_large) past `limit` bytes, before reading the rest."""
    chunks, size = [], 0
    while chunk := await part.read_chunk():
        size += len(chunk)
        if size > limit:
            raise UploadError(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: web.Request, max_file_bytes: int) -> Upload:
    """The multipart form as LibreTranslate's server reads it: the file from the parts with a filename (Flask's
    request.files), the other fields from the form. The body streams: an upload over `max_file_bytes` is refused
    once that many bytes have come, whatever its Content-Length says. Not multipart: no file."""
    upload = Upload(fields={})
    if request.content_type != "multipart/form-data":
        return upload
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                continue
            if part.filename is not None:  # a file part (filename="" when a browser sends an empty file input)
                data = await _read(part, max_file_bytes, f"Invalid request: file too large (the limit is "
                                                         f"{max_file_bytes} bytes)")
                if part.name == "file" and not upload.filename:  # browsers write '"' as %22, aiohttp all as %XX
                    upload.filename, upload.data = unquote(part.filename), data
            elif part.name not in upload.fields:
                limit = FIELD_BYTES.get(part.name, MAX_FIELD_BYTES)
                value = await _read(part, limit, f"Invalid request: {part.name} is too long")
                upload.fields[part.name] = value.decode(part.get_charset("utf-8"))
    except (ValueError, LookupError, AssertionError) as e:  # a broken body, bytes not in their charset
        raise UploadError(f"Invalid form data: {e}")
    return upload


def safe_name(name: str) -> str:
    """A file name safe in a path and a header, as werkzeug's secure_filename makes it (LibreTranslate uses that):
    ASCII letters, digits, '_', '.', '-'; "Résumé d'été.docx" -> "Resume_dete.docx"."""
    name = unicodedata.normalize("NFKD", PurePath(name).name).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^A-Za-z0-9_.-]", "", "_".join(name.split())).strip("._")
    return name or "file"


class TranslatedFiles:
    """Translated files in a temporary folder of the gateway's own, made at start-up and removed at shutdown. A file
    is named <32 hex digits>.<safe name> (LibreTranslate's scheme: the download name is what follows the first dot);
    it goes when `max_age_s` old or when `max_files` newer ones came. Nothing else is ever read from the folder."""

    def __init__(self, max_files: int, max_age_s: float):
        self.max_files, self.max_age_s = max_files, max_age_s
        self.root: Path | None = None
        self._files: OrderedDict[str, float] = OrderedDict()  # name -> when it was written (monotonic s), oldest first

    async def open(self, app=None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="seq2seq-web-files-"))

    async def close(self, app=None) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    async def save(self, download_name: str, data: bytes) -> str:
        """Writes the file (in a thread: it may be megabytes) and returns its name for /download_file."""
        name = f"{uuid.uuid4().hex}.{safe_name(download_name)}"
        await asyncio.to_thread((self.root / name).write_bytes, data)
        self._files[name] = time.monotonic()
        self.sweep()
        return name

    def path(self, name: str) -> Path | None:
        """The file's path, or None when there is no such file (any more)."""
        self.sweep()
        return self.root / name if name in self._files else None

    def sweep(self) -> None:
        """Removes the files past their age, and the oldest beyond max_files."""
        too_old = time.monotonic() - self.max_age_s
        while self._files and (len(self._files) > self.max_files or next(iter(self._files.values())) < too_old):
            name, _ = self._files.popitem(last=False)
            (self.root / name).unlink(missing_ok=True)


@dataclass
class Progress:
    """Where one file translation is: state reading | translating | writing | done | error; done of total texts."""

    state: str = "reading"
    done: int = 0
    total: int = 0
    error: str = ""
    started: float = 0.0

    def as_dict(self) -> dict:
        body = {"state": self.state, "done": self.done, "total": self.total}
        return body | ({"error": self.error} if self.error else {})


class Jobs:
    """The progress of file translations by the job_id their client chose (random, so others cannot guess it), for
    GET /translate_file/progress/{job_id}; at most `max_jobs`, each forgotten `max_age_s` after it started."""

    def __init__(self, max_jobs: int, max_age_s: float):
        self.max_jobs, self.max_age_s = max_jobs, max_age_s
        self._jobs: OrderedDict[str, Progress] = OrderedDict()

    def start(self, job_id: str) -> Progress:
        if not JOB_ID.fullmatch(job_id):
            raise UploadError("Invalid request: job_id must be 8 to 64 letters, digits, '-' or '_'")
        self.sweep(room=1)
        if job_id in self._jobs:
            raise UploadError("Invalid request: job_id is already in use")
        self._jobs[job_id] = progress = Progress(started=time.monotonic())
        return progress

    def get(self, job_id: str) -> Progress | None:
        self.sweep()
        return self._jobs.get(job_id)

    def sweep(self, room: int = 0) -> None:
        """Forgets the jobs past their age, and the oldest beyond max_jobs - room."""
        too_old = time.monotonic() - self.max_age_s
        while self._jobs and (len(self._jobs) > self.max_jobs - room
                              or next(iter(self._jobs.values())).started < too_old):
            self._jobs.popitem(last=False)
