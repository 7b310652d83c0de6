"""seq2seq-web, the HTTP gateway: LibreTranslate's API, our JSON API, the page, health, metrics and the CLI.

Most tests run fake gRPC Translator servers (grpc.aio, in the test's own event loop, with a health service) behind
the gateway, so that results, metadata and error codes are known exactly; one goes through the real server with the
shipped model. Each async test runs in its own loop through `in_loop` (no pytest plugin).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf.json_format import MessageToDict, ParseDict
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from seq2seq_api.decoding import DecodeConfig
from seq2seq_api.translation.v1 import translator_pb2 as pb
from seq2seq_api.translation.v1 import translator_pb2_grpc as pb_grpc
from seq2seq_client.web import app as web_app
from seq2seq_client.web.app import WebConfig, make_app, parse_args
from seq2seq_client.web import libretranslate
from seq2seq_client.web.libretranslate import MAX_ALTERNATIVES, alternatives_of

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "fr-en-small"
Code = grpc.StatusCode
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def in_loop(test):
    """Runs an async test function in a fresh event loop."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))
    return run


def hypotheses(text: str, n: int) -> list[pb.Hypothesis]:
    """The fake translation: "x" -> "en:x"; the i-th alternative (i >= 1) is "en<i>:x"."""
    return [pb.Hypothesis(text=f"en{i or ''}:{text}", score=-0.5 * (i + 1)) for i in range(n)]


class FakeTranslator(pb_grpc.TranslatorServicer):
    """Records each Translate request and its x-api-key (GetModelInfo: a count); answers with `hypotheses`, or aborts
    with `error` = (code, message); `delay` seconds before answering."""

    def __init__(self, name: str = "a", error: tuple[Code, str] | None = None, delay: float = 0.0):
        self.name, self.error, self.delay = name, error, delay
        self.requests: list = []
        self.keys: list[str | None] = []
        self.infos = 0

    async def _enter(self, request, context) -> None:
        if isinstance(request, pb.GetModelInfoRequest):
            self.infos += 1
        else:
            self.requests.append(request)
            self.keys.append(dict(context.invocation_metadata()).get("x-api-key"))
        await asyncio.sleep(self.delay)
        if self.error:
            await context.abort(*self.error)

    async def Translate(self, request, context):
        await self._enter(request, context)
        n = request.options.n_best if request.options.HasField("n_best") else 1
        return pb.TranslateResponse(results=[
            pb.TextResult(text=f"en:{t}", sentences=[pb.SentenceResult(source=t, hypotheses=hypotheses(t, n))])
            for t in request.texts])

    async def GetModelInfo(self, request, context):
        await self._enter(request, context)
        return pb.ModelInfo(name=self.name, source_language="fr", target_language="en", vocab_size=8000,
                            limits=pb.ServerLimits(max_texts=2, max_chars=5000))


@dataclasses.dataclass
class Rig:
    client: TestClient
    fakes: list[FakeTranslator]
    healths: list
    targets: list[str]


@contextlib.asynccontextmanager
async def gateway(*fakes: FakeTranslator, statuses=None, **config):
    """Fake gRPC servers (one per fake, with the health status given, default SERVING), the gateway in front."""
    fakes = fakes or (FakeTranslator(),)
    servers, healths, targets = [], [], []
    for fake, status in zip(fakes, statuses or [SERVING] * len(fakes)):
        server = grpc.aio.server()
        pb_grpc.add_TranslatorServicer_to_server(fake, server)
        health = grpc_health.aio.HealthServicer()
        await health.set("", status)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        targets.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        await server.start()
        servers.append(server)
        healths.append(health)
    app = make_app(WebConfig(server=tuple(config.pop("server", targets)), **config), health_ttl=0)
    try:
        async with TestClient(TestServer(app)) as client:
            yield Rig(client, list(fakes), healths, targets)
    finally:
        await asyncio.gather(*(s.stop(0) for s in servers))


async def post(rig: Rig, path: str, **kwargs) -> tuple[int, object]:
    async with rig.client.post(path, **kwargs) as r:
        return r.status, await r.json()


