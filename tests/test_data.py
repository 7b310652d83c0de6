"""Reading corpora, clear errors, token batching."""
import json
import re

import numpy as np
import pytest

from seq2seq import checkpoint as ckpt
from seq2seq.config import ConfigError, Corpus, DataConfig
from seq2seq.data import DataError, collate, make_batches, read_corpora, read_corpus, tokenize, weighted_indices
from seq2seq.tokenizer import Tokenizer
from seq2seq.train import main as train_main

from conftest import tiny_config, write_corpus


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


# ---- corpus weights, synthetic flag, tagged back-translation (issue 10) -------------------------------------------

def numbered(tmp_path, name: str, n: int) -> str:
    return write_corpus(tmp_path / name, [(f"{name} fr {i}", f"{name} en {i}") for i in range(n)])


def test_weights_repeat_integer_part_and_draw_a_seeded_subset_for_the_fraction(tmp_path):
    a, b = numbered(tmp_path, "a", 10), numbered(tmp_path, "b", 20)
    mixture = [{"path": a, "weight": 2}, {"path": b, "weight": 0.25},
               {"path": str(tmp_path / "missing"), "weight": 0}]  # weight 0: dropped, not even read
    ds = read_corpora(mixture, seed=3)
    assert len(ds) == 2 * 10 + 5
    assert ds["src"][:20] == [f"a fr {i}" for i in range(10)] * 2
    subset = ds["src"][20:]
    assert len(set(subset)) == 5 and set(subset) <= {f"b fr {i}" for i in range(20)}
    assert subset == sorted(subset, key=lambda s: int(s.split()[-1]))  # in corpus order
    assert ds["tgt"][20:] == [s.replace(" fr ", " en ") for s in subset]  # pairs stay pairs
    assert read_corpora(mixture, seed=3)["src"][20:] == subset  # seeded
    assert read_corpora(mixture, seed=4)["src"][20:] != subset
    assert read_corpora([{"path": a, "weight": 1.5}], seed=3)["src"][:10] == [f"a fr {i}" for i in range(10)]


def test_weighted_indices_exact_counts():
    idx = weighted_indices(10, 2.5, np.random.default_rng(0))
    counts = np.bincount(idx, minlength=10)
    assert len(idx) == 25 and sorted(counts.tolist()) == [2] * 5 + [3] * 5
    assert weighted_indices(10, 0.3, np.random.default_rng(0)).size == 3
    assert weighted_indices(10, 1.0, np.random.default_rng(0)).tolist() == list(range(10))
    assert weighted_indices(7, 3.0, np.random.default_rng(0)).tolist() == list(range(7)) * 3
    with pytest.raises(DataError, match="all its weights are 0"):
        read_corpora([{"path": "x", "weight": 0}])


def test_synthetic_sources_start_with_the_tag_and_nothing_else_has_it(tmp_path):
    real = write_corpus(tmp_path / "real", [("un chat noir", "a black cat"), ("deux chiens", "two dogs")] * 3)
    bt = write_corpus(tmp_path / "bt", [("<BT> un chien", "a dog"), ("trois chats", "three cats")])
    ds = read_corpora([real, {"path": bt, "synthetic": True}])
    assert ds["synthetic"][:] == [False] * 6 + [True] * 2
    tok = Tokenizer.train([s for p in zip(ds["src"], ds["tgt"]) for s in p] * 10, vocab_size=40, bt_tag=True)
    tag = tok.bt_tag_id
    assert tag == 2 and tok.pieces([tag]) == ["<BT>"]
    assert tag not in tok.encode("<BT> un chat")  # the text "<BT>" is ordinary pieces, never the reserved id
    tagged = tokenize(ds, tok, bt_tag=True)
    for src, synthetic, text in zip(tagged["src_ids"], tagged["synthetic"], tagged["src"]):
        assert src.count(tag) == int(synthetic) and (src[0] == tag) == synthetic
        assert src[int(synthetic):] == tok.encode(text) + [0]
    assert all(tag not in t for t in tagged["tgt_ids"])
    assert all(tag not in s for s in tokenize(ds, tok)["src_ids"])  # bt_tag off: no tag
    untagged_tok = Tokenizer.train(["un chat noir", "a black cat"] * 20, vocab_size=30)
    assert untagged_tok.bt_tag_id is None
    with pytest.raises(DataError, match="bt_tag is on but the tokenizer has no <BT>"):
        tokenize(ds, untagged_tok, bt_tag=True)


