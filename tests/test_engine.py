"""The decoding engine (seq2seq/decoding/engine.py): sentences join a running batch at step boundaries and leave
when done, with their own options, and decode exactly as they do alone; a stopped sentence leaves without changing
the others; the caches stay within the memory budget whatever the lengths."""
from __future__ import annotations

import pytest
import torch

from seq2seq.config import DecodeConfig, ModelConfig
from seq2seq.decoding import Cancelled, Engine, Sentence, TooLarge, decode
from seq2seq.model import SPAN_BUCKET, Transformer, bucket, padded_rows

V, EOS = 24, 0
SEARCHES = {"beam": DecodeConfig(beam_size=3, n_best=2, max_len_b=12),
            "greedy": DecodeConfig(beam_size=1, max_len_b=12),
            "sample": DecodeConfig(sample=True, seed=5, num_samples=2, n_best=2, max_len_b=12, top_k=8)}


def tiny_model(dtype=torch.float32) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(V)).eval()
    with torch.no_grad():  # random weights almost never end a sentence: lean the output toward </s> so that they do
        model.decoder[-1].sub_ffn.norm.bias.copy_(2 * model.embed.tokens.weight[EOS])
    return model.to(dtype)


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def model(request) -> Transformer:
    return tiny_model(request.param)


def source(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, V - 1, (n - 1,), generator=g).tolist() + [EOS]


def alone(model, src: list[int], config: DecodeConfig):
    [hyps] = decode(model, torch.tensor([src]), torch.zeros(1, len(src), dtype=torch.bool), config)
    return hyps