async def get(rig: Rig, path: str) -> tuple[int, object]:
    async with rig.client.get(path) as r:
        return r.status, await r.json()


def form_body(encoding: str, fields: list[tuple[str, str]]):
    """The fields as application/x-www-form-urlencoded or as multipart/form-data."""
    return aiohttp.FormData(fields, default_to_multipart=encoding == "multipart")


# ---- LibreTranslate: /translate ---------------------------------------------------------------------------------

@in_loop
async def test_translate_json_string_and_list():
    async with gateway() as rig:
        assert await post(rig, "/translate", json={"q": "Bonjour.", "source": "fr", "target": "en"}) == \
            (200, {"translatedText": "en:Bonjour."})
        assert await post(rig, "/translate", json={"q": ["Un.", "Deux."], "source": "fr", "target": "en",
                                                   "format": "text"}) == (200, {"translatedText": ["en:Un.", "en:Deux."]})
        assert [list(r.texts) for r in rig.fakes[0].requests] == [["Bonjour."], ["Un.", "Deux."]]
        assert not rig.fakes[0].requests[0].options.HasField("n_best")  # no alternatives: the server's defaults


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
@in_loop
async def test_translate_form_bodies(encoding):
    async with gateway() as rig:
        one = form_body(encoding, [("q", "Salut.\r\nÇa va ?"), ("source", "fr"), ("target", "en")])
        assert await post(rig, "/translate", data=one) == (200, {"translatedText": "en:Salut.\nÇa va ?"})
        many = form_body(encoding, [("q", "Un."), ("q", "Deux."), ("source", "fr"), ("target", "en")])
        assert await post(rig, "/translate", data=many) == (200, {"translatedText": ["en:Un.", "en:Deux."]})
        alternatives = form_body(encoding, [("q", "Un."), ("source", "fr"), ("target", "en"), ("alternatives", "1")])
        assert await post(rig, "/translate", data=alternatives) == \
            (200, {"translatedText": "en:Un.", "alternatives": ["en1:Un."]})


@in_loop
async def test_translate_and_detect_read_the_query_string_as_libretranslate_does():
    """LibreTranslate reads Flask's request.values: the query string and the form, the query string first; a JSON
    body alone (its query string is not read). Clients that POST /translate?q=... with an empty body get answers."""
    async with gateway() as rig:
        assert await post(rig, "/translate?q=Bonjour.&source=fr&target=en") == (200, {"translatedText": "en:Bonjour."})
        assert await post(rig, "/translate?q=Un.&q=Deux.&source=fr&target=en") == \
            (200, {"translatedText": ["en:Un.", "en:Deux."]})
        assert await post(rig, "/detect?q=Bonjour.") == (200, [{"confidence": 100.0, "language": "fr"}])
        # the form gives source and target, the query string q; where both give q, the query string's
        mixed = form_body("urlencoded", [("q", "Du formulaire."), ("source", "fr"), ("target", "en")])
        assert await post(rig, "/translate?q=De%20la%20requ%C3%AAte.", data=mixed) == \
            (200, {"translatedText": "en:De la requête."})
        assert await post(rig, "/translate?target=en", data=form_body("multipart", [("q", "A."), ("source", "fr")])) \
            == (200, {"translatedText": "en:A."})
        # with a JSON body, only the body counts
        status, reply = await post(rig, "/translate?target=en", json={"q": "A.", "source": "fr"})
        assert (status, reply) == (400, {"error": "Invalid request: missing target parameter"})
        assert [list(r.texts) for r in rig.fakes[0].requests] == \
            [["Bonjour."], ["Un.", "Deux."], ["De la requête."], ["A."]]


