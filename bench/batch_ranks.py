"""Batch translation on one machine's cores: one process with every thread, or one `torchrun` process per core,
the same total threads (seq2seq.shards; for sizing a cluster of batch jobs).

Each layout runs `seq2seq-translate --input FR --output EN` for real on the same lines (the French side of
--data, the shipped model by default, beam 4, --precision auto): 1x2 is one process with OMP_NUM_THREADS=2, 2x1 is
`torchrun --standalone --nproc-per-node 2` with OMP_NUM_THREADS=1, each rank taking every other chunk of
--chunk-lines lines. Timed: the whole command (start, imports, loading, translating, rank 0's join), as a user's
job pays it. Layouts take turns, `--rounds` times; reported: sentences/s of each layout's median round, its ratio
to the first layout, and how many output lines differ from the first layout's (threads can move fp32/int8 bits).

    python bench/batch_ranks.py [--layouts 1x2 2x1] [--rounds 3] [--limit N] [--json]

Run it on a quiet machine: nothing else may share the cores.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from seq2seq.checkpoint import default_model  # noqa: E402
from seq2seq.shards import read_lines  # noqa: E402


def command(layout: str, args, source: Path, out: Path) -> tuple[list[str], dict]:
    processes, threads = map(int, layout.split("x"))
    launch = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    flags = ["-m", "seq2seq.translate", "--model", args.model, "--input", str(source), "--output", str(out),
             "--chunk-lines", str(args.chunk_lines), "--beam-size", str(args.beam_size), "--precision", args.precision]
    return [*launch, *flags], {**os.environ, "OMP_NUM_THREADS": str(threads)}


def measure(layout: str, args, source: Path, work: Path) -> tuple[float, list[str]]:
    """Seconds of the whole command, and its output lines."""
    out = work / f"{layout}-{time.monotonic_ns()}" / "en.txt"
    cmd, env = command(layout, args, source, out)
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if r.returncode:
        raise SystemExit(f"batch_ranks: layout {layout} failed:\n{r.stderr[-2000:]}")
    return seconds, out.read_text(encoding="utf-8").splitlines()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="PxT: P processes of T threads")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default=default_model())
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k/test_2016_flickr"),
                   help="a corpus prefix: its .fr.gz side is translated")
    p.add_argument("--limit", type=int, default=0, help="first N lines only (0: all)")
    p.add_argument("--chunk-lines", type=int, default=100, help="every rank needs chunks: 1,000 lines are 10")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--precision", default="auto")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    lines = list(itertools.islice(read_lines(Path(f"{args.data}.fr.gz")), args.limit or None))
    seconds: dict[str, list[float]] = {layout: [] for layout in args.layouts}
    outputs: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "fr.txt"
        source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        for r in range(args.rounds):
            order = args.layouts[r % len(args.layouts):] + args.layouts[:r % len(args.layouts)]
            for layout in order:
                s, outputs[layout] = measure(layout, args, source, Path(tmp))
                seconds[layout].append(s)
                print(f"round {r + 1} {layout}: {len(lines) / s:.1f} sentences/s", file=sys.stderr, flush=True)
    first = args.layouts[0]
    rows = [{"layout": k, "processes": int(k.split("x")[0]), "threads": int(k.split("x")[1]),
             "seconds": round(statistics.median(v), 2), "sentences_per_s": round(len(lines) / statistics.median(v), 1),
             "ratio": round(statistics.median(seconds[first]) / statistics.median(v), 2),
             "lines_differing_from_first": sum(a != b for a, b in zip(outputs[k], outputs[first]))}
            for k, v in seconds.items()]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": os.cpu_count(), "lines": len(lines),
            "model": args.model, "beam_size": args.beam_size, "precision": args.precision,
            "chunk_lines": args.chunk_lines, "rounds": args.rounds}
    if args.json:
        print(json.dumps({**meta, "rows": rows}))
        return
    print(f"| layout (processes x threads) | sentences/s (median of {args.rounds}) | vs {first} | lines differing |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['layout']} | {row['sentences_per_s']:,} | {row['ratio']:.2f}x | "
              f"{row['lines_differing_from_first']} |")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
