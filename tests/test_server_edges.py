"""Edges of the gRPC server that tests/test_server.py does not reach: the Prometheus counts after known requests,
start-up (NOT_SERVING and UNAVAILABLE while loading; a missing or corrupt model ends the process in one line),
sentence splitting, the order of sampled n-best lists, streaming in completion order, and API keys on the stream.

Same set-up as tests/test_server.py (whose helpers it imports): a real server on port 0 with the tiny copy model.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from seq2seq_client import TranslatorClient
from seq2seq.checkpoint import load, save_model_dir
from seq2seq.config import DecodeConfig
from seq2seq.translator import Translator
from server.app import SERVICE, Server
from seq2seq.sentences import join_sentences as join, split_sentences as split
from test_server import CONFIG, ROOT, TEXTS, SlowModel, start


@pytest.fixture(scope="module")
def translator(copy_model) -> Translator:
    return Translator.from_checkpoint(copy_model / "best.pt", device="cpu", max_input_tokens=40)


# ---- metrics -------------------------------------------------------------------------------------------------------

def scrape(port: int) -> dict[str, dict[frozenset, float]]:
    """GET /metrics -> {sample name: {frozenset of (label, value): value}}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return samples


def by(samples: dict[frozenset, float], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(dict(key)[label] for label in labels): value for key, value in samples.items()}


def test_metrics_count_requests_errors_and_latencies_by_method_and_code(translator):
    server = start(translator, metrics_port=0, metrics_host="127.0.0.1")  # its own registry: counts start at 0
    try:
        with TranslatorClient(f"127.0.0.1:{server.port}", timeout=30) as c:
            for text in TEXTS[:3]:
                assert c.translate([text]).results[0].text
            for texts, options in (([], {}), (["ba"], {"beam_size": 0})):
                with pytest.raises(grpc.RpcError) as e:
                    c.translate(texts, options)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert c.model_info().source_language == "fr"
        samples = scrape(server.metrics_port)
    finally:
        server.stop(grace=0)
    requests = by(samples["seq2seq_requests_total"], "method", "code")
    assert requests == {("Translate", "OK"): 3, ("Translate", "INVALID_ARGUMENT"): 2, ("GetModelInfo", "OK"): 1}
    assert by(samples["seq2seq_errors_total"], "code") == {("INVALID_ARGUMENT",): 2}
    assert by(samples["seq2seq_request_seconds_count"], "method") == {("Translate",): 5, ("GetModelInfo",): 1}
    infinite = {k: v for k, v in samples["seq2seq_request_seconds_bucket"].items() if dict(k)["le"] == "+Inf"}
    assert by(infinite, "method") == {("Translate",): 5, ("GetModelInfo",): 1}
    assert samples["seq2seq_sentences_total"] == {frozenset(): 3}  # the rejected ones never reached the model


# ---- start-up --------------------------------------------------------------------------------------------------------

def test_not_serving_and_unavailable_while_the_model_loads_then_serving(copy_model):
    translator = Translator.from_checkpoint(copy_model / "best.pt", device="cpu", max_input_tokens=40)
    release, translate = threading.Event(), translator.translate

    def warm_up_waits(texts, config=DecodeConfig()):  # server/app.py _load translates once before SERVING
        assert release.wait(30), "the test did not release the warm-up"
        return translate(texts, config)

    translator.translate = warm_up_waits
    server = Server(CONFIG, translator).start()
    try:
        with TranslatorClient(f"127.0.0.1:{server.port}", timeout=10, retries=1) as c:
            assert (c.health(), c.health(SERVICE)) == ("NOT_SERVING", "NOT_SERVING")
            for call in (lambda: c.translate(["ba ce"]), c.model_info):
                with pytest.raises(grpc.RpcError) as e:
                    call()
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
                assert e.value.details() == "the model is still loading; retry when grpc.health.v1 says SERVING"
            release.set()
            assert server.wait_ready(30), server.load_error
            assert (c.health(), c.health(SERVICE)) == ("SERVING", "SERVING")
            assert c.translate(["ba ce"]).results[0].text == translate(["ba ce"])[0].text
    finally:
        release.set()
        server.stop(grace=0)