@in_loop
async def test_alternatives_ask_for_n_best_and_a_beam_that_holds_them():
    async with gateway() as rig:
        body = {"q": "Un chat.", "source": "fr", "target": "en", "alternatives": 2}
        assert await post(rig, "/translate", json=body) == \
            (200, {"translatedText": "en:Un chat.", "alternatives": ["en1:Un chat.", "en2:Un chat."]})
        body = {"q": ["A.", "B."], "source": "fr", "target": "en", "alternatives": "5"}
        status, reply = await post(rig, "/translate", json=body)
        assert status == 200
        assert reply["alternatives"] == [[f"en{i}:A." for i in range(1, 6)], [f"en{i}:B." for i in range(1, 6)]]
        options = [r.options for r in rig.fakes[0].requests]
        assert [(o.n_best, o.beam_size) for o in options] == [(3, DecodeConfig().beam_size), (6, 6)]


def test_alternatives_keep_each_sentence_in_place():
    """Two sentences on two lines: the i-th alternative swaps every sentence's best for its i-th (or best)."""
    result = pb.TextResult(text="A dog.\nA cat runs.", sentences=[
        pb.SentenceResult(hypotheses=[pb.Hypothesis(text="A dog."), pb.Hypothesis(text="One dog.")]),
        pb.SentenceResult(hypotheses=[pb.Hypothesis(text="A cat runs."), pb.Hypothesis(text="A cat is running."),
                                      pb.Hypothesis(text="The cat runs.")])])
    assert alternatives_of(result, 2) == ["One dog.\nA cat is running.", "A dog.\nThe cat runs."]
    assert alternatives_of(result, 0) == []


@in_loop
async def test_source_auto_reports_french_as_libretranslate_does():
    async with gateway() as rig:
        assert await post(rig, "/translate", json={"q": "Oui.", "source": "auto", "target": "en"}) == \
            (200, {"translatedText": "en:Oui.", "detectedLanguage": {"confidence": 100.0, "language": "fr"}})
        status, reply = await post(rig, "/translate", json={"q": ["Oui.", "Non."], "source": "auto", "target": "en"})
        assert status == 200
        assert reply["detectedLanguage"] == [{"confidence": 100.0, "language": "fr"}] * 2


@pytest.mark.parametrize("body, message", [
    ({"q": "x", "source": "de", "target": "en"}, "de is not supported"),
    ({"q": "x", "source": "fr", "target": "de"}, "de is not supported"),
    ({"q": "x", "source": "fr", "target": "fr"}, "French (fr) is not available as a target language from French (fr)"),
    ({"q": "x", "source": "en", "target": "en"},
     "English (en) is not available as a target language from English (en)"),
    ({"q": "x", "source": "auto", "target": "auto"}, "auto is not supported"),
    ({"source": "fr", "target": "en"}, "Invalid request: missing q parameter"),
    ({"q": "x", "target": "en"}, "Invalid request: missing source parameter"),
    ({"q": "x", "source": "fr"}, "Invalid request: missing target parameter"),
    ({"q": [1, 2], "source": "fr", "target": "en"}, "Invalid request: q must be a string or a list of strings"),
    ({"q": "x", "source": "fr", "target": "en", "format": "xml"}, "xml format is not supported"),
    ({"q": "x", "source": "fr", "target": "en", "alternatives": "two"},
     "Invalid request: alternatives parameter is not a number"),
])
@in_loop
async def test_bad_translate_requests_get_libretranslates_400(body, message):
    async with gateway() as rig:
        assert await post(rig, "/translate", json=body) == (400, {"error": message})
        assert rig.fakes[0].requests == []


@in_loop
async def test_a_long_list_goes_in_requests_of_max_texts_and_blank_texts_come_back_empty():
    async with gateway() as rig:  # the fake server's max_texts is 2
        q = ["Un.", " ", "Deux.", "Trois.", "", "Quatre.", "Cinq."]
        assert await post(rig, "/translate", json={"q": q, "source": "fr", "target": "en"}) == \
            (200, {"translatedText": ["en:Un.", "", "en:Deux.", "en:Trois.", "", "en:Quatre.", "en:Cinq."]})
        assert sorted(list(r.texts) for r in rig.fakes[0].requests) == [["Cinq."], ["Trois.", "Quatre."], ["Un.", "Deux."]]
        assert await post(rig, "/translate", json={"q": "  ", "source": "fr", "target": "en"}) == \
            (200, {"translatedText": ""})


