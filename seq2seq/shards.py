"""Batch jobs in resumable chunks, over one process or many (`torchrun`): what seq2seq-translate --output and
seq2seq-backtranslate share. It knows files and torch.distributed, not models or text.

Chunk k of the input is lines [k·n, (k+1)·n). Over W processes, rank r translates the chunks k ≡ r (mod W), each
exactly as one process translates it (the same lines in one call, so the same batches), into files of its own
(OUT.rank{r}-of-{W}.*); rank 0 then joins the parts in input order into what one process would have written. Every
output is appended a chunk at a time, with a state file that records the chunks done, so that the same command
continues after a kill.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

# Connecting the ranks is quick (torchrun starts them together); a rank that cannot connect should fail, not hang.
CONNECT_TIMEOUT = timedelta(minutes=10)
# The one collective of a job is the barrier before the join, where the ranks that finish first wait for the others:
# as long as a share can take. A rank that dies does not leave the others waiting: torchrun stops the whole job.
BARRIER_TIMEOUT = timedelta(days=7)


class OutputError(ValueError):
    """An output that cannot be written or resumed as asked; the message is one line that says why."""


# ---- files ---------------------------------------------------------------------------------------------------------

def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_lines(path: Path, start: int = 0) -> Iterator[str]:
    """The lines of a plain or gzipped UTF-8 file from line `start` on, without their "\\n"."""
    with _open_text(path) as f:
        for n, line in enumerate(f):
            if n >= start:
                yield line.rstrip("\n")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_final(part: Path, out: Path) -> None:
    """part (plain text) -> out, gzipped if out ends in .gz, atomically; no name and mtime 0 in the gzip header, so
    equal text gives equal bytes."""
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with open(part, "rb") as src, open(tmp, "wb") as raw:
        if out.suffix == ".gz":
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                shutil.copyfileobj(src, gz)
        else:
            shutil.copyfileobj(src, raw)
    os.replace(tmp, out)


# ---- the processes ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """This process's place in the job: rank `rank` of `world_size`."""

    rank: int = 0
    world_size: int = 1

    def prefix(self, out: str) -> str:
        """Where this rank writes its part; one process writes the output itself."""
        return out if self.world_size == 1 else f"{out}.rank{self.rank}-of-{self.world_size}"

    def chunks(self, lines: Iterator[str], n: int, first: int, end: int) -> Iterator[tuple[int, int, list[str]]]:
        """(j, k, lines of chunk k) for this rank's chunks k = rank + j·world_size of lines[:end], from its `first`-th
        chunk on: the input is read through, the other ranks' chunks skipped."""
        lines = itertools.islice(lines, end)
        for k in itertools.count():
            chunk = list(itertools.islice(lines, n))
            if not chunk:
                return
            j, mine = divmod(k - self.rank, self.world_size)
            if mine == 0 and j >= first:
                yield j, k, chunk


