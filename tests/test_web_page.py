"""The web page of `seq2seq-web` (seq2seq_client/web/static) in headless Chromium, against the real gateway and a real
gRPC server with the shipped model: typing French gives the English the gRPC API gives, with its n-best and scores;
the attention viewer follows hover, focus, sentence and head; API errors show up in the page; and the page fetches
nothing from outside the gateway.

The glossary's table goes through a fake gRPC server (test_web's, with sentences and terms), so that the request the
page sends and the reply it shows are known exactly.

The browser tests skip when Chromium is missing (scripts/install_chromium.sh) or the shipped model is.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import threading
from html.parser import HTMLParser
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import alphas
from seq2seq_api import glossary
from seq2seq_api.translation.v1 import translator_pb2 as pb
from seq2seq_api.translation.v1 import translator_pb2_grpc as pb_grpc
from test_web import FakeTranslator

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "fr-en-small"
STATIC = ROOT / "client" / "seq2seq_client" / "web" / "static"
TEXT = "Un homme avec un chapeau orange regardant quelque chose. Des gens réparent le toit d'une maison."
OPTIONS = {"beam_size": 3, "n_best": 3}
# Chromium keeps a colour's alpha in 8 bits and reports it rounded to 2 decimals when that reads back the same
ALPHA = 6e-3


# ---- the page's files ----------------------------------------------------------------------------------------------

class Links(HTMLParser):
    """Every src and href of a page."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]


def test_the_page_and_its_files_name_nothing_outside_the_gateway():
    files = sorted(STATIC.iterdir())
    names = {f.name for f in files}
    assert {"index.html", "page.js", "page.css", "attention-viewer.js", "attention-viewer.css"} <= names
    for path in files:
        text = path.read_text(encoding="utf-8")
        found = re.findall(r"https?://|@import|url\(|\bsrc\s*=\s*[\"']?//|\bhref\s*=\s*[\"']?//", text, re.IGNORECASE)
        assert found == [], f"{path.name} names an outside resource: {found}"
    links = Links()
    links.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    local = [u for u in links.urls if not u.startswith("data:")]
    assert local == ["static/page.css", "static/attention-viewer.css", "static/attention-viewer.js", "static/page.js"]
    assert all((STATIC / u.removeprefix("static/")).is_file() for u in local)


# ---- a gRPC server with the shipped model, and the gateway in front of it ------------------------------------------

@pytest.fixture(scope="module")
def grpc_server():
    if not MODEL.is_dir():
        pytest.skip(f"no shipped model at {MODEL}")
    import torch

    from seq2seq.translator import Translator
    from server.app import Server
    from server.config import ServerConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cores are shared (see tests/test_shipped_model.py)
    translator = Translator.from_checkpoint(MODEL, device="cpu", precision="fp32")
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, precision="fp32")
    server = Server(config, translator).start()
    assert server.wait_ready(120), server.load_error
    yield server
    server.stop(grace=0)
    torch.set_num_threads(threads)


@contextlib.contextmanager
def event_loop_thread():
    """An event loop running in a thread of its own; yields run(coroutine) -> its result, to call from this thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="event-loop", daemon=True)
    thread.start()
    try:
        yield lambda coroutine: asyncio.run_coroutine_threadsafe(coroutine, loop).result(120)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def serve_gateway(run, *targets: str):
    """The aiohttp gateway in front of the gRPC servers `targets`, on a free port, in `run`'s loop: its base URL."""
    from aiohttp import web
    from seq2seq_client.web.app import WebConfig, make_app

    async def start() -> web.AppRunner:
        app = make_app(WebConfig(server=targets, host="127.0.0.1", port=0, timeout=120))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = run(start())
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        run(runner.cleanup())


@contextlib.contextmanager
def serve_fake(run, fake):
    """A fake Translator of test_web's kind (grpc.aio), health SERVING, on a free port in `run`'s loop: HOST:PORT."""
    async def start():
        server = grpc.aio.server()
        pb_grpc.add_TranslatorServicer_to_server(fake, server)
        health = grpc_health.aio.HealthServicer()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = run(start())
    try:
        yield f"127.0.0.1:{port}"
    finally:
        run(server.stop(0))


