"""Throughput and latency of seq2seq-serve under concurrent load, with cross-request batching on and off.

For each --batch-window-ms value a fresh server process is started; for each concurrency C, C client threads each
send one-sentence Translate requests back to back (default options: beam 4) until --requests have been answered.
Reported per (window, C): sentences/s, p50 and p99 latency, decoding batches per request (from the server's
metrics). The ratios the issue asks for are computed inside one run: throughput at C against C = 1, and p99
against the p50 of a lone request (C = 1) with the same window.

    python bench/serve.py --model models/fr-en-small --concurrency 1,8,32 --windows 5,0 --requests 256
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seq2seq_client import TranslatorClient  # noqa: E402


def start_server(model: str, window_ms: float, threads: int, precision: str) -> tuple[subprocess.Popen, int, int]:
    env = dict(os.environ, SEQ2SEQ_MODEL=model, SEQ2SEQ_PORT="0", SEQ2SEQ_HOST="127.0.0.1", SEQ2SEQ_METRICS_PORT="0",
               SEQ2SEQ_METRICS_HOST="127.0.0.1", SEQ2SEQ_BATCH_WINDOW_MS=str(window_ms),
               SEQ2SEQ_THREADS=str(threads), SEQ2SEQ_PRECISION=precision)
    proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    port = metrics_port = None
    for line in proc.stderr:
        entry = json.loads(line)
        if entry["message"] == "listening":
            port, metrics_port = entry["port"], entry["metrics_port"]
        if entry["message"] == "serving":
            break
        if entry["level"] == "error":
            raise SystemExit(f"server failed: {entry['message']}")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain the logs
    return proc, port, metrics_port


def batches(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return float(re.search(r"^seq2seq_decode_batches_total (\S+)$", text, re.M).group(1))


def load(port: int, sentences: list[str], concurrency: int, requests: int) -> tuple[float, list[float]]:
    """C threads, each sending requests back to back; returns (wall seconds, per-request latencies)."""
    latencies: list[float] = []
    lock, counter = threading.Lock(), iter(range(requests))

    def worker(client: TranslatorClient) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            tic = time.perf_counter()
            client.translate([sentences[i % len(sentences)]])
            with lock:
                latencies.append(time.perf_counter() - tic)

    with TranslatorClient(f"127.0.0.1:{port}", timeout=120) as client:
        workers = [threading.Thread(target=worker, args=(client,)) for _ in range(concurrency)]
        tic = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - tic, latencies


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k/test_2016_flickr.fr.gz"))
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--windows", default="5,0", help="--batch-window-ms values, one server each")
    p.add_argument("--requests", type=int, default=256, help="requests per concurrency level")
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    p.add_argument("--precision", default="auto")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    with gzip.open(args.data, "rt", encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    rows = []
    for window in map(float, args.windows.split(",")):
        proc, port, metrics_port = start_server(args.model, window, args.threads, args.precision)
        try:
            load(port, sentences[-50:], 4, 50)  # warm-up, on sentences the runs below do not start with
            for c in map(int, args.concurrency.split(",")):
                before = batches(metrics_port)
                wall, lat = load(port, sentences, c, args.requests)
                rows.append({"window_ms": window, "concurrency": c, "requests": len(lat),
                             "sentences_per_s": len(lat) / wall, "p50_ms": 1000 * percentile(lat, 50),
                             "p99_ms": 1000 * percentile(lat, 99),
                             "batches_per_request": (batches(metrics_port) - before) / len(lat)})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    print("\n| window ms | concurrency | sentences/s | × C=1 | p50 ms | p99 ms | p99 / lone p50 | batches/request |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lone = next(x for x in rows if x["window_ms"] == r["window_ms"] and x["concurrency"] == 1)
        print(f"| {r['window_ms']:g} | {r['concurrency']} | {r['sentences_per_s']:.1f} | "
              f"{r['sentences_per_s'] / lone['sentences_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['p99_ms'] / lone['p50_ms']:.2f} | {r['batches_per_request']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
