"""Whole training runs on the copy task: checkpoints, exact resume, DDP equivalence, learning."""
import json
import os
import signal
import stat
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
from seq2seq.train import Run, agree_to_stop
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


def events(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "event" in r]


def train_until_signal(tmp_path: Path, copy_corpus, sig: signal.Signals) -> tuple[list[str], dict, int]:
    """Start `seq2seq-train` for 200 steps, send `sig` at about step 10, check the stop; -> (command, env, step)."""
    cfg = tiny_config(tmp_path, copy_corpus, max_steps=200, eval_every=0, save_every=1000, log_every=5)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "seq2seq.train", "--config", cfg, "--out", str(tmp_path / "run")]
    with open(tmp_path / "stopped.err", "w") as err:
        # SIGINT at its default in the child: a test run started in the background of a non-interactive shell
        # (nohup ... &) ignores SIGINT, and training rightly leaves an ignored signal ignored
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        log = tmp_path / "run" / "log.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 2):
            time.sleep(0.01)
        proc.send_signal(sig)  # a step takes ~10 ms: far from step 200
        assert proc.wait(timeout=60) == 0, (tmp_path / "stopped.err").read_text()[-2000:]
    [stopped] = events(tmp_path / "run")
    step = stopped["step"]
    assert stopped["event"] == "interrupted" and stopped["signal"] == sig.name and 10 <= step < 200, stopped
    assert [p.name for p in (tmp_path / "run").glob("checkpoint_*.pt")] == [f"checkpoint_{step:08d}.pt"]
    assert ckpt.load(tmp_path / "run" / f"checkpoint_{step:08d}.pt")["state"]["step"] == step
    assert records(tmp_path / "run")[step]["step"] == step  # the steps since the last log record are logged too
    assert not (tmp_path / "run" / "loss.png").exists()  # not finished: no averaging, no plot
    return command, env, step


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_0_and_the_same_command_resumes(tmp_path, copy_corpus):
    command, env, step = train_until_signal(tmp_path, copy_corpus, signal.SIGTERM)
    stopped = events(tmp_path / "run")[0]
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {tmp_path / 'run'}/checkpoint_{step:08d}.pt at step {step}" in resumed.stderr
    assert events(tmp_path / "run") == [stopped, {"step": step, "event": "resumed"}]
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum(r["steps"] for r in lines if "loss" in r) == 200  # each step trained and logged exactly once
    assert max(records(tmp_path / "run")) == 200 and (tmp_path / "run" / "checkpoint_00000200.pt").exists()
    assert (tmp_path / "run" / "loss.png").exists()  # finished this time


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_0(tmp_path, copy_corpus):
    train_until_signal(tmp_path, copy_corpus, signal.SIGINT)  # Ctrl-C: the same clean stop


