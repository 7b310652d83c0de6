"""Whole training runs on the copy task: checkpoints, exact resume, DDP equivalence, learning."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seq2seq import ModelConfig, Transformer
from seq2seq import checkpoint as ckpt
from seq2seq.checkpoint import CheckpointError
from seq2seq.tokenizer import Tokenizer
from seq2seq.train import main as train_main

from conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def records(out: Path) -> dict[int, dict]:
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in lines if "loss" in r}


def test_checkpoint_round_trip_gives_identical_log_probs(tmp_path):
    tok = Tokenizer.train(["un chat noir", "a black cat", "deux chiens", "two dogs"] * 20, vocab_size=30)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(tok.vocab_size)).eval()
    payload = {"model": model.state_dict(), "tokenizer": tok.model_proto,
               "configs": {"model": model.config.to_dict()}}
    ckpt.save(tmp_path / "m.pt", payload)
    loaded, tok2 = ckpt.load_model(tmp_path / "m.pt")
    src = torch.tensor([tok.encode("un chat") + [0]])
    tgt = torch.tensor([[tok.pad_id] + tok.encode("a cat")])
    with torch.no_grad():
        assert torch.equal(model(src, tgt).log_softmax(-1), loaded(src, tgt).log_softmax(-1))
    assert tok2.encode("deux chiens") == tok.encode("deux chiens")


def test_corrupt_or_missing_checkpoint_gives_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ckpt.load_model(tmp_path / "none.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or unreadable checkpoint"):
        ckpt.load_model(tmp_path / "garbage.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a seq2seq checkpoint"):
        ckpt.load_model(tmp_path / "other.pt")


@pytest.mark.slow
def test_resume_after_stop_equals_uninterrupted_run(tmp_path, copy_corpus):
    cfg = tiny_config(tmp_path, copy_corpus)
    assert train_main(["--config", cfg, "--out", str(tmp_path / "straight"), "--max-steps", "40"]) == 0
    assert train_main(["--config", cfg, "--out", str(tmp_path / "resumed"), "--max-steps", "20"]) == 0
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint_*.pt"))[-1] == "checkpoint_00000020.pt"
    assert train_main(["--config", cfg, "--out", str(tmp_path / "resumed"), "--max-steps", "40"]) == 0
    straight, resumed = records(tmp_path / "straight"), records(tmp_path / "resumed")
    assert resumed[40]["loss"] == straight[40]["loss"]
    assert resumed[25]["loss"] == straight[25]["loss"]
    a = ckpt.load(tmp_path / "straight" / "checkpoint_00000040.pt")["model"]
    b = ckpt.load(tmp_path / "resumed" / "checkpoint_00000040.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "straight" / "averaged.pt").exists() is False  # average_last is off by default


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, copy_corpus):
    cfg = tiny_config(tmp_path, copy_corpus, max_steps=300, eval_every=0, save_every=10, log_every=5)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "seq2seq.train", "--config", cfg]
    straight = subprocess.run([*command, "--out", str(tmp_path / "straight")], env=env, capture_output=True,
                              timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    (tmp_path / "killed").mkdir()  # the same tokenizer, so that the two runs see the same ids
    (tmp_path / "killed" / "spm.model").write_bytes((tmp_path / "straight" / "spm.model").read_bytes())
    proc = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 5):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # mid-run, between checkpoints or even while writing one
    proc.wait()
    saved = sorted(p.name for p in (tmp_path / "killed").glob("checkpoint_*.pt"))
    assert saved and saved[-1] < "checkpoint_00000300.pt", saved  # it really stopped early
    resumed = subprocess.run([*command, "--out", str(tmp_path / "killed")], env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert records(tmp_path / "killed")[300]["loss"] == records(tmp_path / "straight")[300]["loss"]
    a = ckpt.load(tmp_path / "straight" / "checkpoint_00000300.pt")["model"]
    b = ckpt.load(tmp_path / "killed" / "checkpoint_00000300.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_same_global_batch(tmp_path, copy_corpus):
    cfg = tiny_config(tmp_path, copy_corpus, max_steps=10, eval_every=0, save_every=10)
    common = ["--config", cfg, "--dropout", "0", "--max-steps", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    one = subprocess.run([sys.executable, "-m", "seq2seq.train", *common, "--out", str(tmp_path / "one"),
                          "--accum-steps", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    # The second run reuses the first one's tokenizer so both see identical ids.
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "spm.model").write_bytes((tmp_path / "one" / "spm.model").read_bytes())
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29517", "-m", "seq2seq.train", *common, "--out", str(tmp_path / "two"),
                          "--accum-steps", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    r1, r2 = records(tmp_path / "one"), records(tmp_path / "two")
    for step in (5, 10):
        assert r2[step]["loss"] == pytest.approx(r1[step]["loss"], rel=1e-5)
        assert r2[step]["nll"] == pytest.approx(r1[step]["nll"], rel=1e-5)
    a = ckpt.load(tmp_path / "one" / "checkpoint_00000010.pt")["model"]
    b = ckpt.load(tmp_path / "two" / "checkpoint_00000010.pt")["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.slow
def test_tiny_model_learns_the_copy_task(copy_model):
    from seq2seq.config import DecodeConfig
    from seq2seq.translator import Translator

    translator = Translator.from_checkpoint(copy_model / "best.pt", device="cpu")
    sentences = ["ba ce di fo", "ka ge da bu", "co fi gu ke ba"]  # words of the corpus, new sentences
    out = [t.text for t in translator.translate(sentences, DecodeConfig(beam_size=1))]
    assert sum(o == s for o, s in zip(out, sentences)) >= 2, out
    dev = [json.loads(x) for x in (copy_model / "log.jsonl").read_text().splitlines() if "dev_bleu" in x]
    assert dev[-1]["dev_bleu"] > 80


def test_resume_with_another_batch_layout_is_refused(tmp_path, copy_corpus, capsys):
    cfg = tiny_config(tmp_path, copy_corpus, max_steps=5, eval_every=0, save_every=5)
    assert train_main(["--config", cfg, "--out", str(tmp_path / "run")]) == 0
    code = train_main(["--config", cfg, "--out", str(tmp_path / "run"), "--max-steps", "10", "--accum-steps", "2"])
    assert code == 2 and "took 1 micro-batches per step" in capsys.readouterr().err
