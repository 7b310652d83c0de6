"""Parallel text through Hugging Face `datasets`: read corpora, tokenize once (cached on disk), filter by length,
and cut into token-count batches with length bucketing. Knows the tokenizer, not the model.

A corpus is named by a string (see DataConfig): `dir/name` (aligned `name.fr[.gz]` / `name.en[.gz]`), a `.tsv`, a
`.jsonl`, or `hf:NAME[:CONFIG][:SPLIT]` from the hub. A training mixture weights its corpora and marks the
back-translated ones (config.Corpus); tagged back-translation puts the tokenizer's <BT> id before their sources.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from torch import Tensor

from .config import Corpus
from .tokenizer import BT_TAG, EOS_ID, Tokenizer

datasets.disable_progress_bars()


class DataError(ValueError):
    """A corpus cannot be read; the message is one line that says which and why."""


# ---- reading ---------------------------------------------------------------------------------------------------------

def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _find(prefix: Path, lang: str) -> Path:
    for candidate in (Path(f"{prefix}.{lang}.gz"), Path(f"{prefix}.{lang}")):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing file: {prefix}.{lang}.gz (or {prefix}.{lang}) for corpus '{prefix}'")


def _read_aligned(prefix: str, src_lang: str, tgt_lang: str, target: str | None = None) -> dict[str, list[str]]:
    src_path, tgt_path = _find(Path(prefix), src_lang), _find(Path(target or prefix), tgt_lang)
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"misaligned corpus '{prefix}': {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}")
    return {"src": src, "tgt": tgt}


def _read_tsv(path: str) -> dict[str, list[str]]:
    src, tgt = [], []
    for n, line in enumerate(_read_lines(Path(path)), 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{n}: expected 2 tab-separated fields, got {len(fields)}")
        src.append(fields[0])
        tgt.append(fields[1])
    return {"src": src, "tgt": tgt}


def _pair(record: dict, src_lang: str, tgt_lang: str, where: str) -> tuple[str, str]:
    record = record.get("translation", record)
    if src_lang not in record or tgt_lang not in record:
        raise DataError(f"{where}: no '{src_lang}'/'{tgt_lang}' fields (keys: {', '.join(sorted(record))})")
    return record[src_lang], record[tgt_lang]


def _read_jsonl(path: str, src_lang: str, tgt_lang: str) -> dict[str, list[str]]:
    src, tgt = [], []
    for n, line in enumerate(_read_lines(Path(path)), 1):
        try:
            s, t = _pair(json.loads(line), src_lang, tgt_lang, f"{path}:{n}")
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
        src.append(s)
        tgt.append(t)
    return {"src": src, "tgt": tgt}


def _read_hub(spec: str, src_lang: str, tgt_lang: str) -> datasets.Dataset:
    parts = spec[len("hf:"):].split(":")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else "train")
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the hub raises many types: offline, unknown id, unknown config or split
        raise DataError(f"cannot load hub dataset '{spec}': {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if "translation" not in ds.column_names:
        raise DataError(f"hub dataset '{spec}' has no 'translation' field (columns: {', '.join(ds.column_names)})")
    return ds.map(lambda r: dict(zip(("src", "tgt"), _pair(r, src_lang, tgt_lang, spec))),
                  remove_columns=ds.column_names)


def read_corpus(spec: str, src_lang: str = "fr", tgt_lang: str = "en", target: str | None = None) -> datasets.Dataset:
    """One corpus -> Dataset with string columns `src`, `tgt`. Raises DataError with one clear line. target: another
    aligned prefix whose target-language file is the target side (config.Corpus.target; aligned prefixes only)."""
    if target is not None and (spec.startswith("hf:") or spec.endswith((".tsv", ".tsv.gz", ".jsonl", ".jsonl.gz"))):
        raise DataError(f"corpus '{spec}': a separate target needs an aligned prefix (dir/name), not a file or hub id")
    if spec.startswith("hf:"):
        return _read_hub(spec, src_lang, tgt_lang)
    spec = os.path.expanduser(spec)  # "~/runs/data/..." in a config: runs live outside the checkout
    if spec.endswith((".tsv", ".tsv.gz", ".jsonl", ".jsonl.gz")) and not Path(spec).is_file():
        raise DataError(f"missing file: {spec}")
    if spec.endswith((".tsv", ".tsv.gz")):
        columns = _read_tsv(spec)
    elif spec.endswith((".jsonl", ".jsonl.gz")):
        columns = _read_jsonl(spec, src_lang, tgt_lang)
    else:
        columns = _read_aligned(spec, src_lang, tgt_lang, target and os.path.expanduser(target))
    return datasets.Dataset.from_dict(columns)


def weighted_indices(n: int, weight: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices that use a corpus of n pairs `weight` times: round(weight · n) rows, the whole corpus int(weight)
    times over, then a random subset (without repeats, in corpus order) for the fraction."""
    total = int(weight * n + 0.5)
    copies, extra = divmod(total, n) if n else (0, 0)
    subset = np.sort(rng.choice(n, size=extra, replace=False)) if extra else np.arange(0)
    return np.concatenate([np.tile(np.arange(n), copies), subset]).astype(np.int64)