def test_data_config_round_trip_and_old_plain_string_configs():
    old = DataConfig(train=("a", "b")).to_dict()  # what checkpoints hold: plain strings stay plain strings
    assert old["train"] == ["a", "b"] and DataConfig.from_dict(old).to_dict() == old
    mixed = DataConfig.from_dict({"train": ["a", {"path": "bt", "weight": 0.5, "synthetic": True},
                                            {"path": "m", "weight": 3}], "bt_tag": True})
    assert mixed.train == (Corpus("a"), Corpus("bt", 0.5, True), Corpus("m", 3.0))
    assert mixed.to_dict()["train"] == ["a", {"path": "bt", "weight": 0.5, "synthetic": True},
                                        {"path": "m", "weight": 3.0, "synthetic": False}]
    assert DataConfig.from_dict(mixed.to_dict()) == mixed and hash(mixed) == hash(DataConfig.from_dict(mixed.to_dict()))
    for entry, message in [({"path": "a", "wieght": 2}, r"data.train\[0\]: unknown key\(s\) wieght; allowed: path"),
                           ({"weight": 2}, r"data.train\[0\]: a corpus mapping needs a 'path'"),
                           ({"path": "a", "weight": -1}, r"data.train\[0\]: weight must be a number >= 0"),
                           ({"path": "a", "synthetic": "yes"}, r"data.train\[0\]: synthetic must be true or false"),
                           (3, r"data.train\[0\]: expected a corpus name or a mapping")]:
        with pytest.raises(ConfigError, match=message) as e:
            DataConfig.from_dict({"train": [entry]})
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_weighted_tagged_run_records_its_mixture_and_resumes(tmp_path, copy_corpus, caplog):
    import logging

    import yaml

    caplog.set_level(logging.INFO, logger="seq2seq.train")
    cfg_path = tiny_config(tmp_path, copy_corpus, max_steps=6, eval_every=0, save_every=3)
    cfg = yaml.safe_load(open(cfg_path))
    cfg["data"]["train"] = [{"path": copy_corpus["train"], "weight": 0.5},
                            {"path": copy_corpus["dev"], "weight": 2, "synthetic": True}]
    cfg["data"]["bt_tag"] = True
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", cfg_path, "--out", str(tmp_path / "run"), "--max-steps", "3"]) == 0
    assert train_main(["--config", cfg_path, "--out", str(tmp_path / "run")]) == 0
    assert re.search(r"resum\w+ from \S+checkpoint_00000003\.pt", caplog.text)
    assert len(read_corpora(cfg["data"]["train"])) == 3000 // 2 + 60 * 2
    payload = ckpt.load(tmp_path / "run" / "checkpoint_00000006.pt")
    assert payload["state"]["step"] == 6
    assert payload["configs"]["data"]["train"] == [
        {"path": copy_corpus["train"], "weight": 0.5, "synthetic": False},
        {"path": copy_corpus["dev"], "weight": 2.0, "synthetic": True}]
    assert payload["configs"]["data"]["bt_tag"] is True
    assert Tokenizer(payload["tokenizer"]).bt_tag_id == 2


# ---- seq2seq-backtranslate: chunks, resuming, errors --------------------------------------------------------------