@pytest.mark.parametrize("data, content_type, message", [
    (b'{"q": "a\\ud800b", "source": "fr", "target": "en"}', "application/json",
     "Invalid request: q is not valid Unicode text"),
    (b'{"q": "a", "source": "fr", "target": "en", "alternatives": 1e400}', "application/json",
     "Invalid request: alternatives parameter is not a number"),
    (b"q=\xff&source=fr&target=en", "application/x-www-form-urlencoded", "Invalid form data: "),
    (b"q=a&source=fr&target=en", "application/x-www-form-urlencoded; charset=no-such-charset", "Invalid form data: "),
])
@in_loop
async def test_bodies_that_are_not_text_are_a_400_not_a_500(data, content_type, message):
    async with gateway() as rig:
        status, reply = await post(rig, "/translate", data=data, headers={"Content-Type": content_type})
        assert status == 400 and reply["error"].startswith(message), reply
        assert rig.fakes[0].requests == []


@in_loop
async def test_a_huge_alternatives_reaches_the_server_as_its_limit_and_gets_its_400():
    refusing = FakeTranslator(error=(Code.INVALID_ARGUMENT, "n_best must be at most 16"))
    async with gateway(refusing) as rig:
        body = {"q": "a", "source": "fr", "target": "en", "alternatives": 5_000_000_000}
        assert await post(rig, "/translate", json=body) == (400, {"error": "n_best must be at most 16"})
        assert rig.fakes[0].requests[0].options.n_best == MAX_ALTERNATIVES + 1


@in_loop
async def test_a_body_that_is_not_a_json_object_is_a_400():
    async with gateway() as rig:
        headers = {"Content-Type": "application/json"}
        assert await post(rig, "/translate", data=b"{not json", headers=headers) == \
            (400, {"error": "Invalid JSON format"})
        assert await post(rig, "/translate", json=["q"]) == (400, {"error": "Invalid JSON format"})


@in_loop
async def test_api_key_goes_to_the_grpc_server_as_x_api_key():
    async with gateway(api_key="gateway-key") as rig:
        await post(rig, "/translate", json={"q": "a", "source": "fr", "target": "en", "api_key": "k1"})
        await post(rig, "/translate", data={"q": "a", "source": "fr", "target": "en", "api_key": "k2"})
        await post(rig, "/translate", json={"q": "a", "source": "fr", "target": "en"})
        await post(rig, "/api/v1/translate", json={"texts": ["a"]}, headers={"X-API-Key": "k3"})
        assert rig.fakes[0].keys == ["k1", "k2", "gateway-key", "k3"]
    async with gateway() as rig:  # no key anywhere: no metadata
        await post(rig, "/translate", json={"q": "a", "source": "fr", "target": "en"})
        assert rig.fakes[0].keys == [None]


ERRORS = [  # gRPC code, the server's message -> HTTP status, LibreTranslate's error, our API's error
    (Code.INVALID_ARGUMENT, "text 0 is empty", 400, "text 0 is empty", "text 0 is empty"),
    (Code.UNAUTHENTICATED, "invalid API key", 403, "Invalid API key",
     "a valid API key is required: send it in the X-API-Key header"),
    (Code.RESOURCE_EXHAUSTED, "the queue is full", 429, "Slowdown: the queue is full", "the queue is full"),
    (Code.DEADLINE_EXCEEDED, "deadline", 504, *["the translation took longer than the gateway's timeout"] * 2),
    (Code.UNAVAILABLE, "connect to 10.0.0.7 failed", 503, *["no translation server is available; retry later"] * 2),
    (Code.INTERNAL, "internal error 0123456789ab: the server logged it", 500,
     *["internal error 0123456789ab: the translation server logged it"] * 2),
    (Code.UNKNOWN, "Traceback: /srv/secret.py line 3", 500, "internal error", "internal error"),
]


