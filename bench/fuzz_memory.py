"""The server's memory after bad input (issue 25, part 4): a fresh `seq2seq-serve`, fuzzed requests, then the plain
load; the server's peak (VmHWM) and current (VmRSS) RSS after each phase, against a second fresh server that gets
the plain load only.

Fuzzed requests: texts up to 6,000 characters (over the server's 5,000 too), control characters, emoji, random
code points, empty and blank texts, long runs without punctuation, many texts per request; options anywhere their
proto type allows (NaN, ±inf, 2³²−1, ...) or in the usual range; scores, attention maps, sentence splitting at
random; unary and stream calls. Seeded: the same --seed sends the same requests. The plain load is bench/serve.py's
(one test_2016_flickr sentence per request, beam 4, C client threads).

    python bench/fuzz_memory.py --model models/fr-en-small --json /tmp/fuzz_memory.json
    python bench/fuzz_memory.py --pause 3 ...     # the server idle 3 s between the phases (RSS read after it)
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from serve import load, start_server  # noqa: E402
from seq2seq_client import TranslatorClient  # noqa: E402

ODD = ["\x00", "\x01", "\x07", "\x1b", "\x7f", "\u200b", "\u200e", "\u202e", "\ufeff", "\ufffd", "\t", "\r", "\r\n",
       "\u2028", "\x0b", "\x0c"]
EMOJI = ["😀", "🇫🇷", "👩‍👩‍👧‍👦", "🤖", "🍷", "❤️", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "🏳️‍🌈", "🫠"]
WILD_FLOATS = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-30, 1e30, 3.4e38, 11.0, 5.0]
WILD_INTS = [0, 1, 2 ** 32 - 1, 2 ** 31, 1025, 2000, 100, 17, 64]


def status(pid: int) -> dict[str, float]:
    """VmHWM (peak) and VmRSS (now) of a process, MB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    get = lambda key: int(next(l.split()[1] for l in lines if l.startswith(key + ":"))) / 1024  # noqa: E731
    return {"peak_rss_mb": round(get("VmHWM"), 1), "rss_mb": round(get("VmRSS"), 1)}


class Fuzzer:
    """Random requests, from one seeded random.Random, built on real sentences so that many get translated."""

    def __init__(self, sentences: list[str], seed: int, max_chars: int = 6000):
        self.rng, self.sentences, self.max_chars = random.Random(seed), sentences, max_chars

    def text(self) -> str:
        r = self.rng
        kind = r.choice(["sentence"] * 8 + ["paragraph"] * 3 + ["run_on"] * 3 + ["odd", "emoji", "code_points",
                                                                                   "repeat", "empty", "lines"])
        if kind == "sentence":
            return self.sprinkle(r.choice(self.sentences))
        if kind == "paragraph":  # many sentences: split, they fill the batch
            return self.fill(lambda: r.choice(self.sentences), " ")
        if kind == "run_on":  # words without punctuation: one long sentence (over the token limit at times)
            return self.fill(lambda: r.choice(r.choice(self.sentences).rstrip(".").split()), " ", r.randint(100, 1500))
        if kind == "odd":
            return "".join(r.choice(ODD + [" ", "a", "é", "."]) for _ in range(r.randint(1, 400)))
        if kind == "emoji":
            return self.fill(lambda: r.choice(EMOJI + [" "]), "", r.randint(1, 400))
        if kind == "code_points":  # any code point but surrogates (protobuf strings are UTF-8)
            cps = (r.choice([r.randint(0, 0xD7FF), r.randint(0xE000, 0x10FFFF)]) for _ in range(r.randint(1, 300)))
            return "".join(map(chr, cps))
        if kind == "repeat":
            return r.choice(["a", "!", ".", "é", "ab ", "M. ", "...", "-", "😀"]) * r.randint(1, self.max_chars)
        if kind == "empty":
            return r.choice(["", " ", "\n", "\t \n", "\u3000"])
        return "\n".join(self.sprinkle(r.choice(self.sentences)) if r.random() < 0.7 else ""
                         for _ in range(r.randint(1, 200)))

    def fill(self, piece, sep: str, length: int | None = None) -> str:
        length = length or self.rng.randint(100, self.max_chars)
        parts, n = [], 0
        while n < length:
            parts.append(piece())
            n += len(parts[-1]) + len(sep)
        return sep.join(parts)[:length]

    def sprinkle(self, text: str) -> str:
        """A sentence with a few control characters or emoji put in."""
        r = self.rng
        chars = list(text)
        for _ in range(r.choice([0, 0, 1, 3])):
            chars.insert(r.randint(0, len(chars)), r.choice(ODD + EMOJI))
        return "".join(chars)

    def options(self) -> dict:
        """Each option set or not; set, it is a usual value, an extreme one the server accepts, or anything its
        proto type holds (NaN, ±inf, 2³²−1, out of range)."""
        r = self.rng

        def pick(usual, extreme, wild):
            x = r.random()
            return usual() if x < 0.5 else r.choice(extreme) if x < 0.8 else r.choice(wild)

        choices = {
            "beam_size": lambda: pick(lambda: r.randint(1, 8), [1, 12, 16], WILD_INTS),
            "length_penalty": lambda: pick(lambda: r.uniform(0, 2), [0.0, 10.0], WILD_FLOATS),
            "n_best": lambda: pick(lambda: r.randint(1, 2), [1, 4, 16], WILD_INTS),
            "max_len_a": lambda: pick(lambda: r.uniform(0, 2), [0.0, 4.0], WILD_FLOATS),
            "max_len_b": lambda: pick(lambda: r.randint(0, 60), [0, 512, 1024], WILD_INTS),
            "min_len": lambda: pick(lambda: r.randint(0, 20), [200, 512, 1024], WILD_INTS),
            "sample": lambda: r.random() < 0.3,
            "temperature": lambda: pick(lambda: r.uniform(0.1, 3), [0.001, 1e30], WILD_FLOATS),
            "top_k": lambda: pick(lambda: r.randint(0, 50), [1, 2 ** 32 - 1], WILD_INTS),
            "top_p": lambda: pick(lambda: r.uniform(0.01, 1), [1e-30, 1.0], WILD_FLOATS),
            "num_samples": lambda: pick(lambda: r.randint(1, 3), [8, 16], WILD_INTS),
            "seed": lambda: r.choice([0, 2 ** 64 - 1, r.randint(0, 2 ** 64 - 1)]),
            "no_repeat_ngram_size": lambda: pick(lambda: r.randint(0, 3), [1, 2 ** 32 - 1], WILD_INTS),
            "repetition_penalty": lambda: pick(lambda: r.uniform(0.5, 2), [1e-30, 100.0], WILD_FLOATS),
        }
        return {name: make() for name, make in choices.items() if r.random() < 0.25}

    def request(self) -> dict:
        r = self.rng
        n = r.choice([1] * 6 + [2, 3, 8, r.randint(1, 64), 0, 65])
        return {"texts": [self.text() for _ in range(n)], "options": self.options(),
                "return_scores": r.random() < 0.5, "return_attention": r.random() < 0.2,
                "split_sentences": r.choice([None, True, False]), "stream": r.random() < 0.5}