def world_size() -> int:
    """The number of processes of the torchrun job (its WORLD_SIZE); 1 outside one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start() -> Shard:
    """Join the torchrun job this process is part of (RANK, WORLD_SIZE, LOCAL_RANK), or be rank 0 of 1 outside one.
    Several processes form a gloo group for the barrier: no tensors travel, so gloo serves GPU jobs too."""
    if world_size() == 1:
        return Shard()
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=CONNECT_TIMEOUT)
    if torch.cuda.is_available():  # one GPU per process on each node; --device auto then takes it
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Shard(dist.get_rank(), dist.get_world_size())


def wait_for_all(shard: Shard) -> None:
    if shard.world_size > 1:
        dist.monitored_barrier(timeout=BARRIER_TIMEOUT, wait_all_ranks=True)  # gloo's barrier with its own timeout


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- the output being written ----------------------------------------------------------------------------------------

class Output:
    """PREFIX.{stream}.part files (appended a chunk at a time), PREFIX.state.json (what is committed, written
    atomically after each whole chunk) and the final files they become. A resumed run truncates the part files to
    the committed sizes, so a chunk half-written by a killed run, or one cut short by --limit, is done again whole.

    Args: finals: per stream, the final file (gzipped if its name ends in .gz); options: what a resumed run must
    share (a run with others is refused); counts: the names of the counters kept in the state.
    """

    def __init__(self, prefix: str, finals: dict[str, Path], options: dict, counts: tuple[str, ...]):
        self.prefix, self.finals, self.options = prefix, finals, options
        self.state_path = Path(f"{prefix}.state.json")
        self.parts = {stream: Path(f"{prefix}.{stream}.part") for stream in finals}
        self.state = self._initial(counts)
        if self.state_path.is_file():
            self._load()
        elif any(p.exists() for p in self.finals.values()):
            raise OutputError(f"{', '.join(map(str, finals.values()))}: exist(s) but {self.state_path} does not: "
                              "not overwriting; choose another output")

    def _initial(self, counts: tuple[str, ...]) -> dict:
        return {"options": self.options, "chunks_done": 0, "bytes": dict.fromkeys(self.finals, 0),
                "counts": dict.fromkeys(counts, 0), "written": dict.fromkeys(counts, 0), "complete": False}

    def _load(self) -> None:
        try:
            saved = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise OutputError(f"unreadable {self.state_path}: {e}; delete it to start over") from None
        if saved.get("options") != self.options:
            keys = sorted(k for k in {*self.options, *saved.get("options", {})}
                          if saved.get("options", {}).get(k) != self.options.get(k))
            raise OutputError(f"{self.state_path} was made with other options (differing: {', '.join(keys)}): "
                              "rerun with the same ones, or choose another output")
        self.state = saved

    @property
    def complete(self) -> bool:
        return self.state["complete"] and all(p.is_file() for p in self.finals.values())

    def open(self, from_start: bool = False) -> None:
        """Part files at the committed sizes (or empty, from_start), open for appending."""
        if self.state["complete"] and not from_start:
            raise OutputError(f"{self.state_path} says complete but {self.prefix}'s output is missing: delete the "
                              "state file to start over")
        if from_start:
            self.state = self._initial(tuple(self.state["counts"]))
        self.files = {}
        for stream, path in self.parts.items():
            size = self.state["bytes"][stream]
            if path.exists() and path.stat().st_size < size or not path.exists() and size:
                raise OutputError(f"{path} is shorter than {self.state_path} says: delete both to start over")
            f = self.files[stream] = open(path, "r+b" if path.exists() else "w+b")
            f.truncate(size)
            f.seek(size)
        self._save()  # from now on the state file explains the part files

    def _save(self) -> None:
        write_atomic(self.state_path, json.dumps(self.state, indent=1) + "\n")

    def append(self, rows: list[tuple[str, ...]]) -> None:
        """One line per row in each stream (row[i] in the i-th); `commit` makes them durable."""
        for side, f in enumerate(self.files.values()):
            f.write("".join(row[side] + "\n" for row in rows).encode("utf-8"))
            f.flush()

    def commit(self, chunk: int, counts: dict[str, int]) -> None:
        """Chunks 0..chunk of this output are whole; counts: the counters after them."""
        for f in self.files.values():
            os.fsync(f.fileno())
        self.state.update(chunks_done=chunk + 1, counts=dict(counts),
                          bytes={stream: f.tell() for stream, f in self.files.items()})
        self._save()

    def finish(self, counts: dict[str, int], input_exhausted: bool) -> None:
        """Write the final files from the part files and record what they hold (`written`: the committed chunks plus
        a chunk cut short by --limit); when the whole input is done, mark complete and drop the part files."""
        for f in self.files.values():
            f.close()
        for stream, final in self.finals.items():
            write_final(self.parts[stream], final)
        self.state.update(written=dict(counts), complete=input_exhausted)
        self._save()
        if input_exhausted:
            for path in self.parts.values():
                path.unlink()


class Part(Output):
    """Rank r's share of a job over W processes, in PREFIX.rank{r}-of-{W}.* files: its chunks k ≡ r (mod W) in
    order, with the rows each chunk wrote (`chunk_rows`), so that rank 0 can interleave the parts. It has no final
    files: once complete it waits for `join`, which deletes it."""

    def __init__(self, prefix: str, finals: dict[str, Path], options: dict, counts: tuple[str, ...], shard: Shard):
        super().__init__(shard.prefix(prefix), finals, {**options, "shard": [shard.rank, shard.world_size]}, counts)
        self.state.setdefault("chunk_rows", [])
        self.rows = 0  # appended since the last commit

    @classmethod
    def of(cls, final: Output, shard: Shard) -> "Part":
        return cls(final.prefix, final.finals, final.options, tuple(final.state["counts"]), shard)

    @property
    def complete(self) -> bool:
        return self.state["complete"] and all(p.is_file() for p in self.parts.values())

    def append(self, rows: list[tuple[str, ...]]) -> None:
        super().append(rows)
        self.rows += len(rows)

    def commit(self, chunk: int, counts: dict[str, int]) -> None:
        self.state["chunk_rows"].append(self.rows)
        self.rows = 0
        super().commit(chunk, counts)

    def finish(self, counts: dict[str, int], input_exhausted: bool = True) -> None:
        for f in self.files.values():
            f.close()
        self.state.update(written=dict(counts), complete=True)
        self._save()

    def chunk_rows(self) -> Iterator[list[tuple[str, ...]]]:
        """The committed chunks' rows, chunk by chunk."""
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(p, encoding="utf-8", newline="\n")) for p in self.parts.values()]
            rows = zip(*((line[:-1] for line in f) for f in files))  # each line ends in the "\n" `append` wrote
            for n in self.state["chunk_rows"]:
                yield list(itertools.islice(rows, n))

    def remove(self) -> None:
        for path in (*self.parts.values(), self.state_path):
            path.unlink(missing_ok=True)


