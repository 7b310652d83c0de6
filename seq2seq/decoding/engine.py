"""The decoding engine: one running batch of decoder rows that sentences join at every step boundary and leave as
soon as they are done (continuous batching, as Orca (Yu et al., OSDI 2022) does for decoder-only models, here for an
encoder-decoder with beams).

Every step runs one model step for all live rows; then each search (one per DecodeConfig: beam search, greedy or
sampling) picks its own sentences' next tokens from its own rows, so requests with different options share every
model step. A sentence that joins is encoded at the boundary and its rows (encoder memory, cross-attention keys and
values, an empty self-attention cache) are appended; a finished or stopped sentence's rows are dropped at once.

Memory is bounded: the caches grow with the batch (never allocated for the worst case), and a sentence is admitted
only while rows × (longest allowed output + longest source) stays within `max_positions`, the worst the caches of
the batch can reach; one that does not fit waits. Nothing here knows text, tokenizers or gRPC.

Shapes: N live rows, V vocabulary, S source length.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from ..config import DecodeConfig
from ..model import bucket
from .beam import BeamSearch
from .constraints import max_output_length
from .greedy import PathSearch
from .hypothesis import Hypothesis, best_first, last_layer_attention
from .lexical import ConstrainedBeamSearch, Constraints
from .sampling import Sampler

if TYPE_CHECKING:
    from . import StepModel

log = logging.getLogger("seq2seq.engine")


class Cancelled(Exception):
    """Decoding stopped early because `should_stop` said so (a cancelled request or a passed deadline)."""


class TooLarge(ValueError):
    """A sentence whose caches alone could exceed the engine's memory budget; the message says by how much."""


@dataclass(eq=False)
class Sentence:
    """One source sentence handed to the engine, and where its result goes."""

    src: list[int]  # source ids, </s> included
    config: DecodeConfig
    deliver: Callable[[list[Hypothesis] | BaseException], None]  # called once, in the engine's thread
    return_attention: bool = False  # keep each output token's cross-attention (Hypothesis.attention)
    generator: torch.Generator | None = None  # sampling without a seed draws from it (None: torch's global one)
    should_stop: Callable[[], bool] | None = None  # asked at every step boundary; True = leave, deliver Cancelled
    owner: object = None  # the request it belongs to: with sharing off, one owner's sentences at a time
    search: str = ""  # "beam", "greedy" or "sample"; "" = from config (tests force beam search with beam_size 1)
    constraints: Constraints = ()  # token sequences its output must hold (a glossary's terms): constrained search
    # kept by the engine and the searches:
    limit: int = 0  # the most output tokens before eos is forced
    found: list[Hypothesis] = field(default_factory=list)  # the hypotheses ended so far
    stopped: bool = False
    open_paths: int = 0

    @property
    def src_len(self) -> int:
        return len(self.src)

    @property
    def kind(self) -> str:
        if self.constraints:  # beam search with dynamic beam allocation, whatever the beam size (1 = greedy)
            return "constrained"
        if self.search:
            return self.search
        return "sample" if self.config.sample else "greedy" if self.config.beam_size == 1 else "beam"

    @property
    def rows(self) -> int:
        """Decoder rows it needs: K beams, or one per sample or greedy path."""
        kind = self.kind
        if kind in ("beam", "constrained"):
            return self.config.beam_size
        return self.config.num_samples if kind == "sample" else 1


