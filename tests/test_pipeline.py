"""scripts/train_default.sh end to end, tiny: carve dev, en→fr, back-translation, fr→en with the synthetic corpus,
fr→en continued on the real pairs, export. Each stage must leave what the next one reads; a rerun skips every stage."""
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq import checkpoint as ckpt
from seq2seq.config import DecodeConfig
from seq2seq.tokenizer import Tokenizer
from seq2seq.translator import Translator

from conftest import WORDS, copy_pairs, write_corpus

ROOT = Path(__file__).resolve().parent.parent
BT_LIMIT = 120


def tiny(path: Path, src: str, tgt: str, train: list, max_steps: int, dev: str | None = None) -> str:
    """A config for a run of seconds: the tiny model of conftest.tiny_config, checkpoints averaged at the end; a few
    hundred steps teach it to copy (so that back-translation outputs are not empty). With `dev`, evaluations keep
    best.pt (the back-translation stage reads the en→fr run's best.pt)."""
    cfg = {"model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "d_ff": 64, "dropout": 0.0},
           "data": {"src_lang": src, "tgt_lang": tgt, "train": train, "vocab_size": 60, "max_tokens": 400,
                    "max_len": 32, "bt_tag": src == "fr", "dev": dev},
           "train": {"max_steps": max_steps, "warmup_steps": 50, "lr_scale": 0.15, "log_every": 50,
                     "eval_every": max_steps // 2 if dev else 0, "save_every": 50, "average_last": 2, "threads": 1}}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("pipeline")
    data, runs, out = tmp / "data", tmp / "runs", tmp / "models" / "fr-en-tiny"
    # A stand-in for ../shared/data: copy-task pairs (French = English) and monolingual English captions.
    write_corpus(data / "tatoeba" / "train", copy_pairs(300, 11))
    write_corpus(data / "multi30k" / "train", copy_pairs(200, 12))
    rng = random.Random(13)
    captions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(200)]
    with gzip.open(data / "multi30k" / "train_captions.en.gz", "wt", encoding="utf-8") as f:
        f.writelines(c + "\n" for c in captions)
    bt = str(runs / "bt" / "train_captions")
    frenf_train = [{"path": str(data / "multi30k" / "train"), "weight": 2}, str(runs / "data" / "tatoeba_train"),
                   {"path": bt, "synthetic": True}]
    env = {**os.environ, "RUNS": str(runs), "DATA": str(data), "OUT": str(out), "PY": sys.executable,
           "CONFIG_ENFR": tiny(tmp / "en-fr-tiny.yaml", "en", "fr", [str(data / "multi30k" / "train"),
                                                                      str(runs / "data" / "tatoeba_train")], 400,
                               dev=str(runs / "data" / "tatoeba_dev")),
           "CONFIG_FRENF": tiny(tmp / "fr-en-tiny.yaml", "fr", "en", frenf_train, 200),
           "CONFIG_FT": tiny(tmp / "fr-en-ft-tiny.yaml", "fr", "en", frenf_train[:2], 300),
           "DEV_SIZE": "20", "BT_LIMIT": str(BT_LIMIT), "BT_ARGS": "--beam-size 2", "EVAL": "0",
           "OMP_NUM_THREADS": "1"}
    first = subprocess.run(["bash", "scripts/train_default.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    times_after_first = (runs / "pipeline-times.log").read_text()
    again = subprocess.run(["bash", "scripts/train_default.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    return {"runs": runs, "out": out, "bt": bt, "captions": captions, "frenf_train": frenf_train,
            "times": times_after_first, "rerun_stderr": again.stderr,
            "rerun_times": (runs / "pipeline-times.log").read_text()[len(times_after_first):]}


def lines(path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.mark.slow
def test_carve_and_en_fr_stages(pipeline):
    runs = pipeline["runs"]
    train, dev = lines(runs / "data" / "tatoeba_train.en.gz"), lines(runs / "data" / "tatoeba_dev.en.gz")
    assert len(dev) >= 20 and len(train) + len(dev) <= 300 and not set(train) & set(dev)
    payload = ckpt.load(runs / "en-fr-tiny" / "averaged.pt")
    assert (payload["configs"]["data"]["src_lang"], payload["configs"]["data"]["tgt_lang"]) == ("en", "fr")
    assert len(payload["averaged"]) == 2
    ckpt.load_model(runs / "en-fr-tiny" / "averaged.pt")  # loads: weights, config and tokenizer agree


@pytest.mark.slow
def test_backtranslation_stage_writes_an_aligned_synthetic_corpus(pipeline):
    synthetic, english = lines(pipeline["bt"] + ".fr.gz"), lines(pipeline["bt"] + ".en.gz")
    state = json.loads(Path(pipeline["bt"] + ".state.json").read_text())
    written = state["written"]  # BT_LIMIT < --chunk-lines: one chunk cut short, written but not committed
    assert written["lines"] == BT_LIMIT and state["chunks_done"] == 0 and state["options"]["search"]["beam_size"] == 2
    # every kept caption in order, each with a non-empty translation; only empty translations are dropped
    assert len(synthetic) == len(english) == written["pairs"] == BT_LIMIT - written["empty_output"] > 0
    assert all(s.strip() for s in synthetic)
    it = iter(pipeline["captions"][:BT_LIMIT])
    assert all(any(e == c for c in it) for e in english)  # a subsequence of the first BT_LIMIT captions


@pytest.mark.slow
def test_fr_en_stage_trains_on_the_tagged_synthetic_corpus(pipeline):
    payload = ckpt.load(pipeline["runs"] / "fr-en-tiny" / "averaged.pt")
    data = payload["configs"]["data"]
    assert (data["src_lang"], data["tgt_lang"], data["bt_tag"]) == ("fr", "en", True)
    assert data["train"] == [{"path": pipeline["frenf_train"][0]["path"], "weight": 2.0, "synthetic": False},
                             pipeline["frenf_train"][1],
                             {"path": pipeline["bt"], "weight": 1.0, "synthetic": True}]
    assert Tokenizer(payload["tokenizer"]).bt_tag_id == 2


@pytest.mark.slow
def test_continued_stage_starts_from_the_last_fr_en_checkpoint_on_the_real_pairs(pipeline):
    runs = pipeline["runs"]
    payload = ckpt.load(runs / "fr-en-ft-tiny" / "averaged.pt")
    assert payload["configs"]["data"]["train"] == [{"path": pipeline["frenf_train"][0]["path"], "weight": 2.0,
                                                    "synthetic": False}, pipeline["frenf_train"][1]]
    assert payload["tokenizer"] == ckpt.load(runs / "fr-en-tiny" / "averaged.pt")["tokenizer"]
    events = [r for r in map(json.loads, (runs / "fr-en-ft-tiny" / "log.jsonl").read_text().splitlines())
              if "event" in r]
    assert events[0] == {"step": 200, "event": "continued",
                         "from": str(runs / "fr-en-tiny" / "checkpoint_00000200.pt")}
    assert sorted(payload["averaged"]) == [str(runs / "fr-en-ft-tiny" / f"checkpoint_{s:08d}.pt") for s in (250, 300)]


@pytest.mark.slow
def test_exported_model_loads_and_translates(pipeline):
    out = pipeline["out"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "spm.model"]
    exported, tok = ckpt.load_model(out)
    trained, _ = ckpt.load_model(pipeline["runs"] / "fr-en-ft-tiny" / "averaged.pt")
    src = torch.tensor([tok.encode("ba ce di fo") + [0]])
    tgt = torch.tensor([[tok.pad_id] + tok.encode("ba ce")])
    with torch.no_grad():  # the same network, in fp16 weights (<pad> is -inf in both)
        torch.testing.assert_close(exported(src, tgt).log_softmax(-1), trained(src, tgt).log_softmax(-1), atol=0.02,
                                   rtol=0)
    sentences, greedy = ["ba ce di fo", "ka ge da bu"], DecodeConfig(beam_size=1)
    shipped = [t.text for t in Translator.from_checkpoint(out, device="cpu").translate(sentences, greedy)]
    run = [t.text for t in Translator.from_checkpoint(pipeline["runs"] / "fr-en-ft-tiny" / "averaged.pt",
                                                      device="cpu").translate(sentences, greedy)]
    assert shipped == run and all(shipped), shipped


@pytest.mark.slow
def test_every_stage_is_timed_and_a_rerun_skips_them_all(pipeline):
    stages = ["carve", "en-fr", "bt", "fr-en", "fr-en-ft", "export"]
    first = [line.split("\t") for line in pipeline["times"].splitlines()]
    assert [f[1] for f in first] == stages and all(f[2].endswith(" s") and float(f[2][:-2]) > 0 for f in first)
    rerun = [line.split("\t") for line in pipeline["rerun_times"].splitlines()]
    assert [(r[1], r[2]) for r in rerun] == [(s, "skipped") for s in stages]
    assert "card" not in pipeline["times"]  # EVAL=0