def bad_model(case: str, copy_model, tmp_path):
    """(the --model argument, the file the error line must name)."""
    if case == "missing":
        return tmp_path / "no-such-model", tmp_path / "no-such-model"
    if case == "corrupt safetensors":
        model_dir = save_model_dir(load(copy_model / "best.pt"), tmp_path / "model")
        (model_dir / "model.safetensors").write_bytes(b"\x07garbage, not a safetensors header" * 8)
        return model_dir, model_dir / "model.safetensors"
    data = (copy_model / "best.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[:len(data) // 2])
    return tmp_path / "truncated.pt", tmp_path / "truncated.pt"


@pytest.mark.parametrize("case", [
    "missing",
    "corrupt safetensors",
    "truncated pt"])
def test_a_missing_or_corrupt_model_exits_non_zero_in_one_line_naming_the_file(case, copy_model, tmp_path):
    model, named = bad_model(case, copy_model, tmp_path)
    r = subprocess.run([sys.executable, "-m", "server", "--model", str(model), "--host", "127.0.0.1", "--port", "0",
                        "--metrics-port", "-1", "--log-format", "text", "--threads", "1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if re.match(r"\S+ \S+ (ERROR|CRITICAL) ", line)]
    assert len(errors) == 1, r.stderr
    assert str(model) in errors[0] and "cannot load the model" in errors[0], errors[0]
    assert [line for line in r.stderr.splitlines() if str(model) in line] == errors  # the other lines: INFO
    assert str(named) in errors[0], errors[0]


# ---- sentence splitting ----------------------------------------------------------------------------------------------

SPLITS = [  # text, its sentences, sentences per line
    ("M. Dupont est arrivé. Il parle.", ["M. Dupont est arrivé.", "Il parle."], (2,)),
    ("Le Dr. Martin est là. Il attend.", ["Le Dr. Martin est là.", "Il attend."], (2,)),
    ("Il a vu des pommes, des poires, etc. et des fraises. Puis il est parti.",
     ["Il a vu des pommes, des poires, etc. et des fraises.", "Puis il est parti."], (2,)),
    # "etc" is a non-breaking prefix of the Moses French list even before a capital: one piece for the model
    ("Des pommes, des poires, etc. Puis il est parti.", ["Des pommes, des poires, etc. Puis il est parti."], (1,)),
    ("\n\nBonjour. Ça va ?\n\n\nOui.\n\n", ["Bonjour.", "Ça va ?", "Oui."], (0, 0, 2, 0, 0, 1, 0, 0)),
]


@pytest.mark.parametrize("text, parts, lines", SPLITS, ids=[s[0][:24].strip() for s in SPLITS])
def test_split_keeps_abbreviations_and_join_gives_back_the_layout(text, parts, lines):
    got, layout = split(text)
    assert (got, layout.lines) == (parts, lines)
    assert join(got, layout) == text


def test_without_sentence_splitting_lines_and_blank_lines_stay():
    parts, layout = split("\nBa. Ce.\n\nDi.\n", sentences=False)
    assert (parts, layout.lines) == (["Ba. Ce.", "Di."], (0, 1, 0, 1, 0))
    assert join(["X", "Y"], layout) == "\nX\n\nY\n"


def test_crlf_line_ends_do_not_reach_the_sentences():
    parts, layout = split("Il parle.\r\nElle écoute.\r\n\r\nFin.")
    assert (parts, layout.lines) == (["Il parle.", "Elle écoute.", "Fin."], (1, 1, 0, 1))


def test_join_gives_back_crlf_line_ends():
    text = "Il parle.\r\nElle écoute.\r\n\r\nFin."
    assert join(*split(text)) == text


# ---- sampling, streaming, API keys -----------------------------------------------------------------------------------

def test_sampled_n_best_come_best_first_and_equal_the_offline_translator(translator):
    options = dict(sample=True, num_samples=4, n_best=4, seed=11, temperature=2.0)
    server = start(translator)
    try:
        with TranslatorClient(f"127.0.0.1:{server.port}", timeout=30) as c:
            reply = c.translate(TEXTS[:4], options)
    finally:
        server.stop(grace=0)
    offline = translator.translate(TEXTS[:4], DecodeConfig(**options))
    distinct = 0
    for result, expected in zip(reply.results, offline, strict=True):
        [sentence] = result.sentences
        scores = [h.score for h in sentence.hypotheses]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True)
        assert [h.text for h in sentence.hypotheses] == [t.text for t in (expected, *expected.alternatives)]
        assert scores == pytest.approx([t.score for t in (expected, *expected.alternatives)], abs=1e-4)
        distinct += len(set(scores)) > 1
    assert distinct >= 2, "the samples were all alike: the order was not tested"


def test_stream_sends_a_finished_text_before_the_last_one_is_done(copy_model):
    translator = Translator.from_checkpoint(copy_model / "best.pt", device="cpu")
    translator.model = SlowModel(translator.model)  # 20 ms a step
    server = start(translator, batching=False, max_batch_rows=1)  # one sentence at a time, shortest first
    long_text = "Ba ce di fo. Ga ka co fi. Gu ke ba bo. Da bu me ni. Po ra sa te. Lu fa ge hi."
    try:
        with TranslatorClient(f"127.0.0.1:{server.port}", timeout=60) as c:
            translator.model.steps = 0
            start_s, arrivals = time.monotonic(), []
            for reply in c.translate_stream([long_text, "ka"], {"beam_size": 1}):
                arrivals.append((reply.index, time.monotonic() - start_s, translator.model.steps))
            end_s, total_steps = time.monotonic() - start_s, translator.model.steps
    finally:
        server.stop(grace=0)
    assert [index for index, _, _ in arrivals] == [1, 0]  # "ka" is the shortest: it is decoded first
    (_, first_s, steps_then), (_, last_s, _) = arrivals
    assert steps_then < total_steps / 3, arrivals  # 1 of 7 sentences done when "ka" arrived
    assert first_s < last_s / 3 and last_s > 0.3, (arrivals, end_s)


def test_api_keys_guard_the_stream_too(translator):
    server = start(translator, api_keys="k1,k2")
    target = f"127.0.0.1:{server.port}"
    try:
        for key, message in (("", "missing API key: send metadata x-api-key"), ("nope", "invalid API key")):
            with TranslatorClient(target, api_key=key) as c, pytest.raises(grpc.RpcError) as e:
                list(c.translate_stream(["ba ce"]))
            assert (e.value.code(), e.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, message)
        with TranslatorClient(target, api_key="k2") as c:
            replies = list(c.translate_stream(["ba ce", "ka"]))
    finally:
        server.stop(grace=0)
    expected = translator.translate(["ba ce", "ka"])
    assert sorted((r.index, r.result.text) for r in replies) == [(0, expected[0].text), (1, expected[1].text)]


def test_the_server_limits_malloc_arenas_at_start_unless_the_environment_does(monkeypatch):
    from server.__main__ import few_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert few_malloc_arenas() is False  # the user's setting stands
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert few_malloc_arenas() is (sys.platform == "linux")  # glibc's mallopt accepted it


MMAP_PROBE = """
import ctypes, sys
from server.__main__ import fixed_mmap_threshold
libc = ctypes.CDLL("libc.so.6")
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
print(fixed_mmap_threshold() if sys.argv[1] == "fixed" else None)
libc.free(libc.malloc(20 << 20))  # glibc's default threshold rises to the largest mapped block freed: 20 MB
before = libc.mallinfo2().hblkhd
block = libc.malloc(5 << 20)
print(libc.mallinfo2().hblkhd - before >= 5 << 20)  # a mapping of its own, handed back when freed
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_the_server_fixes_the_mmap_threshold_so_that_large_blocks_go_back_when_freed(monkeypatch):
    """issue 25: after a large block is freed, glibc carves later 5 MB blocks (the decoder's caches) from its heap;
    with the server's fixed 4 MB threshold they keep mappings of their own. The environment's own setting stands."""
    def probe(mode: str, **env) -> list[str]:
        out = subprocess.run([sys.executable, "-c", MMAP_PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                             env={k: v for k, v in {**os.environ, **env}.items() if v is not None}, check=True)
        return out.stdout.split()

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert probe("default") == ["None", "False"]
    assert probe("fixed") == ["True", "True"]
    assert probe("fixed", MALLOC_MMAP_THRESHOLD_="33554432") == ["False", "False"]