def gz_lines(path) -> list[str]:
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def monolingual(tmp_path_factory) -> str:
    """120 lines of the copy corpus's words, two of them empty: the model's source language (fr)."""
    import gzip
    import random

    from conftest import WORDS

    rng = random.Random(7)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(120)]
    lines[3], lines[64] = "", "  "
    path = tmp_path_factory.mktemp("mono") / "mono.fr.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    return str(path)


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory, monolingual) -> str:
    """A checkpoint of an untrained tiny fr→en model: loads in well under a second, for the tests of errors."""
    import torch

    from seq2seq import ModelConfig, Transformer

    tok = Tokenizer.train(gz_lines(monolingual) * 5, vocab_size=40)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(tok.vocab_size))
    path = tmp_path_factory.mktemp("untrained") / "model.pt"
    ckpt.save(path, {"model": model.state_dict(), "tokenizer": tok.model_proto,
                     "configs": {"model": model.config.to_dict(), "data": DataConfig().to_dict()}})
    return str(path)


def backtranslate(model, mono, out, *flags) -> int:
    from seq2seq.backtranslate import main

    return main(["--model", str(model), "--input", mono, "--out", str(out), "--chunk-lines", "50", *flags])


@pytest.mark.slow
def test_backtranslation_killed_then_rerun_equals_an_uninterrupted_run(copy_model, monolingual, tmp_path,
                                                                        monkeypatch):
    from seq2seq.backtranslate import Output

    model = copy_model / "best.pt"  # a fr→en model: the synthetic side is .en, the input side .fr
    assert backtranslate(model, monolingual, tmp_path / "straight" / "bt") == 0
    synthetic, source = gz_lines(tmp_path / "straight/bt.en.gz"), gz_lines(tmp_path / "straight/bt.fr.gz")
    inputs = [x for x in gz_lines(monolingual) if x.strip()]
    assert source == inputs and len(synthetic) == 118  # aligned, empty lines skipped
    assert sum(s == x for s, x in zip(synthetic, source)) > 100  # the copy model copies
    assert json.loads((tmp_path / "straight/bt.state.json").read_text())["complete"] is True
    assert not list((tmp_path / "straight").glob("*.part"))
    # 1. --limit inside the second chunk, then the whole file: the cut chunk is done again whole.
    assert backtranslate(model, monolingual, tmp_path / "limited" / "bt", "--limit", "70") == 0
    assert len(gz_lines(tmp_path / "limited/bt.fr.gz")) == 68  # lines 0..69 without the empty lines 3 and 64
    assert backtranslate(model, monolingual, tmp_path / "limited" / "bt") == 0
    # 2. Killed after appending the second chunk to the part files, before committing it; then the same command.
    commit = Output.commit

    def failing(self, chunk, counts):
        if chunk == 1:
            raise KeyboardInterrupt
        commit(self, chunk, counts)

    monkeypatch.setattr(Output, "commit", failing)
    assert backtranslate(model, monolingual, tmp_path / "crashed" / "bt") == 130
    state = json.loads((tmp_path / "crashed/bt.state.json").read_text())
    assert state["chunks_done"] == 1 and (tmp_path / "crashed/bt.fr.part").stat().st_size > state["bytes"]["fr"]
    monkeypatch.setattr(Output, "commit", commit)
    assert backtranslate(model, monolingual, tmp_path / "crashed" / "bt") == 0
    for run in ("limited", "crashed"):
        for lang in ("fr", "en"):
            assert (tmp_path / run / f"bt.{lang}.gz").read_bytes() == (tmp_path / f"straight/bt.{lang}.gz").read_bytes()
    assert backtranslate(model, monolingual, tmp_path / "crashed" / "bt") == 0  # complete: nothing to do


@pytest.mark.slow
def test_sampled_backtranslation_is_seeded_per_chunk(copy_model, monolingual, tmp_path):
    model, sample = copy_model / "best.pt", ["--sample", "--temperature", "3", "--seed", "5"]
    assert backtranslate(model, monolingual, tmp_path / "a" / "bt", *sample) == 0
    assert backtranslate(model, monolingual, tmp_path / "b" / "bt", *sample, "--limit", "20") == 0
    assert backtranslate(model, monolingual, tmp_path / "b" / "bt", *sample) == 0
    other_seed = ["--sample", "--temperature", "3", "--seed", "6"]
    assert backtranslate(model, monolingual, tmp_path / "c" / "bt", *other_seed) == 0
    assert backtranslate(model, monolingual, tmp_path / "beam" / "bt") == 0
    a, b, c, beam = (gz_lines(tmp_path / run / "bt.en.gz") for run in ("a", "b", "c", "beam"))
    assert a == b  # resumed with the same seed: the same samples
    assert a != c and a != beam  # another seed, or beam search: other outputs
    assert (tmp_path / "a/bt.fr.gz").read_bytes() == (tmp_path / "b/bt.fr.gz").read_bytes()