def read_corpora(corpora: tuple[Corpus | str, ...] | list[Corpus | str], src_lang: str = "fr", tgt_lang: str = "en",
                 seed: int = 1) -> datasets.Dataset:
    """A mixture: the corpora, each weighted (see `weighted_indices`), concatenated in order, with a bool column
    `synthetic`. The fractional subset of entry i is drawn with the generator seeded by (seed, i)."""
    parts = []
    for i, entry in enumerate(corpora):
        c = Corpus.from_entry(entry, f"data.train[{i}]")
        if c.weight == 0:
            continue  # dropped: not even read
        ds = read_corpus(c.path, src_lang, tgt_lang, c.target)
        ds = ds.add_column("synthetic", [c.synthetic] * len(ds))
        if c.weight != 1:
            ds = ds.select(weighted_indices(len(ds), c.weight, np.random.default_rng((seed, i))))
        parts.append(ds)
    if not parts:
        raise DataError("no training corpus given (data.train is empty or all its weights are 0)")
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


# ---- tokenizing (cached) ----------------------------------------------------------------------------------------------

def _fingerprint(ds: datasets.Dataset, tokenizer: Tokenizer, max_len: int, tag: bool) -> str:
    h = hashlib.sha256(tokenizer.model_proto)
    h.update(f"{ds._fingerprint}|{len(ds)}|{max_len}".encode() + (b"|bt_tag" if tag else b""))
    return h.hexdigest()[:20]


def tokenize(ds: datasets.Dataset, tokenizer: Tokenizer, max_len: int = 0, cache_dir: str | None = None,
             bt_tag: bool = False) -> datasets.Dataset:
    """Add `src_ids` = pieces + </s> and `tgt_ids` = pieces + </s>; with max_len > 0, drop pairs longer than it
    (counting </s> and the tag) on either side. With `cache_dir`, the result is stored as Arrow and reused on the
    next run. With `bt_tag`, the source of every row whose `synthetic` column is true starts with the tokenizer's
    <BT> id: src_ids = <BT> + pieces + </s> (tagged back-translation, Caswell et al. 2019)."""
    tag_id = tokenizer.bt_tag_id
    if bt_tag and tag_id is None:
        raise DataError(f"data.bt_tag is on but the tokenizer has no {BT_TAG} symbol (an spm.model trained without "
                        "bt_tag): train in a new --out")
    bt_tag = bt_tag and "synthetic" in ds.column_names  # a dev set or a single read_corpus has no synthetic rows
    fp = _fingerprint(ds, tokenizer, max_len, bt_tag)

    def encode(batch: dict) -> dict:
        src_ids = [ids + [EOS_ID] for ids in tokenizer.encode_batch(batch["src"])]
        if bt_tag:
            src_ids = [[tag_id] + ids if synthetic else ids for ids, synthetic in zip(src_ids, batch["synthetic"])]
        return {"src_ids": src_ids, "tgt_ids": [ids + [EOS_ID] for ids in tokenizer.encode_batch(batch["tgt"])]}

    cache = None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        cache = os.path.join(cache_dir, f"tokenized-{fp}.arrow")
    out = ds.map(encode, batched=True, batch_size=2000, cache_file_name=cache, new_fingerprint=fp)
    if max_len > 0:
        out = out.filter(lambda s, t: len(s) <= max_len and len(t) <= max_len, input_columns=["src_ids", "tgt_ids"],
                         cache_file_name=cache and cache.replace(".arrow", f"-len{max_len}.arrow"),
                         new_fingerprint=f"{fp}-len{max_len}")
    return out


# ---- batching ---------------------------------------------------------------------------------------------------------

@dataclass
class Batch:
    src_ids: Tensor  # (B, S) long, padded with <pad>
    tgt_in_ids: Tensor  # (B, T) long: <pad>(= bos) + target, teacher-forcing input
    tgt_out_ids: Tensor  # (B, T) long: target + </s>, padded with <pad>
    n_src_tokens: int
    n_tgt_tokens: int

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.src_ids.to(device), self.tgt_in_ids.to(device), self.tgt_out_ids.to(device),
                     self.n_src_tokens, self.n_tgt_tokens)


