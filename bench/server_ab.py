"""Two servers that differ in one setting, under the same load in alternating rounds: the throughput ratio B / A.

Machines shared with other tenants drift by 10-20% from minute to minute (offline decoding alone ranged 70-82
sentences/s in five runs of one quarter hour), more than the effect of a malloc setting or a cache budget. Both
servers run the whole time, idle in turn; round r loads A then B, or B then A (alternating, so that a drift within
a round counts against each as often); the median of the per-round ratios is the answer.

    python bench/server_ab.py --b-env MALLOC_MMAP_THRESHOLD_=2097152              # the server's malloc setting
    python bench/server_ab.py --a-settings MAX_CACHE_MB=256 --b-settings MAX_CACHE_MB=128

Load: bench/serve.py's (one test_2016_flickr sentence per request, beam 4, C client threads). Also prints each
server's peak RSS (VmHWM) at the end.
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from fuzz_memory import status  # noqa: E402
from serve import load, name_value, start_server  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "fr-en-small"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "multi30k" / "test_2016_flickr.fr.gz"))
    p.add_argument("--a-env", nargs="*", type=name_value, default=[], metavar="NAME=VALUE", help="server A's environment")
    p.add_argument("--b-env", nargs="*", type=name_value, default=[], metavar="NAME=VALUE")
    p.add_argument("--a-settings", nargs="*", type=name_value, default=[], metavar="NAME=VALUE", help="SEQ2SEQ_<NAME> of server A")
    p.add_argument("--b-settings", nargs="*", type=name_value, default=[], metavar="NAME=VALUE")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=384, help="per server and round")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    with gzip.open(args.data, "rt", encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    servers = {}
    for name, env, settings in (("A", args.a_env, args.a_settings), ("B", args.b_env, args.b_settings)):
        servers[name] = start_server(args.model, args.threads, args.precision, True, extra_env=dict(env),
                                     settings=dict(settings))
    try:
        for _, port in servers.values():  # warm-up: the kernels of the common shapes
            load(port, sentences, args.concurrency, 64)
        rounds = []
        for r in range(args.rounds):
            rate = {}
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                wall, _, _ = load(servers[name][1], sentences, args.concurrency, args.requests)
                rate[name] = args.requests / wall
            rounds.append({"A": round(rate["A"], 2), "B": round(rate["B"], 2), "B/A": round(rate["B"] / rate["A"], 3)})
            print(json.dumps(rounds[-1]), flush=True)
        out = {"a": {"env": dict(args.a_env), "settings": dict(args.a_settings)},
               "b": {"env": dict(args.b_env), "settings": dict(args.b_settings)},
               "concurrency": args.concurrency, "requests": args.requests, "rounds": rounds,
               "median_b_over_a": statistics.median(r["B/A"] for r in rounds),
               "peak_rss_mb": {name: status(proc.pid)["peak_rss_mb"] for name, (proc, _) in servers.items()}}
    finally:
        for proc, _ in servers.values():
            proc.terminate()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
