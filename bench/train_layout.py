"""How to spend the CPU's cores on training and back-translation: one process with every core as torch threads, or
one process per core (data parallel over gloo, `torchrun`; back-translation: each process a part of the lines), or
one process on one core (the reference).

Each layout runs `seq2seq-train` itself for a few steps on the same model, data and batch per optimizer step (the
default model's size, Multi30k, 8,000 tokens a step: one process takes batches of 8,000, two processes 4,000 each),
with jemalloc where installed (as scripts/train_default.sh). Tokens/s (non-pad source + target tokens, all processes
together) is read from each run's log.jsonl, leaving out the first window (startup, first allocations). Layouts take
turns in rotating order, `--rounds` times; reported: each layout's median window and its ratio to the first layout.

    python bench/train_layout.py --steps 100 --rounds 2 [--layouts 1x2 2x1 1x1] [--json]
    python bench/train_layout.py --task backtranslate --lines 3000 --rounds 2

Back-translation: `seq2seq-backtranslate` (beam 4, int8, as scripts/train_default.sh runs it) of the first --lines
lines of --bt-input with --bt-model (the shipped fr→en model stands in for the en→fr one: the same size), cut into P
contiguous parts run at once; lines/s = lines / the wall time until the last part ends (model loading included).

A layout PxT is P processes with T threads each. Run it on a quiet machine: nothing else may share the cores.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from seq2seq.backtranslate import read_lines  # noqa: E402

STEP_TOKENS = 8000


def config(corpus: str, dev: str, processes: int, threads: int, steps: int, log_every: int, cache: Path) -> dict:
    return {"model": {"d_model": 256, "n_heads": 4, "n_layers": 4, "d_ff": 1024, "dropout": 0.3},
            "data": {"train": [corpus], "dev": dev, "vocab_size": 10000, "max_tokens": STEP_TOKENS // processes,
                     "max_len": 100, "dev_bleu_sentences": 10, "cache_dir": str(cache)},
            "train": {"max_steps": steps, "warmup_steps": 1000, "lr_scale": 0.5, "precision": "bf16",
                      "log_every": log_every, "eval_every": 10 * steps, "save_every": 10 * steps,
                      "threads": threads}}


def environment() -> dict:
    env = dict(os.environ)
    found = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in found.splitlines():
        if "libjemalloc.so.2 " in line and not env.get("LD_PRELOAD"):
            env["LD_PRELOAD"] = line.split("=>")[-1].strip()
            env["MALLOC_CONF"] = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    return env


def run(layout: str, args, work: Path, env: dict) -> list[float]:
    processes, threads = map(int, layout.split("x"))
    out = work / f"{layout}-{time.monotonic_ns()}"
    out.mkdir()
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config(args.corpus, args.dev, processes, threads, args.steps, args.log_every,
                                          work / f"cache-{processes}")))
    launch = [sys.executable, "-m", "seq2seq.train"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
         "-m", "seq2seq.train"]
    env = {**env, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*launch, "--config", str(path), "--out", str(out / "run")], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    windows = [r["tokens_per_s"] for r in map(json.loads, (out / "run" / "log.jsonl").read_text().splitlines())
               if "tokens_per_s" in r]
    shutil.rmtree(out)
    return windows[1:]  # the first window holds the start


def backtranslate(layout: str, args, work: Path, env: dict) -> list[float]:
    processes, threads = map(int, layout.split("x"))
    out = work / f"bt-{layout}-{time.monotonic_ns()}"
    out.mkdir()
    lines = args.bt_lines
    size = -(-len(lines) // processes)
    for k in range(processes):
        (out / f"part{k}.txt").write_text("".join(line + "\n" for line in lines[k * size:(k + 1) * size]),
                                          encoding="utf-8")
    env = {**env, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    running = [subprocess.Popen([sys.executable, "-m", "seq2seq.backtranslate", "--model", args.bt_model, "--input",
                                 str(out / f"part{k}.txt"), "--out", str(out / f"bt{k}"), "--precision", "int8",
                                 "--src-lang", "fr", "--tgt-lang", "en"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for k in range(processes)]
    if any(p.wait() for p in running):
        raise SystemExit(f"train_layout: a back-translation process of layout {layout} failed")
    wall = time.perf_counter() - start
    shutil.rmtree(out)
    return [len(lines) / wall]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", nargs="+", default=["1x2", "2x1", "1x1"], help="PxT: P processes of T threads")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--corpus", default="../shared/data/multi30k/train")
    p.add_argument("--dev", default="../shared/data/multi30k/val")
    p.add_argument("--task", choices=["train", "backtranslate"], default="train")
    p.add_argument("--lines", type=int, default=3000, help="back-translation: input lines")
    p.add_argument("--bt-model", default="models/fr-en-small")
    p.add_argument("--bt-input", default="../shared/data/multi30k/train.fr.gz")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    measure = run if args.task == "train" else backtranslate
    if args.task == "backtranslate":  # read once, cut into parts for every layout and round
        args.bt_lines = list(itertools.islice(read_lines(Path(args.bt_input)), args.lines))
    env = environment()
    windows: dict[str, list[float]] = {layout: [] for layout in args.layouts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = args.layouts[r % len(args.layouts):] + args.layouts[:r % len(args.layouts)]
            for layout in order:
                windows[layout] += measure(layout, args, Path(tmp), env)
                print(f"round {r + 1} {layout}: {windows[layout][-3:]}", file=sys.stderr, flush=True)
    first = statistics.median(windows[args.layouts[0]])
    unit = "tokens_per_s" if args.task == "train" else "lines_per_s"
    rows = [{"layout": k, "processes": int(k.split("x")[0]), "threads": int(k.split("x")[1]),
             unit: round(statistics.median(v)), "windows": len(v),
             "ratio": round(statistics.median(v) / first, 2)} for k, v in windows.items()]
    meta = {"task": args.task, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": os.cpu_count(),
            "jemalloc": "LD_PRELOAD" in env, "rounds": args.rounds,
            **({"steps": args.steps, "step_tokens": STEP_TOKENS} if args.task == "train" else {"lines": args.lines})}
    if args.json:
        print(json.dumps({**meta, "rows": rows}))
        return
    print(f"| layout (processes x threads) | {unit} (median) | measures | vs {args.layouts[0]} |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['layout']} | {row[unit]:,} | {row['windows']} | {row['ratio']:.2f}x |")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
