"""The Translator (text in, text out) and the seq2seq-translate / seq2seq-eval command lines."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq.config import ConfigError, DecodeConfig
from seq2seq.translator import InputError, Translator

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def translator(copy_model) -> Translator:
    return Translator.from_checkpoint(copy_model / "best.pt", device="cpu", max_input_tokens=40)


def test_batch_of_mixed_lengths_equals_one_at_a_time(translator):
    texts = ["ba ce di fo ga", "ka", "co fi gu ke ba bo de", "da bu"]
    config = DecodeConfig(beam_size=4, n_best=2)
    together = translator.translate(texts, config)
    alone = [translator.translate([t], config)[0] for t in texts]
    assert [t.text for t in together] == [t.text for t in alone]
    assert [t.score for t in together] == pytest.approx([t.score for t in alone], abs=1e-4)
    assert len(together[0].alternatives) == 1 and together[0].alternatives[0].score <= together[0].score
    assert together[0].tokens[-1] == "</s>" and len(together[0].tokens) == len(together[0].token_log_probs)


def test_seeded_sampling_is_reproducible(translator):
    config = DecodeConfig(sample=True, temperature=1.5, seed=7)
    a = translator.translate(["ba ce di fo", "ka ge"], config)
    b = translator.translate(["ba ce di fo"], config)
    assert a[0].text == b[0].text


def test_bad_input_gets_a_clear_error(translator):
    with pytest.raises(InputError, match="text 1 is empty"):
        translator.translate(["ba", "  "])
    with pytest.raises(InputError, match=r"text 0 has \d+ tokens; the limit is 40"):
        translator.translate([" ".join(["ba ce"] * 30)])
    with pytest.raises(ConfigError, match="beam_size must be >= 1"):
        translator.translate(["ba"], DecodeConfig(beam_size=0))


def run_cli(module: str, args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_translate_cli_keeps_lines_in_order_and_empty_lines(copy_model):
    r = run_cli("seq2seq.translate", ["--model", str(copy_model / "best.pt"), "--beam-size", "2"],
                "ba ce di fo\n\nka ge da bu\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[1] == "" and len(lines) == 4 and lines[3] == ""
    assert lines[0] == "ba ce di fo" and lines[2] == "ka ge da bu"  # the copy model copies
    r = run_cli("seq2seq.translate", ["--model", str(copy_model / "best.pt"), "--json", "--n-best", "2",
                                      "--beam-size", "2"], "ba ce\n")
    record = json.loads(r.stdout)
    assert record["text"] == "ba ce" and len(record["alternatives"]) == 1


def test_translate_cli_rejects_bad_options_in_one_line(copy_model):
    r = run_cli("seq2seq.translate", ["--model", str(copy_model / "best.pt"), "--top-p", "1.5"], "ba\n")
    assert r.returncode == 2
    assert r.stderr.strip() == "seq2seq-translate: error: argument --top-p: top_p must be in (0, 1], got 1.5 (see --help)"
    r = run_cli("seq2seq.translate", ["--model", "/nowhere/model.pt"], "ba\n")
    assert r.returncode == 2 and "checkpoint not found: /nowhere/model.pt" in r.stderr


def test_eval_cli_prints_bleu_with_signature(copy_model, copy_corpus):
    r = run_cli("seq2seq.evaluate", ["--model", str(copy_model / "best.pt"), "--data", copy_corpus["dev"],
                                     "--json", "--beam-size", "2"])
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["bleu"] > 80 and result["sentences"] == 60
    assert result["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert result["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_min_len_beyond_the_maximum_length_still_ends(translator):
    config = DecodeConfig(beam_size=2, min_len=500, max_len_a=0.0, max_len_b=3)  # the maximum wins
    out = translator.translate(["ba ce"], config)[0]
    assert len(out.token_log_probs) == 4 and out.tokens[-1] == "</s>"
    assert out.score > float("-inf")


def test_unknown_device_and_corrupt_tokenizer_are_clear_errors(copy_model, tmp_path):
    from seq2seq import checkpoint as ckpt

    with pytest.raises(ValueError, match="unknown device 'foo'"):
        Translator.from_checkpoint(copy_model / "best.pt", device="foo")
    payload = ckpt.load(copy_model / "best.pt")
    payload["tokenizer"] = b"not a sentencepiece model"
    ckpt.save(tmp_path / "bad.pt", payload)
    with pytest.raises(ckpt.CheckpointError, match="bad model config or tokenizer"):
        ckpt.load_model(tmp_path / "bad.pt")