class Engine:
    """Args:
        model: a StepModel (seq2seq.model.Transformer), in eval mode, on `device`.
        max_rows: live decoder rows at most (None: no limit); a lone sentence is always admitted.
        max_positions: the budget of cache positions, rows × (output + source positions), over all rows (None: no
            limit). The caller converts bytes to positions (seq2seq.translator: 2·L·d_model values per position).
        share: False turns cross-request batching off: only sentences of one `owner` decode at a time.
        glued: (V,) bool, the tokens that continue the word before them (SentencePiece pieces without "▁"): no
            constrained sentence writes one right after a term (lexical.py); None = no such rule.

    Threads: `submit` may be called from any thread; `step` / `run` from one thread at a time (the one that owns
    the model).
    """

    def __init__(self, model: StepModel, device: torch.device | str = "cpu", max_rows: int | None = None,
                 max_positions: int | None = None, share: bool = True, glued: Tensor | None = None):
        self.model, self.device = model, torch.device(device)
        self.glued = None if glued is None else glued.to(self.device)
        self.max_rows, self.max_positions, self.share = max_rows, max_positions, share
        self.waiting: deque[Sentence] = deque()
        self.stoppable = 0  # waiting sentences with a should_stop (only they need a look behind the head)
        self.lock = threading.Lock()
        self.searches: dict[tuple, BeamSearch | PathSearch] = {}  # in the order of their rows in the batch
        self.where: dict[tuple, slice | Tensor] = {}  # each search's rows in the batch
        self.live: list[Sentence] = []
        self.memory, self.state = None, None
        self.reorder: tuple[Tensor, Tensor] | None = None  # (rows, memory rows) the next step starts from
        self.n_rows = self.n_owners = 0  # rows and requests in the batch at the last model step

    # ---- the outside ------------------------------------------------------------------------------------------

    def cost(self, sentence: Sentence) -> int:
        """Cache positions the sentence may need alone: rows × (its most output positions + its source positions),
        with the model's padding."""
        return self.model.cache_positions(sentence.rows, sentence.limit + 1, source_width(sentence.src_len))

    def check(self, sentence: Sentence) -> Sentence:
        """Set its limit; raise TooLarge if it could not fit the budget even alone."""
        sentence.limit = max_output_length(sentence.src_len, sentence.config)
        if self.max_positions is not None and self.cost(sentence) > self.max_positions:
            raise TooLarge(f"a sentence of {sentence.src_len} tokens with {sentence.rows} rows and up to "
                           f"{sentence.limit} output tokens needs {self.cost(sentence)} cache positions; the budget "
                           f"is {self.max_positions}: lower beam_size, num_samples or max_len_a/max_len_b")
        return sentence

    def submit(self, sentences: list[Sentence]) -> None:
        """Queue sentences (all or none: a TooLarge one rejects the lot); they join at the next step boundaries."""
        for s in sentences:
            self.check(s)
        with self.lock:
            self.waiting.extend(sentences)
            self.stoppable += sum(s.should_stop is not None for s in sentences)

    @property
    def rows(self) -> int:
        return sum(search.rows for search in self.searches.values())

    def busy(self) -> bool:
        return bool(self.live or self.waiting)

    def run(self) -> None:
        """Step until every submitted sentence is delivered."""
        while self.busy():
            self.step()

    # ---- one step -----------------------------------------------------------------------------------------------

    def step(self) -> int:
        """One step boundary (sentences leave and join), then one model step for every live row. Returns the number
        of sentences delivered (their results or errors)."""
        joined = self._admit()
        check = self._check_stops()
        if not self.live and not joined:
            return 0
        done: list[Sentence] = []
        try:
            with torch.inference_mode():
                self._place(joined)
                done = self._decode(check)
        except Exception as e:  # e.g. out of memory: every sentence in the batch fails, the engine goes on
            log.exception("decoding step failed")
            live = set(map(id, self.live))  # those joining now are not live yet if _place failed
            done = self.live + [s for s in joined if id(s) not in live]
            for s in done:
                _deliver(s, e)
            self._reset()
            return len(done)
        for s in done:
            _deliver(s, Cancelled("the request was cancelled or its deadline passed") if s.stopped
                     else best_first(s.found, s.config.n_best))
        return len(done)

    def _admit(self) -> list[Sentence]:
        """The waiting sentences that join now, oldest first, while the batch stays within its limits."""
        joined, cancelled = [], []
        rows = self.rows
        longest = max((s.limit + 1 for s in self.live), default=0)
        widest = max((s.src_len for s in self.live), default=0)
        owners = {id(s.owner) for s in self.live}
        with self.lock:
            if self.stoppable:  # anywhere in the queue, not only at its head: a cancelled request leaves at once
                waiting = deque()
                for s in self.waiting:
                    (cancelled if _asks_to_stop(s) else waiting).append(s)
                self.waiting, self.stoppable = waiting, self.stoppable - len(cancelled)
            while self.waiting:
                s = self.waiting[0]
                if not self.share and owners and id(s.owner) not in owners:
                    break
                new_rows, new_longest = rows + s.rows, max(longest, s.limit + 1)
                new_widest = max(widest, s.src_len)
                if rows and ((self.max_rows is not None and new_rows > self.max_rows) or
                             (self.max_positions is not None and self._positions(
                                 new_rows, new_longest, new_widest) > self.max_positions)):
                    break
                joined.append(self.waiting.popleft())
                self.stoppable -= s.should_stop is not None
                rows, longest, widest = new_rows, new_longest, new_widest
                owners.add(id(s.owner))
        for s in cancelled:
            _deliver(s, Cancelled("the request was cancelled or its deadline passed before decoding"))
        return joined

    def _positions(self, rows: int, longest: int, widest: int) -> int:
        """The cache positions a batch of `rows` rows may reach: the model's count, plus the encoder memory that a
        reorder in place (model.Memory) keeps allocated beyond those rows."""
        held = 0 if self.memory is None else self.memory.excess_positions(rows)
        return self.model.cache_positions(rows, longest, source_width(widest)) + held

    def _check_stops(self) -> bool:
        stopped = False
        for s in self.live:
            if not s.stopped and _asks_to_stop(s):
                s.stopped = stopped = True
        return stopped

    def _search_for(self, s: Sentence) -> tuple[tuple, BeamSearch | PathSearch]:
        key = (s.kind, s.config.replace(seed=None), s.return_attention)
        if key not in self.searches:
            m, c = self.model, s.config
            if s.kind in ("beam", "constrained"):
                args = (c, m.bos_id, m.eos_id, m.pad_id, self.device, s.return_attention)
                search = (ConstrainedBeamSearch(*args, glued=self.glued) if s.kind == "constrained"
                          else BeamSearch(*args))
            else:
                sampler = Sampler(c, self.device) if s.kind == "sample" else None
                search = PathSearch(c, s.rows, sampler, m.bos_id, m.eos_id, m.pad_id, self.device,
                                    s.return_attention)
            self.searches[key] = search
        return key, self.searches[key]

    def _place(self, joined: list[Sentence]) -> None:
        """Apply the last step's reorder and append the rows of the sentences that join: each search's rows stay
        together, kept rows first (in search order), then the new rows (in search order)."""
        kept = {key: search.rows for key, search in self.searches.items()}
        by_search: dict[tuple, list[Sentence]] = {}
        for s in joined:
            key, _ = self._search_for(s)
            by_search.setdefault(key, []).append(s)
            kept.setdefault(key, 0)
        order = [s for key in self.searches for s in by_search.get(key, [])]
        memory_new = state_new = None
        if order:
            memory_new = self._encode(order)
            state_new = self.model.init_state(memory_new, max(s.limit for s in order) + 1)
        room = max(s.limit for s in self.live + order) + 1  # the most positions a row of the batch may need
        if self.memory is None:
            self.memory, self.state = memory_new, state_new
        elif order or self.reorder is not None:
            same = torch.arange(self.n_rows, device=self.device)
            rows, memory_rows = self.reorder if self.reorder is not None else (same, same)
            self.state.room = room  # the reorder gives back capacity past it
            self.state = self.state.reorder(rows, state_new)
            if order or not torch.equal(memory_rows, same):
                width = source_width(max((s.src_len for s in self.live), default=1))
                self.memory = self.memory.reorder(memory_rows, memory_new, width)
        self.reorder = None
        for key, sentences in by_search.items():
            self.searches[key].join(sentences)
        self.live += order
        # where each search's rows are now
        offset, where = 0, {}
        for key in self.searches:
            where[key] = [(offset, offset + kept[key])]
            offset += kept[key]
        for key in self.searches:
            n_new = sum(s.rows for s in by_search.get(key, []))
            where[key].append((offset, offset + n_new))
            offset += n_new
        self.where = {key: _rows(ranges, self.device) for key, ranges in where.items()}
        self.state.need_attention = any(key[2] for key in self.searches)
        self.state.room = room
        self.n_rows = offset
        self.n_owners = len({id(s.owner) for s in self.live})

    def _encode(self, sentences: list[Sentence]):
        """The encoder memory of the joining sentences, one row per decoder row they need."""
        pad = self.model.pad_id
        width = source_width(max(s.src_len for s in sentences))
        # Sentences too are padded, to 1, 2, 4, 8, then a multiple of 8 (sources of one </s>, dropped after):
        # each (sentences, width) is a shape of the encoder's attention products, and a kernel kept in memory.
        n = len(sentences)
        src = torch.full((n if n <= 2 else 4 if n <= 4 else bucket(n, 8), width), pad, dtype=torch.long)
        src[n:, 0] = self.model.eos_id
        for i, s in enumerate(sentences):
            src[i, :s.src_len] = torch.tensor(s.src)
        src = src.to(self.device)
        memory = self.model.encode(src, src.eq(pad))
        repeats = torch.tensor([s.rows for s in sentences], device=self.device)
        return memory.reorder(torch.arange(len(sentences), device=self.device).repeat_interleave(repeats))

    def _decode(self, check: bool) -> list[Sentence]:
        """One model step for every row; each search picks its tokens; returns the sentences done."""
        n = self.n_rows
        prev = torch.empty(n, dtype=torch.long, device=self.device)
        for key, search in self.searches.items():
            prev[self.where[key]] = search.prev
        log_probs = self.model.decode_step(prev, self.memory, self.state)  # (N, V)
        attention = last_layer_attention(self.state)  # (N, S) or None
        rows_parts, memory_parts, done = [], [], []
        for key, search in list(self.searches.items()):
            where = self.where[key]
            mine = log_probs[where]
            mine_attention = None if attention is None or not key[2] else attention[where]
            rows, memory_rows, finished = search.step(mine, mine_attention, check)
            global_rows = _global(where, self.device)
            rows_parts.append(global_rows if rows is None else global_rows[rows])
            memory_parts.append(global_rows if memory_rows is None else global_rows[memory_rows])
            done += finished
            if not search.rows:
                del self.searches[key]
        if done:
            gone = set(map(id, done))
            self.live = [s for s in self.live if id(s) not in gone]
        rows, memory_rows = torch.cat(rows_parts), torch.cat(memory_parts)
        if not self.live:
            self._reset()
        elif not torch.equal(rows, torch.arange(n, device=self.device)):
            self.reorder = (rows, memory_rows)
        return done

    def _reset(self) -> None:
        self.searches, self.where, self.live = {}, {}, []
        self.memory = self.state = self.reorder = None
        self.n_rows = 0