class Counting:
    """Wraps a model: counts the model steps and the rows of each."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def decode_step(self, prev_ids, memory, state):
        self.rows.append(len(prev_ids))
        return self.model.decode_step(prev_ids, memory, state)


def assert_same(got, expected, exact: bool):
    assert [h.ids for h in got] == [h.ids for h in expected]
    if exact:  # bf16: a row's arithmetic is the same in any company (bench/invariance.py)
        assert [h.score for h in got] == [h.score for h in expected]
    else:  # fp32: the matrix kernels depend on the batch shape in the last bits
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-4)


@pytest.mark.parametrize("kind", SEARCHES)
def test_sentences_that_join_later_decode_as_they_do_alone(model, kind):
    config = SEARCHES[kind]
    sources = [source(n, seed) for seed, n in enumerate((6, 11, 3, 8))]
    results = {}
    engine = Engine(model)
    engine.submit([Sentence(sources[0], config, lambda h: results.__setitem__(0, h))])
    engine.step(), engine.step()  # sentence 0 is two steps ahead when 1 and 2 join
    engine.submit([Sentence(src, config, lambda h, i=i: results.__setitem__(i, h))
                   for i, src in enumerate(sources[1:3], 1)])
    engine.step()
    engine.submit([Sentence(sources[3], config, lambda h: results.__setitem__(3, h))])  # one step later still
    engine.run()
    exact = next(model.parameters()).dtype == torch.bfloat16
    for i, src in enumerate(sources):
        assert_same(results[i], alone(model, src, config), exact)


def test_different_options_share_every_model_step(model):
    sources = [source(n, seed) for seed, n in enumerate((6, 11, 3, 8, 5, 9))]
    configs = [SEARCHES["beam"], SEARCHES["greedy"], SEARCHES["sample"]] * 2
    counting, results = Counting(model), {}
    engine = Engine(counting)
    engine.submit([Sentence(src, config, lambda h, i=i: results.__setitem__(i, h))
                   for i, (src, config) in enumerate(zip(sources, configs))])
    engine.run()
    exact = next(model.parameters()).dtype == torch.bfloat16
    longest = 0
    for i, (src, config) in enumerate(zip(sources, configs)):
        assert_same(results[i], alone(model, src, config), exact)
        longest = max(longest, max(len(h.ids) for h in results[i]) + 1)
    assert len(counting.rows) == longest  # one model step per token position, for every search at once
    assert counting.rows[0] == 2 * (3 + 1 + 2)  # beam rows + greedy rows + sample rows


def test_a_stopped_sentence_leaves_without_changing_the_others(model):
    config = SEARCHES["beam"]
    sources = [source(n, seed) for seed, n in enumerate((6, 11, 3))]
    counting, results = Counting(model), {}
    engine = Engine(counting)
    engine.submit([Sentence(src, config, lambda h, i=i: results.__setitem__(i, h),
                            should_stop=(lambda: len(counting.rows) >= 2) if i == 1 else None)
                   for i, src in enumerate(sources)])
    engine.run()
    assert isinstance(results[1], Cancelled)
    # found stopped at the boundary before step 3, it leaves with that step's results, before step 4
    assert counting.rows[2:4] == [3 * config.beam_size, 2 * config.beam_size]
    exact = next(model.parameters()).dtype == torch.bfloat16
    for i in (0, 2):
        assert_same(results[i], alone(model, sources[i], config), exact)


def test_a_failing_step_fails_its_sentences_and_the_engine_goes_on():
    model, results = tiny_model(), {}

    class Failing(Counting):
        def decode_step(self, *args):
            if len(self.rows) == 1:
                self.rows.append(0)
                raise RuntimeError("out of memory")
            return super().decode_step(*args)

    engine = Engine(Failing(model))
    engine.submit([Sentence(source(5, 0), SEARCHES["greedy"], lambda h: results.__setitem__(0, h))])
    engine.run()
    assert isinstance(results[0], RuntimeError)
    engine.submit([Sentence(source(5, 0), SEARCHES["greedy"], lambda h: results.__setitem__(1, h))])
    engine.run()
    assert [h.ids for h in results[1]] == [h.ids for h in alone(model, source(5, 0), SEARCHES["greedy"])]


def test_a_step_that_fails_while_sentences_join_answers_them_too():
    model, results = tiny_model(), {}

    class FailingEncode(Counting):
        calls = 0

        def encode(self, *args):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("out of memory")
            return self.model.encode(*args)

    engine = Engine(FailingEncode(model))
    engine.submit([Sentence(source(5, 0), SEARCHES["greedy"], lambda h: results.__setitem__(0, h))])
    engine.step()
    engine.submit([Sentence(source(7, 1), SEARCHES["greedy"], lambda h: results.__setitem__(1, h))])
    engine.run()  # its encoding fails: the running sentence and the joining one both get the error
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError)
    assert not engine.busy()


def test_a_cancelled_sentence_leaves_the_queue_at_once_even_behind_a_waiting_one():
    model, results, cancel = tiny_model(), {}, []
    engine = Engine(model, max_rows=1)  # one sentence at a time: the second waits for the first
    config = DecodeConfig(beam_size=1, max_len_a=0, max_len_b=30, min_len=30)  # 31 steps
    engine.submit([Sentence(source(5, i), config, lambda h, i=i: results.__setitem__(i, h),
                            should_stop=(lambda: bool(cancel)) if i == 2 else lambda: False) for i in range(3)])
    engine.step()
    cancel.append(True)
    engine.step()
    assert list(results) == [2] and isinstance(results[2], Cancelled)
    engine.run()
    assert [len(results[i][0].ids) for i in (0, 1)] == [30, 30]


def test_a_search_that_never_empties_keeps_only_the_steps_its_rows_need():
    model, results, widths = tiny_model(), {}, []
    config = DecodeConfig(beam_size=1, max_len_a=0, max_len_b=6)
    engine = Engine(model)
    sources = [source(4 + i % 5, i) for i in range(60)]
    for i, src in enumerate(sources):  # a new sentence every other step for 120 steps: the search never empties
        engine.submit([Sentence(src, config, lambda h, i=i: results.__setitem__(i, h))])
        for _ in range(2):
            engine.step()
            [search] = engine.searches.values()
            widths.append(search.history.tokens.size(1))
    engine.run()
    assert max(widths) <= 7  # at most max_len_b + 1 steps, however long the search lives
    for i in (0, 31, 59):
        assert [h.ids for h in results[i]] == [h.ids for h in alone(model, sources[i], config)]


class Measuring(Counting):
    """Records rows × (cache capacity + source positions) at every step: what the batch's caches hold, padding
    rows and positions included."""

    def __init__(self, model):
        super().__init__(model)
        self.positions = []

    def decode_step(self, prev_ids, memory, state):
        out = super().decode_step(prev_ids, memory, state)
        k = memory.cross_kv[0][0]  # the encoder memory's rows as allocated, not as viewed
        memory_rows = k.untyped_storage().nbytes() // (k[0].numel() * k.element_size())
        self.positions.append(state.shape[1] * state.shape[3] + memory_rows * memory.src_pad_mask.size(1))
        return out


def test_the_memory_budget_holds_with_adversarial_lengths():
    model = tiny_model()
    budget = 2000
    measuring, results = Measuring(model), {}
    engine = Engine(measuring, max_positions=budget)
    g = torch.Generator().manual_seed(3)
    sentences = []
    for i in range(40):  # short and long sources, short and very long allowed outputs, beams and samples
        n = int(torch.randint(2, 30, (1,), generator=g))
        config = [DecodeConfig(beam_size=4, max_len_b=int(torch.randint(0, 300, (1,), generator=g))),
                  DecodeConfig(beam_size=1, min_len=60, max_len_b=100),
                  DecodeConfig(sample=True, num_samples=3, max_len_b=5)][i % 3]
        sentences.append(Sentence(source(n, i), config, lambda h, i=i: results.__setitem__(i, h)))
    for s in sentences:
        try:
            engine.submit([s])
        except TooLarge as e:  # alone it could pass the budget: refused up front, with the numbers
            assert f"the budget is {budget}" in str(e) and engine.cost(s) > budget
            results[sentences.index(s)] = e
    engine.run()
    assert len(results) == 40 and sum(isinstance(r, list) for r in results.values()) >= 20
    assert max(measuring.positions) <= budget
    assert max(measuring.rows) > 4  # sentences did share the batch


class Bounding(Counting):
    """Records at every step the most cache positions the batch may reach with the sentences it holds: every row at
    the longest allowed output, and the encoder memory's buffers as allocated (a reorder in place keeps them)."""

    def __init__(self, model):
        super().__init__(model)
        self.engine, self.bounds = None, []

    def decode_step(self, prev_ids, memory, state):
        k = memory.cross_kv[0][0]
        held = k.untyped_storage().nbytes() // (k[0].numel() * k.element_size())
        rows, longest = padded_rows(self.engine.n_rows), max(s.limit + 1 for s in self.engine.live)
        self.bounds.append(rows * bucket(longest, SPAN_BUCKET) + max(held, rows) * memory.src_pad_mask.size(1))
        return super().decode_step(prev_ids, memory, state)