@pytest.mark.parametrize("code, details, status, libre_message, api_message", ERRORS)
@in_loop
async def test_grpc_errors_become_http_statuses(code, details, status, libre_message, api_message):
    async with gateway(FakeTranslator(error=(code, details))) as rig:
        assert await post(rig, "/translate", json={"q": "a", "source": "fr", "target": "en"}) == \
            (status, {"error": libre_message})
        assert await post(rig, "/api/v1/translate", json={"texts": ["a"]}) == \
            (status, {"error": api_message, "code": code.name})


@in_loop
async def test_a_slow_server_is_a_504_after_the_timeout():
    async with gateway(FakeTranslator(delay=2.0), timeout=0.2) as rig:
        status, body = await post(rig, "/translate", json={"q": "a", "source": "fr", "target": "en"})
        assert (status, body) == (504, {"error": "the translation took longer than the gateway's timeout"})


@in_loop
async def test_html_format_translates_segments_with_attention(monkeypatch):
    """html_format.HtmlTranslation's interface, with a fake: .texts to translate, render(results as dicts)."""
    rendered = []

    class FakeHtml:
        def __init__(self, html: str):
            self.texts = [t for t in html.replace("</p>", "").split("<p>") if t]

        def render(self, results: list[dict]) -> str:
            rendered.append(results)
            return "".join(f"<p>{r['text']}</p>" for r in results)

    monkeypatch.setattr(libretranslate, "HtmlTranslation", FakeHtml)
    async with gateway() as rig:
        body = {"q": ["<p>Un.</p><p>Deux.</p><p>Trois.</p>", "<p></p>"], "source": "fr", "target": "en",
                "format": "html", "alternatives": 1}
        assert await post(rig, "/translate", json=body) == \
            (200, {"translatedText": ["<p>en:Un.</p><p>en:Deux.</p><p>en:Trois.</p>", ""], "alternatives": [[], []]})
        translates = [r for r in rig.fakes[0].requests if isinstance(r, pb.TranslateRequest)]
        assert sorted(list(r.texts) for r in translates) == [["Trois."], ["Un.", "Deux."]]  # max_texts is 2
        assert all(r.return_attention for r in translates)
        assert rendered[0][0] == {"text": "en:Un.", "sentences": [
            {"source": "Un.", "hypotheses": [{"text": "en:Un.", "score": -0.5}]}]}
        # ... and of at most CHARS_PER_REQUEST characters: attention maps are bounded per request (issue 25)
        monkeypatch.setattr(libretranslate, "CHARS_PER_REQUEST", 7)
        rig.fakes[0].requests.clear()
        assert (await post(rig, "/translate", json=body))[1]["translatedText"][0] == \
            "<p>en:Un.</p><p>en:Deux.</p><p>en:Trois.</p>"
        translates = [r for r in rig.fakes[0].requests if isinstance(r, pb.TranslateRequest)]
        assert sorted(list(r.texts) for r in translates) == [["Deux."], ["Trois."], ["Un."]]  # 3 + 5 > 7


# ---- LibreTranslate: the other endpoints --------------------------------------------------------------------------

@in_loop
async def test_languages_detect_and_frontend_settings():
    async with gateway() as rig:
        assert await get(rig, "/languages") == (200, [{"code": "en", "name": "English", "targets": []},
                                                      {"code": "fr", "name": "French", "targets": ["en"]}])
        french = [{"confidence": 100.0, "language": "fr"}]
        assert await post(rig, "/detect", json={"q": "Bonjour"}) == (200, french)
        assert await post(rig, "/detect", data={"q": "Bonjour"}) == (200, french)
        assert await post(rig, "/detect", data=form_body("multipart", [("q", "Bonjour")])) == (200, french)
        assert await post(rig, "/detect", json={}) == (400, {"error": "Invalid request: missing q parameter"})
        assert await get(rig, "/frontend/settings") == (200, {
            "charLimit": 5000, "frontendTimeout": 500, "apiKeys": False, "keyRequired": False, "suggestions": False,
            "filesTranslation": True, "supportedFilesFormat": [".txt", ".html", ".docx"],
            "language": {"source": {"code": "fr", "name": "French"}, "target": {"code": "en", "name": "English"}}})
    async with gateway(FakeTranslator(error=(Code.UNAUTHENTICATED, "missing API key"))) as rig:
        status, settings = await get(rig, "/frontend/settings")
        assert (status, settings["charLimit"], settings["apiKeys"], settings["keyRequired"]) == (200, -1, True, True)