def test_backtranslation_refuses_to_resume_with_other_options(untrained_model, monolingual, tmp_path, capsys):
    model = untrained_model
    assert backtranslate(model, monolingual, tmp_path / "bt", "--limit", "10", "--beam-size", "1") == 0
    capsys.readouterr()
    assert backtranslate(model, monolingual, tmp_path / "bt", "--beam-size", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other options (differing: search)" in err[0]


def test_backtranslation_bad_inputs_are_one_line(untrained_model, monolingual, tmp_path, capsys):
    model = untrained_model
    cases = [
        ([model, str(tmp_path / "none.en.gz")], "input not found"),
        ([str(tmp_path / "none.pt"), monolingual], "checkpoint not found"),
        ([model, monolingual, "--top-k", "10"], "--top-k need(s) --sample"),
        ([model, monolingual, "--sample", "--beam-size", "4"], "--beam-size and --sample exclude each other"),
        ([model, monolingual, "--beam-size", "0"], "beam_size"),  # DecodeConfig says what is allowed
        ([model, monolingual, "--chunk-lines", "0"], "--chunk-lines must be >= 1"),
        ([model, monolingual, "--precision", "int4"], "argument --precision: invalid choice"),
        ([model, monolingual, "--src-lang", "de"], "--src-lang de but the model was trained with src_lang fr"),
    ]
    for (m, mono, *flags), message in cases:
        try:
            code = backtranslate(m, mono, tmp_path / "bt", *flags)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (flags, err)
        assert err[0].startswith("seq2seq-backtranslate: error: ")
    (tmp_path / "bt.en.gz").write_bytes(b"")  # an output that a state file does not explain is never overwritten
    assert backtranslate(model, monolingual, tmp_path / "bt") == 2
    assert "exist(s) but" in capsys.readouterr().err


def test_train_flag_still_takes_plain_corpus_names():
    from seq2seq.options import build, merge
    from seq2seq.train import parse_args

    args = parse_args(["--out", "run", "--train", "a", "dir/b", "--bt-tag", "true"])
    _, data, _ = build(merge({"model": {}, "data": {"train": [{"path": "x", "weight": 2}]}, "train": {}}, args))
    assert data.train == (Corpus("a"), Corpus("dir/b")) and data.bt_tag is True  # the flag replaces the file's list


def test_a_corpus_can_take_its_target_side_from_another_prefix(tmp_path):
    """data/synthetic holds only our French; its English is a file of ../shared/data, named by `target`."""
    (tmp_path / "ours").mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "ours" / "bt.fr").write_text("Un chien.\nDeux chats.\n")
    (tmp_path / "shared" / "captions.en").write_text("A dog.\nTwo cats.\n")
    entry = {"path": str(tmp_path / "ours" / "bt"), "target": str(tmp_path / "shared" / "captions"),
             "synthetic": True}
    ds = read_corpora([entry])
    assert (list(ds["src"]), list(ds["tgt"]), list(ds["synthetic"])) == \
        (["Un chien.", "Deux chats."], ["A dog.", "Two cats."], [True, True])
    assert Corpus.from_entry(entry, "e").to_entry() == {**entry, "weight": 1.0}
    (tmp_path / "shared" / "captions.en").write_text("A dog.\n")
    with pytest.raises(DataError, match="misaligned corpus"):
        read_corpora([entry])
    with pytest.raises(DataError, match="a separate target needs an aligned prefix"):
        read_corpus(str(tmp_path / "x.tsv"), target=str(tmp_path / "shared" / "captions"))
    with pytest.raises(ConfigError, match="target must be a corpus prefix"):
        Corpus.from_entry({"path": "a", "target": ""}, "e")