def test_the_memory_budget_counts_encoder_memory_kept_by_a_shrinking_batch():
    """48 rows of wide sources fill the budget; 17 leave, and the encoder memory's buffers keep their 48 rows (a
    reorder in place). A sentence with a longer output must not join as if the memory held only 32 rows."""
    model = tiny_model()
    bounding, results = Bounding(model), {}
    budget = 48 * (16 + 96)  # 48 rows × (outputs of up to 16 positions + sources of 96)
    engine = bounding.engine = Engine(bounding, max_positions=budget)
    exactly = lambda n: DecodeConfig(beam_size=1, max_len_a=0, max_len_b=n, min_len=n)  # noqa: E731
    plan = [exactly(8)] * 31 + [exactly(1)] * 17  # the 17 short ones have their own search, after the others
    engine.submit([Sentence(source(90, i), c, lambda h, i=i: results.__setitem__(i, h)) for i, c in enumerate(plan)])
    engine.step(), engine.step()  # the short ones leave: 31 rows (padded to 32) in buffers of 48
    engine.submit([Sentence(source(5, 99), exactly(60), lambda h: results.__setitem__(99, h))])
    engine.step()
    assert len(engine.live) == 31  # 32 × (64 + 96) positions would fit, 32 × 64 + 48 × 96 do not: it waits
    engine.run()
    assert all(isinstance(r, list) for r in results.values()) and len(results) == 49
    assert max(bounding.bounds) <= budget


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_source_widths_give_the_softmax_the_same_bits(dtype):
    """A source is padded to source_width(n) alone and wider among longer ones; the masked keys must not change
    its attention. torch's CPU softmax sums 24 keys in another order than 24 padded to 32 (5 of 1,000 bf16 test
    translations changed with widths in multiples of 8); multiples of 16 agree with each other."""
    from seq2seq.decoding.engine import source_width
    torch.manual_seed(0)
    for n in range(1, 100):
        x = (torch.randn(4, 4, 8, n) * 3).to(dtype)
        outs = [torch.cat([x, x.new_full((4, 4, 8, w - n), float("-inf"))], -1).softmax(-1)[..., :n]
                for w in (source_width(n), source_width(n) + 16, source_width(n) + 64)]
        assert source_width(n) >= n and all(torch.equal(outs[0], o) for o in outs[1:]), n