@pytest.fixture(scope="module")
def gateway(grpc_server) -> str:
    """The aiohttp gateway on a free port, its event loop in a thread of its own; yields its base URL."""
    with event_loop_thread() as run, serve_gateway(run, f"127.0.0.1:{grpc_server.port}") as url:
        yield url


class GlossaryFake(FakeTranslator):
    """test_web's fake with sentences and terms: each sentence ("." "!" "?" end one) becomes "en:" + itself with each
    glossary term's French (any case) replaced by its English, the sentences joined by a space. A glossary that
    seq2seq_api.glossary.check refuses is INVALID_ARGUMENT with its message, as from the real server."""

    @staticmethod
    def result(text: str, terms: glossary.Glossary) -> pb.TextResult:
        sentences = []
        for source in (s.strip() for s in re.findall(r"[^.!?]+[.!?]*", text) if s.strip()):
            english = source
            for fr, en in terms:
                english = re.sub(re.escape(fr), lambda m: en, english, flags=re.IGNORECASE)
            sentences.append(pb.SentenceResult(source=source, hypotheses=[pb.Hypothesis(text=f"en:{english}")]))
        return pb.TextResult(text=" ".join(s.hypotheses[0].text for s in sentences), sentences=sentences)

    async def results(self, request, context) -> list[pb.TextResult]:
        await self._enter(request, context)
        try:
            terms = glossary.check([(t.source, t.target) for t in request.options.glossary])
        except glossary.GlossaryError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return [self.result(text, terms) for text in request.texts]

    async def Translate(self, request, context):
        return pb.TranslateResponse(results=await self.results(request, context))

    async def TranslateStream(self, request, context):
        for i, result in enumerate(await self.results(request, context)):
            yield pb.TranslateStreamResponse(index=i, result=result)


@pytest.fixture(scope="module")
def fake_gateway():
    """The gateway in front of a GlossaryFake: (its base URL, the fake, which records the requests)."""
    fake = GlossaryFake()
    with event_loop_thread() as run, serve_fake(run, fake) as target, serve_gateway(run, target) as url:
        yield url, fake


@pytest.fixture(scope="module")
def expected(grpc_server) -> dict:
    """What the gRPC API answers for TEXT with OPTIONS (the page's request), as the gateway's JSON."""
    from seq2seq_client import TranslatorClient

    with TranslatorClient(f"127.0.0.1:{grpc_server.port}", timeout=120) as client:
        reply = client.translate([TEXT], OPTIONS, return_scores=True, return_attention=True, split_sentences=True)
    return json_format.MessageToDict(reply, preserving_proto_field_name=True)["results"][0]


# ---- driving the page ------------------------------------------------------------------------------------------------

def open_page(browser, gateway: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1200, 1500)
    browser.get(gateway + "/")
    WebDriverWait(browser, 30).until(lambda b: state(b) != "loading")
    assert state(browser) == "ready", browser.find_element("id", "error").text


def state(browser) -> str:
    return browser.find_element("tag name", "body").get_attribute("data-state")


def set_option(browser, name: str, value: str) -> None:
    field = browser.find_element("id", f"option-{name}")
    field.clear()
    field.send_keys(value)


def translate(browser, text: str) -> str:
    """Type `text`, press Ctrl+Enter, wait for the reply; the page's state after it ("done" or "error")."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    source = browser.find_element("id", "source")
    source.clear()
    source.send_keys(text)
    source.send_keys(Keys.CONTROL, Keys.ENTER)
    WebDriverWait(browser, 120).until(lambda b: state(b) in ("done", "error"))
    return state(browser)


def rows_of(flat: list[float], n_cols: int) -> list[list[float]]:
    return [flat[i:i + n_cols] for i in range(0, len(flat), n_cols)]


def head_map(attention: dict, kind: str, layer: int, head: int) -> list[float]:
    """One map's weights from the JSON (MessageToDict leaves out layer 0 and head 0)."""
    [m] = [m for m in attention[kind] if m.get("layer", 0) == layer and m.get("head", 0) == head]
    return m["weights"]


