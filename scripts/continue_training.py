"""Continue training the shipped model, and ship only what beats it on the dev sets (issue 23).

    bash scripts/continue_training.sh MINUTES                       # the defaults below, under jemalloc
    python scripts/continue_training.py --minutes 60 [--model models/fr-en-small] [--config configs/continue.yaml]

1. The shipped model's dev BLEU (default decoding: beam 4, α 0.6) on each dev set: from its card.json when recorded
   there with the same decoding and precision, else measured (and recorded).
2. `seq2seq-train --init-from MODEL --reset-optimizer true --init-step STEP`: fairseq's --reset-optimizer. The
   weights and vocabulary of the shipped model, a fresh Adam, eq. 3's learning rate at the step it reached (its
   card's training.steps), approached over a short warmup (train.rewarmup_steps). Trained in segments of
   --segment-minutes; each segment resumes the run where the last one stopped.
3. After each segment, two candidates: the last step checkpoint and the average of the last ones (averaged.pt, the
   config's average_last), each scored on every dev set. The best candidate ships if it is no worse than the shipped
   model on any dev set and better on their sum: exported beside MODEL, its card carried over with this
   continuation added (steps, minutes, dev BLEU before and after), then swapped in by two renames. Stopped at any
   minute, MODEL is the old model or the new one, whole; a swap cut between its renames is finished at the next start.
4. A run that ships nothing is recorded too (card.json: training.attempts, and a row of the card's table): its best
   candidate, its minutes and flags, a gain of 0. Issue 23 stops continuing after two runs in a row that gain less
   than 0.2 dev BLEU each (the mean over the dev sets of the shipped model's change), so both kinds count.
5. With --card, the test sets of the card are scored again at the end when a model shipped (scripts/eval_model_card.py,
   several minutes); without it, the shipped card says its test scores are of an earlier model.

The run directory (--runs) holds the segments' checkpoints; delete it to start a new continuation from the shipped
model. Prints one JSON line per segment on stdout.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from seq2seq import checkpoint as ckpt  # noqa: E402
from seq2seq.config import DecodeConfig  # noqa: E402
from seq2seq.data import read_corpus  # noqa: E402
from seq2seq.evaluate import score  # noqa: E402
from seq2seq.plot import plot_continuations  # noqa: E402
from seq2seq.shards import write_atomic  # noqa: E402
from seq2seq.translate import translate_lines  # noqa: E402
from seq2seq.translator import Translator, auto_precision, resolve_device  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RUNS = Path.home() / "runs"
DEV_SETS = {"Multi30k val": str(DATA / "multi30k" / "val"), "Tatoeba dev": str(RUNS / "data" / "tatoeba_dev")}
README_MARK = ("<!-- continuations: written by scripts/continue_training.py -->", "<!-- /continuations -->")


def dev_scores(model: str | Path, dev_sets: dict[str, str], precision: str) -> dict[str, float]:
    """BLEU of `model` on each dev set, default decoding, as `seq2seq-eval --data SET` computes it."""
    translator = Translator.from_checkpoint(model, precision=precision, max_input_tokens=100_000)
    out = {}
    for name, prefix in dev_sets.items():
        ds = read_corpus(prefix)
        hyps = translate_lines(translator, list(ds["src"]), DecodeConfig(), use_json=False)
        out[name] = score(hyps, list(ds["tgt"]))["bleu"]
    return out


def wins(candidate: dict[str, float], shipped: dict[str, float]) -> bool:
    """No dev set lower, and their sum higher: never a regression on one set bought with the other."""
    return (all(candidate[k] >= shipped[k] for k in shipped)
            and sum(candidate.values()) > sum(shipped.values()) + 1e-9)


def read_card(model: Path) -> dict:
    path = model / "card.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_card(model: Path, card: dict) -> None:
    write_atomic(model / "card.json", json.dumps(card, indent=2, ensure_ascii=False) + "\n")


def baseline(model: Path, dev_sets: dict[str, str], precision: str) -> dict[str, float]:
    """The shipped model's dev BLEU: the card's when it is for these sets, this decoding and precision; else measured
    and written into the card for the next run."""
    card = read_card(model)
    dev = card.get("dev", {})
    if dev.get("decode") == DecodeConfig().to_dict() and dev.get("precision") == precision \
            and set(dev.get("bleu", {})) == set(dev_sets):
        return dev["bleu"]
    card["dev"] = {"bleu": dev_scores(model, dev_sets, precision), "precision": precision,
                   "decode": DecodeConfig().to_dict()}
    write_card(model, card)
    return card["dev"]["bleu"]


def finish_swap(model: Path) -> None:
    """A swap stopped between its two renames leaves MODEL missing and MODEL.previous whole: put it back."""
    previous = model.with_name(model.name + ".previous")
    if not model.exists() and previous.is_dir():
        previous.rename(model)
    elif previous.exists():
        shutil.rmtree(previous)


def ship(candidate: Path, model: Path, card: dict) -> None:
    """Export `candidate` into MODEL.next with `card`, the model's other files carried over, then swap it in."""
    staging, previous = model.with_name(model.name + ".next"), model.with_name(model.name + ".previous")
    shutil.rmtree(staging, ignore_errors=True)
    ckpt.save_model_dir(ckpt.load(candidate), staging)
    for extra in model.iterdir():  # README.md, loss.png, ...: what the export does not write
        if not (staging / extra.name).exists():
            shutil.copy2(extra, staging / extra.name)
    write_card(staging, card)
    write_readme_section(staging / "README.md", card)
    model.rename(previous)
    staging.rename(model)
    shutil.rmtree(previous)


