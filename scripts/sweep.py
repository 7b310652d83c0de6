"""The proxy sweep of issue 10: short fr→en runs of variants of configs/default-bt.yaml, ranked on the dev sets only.

    python scripts/sweep.py --runs ~/runs/sweep                 # every run in SWEEP, in order; done runs are skipped
    python scripts/sweep.py --runs ~/runs/sweep --only d384     # one run
    python scripts/sweep.py --runs ~/runs/sweep --table         # the results as docs/sweep.md's table
    python scripts/sweep.py --runs ~/runs/sweep --at-step 750   # every run's checkpoint of step 750, scored alike

Each run trains for PROXY's 30 minutes of training time (`train.max_minutes`; evaluation does not count), then its
last checkpoint is scored with beam 4 on Multi30k val and on the Tatoeba dev split that scripts/carve_dev.py carved
(never a test set). One JSON line per run is appended to RUNS/results.jsonl; docs/sweep.md holds the table.
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs/default-bt.yaml"
DEV_SETS = {"multi30k_val": "../shared/data/multi30k/val", "tatoeba_dev": "~/runs/data/tatoeba_dev"}

# What every proxy run changes in the base config: 30 minutes, a warmup that ends well inside them, dev BLEU on the
# first 500 val sentences every 250 steps for the learning curve, no early stopping.
PROXY = {"train": {"max_minutes": 30, "warmup_steps": 400, "eval_every": 250, "save_every": 250, "patience": 0,
                   "average_last": 0},
         "data": {"dev_bleu_sentences": 500, "bt_tag": True}}  # the sweep's base tags (configs/default-bt.yaml did)

M30K = "../shared/data/multi30k/train"
TATOEBA = "~/runs/data/tatoeba_train"
BT = "~/runs/bt/train_captions"

# name -> (what it tests, overrides of the proxy config). data.train lists replace the base list whole.
SWEEP = {
    "base": ("Multi30k x3, Tatoeba, tagged beam back-translation, d256 L4 (configs/default-bt.yaml before the sweep)", {}),
    "d384": ("width 384 (6 heads, d_ff 1536)", {"model": {"d_model": 384, "n_heads": 6, "d_ff": 1536}}),
    "untagged": ("back-translation without the <BT> tag", {"data": {"bt_tag": False}}),
    "no-bt": ("no back-translation (Multi30k x3, Tatoeba)",
              {"data": {"bt_tag": False, "train": [{"path": M30K, "weight": 3}, TATOEBA]}}),
    "m30k-x1": ("Multi30k not oversampled",
                {"data": {"train": [M30K, TATOEBA, {"path": BT, "synthetic": True}]}}),
    "bt-half": ("half of the back-translation",
                {"data": {"train": [{"path": M30K, "weight": 3}, TATOEBA,
                                    {"path": BT, "weight": 0.5, "synthetic": True}]}}),
    "drop0.1": ("dropout 0.1 (more data than the 0.3 of the current default was chosen for)",
                {"model": {"dropout": 0.1}}),
    "vocab8k": ("vocabulary 8,000", {"data": {"vocab_size": 8000}}),
    "lr1.0": ("lr_scale 1.0 (the paper's schedule) instead of 0.5", {"train": {"lr_scale": 1.0}}),
}

# The one-sitting question (2026-12-02, sixth sitting): runs do not outlive a sitting here, so could a shorter
# schedule reach the shipped model's level in fewer steps? Real pairs only (no back-translated captions: their
# en→fr model was lost), the third attempt's vocabulary (spm_data: real), the real warmup of 1,000 steps, 75 minutes,
# dev BLEU every 500 steps. Run side by side, each pinned to one core, so that both get the same machine:
#   taskset -c 0 env OMP_NUM_THREADS=1 python scripts/sweep.py --runs ~/runs/sweep2 --only v2-real &
#   taskset -c 1 env OMP_NUM_THREADS=1 python scripts/sweep.py --runs ~/runs/sweep2 --only v2-real-lr1.0
V2_REAL = {"data": {"bt_tag": False, "spm_data": "real", "train": [{"path": M30K, "weight": 3}, TATOEBA]},
           "train": {"max_minutes": 75, "warmup_steps": 1000, "eval_every": 500, "save_every": 500}}
SWEEP["v2-real"] = ("real pairs, vocabulary from each real corpus once, lr_scale 0.5, 75 min on one core", V2_REAL)
SWEEP["v2-real-lr1.0"] = ("as v2-real with lr_scale 1.0 (the paper's schedule)",
                          {**V2_REAL, "train": {**V2_REAL["train"], "lr_scale": 1.0}})


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def expand(obj):
    """~ in corpus paths, as the training reads them from the project root."""
    if isinstance(obj, str) and obj.startswith("~"):
        return os.path.expanduser(obj)
    if isinstance(obj, list):
        return [expand(x) for x in obj]
    if isinstance(obj, dict):
        return {k: expand(v) for k, v in obj.items()}
    return obj


def score(python: str, model: Path, data: str) -> dict:
    cmd = [python, "-m", "seq2seq.evaluate", "--model", str(model), "--data", os.path.expanduser(data),
           "--beam-size", "4", "--precision", "int8", "--json"]
    result = json.loads(subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    return {"bleu": result["bleu"], "chrf": result.get("chrf")}


def curve(log: Path) -> list[tuple[int, float]]:
    return [(r["step"], round(r["dev_bleu"], 2)) for r in map(json.loads, log.read_text().splitlines())
            if "dev_bleu" in r]


def run_one(name: str, runs: Path, python: str) -> dict:
    what, over = SWEEP[name]
    out = runs / name
    out.mkdir(parents=True, exist_ok=True)
    config = expand(merge(merge(yaml.safe_load(BASE.read_text()), PROXY), over))
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    wall = time.time()
    subprocess.run([python, "-m", "seq2seq.train", "--config", str(out / "config.yaml"), "--out", str(out)],
                   cwd=ROOT, check=True)
    wall = time.time() - wall
    last = sorted(out.glob("checkpoint_*.pt"))[-1]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_s" in r]
    result = {"name": name, "what": what, "overrides": over, "checkpoint": last.name,
              "train_minutes": round(steps[-1]["elapsed_s"] / 60, 1), "wall_minutes": round(wall / 60, 1),
              "tokens_per_s": round(sum(r["tokens_per_s"] for r in steps) / len(steps)),
              "greedy_val500_curve": curve(out / "log.jsonl"),
              **{f"{k}_beam4": score(python, last, v) for k, v in DEV_SETS.items()},
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(runs / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)
    return result


def table(runs: Path) -> str:
    """The Markdown table of RUNS/results.jsonl, in the order the runs finished."""
    lines = ["| run | what | minutes (train / wall) | steps | tokens/s | Multi30k val BLEU (chrF) | Tatoeba dev BLEU "
             "(chrF) | greedy val[:500] BLEU by step |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for line in (runs / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        val, tat = r["multi30k_val_beam4"], r["tatoeba_dev_beam4"]
        steps = int(r["checkpoint"].split("_")[1].split(".")[0])
        curve = ", ".join(f"{s}: {b}" for s, b in r["greedy_val500_curve"])
        lines.append(f"| {r['name']} | {r['what']} | {r['train_minutes']} / {r['wall_minutes']} | {steps:,} | "
                     f"{r['tokens_per_s']:,} | {val['bleu']:.2f} ({val['chrf']:.1f}) | {tat['bleu']:.2f} "
                     f"({tat['chrf']:.1f}) | {curve} |")
    return "\n".join(lines)


def at_step(runs: Path, step: int, python: str) -> None:
    """Every finished run's checkpoint of `step` scored like its last one, into RUNS/at_step.jsonl: a comparison at
    equal steps, which the time-limited runs do not give when the machine was shared unequally."""
    for line in (runs / "results.jsonl").read_text().splitlines():
        name = json.loads(line)["name"]
        path = runs / name / f"checkpoint_{step:08d}.pt"
        if not path.is_file():
            print(f"sweep: {name} has no checkpoint of step {step}", file=sys.stderr)
            continue
        result = {"name": name, "step": step, **{f"{k}_beam4": score(python, path, v) for k, v in DEV_SETS.items()}}
        with open(runs / "at_step.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="~/runs/sweep", help="where the runs and results.jsonl go")
    p.add_argument("--only", nargs="*", choices=sorted(SWEEP), help="these runs (default: all, in order)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--table", action="store_true", help="print the results as a Markdown table and exit")
    p.add_argument("--at-step", type=int, help="score every finished run's checkpoint of this step, then exit")
    args = p.parse_args()
    runs = Path(os.path.expanduser(args.runs))
    if args.table:
        print(table(runs))
        return
    if args.at_step:
        at_step(runs, args.at_step, args.python)
        return
    runs.mkdir(parents=True, exist_ok=True)
    done = set()
    if (runs / "results.jsonl").exists():
        done = {json.loads(line)["name"] for line in (runs / "results.jsonl").read_text().splitlines()}
    for name in args.only or SWEEP:
        if name in done:
            print(f"sweep: {name} done, skipped", file=sys.stderr)
            continue
        run_one(name, runs, args.python)


if __name__ == "__main__":
    main()