# ---- the page in headless Chromium -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_page_translates_lists_the_n_best_and_its_viewer_follows_hover_focus_and_head(browser, gateway, expected):
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    open_page(browser, gateway)
    for name, value in OPTIONS.items():
        set_option(browser, name, str(value))

    # 1. The translation is the gRPC API's for the same options: non-empty English, announced (aria-live).
    assert translate(browser, TEXT) == "done", browser.find_element(By.ID, "error").text
    shown = browser.find_element(By.ID, "translation")
    assert shown.text == expected["text"] and len(shown.text.split()) >= 6 and shown.text.isascii()
    assert shown.get_attribute("aria-live") == "polite" and browser.find_element(By.ID, "error").is_displayed() is False

    # 2. The n-best of the first sentence, best first, with their scores; the sentence picker offers both sentences.
    first = expected["sentences"][0]
    items = browser.find_elements(By.CSS_SELECTOR, "#hypotheses .hypothesis")
    assert [i.find_element(By.CLASS_NAME, "hypothesis-text").text for i in items] == \
        [h["text"] for h in first["hypotheses"]] and len(items) == 3
    assert [i.find_element(By.CLASS_NAME, "score").text for i in items] == \
        [f"score {h['score']:.3f}" for h in first["hypotheses"]]
    assert items[0].get_attribute("aria-pressed") == "true"
    assert [o.text for o in Select(browser.find_element(By.ID, "sentence")).options] == \
        [f"{i + 1}. {s['source']}" for i, s in enumerate(expected["sentences"])]

    # 3. Hovering two target tokens lights up the source tokens by their own cross_average rows, which differ.
    attention = first["hypotheses"][0]["attention"]
    n_src, n_tgt = len(attention["source_tokens"]), len(attention["target_tokens"])
    rows = rows_of(attention["cross_average"]["weights"], n_src)
    keys = lambda: alphas(browser.find_elements(By.CSS_SELECTOR, ".av-keys .av-tok"))
    query = lambda i: browser.find_element(By.CSS_SELECTOR, f'.av-queries .av-tok[data-q="{i}"]')
    other = next(i for i in range(1, n_tgt) if rows[i].index(max(rows[i])) != rows[0].index(max(rows[0])))
    assert [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".av-queries .av-tok")] == attention["target_tokens"]
    assert keys() == [0.0] * n_src
    lit = {}
    for i in (0, other):
        ActionChains(browser).move_to_element(query(i)).perform()
        lit[i] = keys()
        assert lit[i] == pytest.approx(rows[i], abs=ALPHA)
    assert lit[0].index(max(lit[0])) != lit[other].index(max(lit[other]))
    png = browser.get_screenshot_as_png()
    if os.environ.get("SEQ2SEQ_SCREENSHOT"):  # README's picture: SEQ2SEQ_SCREENSHOT=docs/web-page.png pytest -k page
        Path(os.environ["SEQ2SEQ_SCREENSHOT"]).write_bytes(png)

    # 4. The keyboard does what the mouse does: focus lights up a token's row, the arrow keys move along.
    query(0).send_keys(Keys.ARROW_RIGHT)
    assert browser.execute_script("return document.activeElement.dataset.q") == "1"
    assert keys() == pytest.approx(rows[1], abs=ALPHA)
    assert "attends to" in browser.find_element(By.CSS_SELECTOR, ".av-readout").text

    # 5. The head picker changes the map on screen: each head's cells are that head's weights (last layer).
    last = max(m.get("layer", 0) for m in attention["cross"])
    cells = lambda: alphas(browser.find_elements(By.CSS_SELECTOR, ".av-matrix tbody td"))
    by_head = {}
    for head in (0, 1):
        Select(browser.find_element(By.CSS_SELECTOR, ".av-head")).select_by_value(str(head))
        by_head[head] = cells()
        assert by_head[head] == pytest.approx(head_map(attention, "cross", last, head), abs=ALPHA)
    assert max(abs(a - b) for a, b in zip(by_head[0], by_head[1])) > 0.05

    # 6. The decoder self-attention shows its causal mask: T(T-1)/2 hatched cells.
    Select(browser.find_element(By.CSS_SELECTOR, ".av-kind")).select_by_value("decoder_self")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".av-matrix td.masked")) == n_tgt * (n_tgt - 1) // 2

    # 7. The second sentence: its own hypotheses and attention.
    Select(browser.find_element(By.ID, "sentence")).select_by_value("1")
    second = expected["sentences"][1]["hypotheses"]
    assert browser.find_element(By.CSS_SELECTOR, "#hypotheses .hypothesis-text").text == second[0]["text"]
    assert [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".av-queries .av-tok")] == \
        second[0]["attention"]["target_tokens"]

    # 8. The screenshot of step 3 is a picture, not a blank; nothing came from elsewhere; no script failed.
    with Image.open(io.BytesIO(png)) as image:
        assert len(png) > 30_000 and len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ()) > 50
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert fetched and all(url.startswith(gateway + "/") for url in fetched), fetched
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.slow
def test_page_shows_api_errors_and_translates_as_you_type(browser, gateway):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, gateway)
    set_option(browser, "beam_size", "0")
    assert translate(browser, "Bonjour.") == "error"
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and error.get_attribute("role") == "alert"
    assert error.text == "INVALID_ARGUMENT: beam_size must be >= 1, got 0"

    set_option(browser, "beam_size", "2")
    assert translate(browser, "Bonjour.") == "done" and not error.is_displayed()
    assert browser.find_element(By.ID, "translation").text

    browser.find_element(By.ID, "source").clear()
    browser.find_element(By.ID, "translate").click()
    assert error.is_displayed() and "type some French text" in error.text

    # translate as you type: no key to press
    browser.find_element(By.ID, "live").click()
    browser.find_element(By.ID, "source").send_keys("Merci beaucoup.")
    WebDriverWait(browser, 120).until(lambda b: state(b) == "done")
    assert browser.find_element(By.ID, "translation").text and not error.is_displayed()


