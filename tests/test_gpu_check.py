"""The GPU check (scripts/gpu_check.sh, issue 24) run dry on this CPU, as `make gpu-dry-run` does: the same bundle
step, steps and outputs at tiny sizes, so that the script cannot rot between lent GPUs. Plus the pipeline's sizing
to the time left and the GPU recipe's configs, without a run."""
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

from seq2seq import checkpoint as ckpt
from seq2seq.options import build, read_config_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_bundle  # noqa: E402
import gpu_check  # noqa: E402

MIB = 2 ** 20
STEPS = ["prepare", "gpu-tests", "decode-32", "decode-large", "serve", "speed-small", "speed-base", "pipeline",
         "eval"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu-check-out")
    env = {**os.environ, "OUT": str(out), "PY": sys.executable}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--device", "cpu", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=480)
    assert (out / "summary.json").is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    return {"out": out, "rc": done.returncode, "stdout": done.stdout,
            "summary": json.loads((out / "summary.json").read_text())}


@pytest.mark.slow
def test_every_step_runs_in_order_within_its_limit(dry_run):
    summary = dry_run["summary"]
    assert dry_run["rc"] == 0 and summary["failed_steps"] == [], dry_run["stdout"][-3000:]
    assert list(summary["steps"]) == STEPS
    assert all(0 <= s["seconds"] <= s["limit_s"] for s in summary["steps"].values())
    assert summary["wall_s"] <= 600  # the dry run's TOTAL_S (about 100 s on two quiet cores)


@pytest.mark.slow
def test_the_bundle_is_printed_small_enough_and_made_for_cpython_312(dry_run):
    bundle = re.search(r"bundle \S+: ([\d.]+) MiB .*the tree a device call sends with it: ([\d.]+) MiB",
                       dry_run["stdout"])
    assert bundle and float(bundle.group(1)) < 40 and float(bundle.group(2)) < 64, dry_run["stdout"][:2000]
    manifest = json.loads((ROOT / ".gpu-bundle" / "MANIFEST.json").read_text())
    assert sorted(manifest["wheels"]) == sorted(gpu_bundle.WHEELS)
    platforms = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"]
    device_tags = {*cpython_tags((3, 12), ["cp312"], platforms), *compatible_tags((3, 12), "cp312", platforms)}
    for wheel in manifest["wheels"].values():
        assert set(parse_wheel_filename(wheel["file"])[3]) & device_tags, wheel["file"]
    versions = {n: tuple(map(int, w["version"].split(".")[:3])) for n, w in manifest["wheels"].items()}
    assert versions["grpcio"] >= (1, 85, 1) and versions["protobuf"] >= (7, 35, 1)  # the stubs' headers
    assert dry_run["summary"]["preflight"]["problems"] == []


@pytest.mark.slow
def test_out_holds_what_the_device_tool_returns(dry_run):
    files = [p for p in dry_run["out"].rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * MIB for p in files)
    assert all(len(p.relative_to(dry_run["out"]).parts) <= 3 for p in files)  # $OUT/a/b/file at most
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files)
    assert {"summary.json", "logs.tar.gz", "model.sha256", "model.tar.00"} <= {p.name for p in files}
    with tarfile.open(dry_run["out"] / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert {"logs/steps.tsv", "logs/pipeline.log", "runs/pipeline-times.log", "runs/en-fr-gpu/log.jsonl"} <= set(names)


@pytest.mark.slow
def test_the_model_parts_rejoin_to_the_exported_model(dry_run, tmp_path):
    out = dry_run["out"]
    sums = gpu_check.checksums(out / "model.sha256")
    parts = sorted(out.glob("model.tar.??"))
    assert [p.name for p in parts] == sorted(set(sums) - {"model.tar"})
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == sums[p.name] for p in parts)
    whole = b"".join(p.read_bytes() for p in parts)
    assert hashlib.sha256(whole).hexdigest() == sums["model.tar"] == dry_run["summary"]["model_parts"]["model.tar"]
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        tar.extractall(tmp_path, filter="data")
    model, tokenizer = ckpt.load_model(tmp_path / "fr-en-small-gpu")
    assert model.config.d_model == 32 and tokenizer.vocab_size == model.config.vocab_size  # the dry recipe's model
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_each_step_leaves_sane_figures(dry_run):
    s = dry_run["summary"]
    assert s["gpu_tests"]["tests"] == 5 and s["gpu_tests"]["failures"] == s["gpu_tests"]["errors"] == 0
    if not torch.cuda.is_available():
        assert s["gpu_tests"]["skipped"] == 5
    for name, batch in (("decode-32", 32), ("decode-large", 64)):
        decode = s["decode"][name]
        assert (decode["batch_size"], decode["sentences"], sorted(decode["results"])) == (
            batch, 64, ["ours-bf16", "ours-fp32"])
        assert all(30 < r["bleu"] < 80 and r["tokens_per_s"] > 0 for r in decode["results"].values())  # shipped
    for system in ("ours-fp32", "ours-bf16"):  # the engine's batch changes speed, not quality
        assert abs(s["decode"]["decode-32"]["results"][system]["bleu"]
                   - s["decode"]["decode-large"]["results"][system]["bleu"]) <= 1.0
    loads = s["serve"]["load"]
    assert [(x["concurrency"], x["requests"], x["compared"]) for x in loads] == [(8, 32, 32), (32, 64, 64)]
    assert all(0 < x["p50_ms"] <= x["p99_ms"] and x["sentences_per_s"] > 0 for x in loads)
    if s["serve"]["offline"]["precision"] in ("fp32", "bf16"):  # batch-invariant on CPU (int8 is not)
        assert all(x["different_from_offline"] == 0 for x in loads)
    for name, config in (("speed-small", "small"), ("speed-base", "base")):
        speed = s["train_speed"][name]
        assert speed["config"] == config and min(speed["tokens_per_s_median"].values()) > 0


