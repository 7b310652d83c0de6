"""The web page of `seq2seq-web` (seq2seq_client/web/static) in headless Chromium, against the real gateway and a real
gRPC server with the shipped model: typing French gives the English the gRPC API gives, with its n-best and scores;
the attention viewer follows hover, focus, sentence and head; API errors show up in the page; and the page fetches
nothing from outside the gateway.

The browser tests skip when Chromium is missing (scripts/install_chromium.sh) or the shipped model is.
"""
from __future__ import annotations

import asyncio
import io
import os
import re
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
from google.protobuf import json_format

from conftest import alphas

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


@pytest.fixture(scope="module")
def gateway(grpc_server) -> str:
    """The aiohttp gateway on a free port, its event loop in a thread of its own; yields its base URL."""
    from aiohttp import web
    from seq2seq_client.web.app import WebConfig, make_app

    loop = asyncio.new_event_loop()
    app = make_app(WebConfig(server=(f"127.0.0.1:{grpc_server.port}",), host="127.0.0.1", port=0, timeout=120))
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, name="gateway", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.run_until_complete(runner.cleanup())
    loop.close()


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