def join(final: Output, parts: list[Part]) -> None:
    """Rank 0, once every part is complete: chunk k is chunk k // W of rank k % W; written in input order into
    `final`, which then holds what one process would have written (state file included), and the parts go."""
    n = sum(p.state["chunks_done"] for p in parts)
    counts = {name: sum(p.state["counts"][name] for p in parts) for name in final.state["counts"]}
    if n and final.state["chunks_done"] == n:  # joined before, killed before the final files were written
        final.open()
    else:  # all at once, committed at the end: a join cut short starts again
        final.open(from_start=True)
        chunks = [p.chunk_rows() for p in parts]
        for k in range(n):
            final.append(next(chunks[k % len(parts)]))
        for c in chunks:
            c.close()  # and with it the part's files
        if n:
            final.commit(n - 1, counts)
    final.finish(counts, input_exhausted=True)
    for p in parts:
        p.remove()


# ---- a job: each rank its share, then the join -------------------------------------------------------------------

def share(final: Output, shard: Shard) -> Output:
    """Where this process writes: the output itself, or (one of several) its rank's part of it."""
    return final if shard.world_size == 1 else Part.of(final, shard)


def translate_share(out: Output, lines: Iterator[str], n: int, total: int, end: int, shard: Shard,
                    counts: dict[str, int], translate: Callable[[int, list[str]], list[tuple[str, ...]]]) -> None:
    """This rank's chunks of lines[:end] (chunks of n of the `total` input lines) from where `out` stands:
    translate(k, chunk lines) -> rows, which also updates `counts`; appended, then committed. A chunk cut short by
    end (--limit) is written but not committed, so that a later run does it again whole."""
    first = out.state["chunks_done"]
    mine = sum(min(n, end - k * n) for k in range(shard.rank, -(-end // n), shard.world_size))
    with tqdm(total=mine, initial=min(first * n, mine), unit="line", dynamic_ncols=True,
              disable=None if shard.rank == 0 else True) as bar:  # one bar, rank 0's, under torchrun
        for j, k, chunk in shard.chunks(lines, n, first, end):
            out.append(translate(k, chunk))
            if len(chunk) == min(n, total - k * n):
                out.commit(j, counts)
            bar.update(len(chunk))


def gather(final: Output, shard: Shard) -> None:
    """Once every rank has finished its share, rank 0 joins the parts into `final`; one process has nothing to do."""
    if shard.world_size > 1:
        wait_for_all(shard)
        if shard.rank == 0:
            join(final, [Part.of(final, Shard(r, shard.world_size)) for r in range(shard.world_size)])