@pytest.mark.slow
def test_the_pipeline_runs_every_stage_and_the_eval_scores_its_model(dry_run):
    pipeline = dry_run["summary"]["pipeline"]
    assert [stage for stage, _ in pipeline["stage_times"]] == ["carve", "en-fr", "bt", "fr-en", "fr-en-ft", "export"]
    assert all(t.endswith(" s") for _, t in pipeline["stage_times"])
    assert {name: r["last_step"] for name, r in pipeline["runs"].items()} == {
        "en-fr-gpu": 400, "fr-en-bt-gpu": 200, "fr-en-bt-ft-gpu": 300}  # gpu_check.DRY_STEPS
    bt = pipeline["bt"]
    assert bt["lines"] == 150 and bt["pairs"] == bt["lines"] - bt["empty_output"] > 0
    scores = dry_run["summary"]["scores"]
    assert sorted(scores) == sorted(gpu_check.EVAL_SETS)
    assert all(x["sentences"] == 50 and 0 <= x["bleu"] <= 100 for x in scores.values())


def test_the_budget_splits_the_time_left():
    assert sum(gpu_check.OVERHEAD_S.values()) == 150
    # 400 s: 250 left after the overheads; all 3,000 captions take 10 s at 300/s (under a quarter of 250), 240 s train
    plan = gpu_check.budget(400, bt_rate=300, captions=3000)
    assert plan["bt_lines"] == 3000
    assert plan["max_minutes"] == {"en-fr": 1.4, "fr-en": 1.8, "fr-en-ft": 2.6}  # ft's counts both fr→en stages
    # 115,485 captions would take 385 s: back-translation gets its quarter of the 250 s, 62.5 s = 18,750 captions
    assert gpu_check.budget(400, bt_rate=300, captions=115_485)["bt_lines"] == 18_750
    short = gpu_check.budget(60, bt_rate=300, captions=115_485)  # less than the overheads: every stage at its floor
    assert short["max_minutes"] == {"en-fr": 0.2, "fr-en": 0.2, "fr-en-ft": 0.4} and short["bt_lines"] == 1


@pytest.mark.parametrize("name", sorted(gpu_check.CONFIGS.values()))
def test_the_gpu_recipe_configs_are_valid_and_point_at_the_run(tmp_path, name):
    path = gpu_check.write_config(name, "/bundle/data", str(tmp_path), "cuda", 1.5, dry=False)
    text = path.read_text()
    assert "../shared" not in text and "~/runs" not in text and "/bundle/data/multi30k/train" in text
    sections = read_config_file(path)
    model, data, train = build(sections, vocab_size=10_001)
    assert (train.device, train.max_minutes, train.precision, data.max_tokens) == ("cuda", 1.5, "bf16", 24_000)
    assert data.dev == "/bundle/data/multi30k/val"
    if sections["model"]:  # the continued stage takes its model from the checkpoint
        assert (model.d_model, model.n_layers) == (256, 4)  # the shipped model's size (see en-fr-gpu.yaml)