# ---- our JSON API -----------------------------------------------------------------------------------------------

@in_loop
async def test_json_api_round_trips_the_request_and_the_response():
    body = {"texts": ["Salut.", "Merci."], "split_sentences": False, "return_scores": True,
            "options": {"beam_size": 5, "length_penalty": 0.5, "n_best": 2, "sample": False, "seed": "7",
                        "top_p": 0.75}}
    async with gateway() as rig:
        status, reply = await post(rig, "/api/v1/translate", json=body)
        assert status == 200
        assert MessageToDict(rig.fakes[0].requests[0], preserving_proto_field_name=True) == body
        expected = await FakeTranslator().Translate(ParseDict(body, pb.TranslateRequest()), FakeContext())
        assert reply == MessageToDict(expected, preserving_proto_field_name=True)
        assert reply["results"][1]["sentences"][0]["hypotheses"][1] == {"text": "en1:Merci.", "score": -1.0}


class FakeContext:
    def invocation_metadata(self):
        return ()


@pytest.mark.parametrize("body, fragment", [
    ({"texts": ["a"], "nope": 1}, "nope"),
    ({"texts": ["a"], "options": {"beam_size": "wide"}}, "beam_size"),
    ({"texts": ["a"], "options": {"bogus_option": 1}}, "bogus_option"),
    (["a"], "JSON object"),
])
@in_loop
async def test_json_api_bad_field_is_a_400(body, fragment):
    async with gateway() as rig:
        status, reply = await post(rig, "/api/v1/translate", json=body)
        assert (status, reply["code"]) == (400, "INVALID_ARGUMENT")
        assert fragment in reply["error"]
        assert rig.fakes[0].requests == []


@in_loop
async def test_json_api_info_and_options():
    async with gateway(FakeTranslator(name="fr-en-small")) as rig:
        assert await get(rig, "/api/v1/info") == (200, {
            "name": "fr-en-small", "source_language": "fr", "target_language": "en", "vocab_size": 8000,
            "limits": {"max_texts": 2, "max_chars": 5000}})
        status, options = await get(rig, "/api/v1/options")
        assert status == 200
        assert [o["name"] for o in options] == [f.name for f in dataclasses.fields(DecodeConfig)]
        by_name = {o["name"]: o for o in options}
        assert by_name["beam_size"] == {"name": "beam_size", "type": "int", "default": 4,
                                        "help": "beam size K; 1 = greedy search", "range": ">= 1",
                                        "ge": 1, "gt": None, "le": None}
        assert (by_name["top_p"]["type"], by_name["top_p"]["range"]) == ("float", "in (0, 1]")
        assert (by_name["sample"]["type"], by_name["sample"]["default"]) == ("bool", False)
        assert by_name["seed"]["default"] is None


# ---- the page, health, readiness, metrics, logs -------------------------------------------------------------------

@in_loop
async def test_page_and_static_files(tmp_path, monkeypatch):
    monkeypatch.setattr(web_app, "STATIC", tmp_path)
    async with gateway() as rig:
        async with rig.client.get("/") as r:
            assert (r.status, await r.json()) == \
                (404, {"error": "the page is not installed: static/index.html is missing"})
        (tmp_path / "index.html").write_text("<!doctype html><title>seq2seq</title>")
        (tmp_path / "app.js").write_text("console.log(1);")
        async with rig.client.get("/") as r:
            assert (r.status, r.content_type, await r.text()) == \
                (200, "text/html", "<!doctype html><title>seq2seq</title>")
        async with rig.client.get("/static/app.js") as r:
            assert (r.status, await r.text()) == (200, "console.log(1);")
        assert await get(rig, "/static/missing.css") == (404, {"error": "no static file 'missing.css'"})
        (tmp_path / ".env").write_text("KEY=secret")
        assert await get(rig, "/static/.env") == (404, {"error": "no static file '.env'"})