# ---- the glossary's table, against the GlossaryFake ------------------------------------------------------------------

def fill_term(browser, row: int, french: str, english: str) -> None:
    """Types the terms into row `row` (1-based) of the glossary's table, replacing what was there."""
    from selenium.webdriver.common.by import By

    cells = browser.find_elements(By.CSS_SELECTOR, "#glossary-rows tr")[row - 1].find_elements(By.TAG_NAME, "input")
    for cell, term in zip(cells, (french, english)):
        cell.clear()
        cell.send_keys(term)


def sent_terms(request) -> list[tuple[str, str]]:
    return [(t.source, t.target) for t in request.options.glossary]


@pytest.mark.slow
def test_the_page_sends_its_glossary_and_marks_the_english_terms_used(browser, fake_gateway):
    from selenium.webdriver.common.by import By

    url, fake = fake_gateway
    browser.get_log("browser")  # drained: the log holds what earlier tests of the module left (their 400s)
    open_page(browser, url)
    rows = lambda: browser.find_elements(By.CSS_SELECTOR, "#glossary-rows tr")
    # 1. Three empty rows to start, each input with a label; the glossary is the table, not a generated option.
    assert len(rows()) == 3 and browser.find_elements(By.ID, "option-glossary") == []
    inputs = browser.find_elements(By.CSS_SELECTOR, "#glossary-rows input")
    labels = browser.find_elements(By.CSS_SELECTOR, "#glossary-rows label")
    assert [i.get_attribute("value") for i in inputs] == [""] * 6
    assert [label.get_attribute("textContent") for label in labels] == \
        ["French term 1", "English term 1", "French term 2", "English term 2", "French term 3", "English term 3"]
    assert [label.get_attribute("for") for label in labels] == [i.get_attribute("id") for i in inputs]

    # 2. Rows added and removed; the row with one term only is named in the hint and not sent.
    fill_term(browser, 1, "carte mère", "motherboard")
    fill_term(browser, 2, "clavier", "keyboard")
    fill_term(browser, 3, "souris", "")
    for row, terms in ((4, ("  écran ", "screen")), (5, ("gras", "<b>bold</b>"))):
        browser.find_element(By.ID, "add-term").click()
        fill_term(browser, row, *terms)
    rows()[1].find_element(By.CLASS_NAME, "remove-term").click()  # clavier goes: souris is row 2 now
    assert len(rows()) == 4
    assert rows()[1].find_element(By.TAG_NAME, "label").get_attribute("textContent") == "French term 2"
    assert browser.find_element(By.ID, "glossary-hint").text == \
        "Row 2 is not sent: it needs both a French and an English term."

    # 3. The complete rows go out as options.glossary, trimmed; the English comes back with the terms used marked: in
    #    the first sentence "motherboard" (its French holds "carte mère"), in the second "screen" and "<b>bold</b>"
    #    but not "motherboard" (no "carte mère" in its French). The markup of a term is text, never parsed.
    assert translate(browser, "La carte mère est neuve. Le motherboard et l'écran gras.") == "done"
    assert sent_terms(fake.requests[-1]) == [("carte mère", "motherboard"), ("écran", "screen"),
                                             ("gras", "<b>bold</b>")]
    shown = browser.find_element(By.ID, "translation")
    assert shown.text == "en:La motherboard est neuve. en:Le motherboard et l'screen <b>bold</b>."
    marks = shown.find_elements(By.TAG_NAME, "mark")
    assert [m.text for m in marks] == ["motherboard", "screen", "<b>bold</b>"]
    assert marks[0].get_attribute("title") == "Glossary: carte mère → motherboard"
    assert shown.find_elements(By.TAG_NAME, "b") == []

    # 4. No complete row: no glossary in the request, nothing marked.
    for row in (1, 3, 4):
        fill_term(browser, row, "", "")
    assert translate(browser, "La carte mère.") == "done"
    assert sent_terms(fake.requests[-1]) == [] and shown.find_elements(By.TAG_NAME, "mark") == []
    assert shown.text == "en:La carte mère."
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.slow
def test_the_page_shows_why_a_glossary_is_refused(browser, fake_gateway):
    from selenium.webdriver.common.by import By

    url, fake = fake_gateway
    open_page(browser, url)
    fill_term(browser, 1, "carte mère", "motherboard")
    fill_term(browser, 2, "Carte  Mère", "mainboard")
    assert translate(browser, "La carte mère.") == "error"
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and error.text == ("INVALID_ARGUMENT: glossary entry 1: the French term 'Carte Mère' "
                                                   "has two English terms, 'motherboard' and 'mainboard'")
    fill_term(browser, 2, "", "")
    assert translate(browser, "La carte mère.") == "done" and not error.is_displayed()
    assert [m.text for m in browser.find_elements(By.CSS_SELECTOR, "#translation mark")] == ["motherboard"]


