"""The Python parts of scripts/gpu_check.sh (issue 24), one subcommand each:

    preflight  print the versions the run will use (torch, CUDA, the bundle's packages, what they need of the
               image); fail (1) when the stubs' grpcio/protobuf are not met or a smoke import or read fails, and
               stop the run (3) when a CUDA run finds no GPU
    recipe     write the pipeline's configs for the time left (configs/gpu/*.yaml with this run's paths and
               max_minutes; tiny sizes in a dry run) and recipe.env for scripts/train_default.sh
    summary    gather every step's figures from the logs into one JSON file

It imports nothing of the project at the top: preflight is what finds out whether those imports work.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "gpu"
CONFIGS = {"enfr": "en-fr-gpu.yaml", "frenf": "fr-en-bt-gpu.yaml", "ft": "fr-en-bt-ft-gpu.yaml"}
MODEL = ROOT / "models" / "fr-en-small"  # the shipped model: the benchmarks' and the baseline of the scores
EVAL_SETS = ("test_2016_flickr", "test_2017_flickr", "tatoeba_test")  # scripts/gpu_check.sh's eval step


# ---- preflight ------------------------------------------------------------------------------------------------------

def version(name: str) -> tuple[str | None, str]:
    """(version, where from) of an installed distribution as this interpreter sees it first."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None, "missing"
    return dist.version, str(dist.locate_file(""))  # site-packages, or the bundle's install


