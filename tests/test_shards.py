"""Batch translation over several processes (seq2seq.shards): `torchrun --nproc-per-node 2` (gloo, one thread per
rank) writes exactly what one process writes, a killed rank resumes, and the pieces (which rank gets which chunk,
the join of the parts) are checked without processes too."""
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import WORDS
from seq2seq.shards import Output, Part, Shard, join
from seq2seq.translator import int8_engine

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 25  # lines per chunk: 40 chunks of the 1,000 lines, 20 per rank
# int8 takes one activation scale over the whole batch, so a sentence batched with other sentences than in the
# single-process run would come out different (35 of these 1,000 lines do, between chunks of 50 and 100): equal
# outputs show that every chunk is translated as one process translates it. fp32 and bf16 would not show it.
PRECISION = "int8" if int8_engine() == "fbgemm" else "fp32"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every process of every run


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def translate_args(model: Path, source: Path, *more: str) -> list[str]:
    return ["-m", "seq2seq.translate", "--model", str(model / "best.pt"), "--precision", PRECISION,
            "--chunk-lines", str(CHUNK), "--input", str(source), *more]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """1,000 lines of the copy corpus's words, every 97th empty."""
    rng = random.Random(11)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(1000)]
    for i in range(0, len(lines), 97):
        lines[i] = ""
    path = tmp_path_factory.mktemp("shards") / "fr.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(copy_model, source) -> list[str]:
    """One process, stdin to stdout: the path that existed before --output."""
    r = subprocess.run([sys.executable, *translate_args(copy_model, source)[:-2]], input=source.read_text(),
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    inputs = source.read_text().splitlines()
    assert len(out) == 1000 and all(o == "" for o, i in zip(out, inputs) if not i)
    assert sum(o == i for o, i in zip(out, inputs) if i) > 700  # the copy model copies
    return out


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(copy_model, source, reference, tmp_path):
    r = run(torchrun(*translate_args(copy_model, source, "--output", str(tmp_path / "en.txt"))))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "en.txt").read_text().splitlines() == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["en.txt", "en.txt.state.json"]  # the parts are gone
    # One process with --output: the same file and the same state file, byte for byte.
    r = run([sys.executable, *translate_args(copy_model, source, "--output", str(tmp_path / "one" / "en.txt"))])
    assert r.returncode == 0, r.stderr
    for name in ("en.txt", "en.txt.state.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / name).read_bytes()
    state = json.loads((tmp_path / "en.txt.state.json").read_text())
    assert state["complete"] and state["chunks_done"] == 40 and state["counts"] == {"lines": 1000}


def rank_pid(launcher: int, rank: int) -> int | None:
    """The process of torchrun's worker of this rank (its environment holds RANK=rank), if it runs."""
    for children in Path(f"/proc/{launcher}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return int(pid)
            except OSError:  # ended meanwhile
                continue
    return None


@pytest.mark.slow
def test_a_killed_rank_resumes_and_the_output_is_the_same(copy_model, source, reference, tmp_path):
    out = tmp_path / "en.txt"
    command = torchrun(*translate_args(copy_model, source, "--output", str(out)))
    state = tmp_path / "en.txt.rank1-of-2.state.json"
    launcher = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # 1. SIGKILL rank 1 once it has committed 3 of its 20 chunks; torchrun then stops rank 0 and fails.
        deadline = time.monotonic() + 120
        while json.loads(state.read_text() if state.is_file() else '{"chunks_done": 0}')["chunks_done"] < 3:
            assert launcher.poll() is None and time.monotonic() < deadline, "no chance to kill a rank mid-run"
            time.sleep(0.005)
        pid = rank_pid(launcher.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0
    finally:
        launcher.kill()
        launcher.wait()
    killed_at = json.loads(state.read_text())["chunks_done"]
    assert 3 <= killed_at < 20 and not out.exists()
    # 2. The same command: rank 1 continues after its committed chunks, and the output is the one of one process.
    r = run(command)
    assert r.returncode == 0, r.stderr
    assert f"resuming {out}.rank1-of-2 after {killed_at} chunks" in r.stderr
    assert out.read_text().splitlines() == reference
    assert not list(tmp_path.glob("*.rank*"))


@pytest.mark.slow
def test_sampled_backtranslation_over_two_processes_equals_one(copy_model, source, tmp_path):
    mono = tmp_path / "mono.fr.gz"
    with gzip.open(mono, "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in source.read_text().splitlines()[:300])
    # sampling: chunk k draws from a generator seeded by (seed, k), whichever rank translates it
    flags = ["-m", "seq2seq.backtranslate", "--model", str(copy_model / "best.pt"), "--input", str(mono),
             "--chunk-lines", "40", "--sample", "--temperature", "2", "--seed", "3"]
    r = run([sys.executable, *flags, "--out", str(tmp_path / "one" / "bt")])
    assert r.returncode == 0, r.stderr
    r = run(torchrun(*flags, "--out", str(tmp_path / "two" / "bt")))
    assert r.returncode == 0, r.stderr
    for name in ("bt.en.gz", "bt.fr.gz", "bt.state.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["bt.en.gz", "bt.fr.gz", "bt.state.json"]
    counts = json.loads((tmp_path / "two/bt.state.json").read_text())["counts"]
    assert counts["lines"] == 300 and counts["empty"] == 4  # lines 0, 97, 194, 291
    assert counts["pairs"] == len(gzip.decompress((tmp_path / "two/bt.en.gz").read_bytes()).splitlines()) > 250


# ---- without processes ---------------------------------------------------------------------------------------------

def test_rank_r_of_w_takes_every_wth_chunk():
    lines = [str(i) for i in range(10)]
    take = lambda rank, first=0, end=10: [(j, k, c) for j, k, c in Shard(rank, 2).chunks(iter(lines), 3, first, end)]
    assert take(0) == [(0, 0, ["0", "1", "2"]), (1, 2, ["6", "7", "8"])]
    assert take(1) == [(0, 1, ["3", "4", "5"]), (1, 3, ["9"])]
    assert take(0, first=1) == [(1, 2, ["6", "7", "8"])]
    assert take(0, end=7) == [(0, 0, ["0", "1", "2"]), (1, 2, ["6"])]
    assert [k for _, k, _ in Shard(0, 1).chunks(iter(lines), 3, 0, 10)] == [0, 1, 2, 3]
    assert Shard(1, 2).prefix("out/en.txt") == "out/en.txt.rank1-of-2" and Shard().prefix("en.txt") == "en.txt"


def write(out: Output, chunks: list[list[str]]) -> None:
    out.open()
    counts = dict(out.state["counts"])
    for j, chunk in enumerate(chunks):
        counts["lines"] += len(chunk)
        out.append([(line, line.upper()) for line in chunk])
        out.commit(j, counts)
    out.finish(counts, input_exhausted=True)


@pytest.mark.parametrize("world", [2, 7])  # 7 ranks for 5 chunks: two ranks have none
def test_join_interleaves_the_parts_into_what_one_output_holds(world, tmp_path, monkeypatch):
    chunks = [["a", "b"], ["c"], [], ["d", "e", "f"], ["g"]]  # rows per chunk vary (skipped lines)
    finals = lambda d: {"x": tmp_path / d / "out.x.gz", "y": tmp_path / d / "out.y"}
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
    write(Output(str(tmp_path / "one/out"), finals("one"), {"o": 1}, ("lines",)), chunks)
    final = Output(str(tmp_path / "two/out"), finals("two"), {"o": 1}, ("lines",))
    for rank in range(world):
        write(Part.of(final, Shard(rank, world)), chunks[rank::world])
    # A join killed after its commit, before the final files were written; then joined again.
    def killed(self, counts, input_exhausted):
        raise KeyboardInterrupt

    monkeypatch.setattr(Output, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        join(final, [Part.of(final, Shard(r, world)) for r in range(world)])
    monkeypatch.undo()
    final = Output(str(tmp_path / "two/out"), finals("two"), {"o": 1}, ("lines",))
    join(final, [Part.of(final, Shard(r, world)) for r in range(world)])
    for name in ("out.x.gz", "out.y", "out.state.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert (tmp_path / "two/out.y").read_text() == "A\nB\nC\nD\nE\nF\nG\n"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["out.state.json", "out.x.gz", "out.y"]


def test_translate_output_refuses_to_resume_with_other_options(copy_model, source, tmp_path, capsys):
    from seq2seq.translate import main

    head = tmp_path / "head.txt"
    head.write_text("".join(source.read_text().splitlines(keepends=True)[:20]))
    base = ["--model", str(copy_model / "best.pt"), "--input", str(head), "--output", str(tmp_path / "en.txt")]
    assert main([*base, "--beam-size", "1"]) == 0
    assert main([*base, "--beam-size", "1"]) == 0  # complete: nothing to do
    assert "is complete: nothing to do" in capsys.readouterr().err
    assert main([*base, "--beam-size", "2"]) == 2
    assert "other options (differing: search)" in capsys.readouterr().err
    assert len((tmp_path / "en.txt").read_text().splitlines()) == 20


@pytest.mark.parametrize("module, flags, message", [
    ("seq2seq.translate", [], "under torchrun, give --input and --output"),
    ("seq2seq.translate", ["--output", "x.txt"], "--output needs --input"),
    ("seq2seq.backtranslate", ["--model", "m", "--input", "i", "--out", "o", "--limit", "5"],
     "--limit needs one process"),
])
def test_flags_that_cannot_work_are_refused_in_one_line(module, flags, message):
    # WORLD_SIZE as torchrun sets it: the flags are refused before any attempt to join a job
    r = subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, env={**ENV, "WORLD_SIZE": "2"},
                       capture_output=True, text=True, timeout=60, input="")
    assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1]