def _asks_to_stop(s: Sentence) -> bool:
    """s.should_stop(), if any; one that raises counts as a stop (the sentence leaves with Cancelled)."""
    if s.should_stop is None:
        return False
    try:
        return bool(s.should_stop())
    except Exception:
        log.exception("should_stop failed: the sentence leaves")
        return True


def _deliver(s: Sentence, result: list[Hypothesis] | BaseException) -> None:
    """s.deliver(result); a deliver that raises is logged and does not stop the engine or the others' deliveries."""
    try:
        s.deliver(result)
    except Exception:
        log.exception("delivering a result failed")


def source_width(n: int) -> int:
    """Sources are padded to a multiple of 16 tokens: fewer shapes for the kernels to compile and keep, and the same
    bits for a sentence in any company. torch's CPU softmax sums a row of 24 keys in another order than the same
    row padded to 32 (masked keys), but any two multiples of 16 alike; with multiples of 8, 5 of 1,000 test
    sentences changed their bf16 translation between alone and among 250 others (self-attention spans are
    multiples of 16 too: model.SPAN_BUCKET)."""
    return bucket(n, 16)


def _rows(ranges: list[tuple[int, int]], device: torch.device) -> slice | Tensor:
    """Row indices of [start, end) ranges: a slice when they are contiguous, else a (N,) long tensor."""
    ranges = [(a, b) for a, b in ranges if b > a]
    if not ranges:
        return slice(0, 0)
    if all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1)):
        return slice(ranges[0][0], ranges[-1][1])
    return torch.cat([torch.arange(a, b, device=device) for a, b in ranges])


def _global(where: slice | Tensor, device: torch.device) -> Tensor:
    return torch.arange(where.start, where.stop, device=device) if isinstance(where, slice) else where