def preflight(args: argparse.Namespace) -> int:
    manifest = json.loads((Path(args.bundle) / "MANIFEST.json").read_text())
    report: dict = {"python": f"{platform.python_version()} {sys.executable}", "packages": {}, "problems": []}
    import torch

    report["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = f"{props.name}, {props.total_memory / 2 ** 30:.0f} GiB, capability {props.major}.{props.minor}"
    elif args.device == "cuda":
        report["problems"].append("stop: torch sees no CUDA device")
    # 1. Versions: the bundle's (the dry run's Python 3.11 cannot load its cp312 wheels: it uses its venv's,
    #    which the bundle's were copied from), then what they need of the image.
    needs = manifest["requires"]
    for name in [*manifest["wheels"], *sorted(set(needs) - set(manifest["wheels"]))]:
        have, where = version(name)
        report["packages"][name] = f"{have} ({where})"
        wanted = manifest["wheels"].get(name, {}).get("version")
        if wanted and have != wanted:
            report["problems"].append(f"{'fatal' if args.device == 'cuda' else 'note'}: {name} {have} is not the "
                                      f"bundle's {wanted}")
        if needs.get(name) and (have is None or not Requirement(f"{name}{needs[name]}").specifier.contains(have)):
            report["problems"].append(f"warning: the bundle's wheels need {name}{needs[name]}, found {have}")
    for name, floor in manifest["stubs_need"].items():
        have = version(name)[0]
        if have is None or not Requirement(f"{name}>={floor}").specifier.contains(have):
            report["problems"].append(f"fatal: the gRPC stubs need {name} >= {floor}, found {have}")
    # 2. Smoke: the imports every step makes, and one corpus read through `datasets`.
    try:
        import sentence_splitter  # noqa: F401
        import server.app  # noqa: F401  (grpc, health, reflection, the stubs' version checks)
        import seq2seq_client  # noqa: F401
        from seq2seq.data import read_corpus

        report["smoke"] = f"imports fine; multi30k/val has {len(read_corpus(f'{args.bundle}/data/multi30k/val'))} pairs"
    except Exception as e:  # any failure here stops the run: say which
        report["problems"].append(f"fatal: smoke test: {type(e).__name__}: {e}")
    for key, value in report.items():
        print(f"{key}: {json.dumps(value, indent=2) if isinstance(value, (dict, list)) else value}")
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if any(p.startswith("stop") for p in report["problems"]):
        return 3
    return 1 if any(p.startswith("fatal") for p in report["problems"]) else 0


# ---- recipe ---------------------------------------------------------------------------------------------------------

# Seconds a stage spends outside its training clock (start, SentencePiece, tokenizing, evaluations, saves,
# averaging), as guessed for the GPU machine before its first run; that run's pipeline-times.log measures them.
OVERHEAD_S = {"carve": 10, "en-fr": 45, "bt": 15, "fr-en": 50, "fr-en-ft": 25, "export": 5}
SHARES = {"en-fr": 0.35, "fr-en": 0.45, "fr-en-ft": 0.20}  # of the training time left
BT_SHARE = 0.25  # back-translation takes at most this part of the time the overheads leave
MIN_MINUTES = 0.2
DRY_STEPS = {"en-fr-gpu.yaml": 400, "fr-en-bt-gpu.yaml": 200, "fr-en-bt-ft-gpu.yaml": 300}  # ft: 100 after fr-en's


def budget(seconds: float, bt_rate: float, captions: int) -> dict:
    """max_minutes of the three training stages (ft's counts both fr→en stages, as train.init_from does) and how
    many captions back-translation can do at `bt_rate` sentences/s, in `seconds` for the whole pipeline."""
    free = max(seconds - sum(OVERHEAD_S.values()), 0.0)
    bt_lines = int(min(captions, BT_SHARE * free * bt_rate))
    train_s = free - bt_lines / bt_rate
    minutes = {k: round(max(share * train_s / 60, MIN_MINUTES), 2) for k, share in SHARES.items()}
    minutes["fr-en-ft"] = round(minutes["fr-en"] + minutes["fr-en-ft"], 2)
    return {"seconds": seconds, "max_minutes": minutes, "bt_lines": max(bt_lines, 1), "bt_rate": bt_rate}


GUESSED_BT_RATE = 100.0  # sentences/s, should the decode benchmark have left no figure


def bt_rate(decode_log: Path) -> float:
    """Sentences/s of bf16 (else fp32) decoding at batch 32, beam 4: the Translator's default batch, which
    back-translation uses (bench/decode.py's result, the last JSON line of its log)."""
    try:
        results = last_json(decode_log)["results"]
        return (results.get("ours-bf16") or results["ours-fp32"])["sentences_per_s"]
    except (OSError, ValueError, KeyError):
        print(f"recipe: no decoding speed in {decode_log}; guessing {GUESSED_BT_RATE} sentences/s", file=sys.stderr)
        return GUESSED_BT_RATE


def shrink(data: Path, out: Path, lines: dict[str, int]) -> None:
    """The dry run's corpora: the first N lines of each file."""
    for rel, n in lines.items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(data / rel, "rt", encoding="utf-8") as f, gzip.open(target, "wt", encoding="utf-8") as g:
            g.writelines(line for _, line in zip(range(n), f))


def write_config(name: str, data: str, runs: str, device: str, minutes: float, dry: bool) -> Path:
    """configs/gpu/NAME with this run's corpora and runs folder, device and max_minutes (dry: a tiny model)."""
    text = (RECIPE / name).read_text().replace("../shared/data", data).replace("~/runs", runs)
    cfg = yaml.safe_load(text)
    cfg["train"].update(device=device, max_minutes=minutes)
    if dry:  # tests/test_pipeline.py's model and schedule: seconds per stage, and an en→fr model that says
        # something (an untrained one ends every translation at once, and back-translation keeps no pair)
        if "model" in cfg:
            cfg["model"] = {"d_model": 32, "n_heads": 2, "n_layers": 1, "d_ff": 64, "dropout": 0.0}
        cfg["data"].update(vocab_size=200, max_tokens=800, max_len=48, dev_bleu_sentences=20)
        cfg["train"].update(max_steps=DRY_STEPS[name], warmup_steps=50, lr_scale=0.15, eval_every=100,
                            save_every=50, log_every=50, threads=1, precision="fp32")
    path = Path(runs) / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def recipe(args: argparse.Namespace) -> int:
    data, runs = Path(args.data), Path(args.runs)
    captions = sum(1 for _ in gzip.open(data / "multi30k" / "train_captions.en.gz", "rt", encoding="utf-8"))
    if args.dry_run:
        corpora = [f"{c}.{lang}.gz" for c in ("multi30k/train", "tatoeba/train") for lang in ("fr", "en")]
        shrink(data, runs / "data-dry", {**{c: 2000 for c in corpora}, "multi30k/val.fr.gz": 40,
                                         "multi30k/val.en.gz": 40, "multi30k/train_captions.en.gz": 150})
        data = runs / "data-dry"
        # fixed sizes, not the time left: the dry run checks that every stage runs and hands on what the next reads
        plan = {"seconds": args.seconds, "max_minutes": {"en-fr": 1.0, "fr-en": 1.0, "fr-en-ft": 2.0}, "bt_lines": 150}
    else:
        plan = budget(args.seconds, bt_rate(Path(args.decode_log)), captions)
    minutes = plan["max_minutes"]
    env = {"DATA": str(data), "DEV_SIZE": "40" if args.dry_run else "2000", "BT_LIMIT": str(plan["bt_lines"]),
           # bf16 on the GPU (backtranslate.py's own default is fp32); beam 2 keeps the dry run short
           "BT_ARGS": f"--device {args.device} " + ("--beam-size 2" if args.dry_run else "--precision bf16")}
    for key, stage in (("enfr", "en-fr"), ("frenf", "fr-en"), ("ft", "fr-en-ft")):
        env[f"CONFIG_{key.upper()}"] = str(write_config(CONFIGS[key], str(data), str(runs), args.device,
                                                        minutes[stage], args.dry_run))
    (runs / "recipe.env").write_text("".join(f"export {k}={json.dumps(v)}\n" for k, v in env.items()))
    (runs / "recipe.json").write_text(json.dumps({**plan, "env": env}, indent=2) + "\n")
    print(json.dumps({**plan, "env": env}, indent=2))
    return 0


# ---- summary --------------------------------------------------------------------------------------------------------

def last_json(path: Path) -> dict:
    """The last line of a log that is a JSON object (the benchmarks print their result so)."""
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON line in {path}")


def json_file(path: Path):
    return json.loads(path.read_text())


def junit(path: Path) -> dict:
    """pytest's --junitxml counts: passed, failures, errors, skipped."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def stage_times(path: Path) -> list[list[str]]:
    """scripts/train_default.sh's pipeline-times.log: [stage, seconds or 'skipped'] per line."""
    return [line.split("\t")[1:3] for line in path.read_text().splitlines()]


def run_log(path: Path) -> dict:
    """A training run's log.jsonl: the last step, the last window's tokens/s, the dev BLEU of each evaluation."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    speed = [r for r in rows if "tokens_per_s" in r]
    return {"last_step": max((r["step"] for r in rows), default=0),
            "tokens_per_s": round(speed[-1]["tokens_per_s"]) if speed else None,
            "dev_bleu": [[r["step"], r["dev_bleu"]] for r in rows if "dev_bleu" in r]}


def scores(path: Path) -> dict:
    result = json_file(path)
    return {"bleu": result["bleu"], "chrf": result["chrf"], "sentences": result["sentences"]}


def checksums(path: Path) -> dict[str, str]:
    """model.sha256 (sha256sum's format): file name -> SHA-256."""
    return {name: digest for digest, name in (line.split() for line in path.read_text().splitlines())}


def read(reader, path: Path):
    """reader(path), or None where the step left nothing readable (its rc and log say why)."""
    try:
        return reader(path)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, ET.ParseError):
        return None


def summary(args: argparse.Namespace) -> int:
    work, out_dir = Path(args.work), Path(args.out)
    logs, runs = work / "logs", work / "runs"
    steps = {}
    for line in (logs / "steps.tsv").read_text().splitlines():
        name, rc, seconds, limit = line.split("\t")
        steps[name] = {"rc": int(rc), "seconds": int(seconds), "limit_s": int(limit), "log": f"logs/{name}.log"}
    card = json_file(MODEL / "card.json")["scores"]
    out = {
        "device": args.device, "dry_run": args.dry_run, "wall_s": args.wall_s,
        "bundle": read(lambda p: p.read_text().strip(), logs / "bundle.txt"),
        "steps": steps, "failed_steps": [n for n, s in steps.items() if s["rc"] != 0],
        "preflight": read(json_file, logs / "preflight.json"),
        "gpu_tests": read(junit, logs / "gpu-tests.xml"),
        "decode": {n: read(last_json, logs / f"{n}.log") for n in ("decode-32", "decode-large")},
        "serve": read(json_file, logs / "serve.json"),
        "train_speed": {n: read(last_json, logs / f"{n}.log") for n in ("speed-small", "speed-base")},
        "pipeline": {"recipe": read(json_file, runs / "recipe.json"),
                     "stage_times": read(stage_times, runs / "pipeline-times.log"),
                     "runs": {d.name: read(run_log, d / "log.jsonl") for d in sorted(runs.glob("*/"))
                              if (d / "log.jsonl").is_file()},
                     "bt": read(lambda p: json_file(p)["counts"], runs / "bt" / "train_captions.state.json")},
        "scores": {n: read(scores, logs / f"eval-{n}.json") for n in EVAL_SETS},
        "shipped_model_bleu": {s["test_set"]: s["value"] for s in card if s["metric"] == "BLEU"},
        "model_parts": read(checksums, out_dir / "model.sha256"),
    }
    (out_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n".join(digest(out)))
    return 0


def digest(out: dict) -> list[str]:
    """The summary's main figures in a few lines (what the device tool's output tail shows)."""
    lines = [f"{n}: rc {s['rc']}, {s['seconds']} s of {s['limit_s']}" for n, s in out["steps"].items()]
    for name, decode in out["decode"].items():
        for system, r in (decode or {}).get("results", {}).items():
            lines.append(f"{name} {system}: {r['sentences_per_s']} sentences/s, {r['tokens_per_s']} tokens/s, BLEU "
                         f"{r['bleu']}, GPU {r.get('gpu_peak_mb', '-')} MiB")
    for load in (out["serve"] or {}).get("load", []):
        lines.append(f"serve C={load['concurrency']}: {load['sentences_per_s']:.0f} sentences/s, p50 "
                     f"{load['p50_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms, {load['different_from_offline']} of "
                     f"{load['compared']} differ from offline")
    for name, speed in out["train_speed"].items():
        if speed:
            lines.append(f"{name}: {speed['tokens_per_s_median']} tokens/s")
    lines.append(f"pipeline: {out['pipeline']['stage_times']}; test BLEU {out['scores']}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("preflight", "recipe", "summary"):
        s = sub.add_parser(name)
        s.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
        s.add_argument("--dry-run", action="store_true")
    sub.choices["preflight"].add_argument("--bundle", required=True)
    sub.choices["preflight"].add_argument("--json", required=True, help="the report, for the summary")
    r = sub.choices["recipe"]
    r.add_argument("--seconds", type=float, required=True, help="for the whole pipeline")
    r.add_argument("--data", required=True, help="the bundle's corpora")
    r.add_argument("--runs", required=True, help="the pipeline's RUNS: configs, recipe.env and the runs go there")
    r.add_argument("--decode-log", required=True, help="the batch-32 decode benchmark's log (its speed)")
    s = sub.choices["summary"]
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--wall-s", type=int, required=True)
    args = p.parse_args()
    return {"preflight": preflight, "recipe": recipe, "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