def test_signal_stops_at_the_step_boundary_and_the_handlers_come_back(tmp_path, copy_corpus, monkeypatch):
    cfg = tiny_config(tmp_path, copy_corpus, max_steps=50, eval_every=0, save_every=1000)
    train_step = Run.train_step

    def signalled_at_step_3(self):
        record = train_step(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-loop; the handler only takes note
        return record

    monkeypatch.setattr(Run, "train_step", signalled_at_step_3)
    def sentinel(signum, frame):
        raise AssertionError("the training loop's handler should have taken SIGTERM")

    previous = signal.getsignal(signal.SIGINT)
    old = signal.signal(signal.SIGTERM, sentinel)
    try:
        assert train_main(["--config", cfg, "--out", str(tmp_path / "run")]) == 0
        assert signal.getsignal(signal.SIGTERM) is sentinel and signal.getsignal(signal.SIGINT) is previous
    finally:
        signal.signal(signal.SIGTERM, old)
    assert [p.name for p in (tmp_path / "run").glob("checkpoint_*.pt")] == ["checkpoint_00000003.pt"]
    assert events(tmp_path / "run") == [{"step": 3, "event": "interrupted", "signal": "SIGTERM",
                                         "checkpoint": str(tmp_path / "run" / "checkpoint_00000003.pt")}]


def _agree_on_rank(rank: int, init_file: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    run = type("FakeRun", (), {"rank": rank, "world": 2, "device": torch.device("cpu")})()
    cases = [(False, False), (rank == 1, rank == 1), (True, False), (False, rank == 0)]
    results.put((rank, [agree_to_stop(run, out_of_time, signalled) for out_of_time, signalled in cases]))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_to_stop_on_rank_0s_clock_and_on_a_signal_to_any_rank(tmp_path):
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_agree_on_rank, args=(str(tmp_path / "init"), results), nprocs=2)
    got = dict(results.get() for _ in range(2))
    #            neither          rank 1 out of time + signalled   both out of time   rank 0 signalled
    expected = [(False, False), (False, True), (True, False), (False, True)]
    assert got == {0: expected, 1: expected}


def test_resume_checks_the_restored_step_against_the_checkpoint(tmp_path, copy_corpus, monkeypatch, capsys):
    cfg = tiny_config(tmp_path, copy_corpus, max_steps=3, eval_every=0, save_every=3)
    assert train_main(["--config", cfg, "--out", str(tmp_path / "run")]) == 0
    restore = Run._restore

    def off_by_one(self, payload):
        restore(self, payload)
        self.step += 1

    monkeypatch.setattr(Run, "_restore", off_by_one)
    assert train_main(["--config", cfg, "--out", str(tmp_path / "run"), "--max-steps", "6"]) == 2
    assert "checkpoint_00000003.pt records step 3, but the restored run stands at 4" in capsys.readouterr().err


def test_failed_checkpoint_write_leaves_no_temp_file_and_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_00000010.pt"
    ckpt.save(path, {"model": {"w": torch.ones(3)}})
    before = path.read_bytes()

    def disk_full(payload, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save(path, {"model": {"w": torch.zeros(3)}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_00000010.pt"]  # no .tmp left behind
    assert path.read_bytes() == before and torch.equal(torch.load(path)["model"]["w"], torch.ones(3))


def test_checkpoint_save_fsyncs_the_file_before_the_rename_then_the_directory(tmp_path, monkeypatch):
    calls = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        st = os.fstat(fd)
        calls.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        fsync(fd)

    def recording_replace(src, dst):
        calls.append(("replace", "file", os.stat(src).st_ino))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    ckpt.save(tmp_path / "m.pt", {"model": {"w": torch.ones(3)}})
    file_ino, dir_ino = (tmp_path / "m.pt").stat().st_ino, tmp_path.stat().st_ino
    assert calls == [("fsync", "file", file_ino), ("replace", "file", file_ino), ("fsync", "dir", dir_ino)]
    assert torch.equal(torch.load(tmp_path / "m.pt")["model"]["w"], torch.ones(3))


def test_init_from_continues_weights_step_and_clock_on_new_data(tmp_path, copy_corpus, capsys):
    cfg = tiny_config(tmp_path, copy_corpus, max_steps=20, eval_every=0, save_every=10)
    assert train_main(["--config", cfg, "--out", str(tmp_path / "base")]) == 0
    start = str(tmp_path / "base" / "checkpoint_00000010.pt")
    # On the same data, continuing from step 10 is the uninterrupted run: weights, Adam, schedule and data position.
    assert train_main(["--config", cfg, "--out", str(tmp_path / "same"), "--init-from", start]) == 0
    a = ckpt.load(tmp_path / "base" / "checkpoint_00000020.pt")
    b = ckpt.load(tmp_path / "same" / "checkpoint_00000020.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert sorted(records(tmp_path / "same")) == [15, 20]
    assert events(tmp_path / "same")[0] == {"step": 10, "event": "continued", "from": start}
    assert records(tmp_path / "same")[15]["elapsed_s"] > ckpt.load(start)["state"]["elapsed"]  # the clock went on
    # On other data: the run records its own corpus, and resumes from its own checkpoints afterwards.
    args = ["--config", cfg, "--out", str(tmp_path / "more"), "--init-from", start, "--train", copy_corpus["dev"]]
    assert train_main(args) == 0
    more = ckpt.load(tmp_path / "more" / "checkpoint_00000020.pt")
    assert more["configs"]["data"]["train"] == [copy_corpus["dev"]] and more["tokenizer"] == a["tokenizer"]
    assert not torch.equal(more["model"]["embed.tokens.weight"], a["model"]["embed.tokens.weight"])
    assert train_main([*args, "--max-steps", "25"]) == 0
    assert sorted(records(tmp_path / "more")) == [15, 20, 25]
    assert [(e["step"], e["event"]) for e in events(tmp_path / "more")] == [(10, "continued"), (20, "resumed")]
    # init_from keeps the model, and needs a step checkpoint with its optimizer.
    code = train_main(["--config", cfg, "--out", str(tmp_path / "wide"), "--init-from", start, "--d-model", "64"])
    assert code == 2 and "these model settings differ: d_model" in capsys.readouterr().err
    ckpt.save(tmp_path / "weights.pt", {k: a[k] for k in ("model", "configs", "tokenizer")})
    code = train_main(["--config", cfg, "--out", str(tmp_path / "w"), "--init-from", str(tmp_path / "weights.pt")])
    assert code == 2 and "needs a step checkpoint" in capsys.readouterr().err
    # A missing or empty path, or a checkpoint already past the run's limits: one line and exit status 2.
    for bad, message in ((str(tmp_path / "none.pt"), "checkpoint not found"), ("", "train.init_from is empty"),
                         (str(tmp_path / "base" / "checkpoint_00000020.pt"), "already stands at step 20")):
        code = train_main(["--config", cfg, "--out", str(tmp_path / "bad"), "--init-from", bad])
        assert code == 2 and message in capsys.readouterr().err


def test_spm_data_real_trains_the_vocabulary_on_each_real_corpus_once(tmp_path, copy_corpus, monkeypatch):
    """Oversampled captions pushed 'Bonjour' out of the shipped vocabulary; spm_data: real gives SentencePiece each
    corpus not marked synthetic once, whatever its weight, and none of the synthetic pairs."""
    import yaml

    from seq2seq.tokenizer import Tokenizer
    from seq2seq.train import main as train_main
    seen: list[int] = []
    train = Tokenizer.train.__func__

    def counting(cls, sentences, *args, **kwargs):
        sentences = list(sentences)
        seen.append(len(sentences))
        return train(cls, sentences, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "train", classmethod(counting))
    for spm_data, expected in (("mix", 2 * (3 * 3000 + 3000)), ("real", 2 * 3000)):
        cfg = yaml.safe_load(open(tiny_config(tmp_path, copy_corpus, max_steps=1, eval_every=1, save_every=1)))
        cfg["data"]["train"] = [{"path": copy_corpus["train"], "weight": 3},
                                {"path": copy_corpus["train"], "synthetic": True}]
        cfg["data"]["spm_data"] = spm_data
        path = tmp_path / f"{spm_data}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert train_main(["--config", str(path), "--out", str(tmp_path / spm_data)]) == 0
        assert seen[-1] == expected, spm_data
    from seq2seq.config import ConfigError, DataConfig
    with pytest.raises(ConfigError, match="spm_data must be 'mix' or 'real', got 'all'"):
        DataConfig(train=(copy_corpus["train"],), spm_data="all")


def test_training_caps_onednn_kernel_cache_and_keeps_a_users_value(tmp_path, monkeypatch, capsys):
    # 1,024 kernels (oneDNN's default) let a one-core bf16 run grow past 20 GB; seq2seq-train keeps 256 unless told
    missing = str(tmp_path / "missing.yaml")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert train_main(["--config", missing, "--out", str(tmp_path / "a")]) == 2
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    assert train_main(["--config", missing, "--out", str(tmp_path / "b")]) == 2
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    assert "config file not found" in capsys.readouterr().err


def test_reset_optimizer_keeps_the_weights_and_warms_up_into_eq_3_at_the_step_reached(tmp_path, copy_corpus, capsys):
    from seq2seq.optim import learning_rate

    cfg = tiny_config(tmp_path, copy_corpus, max_steps=20, eval_every=0, save_every=20, warmup_steps=10)
    assert train_main(["--config", cfg, "--out", str(tmp_path / "base")]) == 0
    exported = ckpt.save_model_dir(ckpt.load(tmp_path / "base" / "checkpoint_00000020.pt"), tmp_path / "model")
    # A model directory records no step: the run needs init_step, and says so.
    reset = ["--reset-optimizer", "true", "--rewarmup-steps", "4", "--max-steps", "30", "--save-every", "5"]
    code = train_main(["--config", cfg, "--out", str(tmp_path / "x"), "--init-from", str(exported), *reset])
    assert code == 2 and "give train.init_step" in capsys.readouterr().err
    assert train_main(["--config", cfg, "--out", str(tmp_path / "c"), "--init-from", str(exported), "--init-step",
                       "20", *reset]) == 0
    first = ckpt.load(tmp_path / "c" / "checkpoint_00000025.pt")
    assert first["configs"]["train"]["init_step"] == 20 and first["state"]["elapsed"] < 60  # the clock from 0
    # eq. 3 at steps 21, 22, ... times 1/4, 2/4, 3/4, then 1: the rates Adam used, as the scheduler gives them
    lrs = [r["lr"] for r in (json.loads(x) for x in (tmp_path / "c" / "log.jsonl").read_text().splitlines())
           if "lr" in r]
    d = first["configs"]["model"]["d_model"]
    assert lrs[0] == pytest.approx(learning_rate(25, d, 10, 2.0))  # the 5th update of the continuation: warm
    from seq2seq.config import TrainConfig
    from seq2seq.optim import build_optimizer
    model = Transformer(ModelConfig.from_dict(first["configs"]["model"]))
    _, scheduler = build_optimizer(model, TrainConfig.from_dict(first["configs"]["train"]), d)
    rates = [scheduler.lr_lambdas[0](n) for n in range(6)]  # base lr 1: the lambda is the rate of update n + 1
    assert rates == pytest.approx([learning_rate(21 + i, d, 10, 2.0) * min(1, (i + 1) / 4) for i in range(6)])
    # The weights it starts from are the export's (fp16 on disk): with a warmup too long to move them, 5 steps later
    # they are still the export's, and far from a fresh initialisation.
    assert train_main(["--config", cfg, "--out", str(tmp_path / "still"), "--init-from", str(exported), "--init-step",
                       "20", *reset, "--rewarmup-steps", "1000000000", "--max-steps", "25"]) == 0
    start = ckpt.load(exported)["model"]
    still = ckpt.load(tmp_path / "still" / "checkpoint_00000025.pt")["model"]
    assert max((still[k] - start[k]).abs().max().item() for k in start) < 1e-5
    fresh = Transformer(ModelConfig.from_dict(first["configs"]["model"])).state_dict()
    assert max((fresh[k] - start[k]).abs().max().item() for k in start) > 0.1
    # It resumes from its own checkpoints like any run: same init_step, the schedule goes on.
    assert train_main(["--config", cfg, "--out", str(tmp_path / "c"), "--max-steps", "35"]) == 0
    assert sorted(records(tmp_path / "c"))[-1] == 35
    assert ckpt.load(tmp_path / "c" / "checkpoint_00000035.pt")["configs"]["train"]["init_step"] == 20
