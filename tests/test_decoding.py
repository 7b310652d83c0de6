"""Decoding against a scripted fake StepModel (exact hypotheses and scores, as fairseq's test_sequence_generator.py)
and against a random tiny Transformer (beam 1 = greedy, batched = one at a time, cached = teacher-forced, sampling).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from seq2seq.config import ConfigError, DecodeConfig, ModelConfig
from seq2seq.decoding import Hypothesis, beam_search, decode
from seq2seq.decoding.constraints import block_repeated_ngrams, penalize_repetition
from seq2seq.decoding.sampling import next_token_distribution
from seq2seq.model import Transformer

EOS, A, B = 0, 1, 2  # the scripted vocabulary: </s>, a, b, then <pad> = bos last

# Next-token probabilities given the prefix generated so far, one table per source sentence; DEFAULT elsewhere.
SHORT = {(): [0.4, 0.35, 0.25, 0], (A,): [0.9, 0.05, 0.05, 0], (B,): [0.2, 0.7, 0.1, 0], "default": [0.6, 0.2, 0.2, 0]}
EARLY = {(): [0.9, 0.06, 0.04, 0], "default": [0.5, 0.25, 0.25, 0]}
LONG = {(): [0.1, 0.5, 0.4, 0], "default": [0.3, 0.4, 0.3, 0]}
L = math.log


@dataclass
class FakeMemory:
    sentences: torch.Tensor  # (B,) which table each row reads

    def reorder(self, idx: torch.Tensor, joined: "FakeMemory | None" = None, width=None) -> "FakeMemory":
        rows = self.sentences[idx]
        return FakeMemory(rows if joined is None else torch.cat([rows, joined.sentences]))


@dataclass
class FakeState:
    prefixes: list[tuple[int, ...]]
    positions: torch.Tensor  # (B,) tokens read so far, per row
    need_attention: bool
    attention: list[torch.Tensor] | None = None
    room: int | None = None

    def reorder(self, idx: torch.Tensor, joined: "FakeState | None" = None) -> "FakeState":
        prefixes, positions = [self.prefixes[i] for i in idx.tolist()], self.positions[idx]
        if joined is not None:
            prefixes, positions = prefixes + joined.prefixes, torch.cat([positions, joined.positions])
        return FakeState(prefixes, positions, self.need_attention, None, self.room)


class ScriptedModel:
    """A StepModel whose distributions are the tables above (the source's first token picks the table, counting
    from 1); records the rows it computes at each step."""

    eos_id = EOS

    def __init__(self, *tables: dict):
        self.tables, self.rows_per_step = tables, []
        self.vocab_size = len(tables[0]["default"])
        self.pad_id = self.bos_id = self.vocab_size - 1

    def encode(self, src_ids, src_pad_mask):
        return FakeMemory(src_ids[:, 0] - 1)

    def init_state(self, memory, max_len, need_attention=False):
        n = len(memory.sentences)
        return FakeState([()] * n, torch.zeros(n, dtype=torch.long), need_attention)

    def cache_positions(self, rows, length, width):
        return rows * (length + width)

    def decode_step(self, prev_ids, memory, state):
        self.rows_per_step.append(len(prev_ids))
        state.prefixes = [p + (t,) if position > 0 else p
                          for p, t, position in zip(state.prefixes, prev_ids.tolist(), state.positions.tolist())]
        state.positions = state.positions + 1
        tables = [self.tables[s] for s in memory.sentences.tolist()]
        return torch.tensor([t.get(p, t["default"]) for t, p in zip(tables, state.prefixes)]).log()


def run(model, config: DecodeConfig, n_sentences: int = 1, src_len: int = 3, **kwargs) -> list[list[Hypothesis]]:
    src = torch.ones(n_sentences, src_len, dtype=torch.long)
    src[:, 0] = torch.arange(1, n_sentences + 1)  # sentence i reads table i
    return decode(model, src, torch.zeros_like(src, dtype=torch.bool), config, **kwargs)


def assert_hyps(hyps, expected, alpha=0.0):
    """expected: [(ids, product of probabilities)]; the score is log(product) / lp(|ids| + 1)."""
    assert [h.ids for h in hyps] == [ids for ids, _ in expected]
    for h, (ids, p) in zip(hyps, expected):
        assert h.score == pytest.approx(L(p) / ((5 + len(ids) + 1) / 6) ** alpha, abs=1e-5)
        assert len(h.token_log_probs) == len(ids) + 1
        assert sum(h.token_log_probs) == pytest.approx(L(p), abs=1e-5)


# ---- beam search and greedy against the scripted model ---------------------------------------------------------------

def test_beam_without_length_penalty():
    config = DecodeConfig(beam_size=2, n_best=2, length_penalty=0.0, max_len_a=0, max_len_b=10)
    [hyps] = run(ScriptedModel(SHORT), config)
    assert_hyps(hyps, [((), 0.4), ((A,), 0.35 * 0.9)])
    assert hyps[1].token_log_probs == pytest.approx((L(0.35), L(0.9)))


def test_length_penalty_reorders_the_hypotheses():
    config = DecodeConfig(beam_size=2, n_best=2, length_penalty=2.0, max_len_a=0, max_len_b=10)
    [hyps] = run(ScriptedModel(SHORT), config)
    assert_hyps(hyps, [((A,), 0.35 * 0.9), ((), 0.4)], alpha=2.0)  # -1.155 / (7/6)² = -0.849 > -0.916
    [default] = run(ScriptedModel(SHORT), DecodeConfig(beam_size=2, n_best=2, max_len_a=0, max_len_b=10))
    assert_hyps(default, [((), 0.4), ((A,), 0.35 * 0.9)], alpha=0.6)  # -1.155 / (7/6)^0.6 = -1.053 < -0.916


def test_min_len_forbids_early_eos():
    config = DecodeConfig(beam_size=2, n_best=2, length_penalty=0.0, min_len=1, max_len_a=0, max_len_b=10)
    [hyps] = run(ScriptedModel(SHORT), config)
    assert_hyps(hyps, [((A,), 0.35 * 0.9), ((B, A), 0.25 * 0.7 * 0.6)])


def test_max_len_forces_eos_with_its_model_log_prob():
    config = DecodeConfig(beam_size=2, n_best=2, length_penalty=0.0, min_len=1, max_len_a=0, max_len_b=1)
    [hyps] = run(ScriptedModel(SHORT), config)
    assert_hyps(hyps, [((A,), 0.35 * 0.9), ((B,), 0.25 * 0.2)])
    [only_eos] = run(ScriptedModel(SHORT), config.replace(min_len=0, max_len_b=0))
    assert_hyps(only_eos, [((), 0.4)])  # one hypothesis can end at length 0: fewer than n_best come back


def test_max_len_follows_the_source_length():
    config = DecodeConfig(beam_size=1, length_penalty=0.0, max_len_a=1.0, max_len_b=0)
    [[hyp]] = run(ScriptedModel(LONG), config, src_len=2)
    assert_hyps([hyp], [((A, A), 0.5 * 0.4 * 0.3)])


def test_finished_sentences_leave_the_batch():
    model = ScriptedModel(LONG, EARLY)
    config = DecodeConfig(beam_size=2, n_best=2, length_penalty=0.0, max_len_a=0, max_len_b=3)
    long, early = run(model, config, n_sentences=2)
    assert_hyps(early, [((), 0.9), ((A,), 0.06 * 0.5)])
    assert_hyps(long, [((A, A, A), 0.5 * 0.4 * 0.4 * 0.3), ((B, A, A), 0.4 * 0.4 * 0.4 * 0.3)])
    assert model.rows_per_step == [4, 4, 2, 2]  # 2 sentences × 2 beams, then the early one is gone
    alone = ScriptedModel(LONG)
    assert run(alone, config) == [long]


def test_greedy_against_the_script():
    model = ScriptedModel(LONG, SHORT)
    config = DecodeConfig(beam_size=1, length_penalty=0.0, max_len_a=0, max_len_b=3)
    [long], [short] = run(model, config, n_sentences=2)
    assert_hyps([short], [((), 0.4)])
    assert_hyps([long], [((A, A, A), 0.5 * 0.4 * 0.4 * 0.3)])
    assert model.rows_per_step == [2, 1, 1, 1]
    [[hyp]] = run(ScriptedModel(SHORT), config.replace(min_len=1))
    assert_hyps([hyp], [((A,), 0.35 * 0.9)])


def test_no_repeat_ngram_and_repetition_penalty():
    table = {"default": [0.1, 0.6, 0.3, 0]}
    config = DecodeConfig(beam_size=1, length_penalty=0.0, max_len_a=0, max_len_b=8)
    [[plain]] = run(ScriptedModel(table), config)
    assert plain.ids == (A,) * 8
    [[hyp]] = run(ScriptedModel(table), config.replace(no_repeat_ngram_size=2))
    assert_hyps([hyp], [((A, A, B, A), 0.6 * 0.6 * 0.3 * 0.6 * 0.1)])  # "a a" then "a b" are used up
    table = {"default": [0.25, 0.45, 0.3, 0]}
    [[hyp]] = run(ScriptedModel(table), config.replace(repetition_penalty=2.0))
    assert hyp.ids == (A, B)  # a again would score 2 · log 0.45 = -1.60 < log 0.3, then both < log 0.25
    assert hyp.token_log_probs == pytest.approx((L(0.45), L(0.3), L(0.25)))


def test_constraint_helpers_on_tensors():
    log_probs = torch.zeros(1, 4)
    block_repeated_ngrams(log_probs, torch.tensor([[1, 2, 3, 1]]), 2)
    assert log_probs.tolist() == [[0, 0, float("-inf"), 0]]  # "1 2" was seen: 2 may not follow 1 again
    log_probs = torch.full((1, 4), -1.0)
    penalize_repetition(log_probs, torch.tensor([[3, 3]]), 1.5)
    assert log_probs.tolist() == [[-1, -1, -1, -1.5]]


# ---- the real model: batching, caching, beam 1 = greedy --------------------------------------------------------------

V = 24


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(V)).eval()
    with torch.no_grad():  # random weights almost never end a sentence: lean the output toward </s> so that they do
        model.decoder[-1].sub_ffn.norm.bias.copy_(3 * model.embed.tokens.weight[EOS])
    return model


def sources(lengths=(5, 9, 2)):
    generator = torch.Generator().manual_seed(1)
    src = torch.full((len(lengths), max(lengths)), V - 1, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(1, V - 1, (n,), generator=generator)
    return src, src.eq(V - 1)


def test_beam_size_one_equals_greedy(model):
    src, mask = sources()
    greedy = decode(model, src, mask, DecodeConfig(beam_size=1, max_len_b=8))
    with torch.inference_mode():  # decode() sends beam_size 1 to greedy_search: call the beam search directly
        beam = beam_search(model, src, mask, DecodeConfig(beam_size=1, max_len_b=8))
    assert [h[0].ids for h in beam] == [h[0].ids for h in greedy]
    assert [h[0].score for h in beam] == pytest.approx([h[0].score for h in greedy], abs=1e-6)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_batched_equals_one_at_a_time(model, beam_size):
    src, mask = sources()
    config = DecodeConfig(beam_size=beam_size, n_best=beam_size, max_len_b=8)
    batched = decode(model, src, mask, config)
    for i in range(len(src)):
        n = int((~mask[i]).sum())
        [single] = decode(model, src[i:i + 1, :n], mask[i:i + 1, :n], config)
        assert [h.ids for h in single] == [h.ids for h in batched[i]]
        assert [h.score for h in single] == pytest.approx([h.score for h in batched[i]], abs=1e-4)


@pytest.mark.parametrize("config", [DecodeConfig(max_len_b=8, n_best=2), DecodeConfig(beam_size=1, max_len_b=8),
                                    DecodeConfig(sample=True, seed=3, num_samples=2, max_len_b=8)])
def test_cached_decoding_equals_teacher_forcing(model, config):
    src, mask = sources()
    for i, hyps in enumerate(decode(model, src, mask, config)):
        n = int((~mask[i]).sum())
        for h in hyps:
            tgt_in = torch.tensor([[model.bos_id, *h.ids]])
            with torch.inference_mode():
                logits = model(src[i:i + 1, :n], tgt_in)  # (1, T, V)
                logits[..., model.pad_id] = float("-inf")  # decode_step never outputs <pad>
            expected = logits.log_softmax(-1)[0].gather(1, torch.tensor([*h.ids, EOS])[:, None])[:, 0]
            assert torch.allclose(torch.tensor(h.token_log_probs), expected, atol=1e-5)
            assert h.score == pytest.approx(sum(h.token_log_probs) / ((5 + len(h.ids) + 1) / 6) ** 0.6, abs=1e-5)


def test_attention_rows_cover_the_real_source(model):
    src, mask = sources()
    for config in (DecodeConfig(max_len_b=6), DecodeConfig(beam_size=1)):
        for i, [h] in enumerate(decode(model, src, mask, config, return_attention=True)):
            assert h.attention.shape == (len(h.token_log_probs), int((~mask[i]).sum()))
            assert torch.allclose(h.attention.sum(-1), torch.ones(len(h.token_log_probs)), atol=1e-5)


# ---- sampling --------------------------------------------------------------------------------------------------------

def test_same_seed_same_samples_alone_or_batched(model):
    src, mask = sources()
    config = DecodeConfig(sample=True, seed=7, num_samples=3, n_best=3, max_len_b=8)
    first, second = decode(model, src, mask, config), decode(model, src, mask, config)
    assert [[h.ids for h in s] for s in first] == [[h.ids for h in s] for s in second]
    other = decode(model, src, mask, config.replace(seed=8))
    assert [[h.ids for h in s] for s in first] != [[h.ids for h in s] for s in other]
    for i in range(len(src)):
        n = int((~mask[i]).sum())
        [alone] = decode(model, src[i:i + 1, :n], mask[i:i + 1, :n], config)
        assert [h.ids for h in alone] == [h.ids for h in first[i]]


def test_top_k_one_equals_greedy(model):
    src, mask = sources()
    greedy = decode(model, src, mask, DecodeConfig(beam_size=1, max_len_b=8))
    sampled = decode(model, src, mask, DecodeConfig(sample=True, top_k=1, temperature=0.7, max_len_b=8),
                     generator=torch.Generator().manual_seed(0))
    assert [h[0].ids for h in sampled] == [h[0].ids for h in greedy]
    assert [h[0].score for h in sampled] == pytest.approx([h[0].score for h in greedy], abs=1e-6)


NUCLEUS = {(): [0.0, 0.5, 0.3, 0.15, 0.05, 0.0], "default": [1.0, 0, 0, 0, 0, 0]}  # one token, then </s>


def first_tokens(config: DecodeConfig) -> Counter:
    [hyps] = run(ScriptedModel(NUCLEUS), config.replace(sample=True, seed=0, num_samples=2000, n_best=2000))
    return Counter(h.ids[0] for h in hyps)


def test_top_p_never_samples_outside_the_nucleus():
    counts = first_tokens(DecodeConfig(top_p=0.7))  # 0.5 < 0.7 <= 0.5 + 0.3: the nucleus is {1, 2}
    assert set(counts) == {1, 2}
    assert counts[1] / 2000 == pytest.approx(0.5 / 0.8, abs=0.04)
    assert set(first_tokens(DecodeConfig(top_k=3))) == {1, 2, 3}


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_reshapes_the_distribution(temperature):
    p = torch.tensor(NUCLEUS[()][1:5])
    expected = p ** (1 / temperature) / (p ** (1 / temperature)).sum()  # softmax(log p / τ)
    probs, ids = next_token_distribution(p.log()[None], DecodeConfig(temperature=temperature))
    assert ids is None and torch.allclose(probs[0], expected, atol=1e-6)
    counts = first_tokens(DecodeConfig(temperature=temperature))
    assert [counts[t] / 2000 for t in (1, 2, 3, 4)] == pytest.approx(expected.tolist(), abs=0.04)


def test_sample_scores_use_the_untempered_log_probs():
    [hyps] = run(ScriptedModel(NUCLEUS), DecodeConfig(sample=True, seed=1, temperature=3.0, length_penalty=0.0))
    assert hyps[0].token_log_probs == pytest.approx((L(NUCLEUS[()][hyps[0].ids[0]]), 0.0))


# ---- options ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, name", [({"beam_size": 0}, "beam_size"), ({"top_p": 1.5}, "top_p"),
                                           ({"temperature": -1.0}, "temperature"),
                                           ({"n_best": 5, "beam_size": 4}, "n_best")])
def test_invalid_options_name_themselves(options, name):
    with pytest.raises(ConfigError, match=name):
        DecodeConfig(**options)


def test_survivors_fill_the_places_of_the_done_from_the_end():
    from seq2seq.decoding.hypothesis import survivors
    assert survivors([False, True, False, False]) == [0, 3, 2]
    assert survivors([True, True, False, False, True, False]) == [3, 5, 2]
    assert survivors([False, False, True]) == [0, 1] and survivors([True, True]) == [] and survivors([]) == []


@pytest.mark.parametrize("n", [4 * 10001, 640, 10007])  # 10007 is prime: no chunk width, torch's topk
def test_top_k_in_two_passes_equals_torch_topk(n):
    from seq2seq.decoding.beam import chunk_width, top_k
    torch.manual_seed(0)
    x = torch.randn(6, n)
    x[1] = float("-inf")  # a sentence with no live beam
    x[2, : n // 2] = float("-inf")
    x[3, 5:13] = 7.0  # ties at the top
    values, idx = top_k(x, 8)
    expected, expected_idx = x.topk(8, dim=1)
    assert torch.equal(values, expected) and torch.equal(x.gather(1, idx), values)
    assert torch.equal(idx[[0, 2, 4, 5]], expected_idx[[0, 2, 4, 5]])  # without ties, the same indices
    assert sorted(idx[3].tolist()) == list(range(5, 13))
    assert chunk_width(n) == {4 * 10001: 137, 640: 128, 10007: 0}[n]


@pytest.mark.parametrize("search", ["beam", "greedy"])
def test_options_that_forbid_every_token_still_give_an_answer(model, search):
    """no_repeat_ngram_size 1 uses up the tiny vocabulary long before min_len allows eos: every beam dies. Found by
    the server's property test (a valid request got INTERNAL: no hypothesis at all). The answer ends with eos at
    the maximum length, with its −inf score, in beam search as in greedy search."""
    src = torch.randint(1, model.pad_id, (2, 5))
    config = DecodeConfig(beam_size=3 if search == "beam" else 1, min_len=60, no_repeat_ngram_size=1, max_len_b=70)
    results = decode(model, src, src.eq(model.pad_id), config, search=search)
    vocab = model.vocab_size - 1  # every id but <pad>
    for hyps in results:
        assert len(hyps) == 1 and hyps[0].score == float("-inf")
        assert vocab - 1 <= len(hyps[0].ids) <= 5 + 70  # at least every non-eos id once, at most the limit
