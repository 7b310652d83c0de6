"""Reading corpora, clear errors, token batching."""
import json

import numpy as np
import pytest

from seq2seq.data import DataError, collate, make_batches, read_corpora, read_corpus
from seq2seq.train import main as train_main

from conftest import write_corpus


def test_read_aligned_tsv_jsonl_and_mixture(tmp_path):
    a = write_corpus(tmp_path / "a", [("un chat", "a cat"), ("deux", "two")])
    (tmp_path / "b.tsv").write_text("trois\tthree\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"translation": {"fr": "quatre", "en": "four"}}) + "\n")
    ds = read_corpora([a, str(tmp_path / "b.tsv"), str(tmp_path / "c.jsonl")])
    assert ds["src"][:] == ["un chat", "deux", "trois", "quatre"]
    assert ds["tgt"][:] == ["a cat", "two", "three", "four"]


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing file: .*nowhere\.fr\.gz"):
        read_corpus(str(tmp_path / "nowhere"))
    (tmp_path / "m.fr").write_text("a\nb\n")
    (tmp_path / "m.en").write_text("a\n")
    with pytest.raises(DataError, match="misaligned corpus .* 2 lines, .* 1"):
        read_corpus(str(tmp_path / "m"))
    (tmp_path / "bad.tsv").write_text("only one field\n")
    with pytest.raises(DataError, match="bad.tsv:1: expected 2 tab-separated fields"):
        read_corpus(str(tmp_path / "bad.tsv"))
    with pytest.raises(DataError, match="cannot load hub dataset 'hf:no-such/dataset-xyz'"):
        read_corpus("hf:no-such/dataset-xyz")


def test_train_cli_missing_corpus_is_one_line(tmp_path, capsys):
    code = train_main(["--out", str(tmp_path / "run"), "--train", str(tmp_path / "missing"), "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing file" in err[0]


def test_batches_respect_token_budget_and_cover_everything():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 40, 500), rng.integers(1, 40, 500)
    batches = make_batches(src, tgt, max_tokens=300, seed=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for b in batches:
        assert (src[b].max() + tgt[b].max()) * len(b) <= 300 or len(b) == 1
    assert sum(len(b) for b in batches) / len(batches) > 3  # bucketing packs several sentences per batch


def test_collate_shifts_target_right_with_pad_start():
    b = collate([[5, 6, 0], [7, 0]], [[8, 9, 0], [4, 0]], pad_id=10)
    assert b.src_ids.tolist() == [[5, 6, 0], [7, 0, 10]]
    assert b.tgt_in_ids.tolist() == [[10, 8, 9], [10, 4, 10]]
    assert b.tgt_out_ids.tolist() == [[8, 9, 0], [4, 0, 10]]
    assert (b.n_src_tokens, b.n_tgt_tokens) == (5, 5)


def test_carve_dev_by_target_sentence_never_shares_a_sentence():
    from seq2seq.data import carve_dev

    src = ["a", "b", "c", "d", "e", "f", "a2", "g"]
    tgt = ["A", "B", "A", "C", "D", "E", "F", "A"]  # "A" has three translations
    train, dev = carve_dev(src, tgt, n=3, seed=0)
    assert not {tgt[i] for i in train} & {tgt[i] for i in dev}
    assert not {src[i] for i in train} & {src[i] for i in dev}
    assert sorted(train + dev) == list(range(8)) and len(dev) >= 3
