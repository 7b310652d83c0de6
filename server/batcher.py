"""Dynamic batching across requests: requests that arrive within a short window are decoded together.

One worker thread owns the model. A request becomes a Job (its sentences' source ids, its DecodeConfig, a way to
ask whether its client is still there). The worker takes the oldest job, waits up to `window_s` for others with the
same DecodeConfig (only those can share a search) until `max_batch_tokens` source tokens are queued, then decodes
their sentences together in length-sorted groups (Translator.batches) and hands each sentence's hypotheses back to
its job as soon as its group is done, which is what TranslateStream sends on.

With `window_s` = 0, cross-request batching is off: each request is decoded on its own (its own sentences still
share batches). A job whose client cancelled or whose deadline passed is dropped before decoding; during decoding, a group stops at
the next step once none of its jobs is still wanted. Results do not depend on batching: a batch decodes exactly as
its sentences one at a time (tests/test_decoding.py), and seeded sampling draws per sentence.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from seq2seq.config import DecodeConfig
from seq2seq.translator import Cancelled, Translator

log = logging.getLogger("server.batcher")


class QueueFull(Exception):
    """More requests are waiting than --max-queue allows."""


class ShuttingDown(Exception):
    """The server stopped taking work."""


@dataclass(eq=False)
class Job:
    sentences: list[list[int]]  # source ids of each sentence, with </s>
    config: DecodeConfig
    is_active: Callable[[], bool]  # False once the client cancelled or the deadline passed
    events: queue.Queue = field(default_factory=queue.Queue)  # (sentence index, hyps) or an exception
    arrived: float = field(default_factory=time.monotonic)

    def tokens(self) -> int:
        return sum(map(len, self.sentences))

    def results(self):
        """Yields (sentence index, hypotheses) as the worker delivers them; raises the job's error, if any."""
        for _ in range(len(self.sentences)):
            item = self.events.get()
            if isinstance(item, BaseException):
                raise item
            yield item


class Batcher:
    def __init__(self, translator: Translator, window_s: float, max_batch_tokens: int, max_queue: int,
                 metrics=None):
        self.translator, self.window_s, self.max_batch_tokens = translator, window_s, max_batch_tokens
        self.max_queue, self.metrics = max_queue, metrics
        self.jobs: list[Job] = []
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="batcher", daemon=True)

    def start(self) -> "Batcher":
        self.thread.start()
        return self

    def submit(self, job: Job) -> Job:
        with self.cond:
            if self.closed:
                raise ShuttingDown("the server is shutting down")
            if len(self.jobs) >= self.max_queue:
                raise QueueFull(f"{len(self.jobs)} requests are queued, the limit is {self.max_queue}; retry later")
            self.jobs.append(job)
            self._gauge()
            self.cond.notify_all()
        return job

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued jobs, then end the worker."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join(timeout)

    # ---- the worker ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            jobs = []
            try:
                jobs = self._take()
                if jobs is None:
                    return
                self._decode(jobs)
            except Exception as e:  # never let the worker die: the jobs get the error, the server goes on
                log.exception("batching failed")
                for job in jobs:
                    job.events.put(e)

    def _take(self) -> list[Job] | None:
        """Wait for work; return the oldest live job and the queued jobs that may share its batch."""
        with self.cond:
            while True:
                while not self.jobs and not self.closed:
                    self.cond.wait()
                if not self.jobs:
                    return None  # closed and drained
                for job in [j for j in self.jobs if not j.is_active()]:
                    self.jobs.remove(job)
                    job.events.put(Cancelled("the request was cancelled or its deadline passed before decoding"))
                if not self.jobs:
                    self._gauge()
                    continue
                first = self.jobs[0]
                while not self.closed:
                    left = first.arrived + self.window_s - time.monotonic()
                    if left <= 0 or self._compatible_tokens(first) >= self.max_batch_tokens:
                        break
                    self.cond.wait(left)
                if self.window_s == 0:  # cross-request batching off: one request per batch
                    self.jobs.remove(first)
                    self._gauge()
                    return [first]
                taken, tokens = [], 0
                for job in list(self.jobs):
                    if job.config == first.config and (not taken or tokens + job.tokens() <= self.max_batch_tokens):
                        taken.append(job)
                        tokens += job.tokens()
                        self.jobs.remove(job)
                self._gauge()
                return taken

    def _compatible_tokens(self, first: Job) -> int:
        return sum(j.tokens() for j in self.jobs if j.config == first.config)

    def _decode(self, jobs: list[Job]) -> None:
        items = [(job, i) for job in jobs for i in range(len(job.sentences))]
        src = [job.sentences[i] for job, i in items]
        for group in self.translator.batches(src):
            members = [items[k] for k in group]
            owners = list({id(job): job for job, _ in members}.values())
            if not any(job.is_active() for job in owners):
                continue  # nobody wants it: the sweep below tells the jobs
            if self.metrics is not None:
                self.metrics.observe_batch(sentences=len(group), requests=len(owners))
            try:
                hyps = self.translator.decode_batch([src[k] for k in group], jobs[0].config,
                                                    should_stop=lambda: not any(j.is_active() for j in owners))
            except Exception as e:  # Cancelled, or a failure (e.g. out of memory): only this group's jobs fail
                if not isinstance(e, Cancelled):
                    log.exception("decoding failed")
                for job in owners:
                    job.events.put(e)
                continue
            for (job, i), h in zip(members, hyps):
                job.events.put((i, h))
        for job in jobs:  # jobs dropped mid-way: make sure their waiting handler wakes up
            if not job.is_active():
                job.events.put(Cancelled("the request was cancelled or its deadline passed"))

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self.jobs))