@in_loop
async def test_healthz_and_readyz_follow_the_servers_health():
    async with gateway(FakeTranslator("a"), FakeTranslator("b"), statuses=[SERVING, NOT_SERVING]) as rig:
        a, b = rig.targets
        assert await get(rig, "/healthz") == (200, {"status": "ok"})
        assert await get(rig, "/readyz") == (200, {"ready": True, "servers": {a: "SERVING", b: "NOT_SERVING"}})
        await rig.healths[0].set("", NOT_SERVING)
        assert await get(rig, "/readyz") == (503, {"ready": False, "servers": {a: "NOT_SERVING", b: "NOT_SERVING"}})
        await rig.healths[1].set("", SERVING)
        assert await get(rig, "/readyz") == (200, {"ready": True, "servers": {a: "NOT_SERVING", b: "SERVING"}})
    async with gateway(server=["127.0.0.1:1"]) as rig:  # nothing listens there
        assert await get(rig, "/readyz") == (503, {"ready": False, "servers": {"127.0.0.1:1": "UNAVAILABLE"}})
        assert await get(rig, "/healthz") == (200, {"status": "ok"})


def metric(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@in_loop
async def test_metrics_count_requests_by_route_and_status():
    async with gateway() as rig:
        for body in ({"q": "a", "source": "fr", "target": "en"}, {"q": "b", "source": "fr", "target": "en"},
                     {"q": "c", "source": "de", "target": "en"}):
            await post(rig, "/translate", json=body)
        await get(rig, "/languages")
        await get(rig, "/no/such/page")
        async with rig.client.get("/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert metric(text, "seq2seq_web_requests_total", route="/translate", status="200") == 2
        assert metric(text, "seq2seq_web_requests_total", route="/translate", status="400") == 1
        assert metric(text, "seq2seq_web_requests_total", route="/languages", status="200") == 1
        assert metric(text, "seq2seq_web_requests_total", route="unmatched", status="404") == 1
        assert metric(text, "seq2seq_web_request_seconds_count", route="/translate") == 3


@in_loop
async def test_unknown_routes_and_methods_get_json_errors():
    async with gateway() as rig:
        assert await get(rig, "/no/such/page") == (404, {"error": "Not Found"})
        async with rig.client.get("/translate") as r:
            assert (r.status, await r.json(), r.headers["Allow"]) == (405, {"error": "Method Not Allowed"}, "POST")


@in_loop
async def test_one_log_line_per_request(caplog):
    caplog.set_level(logging.INFO, logger="seq2seq_web")
    async with gateway() as rig:
        await post(rig, "/translate", json={"q": "a", "source": "fr", "target": "en"})
        await get(rig, "/languages")
    lines = [r for r in caplog.records if r.name == "seq2seq_web" and r.getMessage() == "request"]
    assert [(r.method, r.path, r.status) for r in lines] == [("POST", "/translate", 200), ("GET", "/languages", 200)]
    assert all(isinstance(r.ms, float) and r.ms >= 0 for r in lines)


# ---- replicas ---------------------------------------------------------------------------------------------------

@in_loop
async def test_round_robin_over_two_servers():
    async with gateway(FakeTranslator("a"), FakeTranslator("b")) as rig:
        for i in range(4):
            assert await post(rig, "/translate", json={"q": f"t{i}", "source": "fr", "target": "en"}) == \
                (200, {"translatedText": f"en:t{i}"})
        assert [[r.texts[0] for r in f.requests] for f in rig.fakes] == [["t0", "t2"], ["t1", "t3"]]


@in_loop
async def test_a_replica_not_serving_is_skipped():
    async with gateway(FakeTranslator("a"), FakeTranslator("b"), statuses=[NOT_SERVING, SERVING]) as rig:
        for i in range(3):
            await post(rig, "/translate", json={"q": f"t{i}", "source": "fr", "target": "en"})
        assert [len(f.requests) for f in rig.fakes] == [0, 3]


@in_loop
async def test_unavailable_passes_the_request_to_the_next_replica():
    down = FakeTranslator("a", error=(Code.UNAVAILABLE, "shutting down"))
    async with gateway(down, FakeTranslator("b")) as rig:
        assert await post(rig, "/translate", json={"q": "x", "source": "fr", "target": "en"}) == \
            (200, {"translatedText": "en:x"})
        assert [len(f.requests) for f in rig.fakes] == [1, 1]


# ---- the command line -------------------------------------------------------------------------------------------

def test_flags_and_environment_variables(monkeypatch):
    assert parse_args([]) == WebConfig()
    for name, value in {"SERVER": "a:1, b:2", "HOST": "0.0.0.0", "PORT": "9000", "API_KEY": "k",
                        "TIMEOUT": "2.5", "LOG_FORMAT": "text"}.items():
        monkeypatch.setenv(f"SEQ2SEQ_WEB_{name}", value)
    assert parse_args([]) == WebConfig(server=("a:1", "b:2"), host="0.0.0.0", port=9000, api_key="k", timeout=2.5,
                                       log_format="text")
    config = parse_args(["--server", "c:3", "--server", "d:4,c:3", "--port", "7000"])  # a flag wins over env
    assert (config.server, config.port, config.timeout) == (("c:3", "d:4"), 7000, 2.5)


@pytest.mark.parametrize("argv, env, message", [
    (["--port", "x"], {}, "argument --port: invalid int value: 'x'"),
    (["--log-format", "xml"], {}, "--log-format must be json or text, got 'xml'"),
    (["--timeout", "0"], {}, "--timeout must be > 0 seconds, got 0.0"),
    (["--bogus"], {}, "unrecognized arguments: --bogus"),
    ([], {"SEQ2SEQ_WEB_PORT": "eighty"}, "environment variable SEQ2SEQ_WEB_PORT='eighty' is not a valid int"),
])
def test_a_bad_flag_is_one_line(argv, env, message, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"seq2seq-web: error: {message} (see --help)\n"


# ---- through the real server --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_server():
    if not MODEL.is_dir():
        pytest.skip(f"no shipped model at {MODEL}")
    from server.app import Server
    from server.config import ServerConfig

    config = ServerConfig(host="127.0.0.1", port=0, model=str(MODEL), device="cpu", precision="fp32", threads=1,
                          metrics_port=-1, grace_s=1)
    server = Server(config).start()
    assert server.wait_ready(120), server.load_error
    yield server
    server.stop(grace=0)


@in_loop
async def test_a_translation_comes_back_through_the_real_server(real_server):
    async with gateway(server=[f"127.0.0.1:{real_server.port}"]) as rig:
        assert await post(rig, "/translate", json={"q": "Des gens réparent le toit d'une maison.", "source": "fr",
                                                   "target": "en"}) == \
            (200, {"translatedText": "People are fixing the roof of a house."})
        html = {"q": "<p>Des gens réparent le <b>toit</b> d'une maison.</p>", "source": "fr", "target": "en",
                "format": "html"}
        # The tag follows the cross-attention of the shipped model, which puts "the" with "toit" too.
        assert await post(rig, "/translate", json=html) == \
            (200, {"translatedText": "<p>People are fixing <b>the roof</b> of a house.</p>"})
        status, info = await get(rig, "/api/v1/info")
        assert (status, info["source_language"], info["target_language"]) == (200, "fr", "en")
        assert await get(rig, "/readyz") == (200, {"ready": True,
                                                   "servers": {f"127.0.0.1:{real_server.port}": "SERVING"}})


@in_loop
async def test_any_origin_may_call_the_apis_as_with_libretranslate():
    async with gateway() as rig:
        preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"}
        async with rig.client.options("/translate", headers=preflight) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
        async with rig.client.post("/translate", json={"q": "Bonjour", "source": "fr", "target": "en"},
                                   headers={"Origin": "https://example.org"}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