def collate(src: list[list[int]], tgt: list[list[int]], pad_id: int) -> Batch:
    """Lists of ids (each ending with </s>) -> padded tensors."""
    b, s, t = len(src), max(map(len, src)), max(map(len, tgt))
    src_ids = torch.full((b, s), pad_id, dtype=torch.long)
    tgt_in = torch.full((b, t), pad_id, dtype=torch.long)
    tgt_out = torch.full((b, t), pad_id, dtype=torch.long)
    for i, (x, y) in enumerate(zip(src, tgt)):
        src_ids[i, :len(x)] = torch.tensor(x)
        tgt_out[i, :len(y)] = torch.tensor(y)
        tgt_in[i, 1:len(y)] = torch.tensor(y[:-1])  # position 0 stays <pad>, the start symbol
    return Batch(src_ids, tgt_in, tgt_out, sum(map(len, src)), sum(map(len, tgt)))


def make_batches(src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int = 0) -> list[np.ndarray]:
    """Group example indices into batches of at most `max_tokens` padded tokens (source + target), bucketing by
    length: examples are sorted by (source, target) length with random tie-breaking, then cut greedily."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(src_lens)), tgt_lens, src_lens))
    batches, start, max_s, max_t = [], 0, 0, 0
    for end, i in enumerate(order):
        s, t = max(max_s, src_lens[i]), max(max_t, tgt_lens[i])
        if end > start and (s + t) * (end - start + 1) > max_tokens:
            batches.append(order[start:end])
            start, s, t = end, src_lens[i], tgt_lens[i]
        max_s, max_t = s, t
    if len(order) > start:
        batches.append(order[start:])
    return batches


class BatchStream:
    """An endless, reproducible sequence of batches over epochs: `batch(p)` is the p-th batch overall.

    Batch composition is fixed; each epoch visits the batches in an order shuffled by (seed, epoch). A training
    position is therefore just an integer, which is what makes resuming exact.
    """

    def __init__(self, ds: datasets.Dataset, max_tokens: int, pad_id: int, seed: int):
        self.src, self.tgt = list(ds["src_ids"]), list(ds["tgt_ids"])
        if len(self.src) == 0:
            raise DataError("no training pairs left after length filtering")
        src_lens = np.fromiter(map(len, self.src), dtype=np.int64)
        tgt_lens = np.fromiter(map(len, self.tgt), dtype=np.int64)
        self.batches = make_batches(src_lens, tgt_lens, max_tokens, seed)
        self.pad_id, self.seed = pad_id, seed
        self._epoch, self._order = -1, np.arange(0)

    def __len__(self) -> int:
        return len(self.batches)  # batches per epoch

    def batch(self, position: int) -> Batch:
        epoch, j = divmod(position, len(self.batches))
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng((self.seed, epoch)).permutation(len(self.batches))
        idx = self.batches[self._order[j]]
        return collate([self.src[i] for i in idx], [self.tgt[i] for i in idx], self.pad_id)


def sequential_batches(ds: datasets.Dataset, max_tokens: int, pad_id: int) -> list[tuple[np.ndarray, Batch]]:
    """Batches for evaluation, by length; each with the original indices of its rows."""
    src, tgt = list(ds["src_ids"]), list(ds["tgt_ids"])
    lens = np.fromiter(map(len, src), dtype=np.int64)
    batches = make_batches(lens, np.fromiter(map(len, tgt), dtype=np.int64), max_tokens)
    return [(idx, collate([src[i] for i in idx], [tgt[i] for i in idx], pad_id)) for idx in batches]


def carve_dev(src: list[str], tgt: list[str], n: int, seed: int = 1) -> tuple[list[int], list[int]]:
    """Split a corpus into (train, dev) indices with about n dev pairs, by target sentence: every pair whose target
    (English) sentence is chosen goes to dev, so no English sentence is on both sides; dev pairs whose source also
    occurs in train are dropped (Tatoeba repeats sentences across pairs)."""
    rng = np.random.default_rng(seed)
    by_target: dict[str, list[int]] = {}
    for i, t in enumerate(tgt):
        by_target.setdefault(t, []).append(i)
    chosen, count = set(), 0
    for t in rng.permutation(list(by_target)):
        if count >= n:
            break
        chosen.add(t)
        count += len(by_target[t])
    train = [i for i, t in enumerate(tgt) if t not in chosen]
    train_sources = {src[i] for i in train}
    dev = [i for i, t in enumerate(tgt) if t in chosen and src[i] not in train_sources]
    return train, dev
