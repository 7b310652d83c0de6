"""scripts/continue_training.py with a tiny model on the copy task: it ships a model that beats the shipped one on the
dev sets, with the card's record of it, and refuses one that is worse, leaving the shipped model byte for byte."""
import hashlib
import json
import random
import sys
from pathlib import Path

import pytest
import yaml

from seq2seq import checkpoint as ckpt
from seq2seq.train import main as train_main

from conftest import WORDS, copy_pairs, tiny_config, write_corpus

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import continue_training  # noqa: E402


def digest(model: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model.iterdir())}


def ship(checkpoint: Path, model: Path, steps: int) -> Path:
    """A model directory with a card, as models/ holds."""
    ckpt.save_model_dir(ckpt.load(checkpoint), model)
    (model / "card.json").write_text(json.dumps({"training": {"steps": steps, "minutes": 0.2}}))
    (model / "README.md").write_text("# tiny\n\nA card.\n")
    return model


@pytest.fixture()
def shipped(tmp_path, copy_corpus) -> Path:
    """A copy-task model trained for 150 steps: it does not copy yet (BLEU 0)."""
    cfg = tiny_config(tmp_path, copy_corpus, max_steps=150, eval_every=0, save_every=150, warmup_steps=50,
                      lr_scale=1.0)
    assert train_main(["--config", cfg, "--out", str(tmp_path / "base")]) == 0
    return ship(tmp_path / "base" / "checkpoint_00000150.pt", tmp_path / "models" / "tiny", 150)


def continuation_config(tmp_path: Path, train: str) -> str:
    cfg = {"data": {"train": [train], "dev": str(tmp_path / "dev"), "max_tokens": 400, "max_len": 32},
           "train": {"max_steps": 100_000, "warmup_steps": 50, "lr_scale": 1.0, "rewarmup_steps": 20, "log_every": 20,
                     "eval_every": 0, "save_every": 40, "keep_checkpoints": 3, "average_last": 2, "threads": 1}}
    path = tmp_path / "continue.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run(tmp_path: Path, model: Path, config: str, capsys) -> list[dict]:
    code = continue_training.main(["--minutes", "0.2", "--segment-minutes", "0.1", "--model", str(model),
                                   "--config", config, "--runs", str(tmp_path / "run"),
                                   "--dev", f"copy dev={tmp_path / 'dev'}", "--precision", "fp32"])
    assert code == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_ships_a_model_that_beats_the_shipped_one(tmp_path, copy_corpus, shipped, capsys):
    write_corpus(tmp_path / "dev", copy_pairs(60, 2))
    before = digest(shipped)
    lines = run(tmp_path, shipped, continuation_config(tmp_path, copy_corpus["train"]), capsys)
    start, segments = lines[0]["dev"]["copy dev"], [x for x in lines if x["event"] == "segment"]
    assert len(segments) == 2 and any(s["ships"] for s in segments)
    card = json.loads((shipped / "card.json").read_text())
    [record] = card["training"]["continuations"]  # one run, one record, whichever segments shipped
    assert record["from_step"] == 150 and record["dev_before"] == {"copy dev": start}
    assert record["dev_after"]["copy dev"] > start and card["dev"]["bleu"] == record["dev_after"]
    assert card["training"]["steps"] == record["to_step"] > 150
    assert "attempts" not in card["training"]  # a segment that lost before one shipped leaves no attempt behind
    assert card["training"]["minutes"] == pytest.approx(0.2 + record["minutes"], abs=0.05)
    assert digest(shipped)["model.safetensors"] != before["model.safetensors"]
    assert "## Continued training" in (shipped / "README.md").read_text()
    assert (shipped / "README.md").read_text().startswith("# tiny\n\nA card.")
    assert not shipped.with_name("tiny.next").exists() and not shipped.with_name("tiny.previous").exists()
    # The shipped directory is the model the record scored.
    rescored = continue_training.dev_scores(shipped, {"copy dev": str(tmp_path / "dev")}, "fp32")
    assert rescored == record["dev_after"]


def test_refuses_a_worse_model_and_leaves_the_shipped_one_as_it_was(tmp_path, copy_model, capsys):
    shipped = ship(sorted(copy_model.glob("checkpoint_*.pt"))[-1], tmp_path / "models" / "tiny", 600)  # it copies
    write_corpus(tmp_path / "dev", copy_pairs(60, 2))
    # Training pairs whose English has nothing to do with their French: the model unlearns copying.
    rng = random.Random(3)
    noise = [(s, " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))) for s, _ in copy_pairs(3000, 5)]
    before = digest(shipped)
    lines = run(tmp_path, shipped, continuation_config(tmp_path, write_corpus(tmp_path / "noise", noise)), capsys)
    start, segments = lines[0]["dev"]["copy dev"], [x for x in lines if x["event"] == "segment"]
    assert len(segments) == 2 and all(s["ships"] is None for s in segments)
    assert start > 50 and all(sum(c.values()) < start for s in segments for c in s["candidates"].values())
    after, records = digest(shipped), ("card.json", "README.md", "continuations.png")
    assert {k: v for k, v in after.items() if k not in records} == {k: v for k, v in before.items() if k not in records}
    card = json.loads((shipped / "card.json").read_text())
    assert "continuations" not in card["training"] and card["dev"]["bleu"] == {"copy dev": start}
    assert card["training"]["steps"] == 600 and card["training"]["minutes"] == 0.2
    # The run is in the card all the same: one record for its two segments, its best candidate, a gain of 0.
    [attempt] = card["training"]["attempts"]
    best = max(segments[-1]["candidates"].values(), key=lambda c: c["copy dev"])
    assert attempt["shipped"] is False and attempt["from_step"] == 600 and attempt["to_step"] == segments[-1]["step"]
    assert attempt["dev_before"] == {"copy dev": start} and attempt["dev_after"] == best
    assert attempt["cumulative_minutes"] == pytest.approx(0.2 + attempt["minutes"])
    assert continue_training.gain(attempt) == 0
    row = [r for r in (shipped / "README.md").read_text().splitlines() if r.startswith(f"| {attempt['date']} | 600–")]
    assert len(row) == 1 and row[0].endswith(f"{start:.2f} → {best['copy dev']:.2f} | +0.00 | no |")
    assert (shipped / "continuations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the curve, in the card


def test_a_swap_cut_between_its_renames_is_finished(tmp_path, shipped):
    previous = shipped.with_name("tiny.previous")
    shipped.rename(previous)
    continue_training.finish_swap(shipped)
    assert shipped.is_dir() and not previous.exists() and (shipped / "model.safetensors").is_file()


def test_a_card_without_the_step_reached_is_refused(tmp_path, shipped, capsys):
    (shipped / "card.json").write_text("{}")
    write_corpus(tmp_path / "dev", copy_pairs(10, 2))
    code = continue_training.main(["--minutes", "1", "--model", str(shipped), "--dev", f"d={tmp_path / 'dev'}",
                                   "--runs", str(tmp_path / "run")])
    assert code == 2 and "no training.steps" in capsys.readouterr().err