@pytest.mark.slow
def test_the_page_sends_its_glossary_with_a_file(browser, fake_gateway, tmp_path):
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, fake = fake_gateway
    open_page(browser, url)
    body = browser.find_element(By.TAG_NAME, "body")

    def upload(path: Path) -> str:
        browser.find_element(By.ID, "file").send_keys(str(path))
        browser.find_element(By.ID, "translate-file").click()
        WebDriverWait(browser, 60).until(lambda b: body.get_attribute("data-file-state") in ("done", "error"))
        return body.get_attribute("data-file-state")

    fill_term(browser, 1, "carte mère", "motherboard")
    fill_term(browser, 2, "souris", "")
    (tmp_path / "notes.txt").write_text("La carte mère.\nUn écran.\n", encoding="utf-8")
    before = len(fake.requests)
    assert upload(tmp_path / "notes.txt") == "done", browser.find_element(By.ID, "file-status").text
    sent = fake.requests[before:]  # the server's max_texts is 2: one TranslateStream
    assert [(list(r.texts), sent_terms(r)) for r in sent] == \
        [(["La carte mère.", "Un écran."], [("carte mère", "motherboard")])]
    with urllib.request.urlopen(browser.find_element(By.ID, "file-download").get_attribute("href")) as r:
        assert r.read().decode() == "en:La motherboard.\nen:Un écran.\n"

    # a glossary the gateway refuses: its reason in the file's status, and no request
    fill_term(browser, 2, "Carte mère", "mainboard")
    before = len(fake.requests)
    assert upload(tmp_path / "notes.txt") == "error"
    assert browser.find_element(By.ID, "file-status").text == ("Invalid request: glossary entry 1: the French term "
                                                               "'Carte mère' has two English terms, 'motherboard' "
                                                               "and 'mainboard'")
    assert len(fake.requests) == before