def gain(record: dict) -> float:
    """What a continuation gave the shipped model: the mean over the dev sets of its change (0 when nothing shipped)."""
    if not record.get("shipped", True):
        return 0.0
    return sum(record["dev_after"][k] - record["dev_before"][k] for k in record["dev_after"]) / len(record["dev_after"])


def write_readme_section(readme: Path, card: dict) -> None:
    """The model card's table of continuations, shipped or not, between its markers (appended the first time)."""
    t = card["training"]
    shipped = [dict(c, cumulative_minutes=c.get("cumulative_minutes", t_cum))
               for c, t_cum in zip(t.get("continuations", []), _cumulative(t))]
    records = sorted(shipped + t.get("attempts", []),  # in the order the runs started (older records: their date)
                     key=lambda c: (c.get("started") or c["date"], c["from_step"]))
    rows = ["| " + " | ".join([
        c["date"], f"{c['from_step']:,}–{c['to_step']:,}", f"{c['minutes']:.0f}", f"{c['cumulative_minutes']:.0f}",
        c.get("precision", card["dev"]["precision"]), f"`{c['flags']}`" if c.get("flags") else "—",
        *(f"{c['dev_before'][k]:.2f} → {c['dev_after'][k]:.2f}" for k in c["dev_after"]),
        f"{gain(c):+.2f}", "yes" if c.get("shipped", True) else "no"]) + " |" for c in records]
    names = list(records[-1]["dev_after"])
    table = "\n".join([
        README_MARK[0], "## Continued training", "",
        "Each row is one `scripts/continue_training.sh` run (a fresh Adam from the shipped weights, the step's",
        "learning rate; only a model no worse on any dev set and better on their sum ships). Dev BLEU: beam 4, α 0.6,",
        "at the precision `--precision auto` picked on that day's machine (the before and after of a row compare",
        "like with like); for a run that shipped nothing, *after* is its best candidate, which lost on a dev set.",
        "Cumulative minutes: the fr→en training of the model the run started from, all its stages (card.json:",
        "training), plus the run's. Gain: the mean over the dev sets of the shipped model's change.", "",
        "![dev BLEU against cumulative training minutes](continuations.png)", "",
        "| date | steps | minutes | cumulative minutes | precision | flags | " + " | ".join(names)
        + " | gain | shipped |",
        "|---|---|---:|---:|---|---|" + "---|" * len(names) + "---:|---|", *rows, README_MARK[1]])
    text = readme.read_text() if readme.is_file() else ""
    if README_MARK[0] in text:
        head, rest = text.split(README_MARK[0], 1)
        text = head + table + rest.split(README_MARK[1], 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    write_atomic(readme, text)
    plot_continuations(records, readme.with_name("continuations.png"))


def _cumulative(training: dict) -> list[float]:
    continuations = training.get("continuations", [])
    total, out = training["minutes"] - sum(c["minutes"] for c in continuations), []
    for c in continuations:
        total += c["minutes"]
        out.append(total)
    return out


def record_attempt(model: Path, record: dict) -> None:
    """A run that has shipped nothing (yet) into the shipped card: one record per run, replaced segment by segment.
    Only card.json and README.md change; the weights stay as they were, byte for byte."""
    card = read_card(model)
    attempts = card["training"].setdefault("attempts", [])
    attempts[:] = [a for a in attempts if a.get("started") != record["started"]] + [record]
    write_card(model, card)
    write_readme_section(model / "README.md", card)


def forget_attempt(card: dict, started: str) -> None:
    attempts = card["training"].get("attempts", [])
    attempts[:] = [a for a in attempts if a.get("started") != started]
    if not attempts:
        card["training"].pop("attempts", None)


def run_started(run: Path) -> str:
    """When this run directory's continuation began: what ties its segments' records together across restarts."""
    path = run / "continuation.json"
    if not path.is_file():
        run.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return json.loads(path.read_text())["started"]


def train_segment(args: argparse.Namespace, run: Path, minutes: float, init_step: int) -> None:
    command = [sys.executable, "-m", "seq2seq.train", "--config", args.config, "--out", str(run),
               "--init-from", str(args.model), "--reset-optimizer", "true", "--init-step", str(init_step),
               "--max-minutes", f"{minutes:g}", *args.train_args]
    subprocess.run(command, check=True, cwd=ROOT)  # the config's paths are relative to the project root


def run_state(run: Path) -> tuple[int, float, int | None]:
    """(step, training minutes, init_step) of the run's newest checkpoint; (0, 0, None) before the first."""
    last = sorted(run.glob("checkpoint_*.pt"))
    if not last:
        return 0, 0.0, None
    payload = ckpt.load(last[-1])
    return payload["state"]["step"], payload["state"]["elapsed"] / 60, payload["configs"]["train"]["init_step"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, required=True, help="training minutes of this continuation in all")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "fr-en-small", help="the shipped model directory")
    p.add_argument("--config", default=str(ROOT / "configs" / "continue.yaml"), help="data mix and recipe")
    p.add_argument("--runs", type=Path, default=RUNS / "continue", help="the continuation's run directory")
    p.add_argument("--segment-minutes", type=float, default=20.0, help="training minutes between dev evaluations")
    p.add_argument("--dev", action="append", metavar="NAME=PREFIX",
                   help="a dev set (repeatable); default: Multi30k val and the carved Tatoeba dev split")
    p.add_argument("--precision", default="auto", help="of the dev evaluations (auto: bf16 where fast, else int8)")
    p.add_argument("--card", action="store_true", help="score the card's test sets again after shipping")
    p.add_argument("train_args", nargs="*", help="more seq2seq-train flags, after --")
    args = p.parse_args(argv)
    dev_sets = dict(d.split("=", 1) for d in args.dev) if args.dev else DEV_SETS
    for name, prefix in dev_sets.items():
        read_corpus(prefix)  # a missing dev set fails now, not after the first segment
    args.model = args.model.resolve()
    finish_swap(args.model)
    precision = auto_precision(resolve_device()) if args.precision == "auto" else args.precision
    if not read_card(args.model).get("training", {}).get("steps"):
        print(f"continue_training: {args.model}/card.json has no training.steps (the step the model reached)",
              file=sys.stderr)
        return 2
    shipped = baseline(args.model, dev_sets, precision)
    card = read_card(args.model)
    training = card["training"]  # what a shipped candidate's card extends
    print(json.dumps({"event": "shipped model", "dev": shipped}), flush=True)
    _, done, started_at = run_state(args.runs)
    init_step = started_at or training["steps"]  # of the model this run started from, fixed once it has a checkpoint
    started, flags = run_started(args.runs), " ".join(args.train_args)
    start_minutes = training["minutes"]  # of the model this run started from, when it starts
    shipped_any = False
    while done < args.minutes - 1e-6:
        target = min(args.minutes, done + args.segment_minutes)
        tic, before = time.time(), done
        train_segment(args, args.runs, target, init_step)
        step, done, _ = run_state(args.runs)
        if done <= before:  # max_steps or early stopping ended the run
            break
        candidates = [sorted(args.runs.glob("checkpoint_*.pt"))[-1], args.runs / "averaged.pt"]
        scored = {c: dev_scores(c, dev_sets, precision) for c in candidates if c.is_file()}
        eligible = [c for c in scored if wins(scored[c], shipped)] or list(scored)  # then the best of those
        best = max(eligible, key=lambda c: sum(scored[c].values()))
        ok = wins(scored[best], shipped)
        print(json.dumps({"event": "segment", "step": step, "minutes": round(done, 1), "wall_s": round(time.time() - tic),
                          "candidates": {c.name: s for c, s in scored.items()}, "shipped_dev": shipped,
                          "ships": best.name if ok else None}), flush=True)
        record = {"date": time.strftime("%Y-%m-%d"), "started": started, "from_step": init_step, "to_step": step,
                  "minutes": round(done, 1), "checkpoint": best.name, "dev_before": shipped, "dev_after": scored[best],
                  "precision": precision, "flags": flags}
        this_run_shipped = any(c["from_step"] == init_step for c in training.get("continuations", []))
        if not ok and not this_run_shipped:
            record_attempt(args.model, dict(record, shipped=False,
                                            cumulative_minutes=round(start_minutes + record["minutes"], 1)))
            card = read_card(args.model)
            training = card["training"]
        if ok:
            forget_attempt(card, started)
            continuations = training.setdefault("continuations", [])
            if continuations and continuations[-1]["from_step"] == init_step:  # this run's earlier segment
                record["dev_before"] = continuations[-1]["dev_before"]
                training["minutes"] -= continuations.pop()["minutes"]
            continuations.append(record)
            training["minutes"] = round(training["minutes"] + record["minutes"], 1)
            training["steps"] = step
            card["dev"]["bleu"] = shipped = scored[best]
            if "scores" in card:
                card["scores_of"] = f"the model at step {init_step}: run scripts/eval_model_card.py for this one"
            ship(best, args.model, card)
            shipped_any = True
    if shipped_any and args.card:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_model_card.py"), "--model", str(args.model)],
                       check=True)
        card = read_card(args.model)
        card.pop("scores_of", None)
        write_card(args.model, card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