def fuzz(port: int, requests: list[dict], concurrency: int, timeout: float, spans: dict | None = None) -> Counter:
    """Send the requests from `concurrency` threads; count the status codes. spans: if given, filled with request
    index -> (start, end, code), times from time.perf_counter (bench/fuzz_timeline.py)."""
    codes: Counter = Counter()
    lock, todo = threading.Lock(), iter(enumerate(requests))

    def worker(client: TranslatorClient) -> None:
        while True:
            with lock:
                i, req = next(todo, (None, None))
            if req is None:
                return
            start = time.perf_counter()
            args = (req["texts"], req["options"], req["return_scores"], req["return_attention"],
                    req["split_sentences"])
            try:
                if req["stream"]:
                    for _ in client.translate_stream(*args):
                        pass
                else:
                    client.translate(*args)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            with lock:
                codes[code] += 1
                if spans is not None:
                    spans[i] = (start, time.perf_counter(), code)

    with TranslatorClient(f"127.0.0.1:{port}", timeout=timeout, retries=1) as client:
        threads = [threading.Thread(target=worker, args=(client,)) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes["health_" + client.health()] += 1
    return codes


def run_server(args, sentences: list[str], requests: list[dict] | None) -> dict:
    """One fresh server: the fuzz phase (if `requests`), then the plain load; RSS after each."""
    settings = {"MAX_CACHE_MB": str(args.max_cache_mb)} if args.max_cache_mb else {}
    proc, port = start_server(args.model, args.threads, args.precision, True, extra_env=dict(args.server_env),
                              settings=settings)
    out: dict = {"start": status(proc.pid)}
    try:
        if requests is not None:
            tic = time.perf_counter()
            codes = fuzz(port, requests, args.fuzz_concurrency, args.timeout)
            out["fuzz"] = {"requests": len(requests), "seconds": round(time.perf_counter() - tic, 1),
                           "codes": dict(sorted(codes.items())), **status(proc.pid)}
            print(json.dumps({"fuzz": out["fuzz"]}), flush=True)
            if args.pause:  # the server alone for a while: it gives its free heap back after a quiet second
                time.sleep(args.pause)
                out["pause"] = {"seconds": args.pause, **status(proc.pid)}
                print(json.dumps({"pause": out["pause"]}), flush=True)
        tic = time.perf_counter()
        load(port, sentences, args.concurrency, args.requests)
        out["load"] = {"requests": args.requests, "concurrency": args.concurrency,
                       "seconds": round(time.perf_counter() - tic, 1), **status(proc.pid)}
        print(json.dumps({"load": out["load"]}), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models/fr-en-small"))
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k/test_2016_flickr.fr.gz"))
    p.add_argument("--seed", type=int, default=25)
    p.add_argument("--fuzz-requests", type=int, default=600)
    p.add_argument("--fuzz-concurrency", type=int, default=16)
    p.add_argument("--max-chars", type=int, default=6000, help="longest fuzzed text")
    p.add_argument("--requests", type=int, default=1000, help="plain-load requests after the fuzz")
    p.add_argument("--concurrency", type=int, default=64, help="plain-load client threads")
    p.add_argument("--timeout", type=float, default=120, help="deadline of each fuzzed request, seconds")
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between the fuzz and the load (0: none)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--max-cache-mb", type=float, help="the server's --max-cache-mb (default: its own)")
    p.add_argument("--server-env", nargs="*", default=[], metavar="NAME=VALUE",
                   type=lambda s: tuple(s.split("=", 1)), help="environment of the server processes only")
    p.add_argument("--no-baseline", action="store_true", help="skip the second server (plain load only)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    with gzip.open(args.data, "rt", encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    fuzzer = Fuzzer(sentences, args.seed, args.max_chars)
    requests = [fuzzer.request() for _ in range(args.fuzz_requests)]
    out = {"seed": args.seed, "fuzz_then_load": run_server(args, sentences, requests)}
    if not args.no_baseline:
        out["load_only"] = run_server(args, sentences, None)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
