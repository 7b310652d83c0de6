"""Where a fuzzed server's memory peaks: bench/fuzz_memory.py's fuzz phase with the server's RSS read every 20 ms,
and the requests in flight at the peak (issue 25, part 4).

    python bench/fuzz_timeline.py                                        # the fuzz phase as fuzz_memory.py sends it
    python bench/fuzz_timeline.py --no-attention                         # no request asks for attention maps
    python bench/fuzz_timeline.py --server-env MALLOC_MMAP_THRESHOLD_=2097152

Prints the server's peak RSS (VmHWM), the seconds the phase took, and the requests that had been answered OK and were
in flight at the sampled peak (texts, characters, options): the large ones are what the peak is made of.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from fuzz_memory import Fuzzer, fuzz, status  # noqa: E402
from serve import name_value, start_server  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "fr-en-small"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "multi30k" / "test_2016_flickr.fr.gz"))
    p.add_argument("--seed", type=int, default=25)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--no-attention", action="store_true", help="no request asks for attention maps")
    p.add_argument("--server-env", nargs="*", type=name_value, default=[], metavar="NAME=VALUE", help="the server's environment")
    args = p.parse_args(argv)
    with gzip.open(args.data, "rt", encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    fuzzer = Fuzzer(sentences, args.seed)
    requests = [fuzzer.request() for _ in range(args.requests)]
    for r in requests:
        r["return_attention"] = r["return_attention"] and not args.no_attention
    proc, port = start_server(args.model, 2, "auto", True, extra_env=dict(args.server_env))
    samples, spans, stop = [], {}, threading.Event()  # (time, RSS MB); request index -> (start, end, code)

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), status(proc.pid)["rss_mb"]))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tic = time.perf_counter()
    try:
        codes = fuzz(port, requests, args.concurrency, args.timeout, spans)
        peak = status(proc.pid)
    finally:
        stop.set()
        proc.terminate()
    at, rss = max(samples, key=lambda s: s[1])
    print(json.dumps({"peak_rss_mb": peak["peak_rss_mb"], "sampled_peak_mb": rss,
                      "seconds": round(time.perf_counter() - tic, 1), "codes": dict(codes)}))
    for i, (start, end, code) in sorted(spans.items()):
        if start <= at <= end and code == "OK":
            r = requests[i]
            print(json.dumps({"request": i, "texts": len(r["texts"]), "chars": sum(map(len, r["texts"])),
                              "attention": r["return_attention"], "split": r["split_sentences"],
                              "options": r["options"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
