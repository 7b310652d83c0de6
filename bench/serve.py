"""seq2seq-serve under load against offline decoding of the same sentences (the decoding engine, issue 11).

One run measures, on Multi30k test_2016_flickr with the shipped model at one precision (default: the server's
auto) and beam 4:
- offline: `Translator.translate` on all the sentences in one process (what `seq2seq-translate` does), sentences/s;
- the server with cross-request batching (a fresh process): C = 1 (p50, p99) and C = 32 (throughput, p99, against
  offline and against Little's law: p99 ≤ 1.5 × 32 / offline rate), then a mixed load at C = 32 (half beam 4, a
  quarter greedy, a quarter seeded sampling) against the single-option throughput;
- 1,000 sentences one at a time against the same 1,000 at C = 64: how many translations differ;
- --memory-requests requests at C = 64, then the server's peak RSS (VmHWM);
- the server without cross-request batching (`--batching false`) at C = 32.
`--only load --concurrency 32,256` measures offline and then each C alone (throughput, p50, p99, and how many
translations differ from offline's): the GPU check's step (scripts/gpu_check.sh).
C client threads each send one-sentence Translate requests back to back; they run in this process, on the same
cores as the server.

    python bench/serve.py --model models/fr-en-small --json /tmp/serve.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seq2seq_client import TranslatorClient  # noqa: E402

BEAM = {"beam_size": 4}
MIXED = [BEAM, BEAM, {"beam_size": 1}, {"sample": True, "seed": 1, "top_k": 10}]  # by request index mod 4


def start_server(model: str, threads: int, precision: str, batching: bool,
                 device: str = "cpu", extra_env: dict[str, str] | None = None,
                 settings: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """settings: more SEQ2SEQ_<NAME> values of the server (NAME without the prefix), e.g. {"MAX_BATCH_ROWS": "512"}."""
    env = dict({**os.environ, **(extra_env or {})}, SEQ2SEQ_MODEL=model, SEQ2SEQ_DEVICE=device, SEQ2SEQ_PORT="0", SEQ2SEQ_HOST="127.0.0.1", SEQ2SEQ_METRICS_PORT="-1",
               SEQ2SEQ_THREADS=str(threads), SEQ2SEQ_PRECISION=precision, SEQ2SEQ_BATCHING=str(batching).lower(),
               SEQ2SEQ_MAX_QUEUE="100", SEQ2SEQ_WORKERS="200")
    env.update({f"SEQ2SEQ_{k}": v for k, v in (settings or {}).items()})
    proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a library's plain-text warning (torch's on CUDA, say), not the server's log
            print(line, end="", file=sys.stderr)
            continue
        if entry["message"] == "listening":
            port = entry["port"]
        if entry["message"] == "serving":
            break
        if entry["level"] == "error":
            raise SystemExit(f"server failed: {entry['message']}")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain the logs
    return proc, port


def load(port: int, sentences: list[str], concurrency: int, requests: int,
         options=lambda i: BEAM) -> tuple[float, list[float], dict[int, str]]:
    """C threads sending requests back to back; returns (wall seconds, latencies, text of each request index)."""
    latencies, texts = [], {}
    lock, counter = threading.Lock(), iter(range(requests))

    def worker(client: TranslatorClient) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            tic = time.perf_counter()
            text = client.translate([sentences[i % len(sentences)]], options(i)).results[0].text
            with lock:
                latencies.append(time.perf_counter() - tic)
                texts[i] = text

    with TranslatorClient(f"127.0.0.1:{port}", timeout=300) as client:
        workers = [threading.Thread(target=worker, args=(client,)) for _ in range(concurrency)]
        tic = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - tic, latencies, texts


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


OFFLINE = """
import json, sys, time, torch
from seq2seq.config import DecodeConfig
from seq2seq.translator import Translator
torch.set_num_threads(int(sys.argv[3]))
lines = [l.strip() for l in open(sys.argv[1]) if l.strip()]
t = Translator.from_checkpoint(sys.argv[2], device=sys.argv[5], precision=sys.argv[4])
t.configure(*json.loads(sys.argv[6]))  # max_batch_rows, max_cache_mb; null = the Translator's default
t.translate(lines[-50:], DecodeConfig(beam_size=4))
tic = time.perf_counter()
texts = [x.text for x in t.translate(lines, DecodeConfig(beam_size=4))]
print(len(lines) / (time.perf_counter() - tic), t.precision)
open(sys.argv[7], "w", encoding="utf-8").write("".join(x + "\\n" for x in texts))
"""


def offline(model: str, sentences: list[str], threads: int, precision: str, device: str,
            limits: tuple = (None, None)) -> tuple[float, str, list[str]]:
    """(sentences/s, precision, translations) of Translator.translate on all the sentences, in a fresh process."""
    path, texts = Path("/tmp/bench_serve_sentences.txt"), Path("/tmp/bench_serve_offline.txt")
    path.write_text("\n".join(sentences) + "\n")
    out = subprocess.run([sys.executable, "-c", OFFLINE, str(path), model, str(threads), precision, device,
                          json.dumps(limits), str(texts)],
                         cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), out[1], texts.read_text(encoding="utf-8").splitlines()


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def name_value(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name or name.startswith("SEQ2SEQ_"):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, NAME not a SEQ2SEQ_ setting of the bench: {item!r}")
    return name, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k/test_2016_flickr.fr.gz"))
    p.add_argument("--requests", type=int, default=512, help="requests per throughput measurement")
    p.add_argument("--memory-requests", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server and of offline decoding")
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="cpu", help="the server's and offline decoding's (cuda: `make gpu-check`)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--server-env", nargs="*", default=[], metavar="NAME=VALUE", type=name_value,
                   help="environment of the server processes only (e.g. OMP_WAIT_POLICY=PASSIVE)")
    p.add_argument("--rounds", type=positive, default=1, metavar="N",
                   help="with --only c32: alternating rounds, median ratio")
    p.add_argument("--only", choices=["c32", "memory", "load"],
                   help="a quick comparison: offline and C = 32 only, the memory run only, or offline and each "
                        "--concurrency")
    p.add_argument("--concurrency", type=lambda s: [positive(c) for c in s.split(",")], default=[32, 256],
                   help="with --only load: comma-separated client counts")
    p.add_argument("--limit", type=int, default=0, help="the first N sentences only (0 = all)")
    p.add_argument("--max-batch-rows", type=positive, help="the server's and offline's (default: theirs)")
    p.add_argument("--max-cache-mb", type=float, help="the server's and offline's (default: theirs)")
    args = p.parse_args()
    server_env = dict(args.server_env)
    with gzip.open(args.data, "rt", encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    if args.limit:
        sentences = sentences[:args.limit]
    limits = (args.max_batch_rows, args.max_cache_mb)
    settings = {k: str(v) for k, v in zip(("MAX_BATCH_ROWS", "MAX_CACHE_MB"), limits) if v is not None}
    if args.only == "load":  # every client's request in flight at once: room for them in the queue and the threads
        most = max(args.concurrency)
        settings.update(MAX_QUEUE=str(max(100, most)), WORKERS=str(max(200, most + 100)))
    out: dict = {}
    if args.only == "memory":
        rate, precision, offline_texts = float("nan"), args.precision, []
    else:
        rate, precision, offline_texts = offline(args.model, sentences, args.threads, args.precision, args.device,
                                                 limits)
    out["offline"] = {"sentences_per_s": rate, "precision": precision}
    print(json.dumps(out), flush=True)

    def measure(port, c, requests, options=lambda i: BEAM):
        wall, lat, texts = load(port, sentences, c, requests, options)
        return {"concurrency": c, "requests": len(lat), "sentences_per_s": len(lat) / wall,
                "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99)}, texts

    proc, port = start_server(args.model, args.threads, precision, True, args.device, server_env, settings)
    try:
        load(port, sentences[-50:], 4, 50)  # warm-up
        if args.only == "load":
            out["load"] = [against_offline(measure, port, c, max(args.requests, 2 * c), offline_texts)
                           for c in args.concurrency]
            return finish(out, args.json)
        if args.only == "c32":
            # Rounds alternate offline decoding (a fresh process) and C = 32 on the same server, so that a change
            # of the machine's speed hits both sides of a ratio; the median ratio is the result.
            rounds = []
            for r in range(args.rounds):
                offline_rate = rate if r == 0 else offline(args.model, sentences, args.threads, precision,
                                                           args.device, limits)[0]
                c32, _ = measure(port, 32, args.requests)
                rounds.append({"offline": offline_rate, "c32": c32["sentences_per_s"], "p99_ms": c32["p99_ms"],
                               "vs_offline": c32["sentences_per_s"] / offline_rate})
                print(json.dumps(rounds[-1]), flush=True)
            out["c32_rounds"] = rounds
            out["median_vs_offline"] = statistics.median(r["vs_offline"] for r in rounds)
            return finish(out, args.json)
        if args.only == "memory":
            load(port, sentences, 64, args.memory_requests)
            out["memory"] = {"requests": args.memory_requests, "server_peak_rss_mb": peak_rss_mb(proc.pid)}
            return finish(out, args.json)
        out["c1"], _ = measure(port, 1, min(args.requests, 200))
        out["c32"], _ = measure(port, 32, args.requests)
        out["mixed_c32"], _ = measure(port, 32, args.requests, lambda i: MIXED[i % 4])
        print(json.dumps(out), flush=True)
        _, _, one = load(port, sentences[:1000], 1, 1000)
        _, _, many = load(port, sentences[:1000], 64, 1000)
        out["invariance"] = {"sentences": 1000, "different": sum(one[i] != many[i] for i in range(1000))}
        tic = time.perf_counter()
        load(port, sentences, 64, args.memory_requests)
        out["memory"] = {"requests": args.memory_requests, "concurrency": 64, "seconds": time.perf_counter() - tic,
                         "server_peak_rss_mb": peak_rss_mb(proc.pid)}
        print(json.dumps(out), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    proc, port = start_server(args.model, args.threads, precision, False, args.device, server_env, settings)
    try:
        load(port, sentences[-50:], 4, 50)
        out["c32_no_batching"], _ = measure(port, 32, min(args.requests, 256))
    finally:
        proc.terminate()
        proc.wait(30)
    c32, rate = out["c32"], out["offline"]["sentences_per_s"]
    out["ratios"] = {"c32_vs_offline": c32["sentences_per_s"] / rate,
                     "p99_limit_ms": 1000 * 1.5 * 32 / rate, "p99_ms": c32["p99_ms"],
                     "c32_vs_no_batching": c32["sentences_per_s"] / out["c32_no_batching"]["sentences_per_s"],
                     "mixed_vs_single": out["mixed_c32"]["sentences_per_s"] / c32["sentences_per_s"]}
    finish(out, args.json)


def against_offline(measure, port: int, concurrency: int, requests: int, offline_texts: list[str]) -> dict:
    """One load at C = concurrency, and how many of its translations differ from offline decoding's (request i
    translates sentence i mod N: the first N are compared)."""
    result, texts = measure(port, concurrency, requests)
    compared = [i for i in texts if i < len(offline_texts)]
    result.update(compared=len(compared), different_from_offline=sum(texts[i] != offline_texts[i] for i in compared))
    print(json.dumps(result), flush=True)
    return result


def finish(out: dict, path: str | None) -> None:
    print(json.dumps(out, indent=2))
    if path:
        Path(path).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
